"""Tier 5 of the GPU check: speed, one backend per process (a sticky CUDA fault in one backend's
kernels ends that process, not the other backends' rows), with bench/'s race (CUDA events,
interleaved rounds, medians, peak memory) and the three bare matmuls raced beside the backend in
every process; rows appended to $OUT/speed.csv in bench/results' format, under one run id
(--run) for the whole tier.

    python -m bench.gpu_check.speed --backend triton --out OUT --deadline T [--run ID] [--dry-run]

In order, each step only when the deadline leaves room for its predicted cost:
  1. B=16384, D=1024, bf16: the floor and the backend's variants (PLANS), forward+backward.
  2. triton: registers and spills of every kernel those calls compiled. cuda: its own similarity
     and GEMM kernels against torch.mm on the same panel (R = its panel rows × B × D).
  3. triton, cuda: host synchronisations of one loss+backward per variant (torch's sync debug mode).
  4. B=65536 in streaming beside the floor (PLANS), cost predicted from step 1.
  5. triton: the largest B that streaming runs within MAX_CALL_S per forward+backward, B doubling
     while the prediction (×4 per doubling) fits.
"""

from __future__ import annotations

import csv
import os
import time
import warnings
from unittest import mock

import torch

from bench.contenders import _backend, contenders
from bench.gpu_check import backends
from bench.gpu_check.budget import Deadline, Results, Row, skipped, worker_args
from bench.measure import is_oom, summarise, time_once
from bench.run import COLUMNS, DTYPES, FLOOR, environment, inputs, race

TIER = "speed"
SIZES = {
    "device": dict(B=16384, D=1024, dtype="bf16", big=65536, repeats=5, big_repeats=3, max_call_s=5.0, first_s=15.0),
    "dry": dict(B=48, D=16, dtype="fp32", big=64, repeats=1, big_repeats=1, max_call_s=0.5, first_s=5.0),
}
# backend -> (its contenders at B, its contenders at B=big): the floor races beside both. cpu is
# the dry run's stand-in for cuda.
PLANS = {
    "triton": (("srem:triton:streaming", "srem:triton:materialised"), ("srem:triton:streaming",)),
    "cuda": (("srem:cuda:own", "srem:cuda:torch"), ("srem:cuda:own", "srem:cuda:torch")),
    "reference": (("srem:reference",), ()),
    "cpu": (("srem:cpu",), ()),
}
ROUND = 3.5  # one race round (fwd, bwd with its untimed forward, fwd+bwd) in units of one fwd+bwd


def _raced(results: Results, writer, env, cs, B, D, dtype, dev, repeats, backend) -> dict[str, float]:
    """One race; its rows into speed.csv, its forward+backward rows into the table (named by the
    process's backend: each process races its own floor). Returns the fwd+bwd medians (ms) of the
    contenders that ran."""
    medians = {}
    for r in race(cs, B, D, DTYPES[dtype], dev, repeats, 8.0, set()):
        r.update(env, dtype=dtype)
        writer.writerow(r)
        if r["phase"] != "fwd+bwd":
            continue
        if r["status"] == "ok":
            medians[r["contender"]] = float(r["median_ms"])
            value = f"{r['median_ms']} ms, {r['ratio_to_floor']}x floor, {r['tflops']} TFLOP/s eq, +{r['peak_mb']} MB"
        else:
            value = r["status"]
        status = "ERROR" if r["status"].startswith("error") else "INFO"
        results.add(Row(TIER, f"{backend} fwd+bwd {dtype} B={B} D={D} {r['contender']}", status, value=value, show=True))
    return medians


def triton_kernels(results: Results) -> None:
    """Registers, spills, warps and shared memory of every compiled Triton kernel (Triton's JIT
    caches; the tuning targets of the review)."""
    try:
        from srem_kernels.backends.triton import kernels as triton_kernels

        for name, fn in sorted(vars(triton_kernels).items()):
            for caches in (getattr(fn, "device_caches", None) or {}).values():
                for i, ck in enumerate(caches[0].values()):
                    md = ck.metadata
                    results.add(Row(TIER, f"triton kernel {name}#{i}", "INFO", show=True,
                                    value=f"regs {ck.n_regs}, spills {ck.n_spills} B, warps {md.num_warps}, smem {md.shared} B"))  # fmt: skip
    except Exception as err:  # noqa: BLE001 - Triton's cache layout is not a public API
        results.add(Row(TIER, "triton kernel resources", "INFO", detail=f"unreadable: {type(err).__name__}: {err}"))


def gemm_panels(results: Results, dev, B: int, D: int, dtype: str, repeats: int = 10) -> None:
    """cuda's own similarity / GEMM kernels against torch.mm on one panel, as forward and backward
    call them (torch's products take dS already cast to the gradient dtype; the cast is its own row)."""
    from srem_kernels.backends.cuda import CUDAKernels, _grad_dtype, _panel_rows

    dt = DTYPES[dtype]
    R = _panel_rows(B)
    img, txt = (x.detach() for x in inputs(B, D, dt, dev))
    g = torch.Generator(device=dev).manual_seed(0)
    d = torch.randn(R, B, device=dev, generator=g) * 1e-4  # an fp32 dS panel
    dg = d.to(_grad_dtype(dt))
    buf = torch.empty(R, B, device=dev)
    out_r, out_b = torch.empty(R, D, device=dev), torch.zeros(B, D, device=dev)
    own, mm = CUDAKernels(gemm="own"), CUDAKernels(gemm="torch")
    ops = {
        "P=I[R]·Tᵀ": (lambda: own._panel(img, txt, 0, R, buf), lambda: mm._panel(img, txt, 0, R, buf)),
        "dS·T": (lambda: own._times(d, txt, out_r), lambda: mm._times(dg, txt, out_r)),
        "dSᵀ·I[R]": (lambda: own._times_t(d, img[:R], out_b, True), lambda: mm._times_t(dg, img[:R], out_b, True)),
    }
    samples = {(op, k): [] for op in ops for k in ("own", "torch")} | {("cast dS", "torch"): []}
    for fns in ops.values():  # warm-up: module load, cuBLAS handles
        for fn in fns:
            fn()
    for _ in range(repeats):
        for op, (f_own, f_torch) in ops.items():
            samples[(op, "own")].append(time_once(f_own, dev))
            samples[(op, "torch")].append(time_once(f_torch, dev))
        samples[("cast dS", "torch")].append(time_once(lambda: d.to(_grad_dtype(dt)), dev))
    med = {k: summarise(v).median_ms for k, v in samples.items()}
    shape = f"{dtype} R={R} B={B} D={D}"
    for (op, k), ms in med.items():
        tflops = "" if op == "cast dS" else f", {2 * R * B * D / ms / 1e9:.1f} TFLOP/s"
        results.add(Row(TIER, f"cuda panel {op} {k} {shape}", "INFO", value=f"{ms:.3f} ms{tflops}", show=True))
    for op in ops:
        a, b = med[(op, "own")], med[(op, "torch")]
        verdict = f"torch.mm {a / b:.1f}x faster" if b < a else f"own kernel {b / a:.1f}x faster"
        results.add(Row(TIER, f"cuda faster {op} {shape}", "INFO", value=verdict, show=True))


def host_syncs(results: Results, dev, B: int, D: int, dtype: str, backend: str) -> None:
    """Host synchronisations of one loss+backward per variant (check_finite=False: the kernels' own)."""
    import srem_kernels

    img, txt = inputs(B, D, DTYPES[dtype], dev)
    for name, env in backends.VARIANTS[backend]:
        with mock.patch.dict(os.environ, env), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                srem_kernels.loss(img, txt, backend=backend, check_finite=False).loss.backward()
            finally:
                torch.cuda.set_sync_debug_mode(0)
            torch.cuda.synchronize()
        n = sum("synchroniz" in str(w.message) for w in caught)
        results.add(Row(TIER, f"{backend} syncs {name} {dtype} B={B} D={D}", "INFO", value=f"{n} per loss+backward", show=True))


def largest_streaming(results: Results, deadline: Deadline, dev, B: int, ms: float, D: int, dtype: str, cap_s: float):
    """From (B, ms) measured, double B while the predicted fwd+bwd (×4) stays under cap_s and
    twice it (warm-up + timed) fits the deadline; the largest B measured and why it stopped."""
    import srem_kernels

    stop = ""
    with mock.patch.dict(os.environ, {"SREM_TRITON_STRATEGY": "streaming"}):
        while not stop:
            nxt, predicted = 2 * B, 4 * ms / 1e3
            if predicted > cap_s:
                stop = f"B={nxt} predicted {predicted:.1f} s > {cap_s} s"
            elif not deadline.allows(2 * predicted + 5):
                stop = f"B={nxt} predicted {predicted:.1f} s: budget"
            else:
                try:
                    img, txt = inputs(nxt, D, DTYPES[dtype], dev, seed=nxt)
                    step = lambda: srem_kernels.loss(img, txt, backend="triton", check_finite=False).loss.backward()  # noqa: E731
                    step()
                    ms, B = time_once(step, dev), nxt
                    del img, txt
                except Exception as err:  # noqa: BLE001 - OOM ends the ladder; anything else is reported
                    stop = f"B={nxt}: {'OOM' if is_oom(err) else f'{type(err).__name__}: {str(err)[:200]}'}"
    results.add(Row(TIER, f"triton largest streaming B within {cap_s:g} s {dtype} D={D}", "INFO",
                    value=f"B={B}: {ms:.1f} ms per fwd+bwd", detail=f"stopped: {stop}", show=True))  # fmt: skip


def _guarded(results: Results, step: str, fn, *args):
    """fn(*args), an exception its ERROR row (the later steps still measure)."""
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001
        results.add(Row(TIER, f"step {step}", "ERROR", detail=f"{type(err).__name__}: {str(err)[:300]}"))
        return None
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _contenders(names, backend: str, dev) -> list:
    """The floor and the named contenders of the backend, in that order."""
    every, left_out = contenders(dev)
    for line in left_out:
        print(f"not racing {line}")
    if not set(names) <= {c.name for c in every}:  # the dry run: triton's interpreter on CPU tensors
        every += _backend(backend)
    return [c for c in every if c.name in (FLOOR, *names)]


def _arguments(ap) -> None:
    ap.add_argument("--backend", required=True, choices=sorted(PLANS))
    ap.add_argument("--run", help="the run id of this tier's rows in speed.csv (one for every process)")


def main(argv=None) -> None:
    args = worker_args(__doc__, argv, _arguments)
    results, deadline = Results(args.out), Deadline(args.deadline)
    backend, (first_names, big_names) = args.backend, PLANS[args.backend]
    why = backends.unavailable(backend)
    if why is not None:  # on the device every backend must run; in the dry run the GPU ones cannot
        results.add(Row(TIER, f"{backend} available", "SKIP" if args.dry_run else "FAIL", detail=why))
        return
    dev = backends.device()
    cfg = SIZES["dry" if args.dry_run else "device"]
    B, D, dtype = cfg["B"], cfg["D"], cfg["dtype"]
    env = environment(dev)
    if env["commit"].startswith("unknown") and os.environ.get("SREM_COMMIT"):  # the device copy has no .git
        env["commit"] = os.environ["SREM_COMMIT"]
    env["run"] = args.run or env["run"]
    env["command"] = "scripts/gpu_check.sh" + (" --dry-run" if args.dry_run else "") + " (speed tier)"
    path = args.out / "speed.csv"
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()

        def raced(names, size, repeats) -> dict[str, float]:
            run = lambda: _raced(results, writer, env, _contenders(names, backend, dev), size, D, dtype, dev, repeats, backend)  # noqa: E731
            out = _guarded(results, "race", run) or {}
            f.flush()
            return out

        if not deadline.allows(cfg["first_s"]):
            results.add(skipped(TIER, f"{backend} fwd+bwd {dtype} B={B} D={D}", cfg["first_s"], deadline.left()))
            return
        t0 = time.perf_counter()
        first = raced(first_names, B, cfg["repeats"])
        print(f"first race: {time.perf_counter() - t0:.1f} s")
        if backend == "triton":
            triton_kernels(results)
        if dev.type == "cuda" and backend == "cuda" and deadline.allows(15):
            _guarded(results, "gemm panels", gemm_panels, results, dev, B, D, dtype)
        if dev.type == "cuda" and backend in ("triton", "cuda") and deadline.allows(10):
            _guarded(results, "host syncs", host_syncs, results, dev, B, D, dtype, backend)
        big = cfg["big"]
        cost = {n: ms / 1e3 * (big / B) ** 2 * ROUND * (cfg["big_repeats"] + 1) for n, ms in first.items()}  # predicted s
        chosen, predicted = [], cost.get(FLOOR, 0.0)
        for name in (n for n in big_names if n in first):
            if deadline.allows(predicted + cost[name] + 5):
                chosen.append(name)
                predicted += cost[name]
            else:
                results.add(skipped(TIER, f"{backend} fwd+bwd {dtype} B={big} D={D} {name}", cost[name], deadline.left() - predicted))
        at_big = raced(chosen, big, cfg["big_repeats"]) if chosen else {}
        if "srem:triton:streaming" in at_big:
            _guarded(results, "largest B", largest_streaming, results, deadline, dev, big, at_big["srem:triton:streaming"], D,
                     dtype, cfg["max_call_s"])  # fmt: skip


if __name__ == "__main__":
    main()

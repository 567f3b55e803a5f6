"""The `cpu` backend's bar: against the bare matmuls, CLIP's symmetric InfoNCE (eager and
torch.compile), torch.compile of the reference and the eager reference, at several batch sizes,
each strategy named.

    python bench/cpu_backend.py [--batch 128 256 1024 2048 4096] [--dim 256] [--threads 2] [--reps 9]
                                [--no-compile] [--no-eager] [--big 32768] [--no-report]

Forward + backward, fp32, per batch size all candidates interleaved rep by rep, in a new (seeded)
order every round (a noisy neighbour, or what the previous call leaves in the caches and the
allocator, hits every candidate alike), after one warm-up (and compile) call each: the
three bare matmuls of the loss (S = I·Tᵀ, G·T, Gᵀ·I), srem_kernels.loss(backend="cpu") with the
strategy `auto` picks and with each strategy forced (SREM_CPU_STRATEGY), the InfoNCE a user would
train with instead (open_clip's ClipLoss written plainly, bench/contenders.clip_loss: cross-entropy
of I·Tᵀ / tau over rows and over columns, averaged) eager and under torch.compile (mode "default",
dynamic=False: the static graph the defaults give a run at one batch size, compiled per B in the
warm-up), torch.compile of python_ref.srem, and python_ref.srem eager. Median, 20th/80th percentile, min and max per candidate, the ratios to the
matmuls and to torch.compile, the peak memory one call adds (bench/measure.py: peak-RSS growth),
and the load average (os.getloadavg) before and after each size. The materialised strategy's
peak is checked against its stated need (CPUKernels.materialised_bytes, within the budget); then
one B=--big run of the streaming strategy in a fresh process, its whole peak RSS against 1 GB
(phase "fwd+bwd, one call" in the log, outside the report's tables).

Rows go to bench/results/<device>.cpu-backend.csv in bench/run.py's columns (plus strategy, load,
min/max, every sample), so bench/report.py shows the latest run in bench/RESULTS.md (rewritten
unless --no-report). Rows of this script from before that format are in bench/results/cpu_backend.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import python_ref  # noqa: E402
import srem_kernels  # noqa: E402
from bench import report  # noqa: E402
from bench.contenders import clip_loss, fresh_compile  # noqa: E402
from bench.measure import peak_memory_mb, summarise  # noqa: E402
from bench.run import COLUMNS, device_log, environment, flops, inputs  # noqa: E402

RESULTS = ROOT / "bench" / "results"
EXTRA = ("strategy", "load_before", "load_after", "min_ms", "max_ms", "ratio_to_compile", "need_mb", "all_ms")


def _cpu(strategy: str | None, img, txt):
    """srem_kernels.loss(backend="cpu") forward + backward, the strategy forced unless None (auto)."""
    def call():
        if strategy is None:
            os.environ.pop("SREM_CPU_STRATEGY", None)
        else:
            os.environ["SREM_CPU_STRATEGY"] = strategy
        out = srem_kernels.loss(img, txt, backend="cpu", check_finite=False)
        out.loss.backward()
        return out.strategy

    return call


def candidates(img, txt, compile_ok=True, eager_ok=True) -> dict:
    """name -> zero-argument callable: one forward + backward (returning the cpu strategy, if any)."""
    i, t = img.detach(), txt.detach()
    G = torch.randn(i.shape[0], i.shape[0])  # the B×B upstream of the floor's backward

    def matmuls():
        return i @ t.T, G @ t, G.T @ i

    out = {"floor:matmuls": matmuls, "srem:cpu": _cpu(None, img, txt)}
    out |= {f"srem:cpu:{s}": _cpu(s, img, txt) for s in ("materialised", "streaming")}
    out["infonce:clip-loss"] = lambda: clip_loss(img, txt).backward()
    if compile_ok:
        clip = fresh_compile(clip_loss)  # a static graph for this B, compiled in the warm-up
        out["infonce:clip-loss (torch.compile)"] = lambda: clip(img, txt).backward()
        compiled = torch.compile(lambda a, b: python_ref.srem(a, b)[0], dynamic=True)
        out["srem:compiled-reference"] = lambda: compiled(img, txt).backward()
    if eager_ok:
        out["srem:reference"] = lambda: python_ref.srem(img, txt)[0].backward()
    return out


def big_child(B: int, D: int, threads: int):
    """In a fresh process: one streaming call at B; its whole peak RSS (imports included) and the
    growth above the RSS before the call."""
    torch.set_num_threads(threads)
    img, txt = inputs(B, D, torch.float32, torch.device("cpu"))
    fn = _cpu("streaming", img, txt)
    t = time.perf_counter()
    growth = peak_memory_mb(fn, torch.device("cpu"))
    seconds = time.perf_counter() - t
    with open("/proc/self/status") as f:
        peak = int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) / 1024
    print(json.dumps({"peak_mb": peak, "growth_mb": growth, "seconds": seconds}))


def race(B, D, threads, reps, compile_ok, eager_ok):
    img, txt = inputs(B, D, torch.float32, torch.device("cpu"))
    fns = candidates(img, txt, compile_ok, eager_ok and B <= 4096)  # eager: ~16 B×B fp32 matrices
    load_before = os.getloadavg()[0]
    strategy = {}
    for name, f in fns.items():  # warm-up (and compile)
        strategy[name] = f() if name.startswith("srem:cpu") else ""
    samples = {k: [] for k in fns}
    for rep in range(reps):  # a new order each round (seeded): no candidate always follows the same one
        names = list(fns)
        random.Random(rep).shuffle(names)
        for name in names:
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append(1e3 * (time.perf_counter() - t0))
    peak = {name: peak_memory_mb(f, torch.device("cpu")) for name, f in fns.items()}
    load_after = os.getloadavg()[0]
    from srem_kernels.backends.cpu import CPUKernels

    floor = statistics.median(samples["floor:matmuls"])
    comp = statistics.median(samples["srem:compiled-reference"]) if compile_ok else None
    rows = []
    for name, ts in samples.items():
        t = summarise(ts)
        family = name.split(":")[0]
        rows.append({
            "contender": f"{name} (auto: {strategy[name]})" if name == "srem:cpu" else name, "family": family, "B": B, "D": D,
            "phase": "fwd+bwd", "dtype": "fp32", "median_ms": f"{t.median_ms:.4g}", "p20_ms": f"{t.p20_ms:.4g}",
            "p80_ms": f"{t.p80_ms:.4g}", "ratio_to_floor": f"{t.median_ms / floor:.3g}",
            "tflops": f"{flops('fwd+bwd', B, D) / t.median_ms / 1e9:.4g}", "peak_mb": f"{peak[name]:.1f}",
            "status": "ok", "strategy": strategy[name] or "", "load_before": f"{load_before:.2f}",
            "load_after": f"{load_after:.2f}", "min_ms": f"{min(ts):.4g}", "max_ms": f"{max(ts):.4g}",
            "ratio_to_compile": f"{t.median_ms / comp:.3g}" if comp else "",
            "need_mb": f"{CPUKernels.materialised_bytes(B) / 2**20:.1f}" if strategy[name] == "materialised" else "",
            "all_ms": " ".join(f"{x:.4g}" for x in ts),
        })  # fmt: skip
    return rows


# issue 23's bar: the cpu backend (auto) against the bare matmuls, and against InfoNCE
FLOOR_BAR = {128: 3.0}  # B -> at most this many times the matmuls; 1.2 from B = 1024 on


def _verdict(B: int, rs: list[dict]) -> list[str]:
    by = {r["contender"]: float(r["median_ms"]) for r in rs}
    auto = next(r for r in rs if r["contender"].startswith("srem:cpu (auto"))
    ms, out = float(auto["median_ms"]), []
    bar = FLOOR_BAR.get(B, 1.2 if B >= 1024 else None)
    if bar:
        out.append(f"B={B}: {auto['ratio_to_floor']}x the matmuls (bar {bar}x): "
                   f"{'met' if float(auto['ratio_to_floor']) <= bar else 'NOT met'}")  # fmt: skip
    compiled = by.get("infonce:clip-loss (torch.compile)")
    if compiled:
        out.append(f"B={B}: {ms / compiled:.3g}x compiled InfoNCE's time: {'no slower' if ms <= compiled else 'SLOWER'}")
    if B >= 1024 and "infonce:clip-loss" in by:
        eager = by["infonce:clip-loss"]
        out.append(f"B={B}: {ms / eager:.3g}x eager InfoNCE's time: {'faster' if ms < eager else 'NOT faster'}")
    if auto["ratio_to_compile"]:
        out.append(f"B={B}: {auto['ratio_to_compile']}x torch.compile of the reference: "
                   f"{'faster' if float(auto['ratio_to_compile']) < 1 else 'NOT faster'}")  # fmt: skip
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[128, 256, 1024, 2048, 4096])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-eager", action="store_true")
    ap.add_argument("--big", type=int, default=32768, help="B of the streaming memory run (0: skip)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder of the CSV log")
    ap.add_argument("--no-report", action="store_true", help="do not rewrite bench/RESULTS.md")
    ap.add_argument("--big-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.big_child:
        return big_child(args.big_child, args.dim, args.threads)

    torch.set_num_threads(args.threads)
    env = environment(torch.device("cpu"))
    env["command"] = " ".join(["python bench/cpu_backend.py", *(sys.argv[1:] if argv is None else argv)])
    log = device_log(args.out, env, ".cpu-backend.csv")
    env["device"] += " (bench/cpu_backend.py)"
    print(f"{env['device']}, {args.threads} threads, torch {env['torch']}, commit {env['commit']}; D={args.dim} fp32, "
          f"{args.reps} interleaved reps; uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")  # fmt: skip
    rows, verdict = [], []
    for B in args.batch:
        rs = race(B, args.dim, args.threads, args.reps, not args.no_compile, not args.no_eager)
        print(f"B={B} (load {rs[0]['load_before']} -> {rs[0]['load_after']})")
        print(f"  {'candidate':<30}{'strategy':>14}{'median':>9}{'p20':>9}{'p80':>9}{'x floor':>9}{'x compile':>10}{'peak MB':>9}")
        for r in rs:
            print(f"  {r['contender']:<30}{r['strategy']:>14}{r['median_ms']:>9}{r['p20_ms']:>9}{r['p80_ms']:>9}"
                  f"{r['ratio_to_floor']:>9}{r['ratio_to_compile']:>10}{r['peak_mb']:>9}")  # fmt: skip
        verdict += _verdict(B, rs)
        for r in rs:
            if r["need_mb"]:
                ok = float(r["peak_mb"]) <= float(r["need_mb"]) + 8 * B * args.dim * 4 / 2**20 + 16
                verdict.append(f"B={B} {r['contender']}: peak {r['peak_mb']} MB, stated need {r['need_mb']} MB "
                               f"(+ O(B·D)): {'within' if ok else 'OVER'}")  # fmt: skip
        rows += rs
    big = None
    if args.big:
        cmd = [sys.executable, __file__, "--big-child", str(args.big), "--dim", str(args.dim), "--threads", str(args.threads)]
        big = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        verdict.append(f"B={args.big} streaming: {big['seconds']:.1f} s, whole-process peak RSS {big['peak_mb']:.0f} MB "
                       f"({'under' if big['peak_mb'] < 1024 else 'OVER'} 1 GB)")  # fmt: skip
        rows.append({"contender": "srem:cpu:streaming", "family": "srem", "B": args.big, "D": args.dim, "phase": "fwd+bwd, one call",
                     "dtype": "fp32", "median_ms": f"{1e3 * big['seconds']:.4g}", "status": "ok", "strategy": "streaming",
                     "peak_mb": f"{big['growth_mb']:.1f}", "all_ms": f"single run; whole-process peak RSS {big['peak_mb']:.0f} MB"})  # fmt: skip
    print("\n".join(["bar:", *(f"  {v}" for v in verdict)]))
    new = not log.exists()
    with log.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS) + list(EXTRA), restval="")
        if new:
            w.writeheader()
        w.writerows(dict(r, **env) for r in rows)
    print(f"appended {len(rows)} rows to {os.path.relpath(log)}")
    if not args.no_report:
        report.main(["--results", str(args.out), "--output", str(report.RESULTS_MD if args.out.resolve() == RESULTS else args.out / "RESULTS.md")])


if __name__ == "__main__":
    main()

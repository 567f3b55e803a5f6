"""Tier 2 of the GPU check, one backend per process (a CUDA fault poisons its process's context,
not the next backend's): every variant of the backend through the public API against the fp64
reference (tests/backend_checks.py, SPEC's tolerances), on fresh correlated inputs, with every
kernel output poisoned before the call (srem_kernels/_alloc), and run twice: bitwise equal.

    python -m bench.gpu_check.correctness --backend triton --out OUT --deadline T [--dry-run]

One reference per input serves every variant. Cases run smallest first; once the deadline is too
near for the next one, the rest are recorded as skipped (budget). Device-only extras: the triton
strategies with TF32 dot products (the review's predicted failure), and for cuda whether the
column panel Q equals the transposed row panel P bit for bit (an assumption of pass 2).
"""

from __future__ import annotations

import time

import torch

from bench.gpu_check import backends
from bench.gpu_check.budget import Deadline, Results, Row, skipped, worker_args
from srem_kernels import _alloc
from tests.backend_checks import DTYPES, backend_run, compare, reference_run
from tests.helpers import embeddings, rel_err
from tests.test_fused import _params

TIER = "correctness"
DTYPE_NAMES = ("fp32", "bf16")
SHAPES = {  # (B, D), smallest first
    "device": [(B, D) for B in (2, 37, 130, 4099) for D in (1, 64, 1024)],
    "dry": [(2, 1), (37, 33)],
}


def case_seconds(B: int, D: int, variants: int) -> float:
    """A rough cost of one case (the CPU fp64 reference dominates at large B): enough to stop
    before the deadline, not a measurement."""
    return 1.0 + 3e-10 * B * B * (D + 64) * (1 + variants)


def _flat(out, grads):
    loss, per_sample, stats = out
    return [loss.detach(), per_sample, *stats.values(), *grads]


def check_case(results: Results, variant: str, run, img, txt, ref_run, tol_key: str, label: str) -> None:
    """One row: the variant against the reference, then a second run bitwise equal to the first."""
    params, ref, ref_grads, g = ref_run
    t0 = time.perf_counter()
    try:
        out, grads = backend_run(run, img, txt, params, g, False)
        compare(out, ref, grads, ref_grads, img, txt, False, tol_key)
        errs = f"rel err loss {rel_err(out[0], ref[0]):.1e}, d_img {rel_err(grads[0], ref_grads[0]):.1e}, " \
               f"d_txt {rel_err(grads[1], ref_grads[1]):.1e}"  # fmt: skip
        again = backend_run(run, img, txt, params, g, False)
        differ = [i for i, (a, b) in enumerate(zip(_flat(out, grads), _flat(*again))) if not torch.equal(a, b)]
        status, detail = ("PASS", "bitwise reproducible") if not differ else ("FAIL", f"second run differs in outputs {differ}")
    except AssertionError as err:
        status, errs, detail = "FAIL", "", " | ".join(str(err).splitlines()[:3])
    except Exception as err:  # noqa: BLE001 - recorded; the next case still runs
        status, errs, detail = "ERROR", "", f"{type(err).__name__}: {str(err)[:300]}"
    results.add(Row(TIER, f"{variant} {label}", status, time.perf_counter() - t0, errs, detail))


def panels_transpose(results: Results, img, txt, label: str) -> None:
    """cuda: Q = txt·imgᵀ against Pᵀ = (img·txtᵀ)ᵀ, bit for bit, for each panel GEMM (INFO: pass 2
    assumes it; the effect of a difference is ≤ 1 ulp of Z at a row maximum)."""
    from srem_kernels.backends.cuda import GEMMS, CUDAKernels

    B = img.shape[0]
    for gemm in GEMMS:
        k = CUDAKernels(gemm=gemm)
        buf = torch.empty(B, B, dtype=torch.float32, device=img.device)
        qbuf = torch.empty_like(buf)
        P, Q = k._panel(img, txt, 0, B, buf), k._panel(txt, img, 0, B, qbuf)
        n = int((P != Q.T).sum())
        results.add(Row(TIER, f"cuda:{gemm} P==Qᵀ {label}", "INFO", value="equal" if n == 0 else f"{n} of {P.numel()} differ",
                        detail=f"max |P-Qᵀ| {float((P - Q.T).abs().max()):.2e}", show=n > 0))  # fmt: skip


def main(argv=None) -> None:
    args = worker_args(__doc__, argv, lambda ap: ap.add_argument("--backend", required=True, choices=sorted(backends.VARIANTS)))
    results, deadline = Results(args.out), Deadline(args.deadline)
    dev = backends.device()
    why = backends.unavailable(args.backend)
    if why is not None:
        # on the device every backend must run; here (dry run) the GPU ones cannot
        status = "SKIP" if args.dry_run and args.backend == "cuda" else "FAIL"
        results.add(Row(TIER, f"{args.backend} available", status, detail=why))
        return
    _alloc.POISON = True  # unwritten outputs read NaN / -1
    torch.backends.cuda.matmul.allow_tf32 = False  # SPEC's fp32 bar is for IEEE dot products
    torch.set_float32_matmul_precision("highest")
    shapes = SHAPES["dry" if args.dry_run else "device"]
    for B, D, dt in [(B, D, dt) for B, D in shapes for dt in DTYPE_NAMES]:
        label = f"{dt} B={B} D={D}"
        inputs = run_case(results, deadline, args.backend, B, D, dt, dt, label, dev, seed=7 * B + D)
        if args.backend == "cuda" and (B, D) == shapes[-1] and inputs is not None:
            try:
                panels_transpose(results, *inputs, label)
            except Exception as err:  # noqa: BLE001 - recorded; the next case still runs
                results.add(Row(TIER, f"cuda P==Qᵀ {label}", "ERROR", detail=f"{type(err).__name__}: {str(err)[:300]}"))
    if args.backend == "triton" and not args.dry_run:
        # fp32 inputs with matmul precision "high": Triton's TF32 dots truncate (review item 1)
        B, D = shapes[-1]
        torch.set_float32_matmul_precision("high")
        try:
            run_case(results, deadline, "triton", B, D, "fp32", "tf32", f"tf32 B={B} D={D}", dev, seed=11)
        finally:
            torch.set_float32_matmul_precision("highest")


def run_case(results: Results, deadline: Deadline, backend: str, B, D, dtype, tol_key, label, dev, seed):
    """Every variant of the backend on one input (one reference for all), or skipped rows when
    the deadline is too near. Returns the inputs, or None when skipped."""
    variants = backends.VARIANTS[backend]
    need = case_seconds(B, D, len(variants))
    if not deadline.allows(need):
        for name, _ in variants:
            results.add(skipped(TIER, f"{name} {label}", need, deadline.left()))
        return None
    img, txt = embeddings(B, D, seed=seed, noise=0.7, normalize=D > 1, dtype=DTYPES[dtype], device=dev)
    ref_run = reference_run(img, txt, _params(B, "default", B), False)
    for name, env in variants:
        with backends.forced(env):
            check_case(results, name, backends.public(backend), img, txt, ref_run, tol_key, label)
    return img, txt


if __name__ == "__main__":
    main()

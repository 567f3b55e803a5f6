"""Tier 1 of the GPU check (and the first step of tier 3): srem_kernels.selfcheck on the device —
every case of one fused backend against the fp64 reference (docs/selfcheck.md) — before anything
is timed. Tier 1 checks triton, which needs no build; tier 3 checks cuda once tier 2 has built
it. One call per (shape class, dtype), sizes that are multiples of 16 first (the compiled kernels
a training shape and the later tiers use), bf16 first (the speed tier's dtype), so that a run the
budget cuts off keeps the rows it finished. Each call's report is appended to $OUT/env.txt; then
the cost of the first-use part once its kernels are compiled (what a training process pays).

    python -m bench.gpu_check.selfcheck --backend triton --out OUT --deadline T [--dry-run]
"""

from __future__ import annotations

import time

import torch

from bench.gpu_check import backends
from bench.gpu_check.budget import Deadline, Results, Row, skipped, worker_args
from bench.run import DTYPES

TIER = "selfcheck"
# what one run checks: (dtypes in order, shape classes in order, seconds a call may need at least)
PLANS = {"device": (("bf16", "fp32", "fp16"), ("aligned", "odd"), 10.0),
         "dry": (("fp32",), ("aligned",), 1.0)}  # fmt: skip
FIRST_USE = {"device": "bf16", "dry": "fp32"}  # the dtype of the first-use part that is timed


def _row(backend: str, dtype: str, shape: str, report) -> Row:
    worst = max((c for c in report.cases if c.worst), key=lambda c: c.worst.ratio, default=None)
    value = f"{sum(c.passed for c in report.cases)}/{len(report.cases)} cases passed in {report.seconds:.1f} s"
    if worst is not None:
        value += f"; worst {worst.worst.name} {worst.worst.err:.1e} (tol {worst.worst.tol:.0e}, {worst.case})"
    check = f"{backend} {dtype} {shape}"
    if not report.checked:
        return Row(TIER, check, "FAIL", report.seconds, detail="; ".join(report.skipped.values())[:300])
    detail = "; ".join(f"{c.case}: {c.what_failed()}" for c in report.failures)[:300]
    return Row(TIER, check, "PASS" if report.ok else "FAIL", report.seconds, value, detail, show=True)


def first_use_cost(backend: str, dev: torch.device, dtype: str) -> Row:
    """The first-use part (embeddings, aligned) again, its kernels compiled: its cost per process."""
    from srem_kernels import registry
    from srem_kernels.selfcheck import auto, cases

    dt = DTYPES[dtype]
    _, run = registry.resolve(backend, dev, dt)
    t0 = time.perf_counter()
    with auto.checking():
        results = cases.run_part(backend, run, dev, dt, "aligned", "embeddings", fail_fast=False)
    backends.synchronize(dev)
    ms = (time.perf_counter() - t0) * 1e3
    status = "INFO" if all(r.passed for r in results) else "FAIL"
    value = f"{ms:.0f} ms with its kernels compiled ({len(results)} cases: {', '.join(r.case for r in results)})"
    return Row(TIER, f"{backend} first-use part {dtype} aligned embeddings", status, ms / 1e3, value, show=True)


def _arguments(ap) -> None:
    ap.add_argument("--backend", required=True, choices=sorted(backends.VARIANTS))


def main(argv=None) -> None:
    args = worker_args(__doc__, argv, _arguments)
    import srem_kernels

    results, deadline = Results(args.out), Deadline(args.deadline)
    mode = "dry" if args.dry_run else "device"
    why = backends.unavailable(args.backend)
    if why is not None:  # on the device every backend must run; in the dry run the GPU ones cannot
        results.add(Row(TIER, f"{args.backend} available", "SKIP" if args.dry_run else "FAIL", detail=why))
        return
    dev = backends.device()
    dtypes, shapes, least = PLANS[mode]
    for shape in shapes:
        for dtype in dtypes:
            if not deadline.allows(least):
                results.add(skipped(TIER, f"{args.backend} {dtype} {shape}", least, deadline.left()))
                continue
            report = srem_kernels.selfcheck(dev, [args.backend], [dtype], shapes=[shape])
            print(report, flush=True)
            with (args.out / "env.txt").open("a") as f:
                f.write(f"## self-check {args.backend} {dtype} {shape}\n{report}\n\n")
            results.add(_row(args.backend, dtype, shape, report))
    if deadline.allows(least):
        results.add(first_use_cost(args.backend, dev, FIRST_USE[mode]))


if __name__ == "__main__":
    main()

"""A short GPU benchmark of backend="triton" (scripts/gpu_check.sh runs it): forward+backward time
and peak extra memory of the streaming and materialised strategies against the three bare matmuls
the math needs (S = I·Tᵀ, G·T, Gᵀ·I in the inputs' dtype) and the eager reference, bf16, D=1024.

    python bench/gpu_quick.py --out DIR [--sizes 4096,16384,65536] [--compile-reference]

Prints device, date, commit and command, and writes DIR/gpu_quick.csv.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import subprocess
import sys

import torch

import srem_kernels
from srem_kernels import fused
from srem_kernels._validate import check_params
from srem_kernels.triton_srem import TritonKernels


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, stderr=subprocess.DEVNULL).strip()
    except Exception:
        return os.environ.get("SREM_COMMIT", "unknown")


def timed(fn, reps: int) -> tuple[float, float]:
    """(median ms, peak extra MiB) of fn() over reps runs after one warm-up."""
    fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return sorted(times)[len(times) // 2], peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu-check-out")
    ap.add_argument("--sizes", default="4096,16384,65536")
    ap.add_argument("--D", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--compile-reference", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    dev = torch.cuda.get_device_name()
    header = (f"device={dev} date={datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')} "
              f"commit={commit()} torch={torch.__version__} command={' '.join(sys.argv)}")  # fmt: skip
    print(header, flush=True)
    rows = []
    D, dtype = args.D, torch.bfloat16
    for B in map(int, args.sizes.split(",")):
        g = torch.Generator(device="cuda").manual_seed(B)
        img = torch.nn.functional.normalize(torch.randn(B, D, device="cuda", generator=g), dim=1).to(dtype)
        txt = torch.nn.functional.normalize(img.float() + 0.5 * torch.randn(B, D, device="cuda", generator=g), dim=1).to(dtype)
        params = check_params(B, img.device, check_finite=False, tau=0.05, margin=0.2, lambda_hard=1.0, lambda_cbcl=1.0,
                              bias=True, sce_weight=True, clean=None, select="gmm", eps=1e-10, reduction="mean")  # fmt: skip
        bb_fp32_mib = B * B * 4 / 2**20

        def fused_step(k):
            a, b = img.detach().requires_grad_(), txt.detach().requires_grad_()
            fused.run(k, a, b, None, params)[0].backward()

        def matmuls():
            s = img @ txt.T
            s @ txt  # G·T with G the size of S
            s.T @ img

        def reference():
            a, b = img.detach().requires_grad_(), txt.detach().requires_grad_()
            srem_kernels.loss(a, b, backend="reference", check_finite=False).loss.backward()

        cases = {"matmuls": matmuls, "triton-streaming": lambda: fused_step(TritonKernels("streaming"))}
        if B <= 32768:
            cases["triton-materialised"] = lambda: fused_step(TritonKernels("materialised"))
        if B <= 16384:
            cases["reference-eager"] = reference
            if args.compile_reference:
                compiled = torch.compile(reference)
                cases["reference-compiled"] = compiled
        base_ms = None
        for name, fn in cases.items():
            try:
                ms, mib = timed(fn, args.reps)
            except torch.cuda.OutOfMemoryError:
                print(f"B={B} {name}: out of memory", flush=True)
                torch.cuda.empty_cache()
                continue
            base_ms = ms if name == "matmuls" else base_ms
            row = dict(device=dev, B=B, D=D, dtype="bf16", case=name, ms=round(ms, 3),
                       x_matmuls=round(ms / base_ms, 2) if base_ms else "", peak_extra_mib=round(mib, 1),
                       pct_of_BxB_fp32=round(100 * mib / bb_fp32_mib, 3))  # fmt: skip
            rows.append(row)
            print(row, flush=True)
            torch.cuda.empty_cache()
    path = os.path.join(args.out, "gpu_quick.csv")
    with open(path, "w", newline="") as f:
        f.write(f"# {header}\n")
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("wrote", path)


if __name__ == "__main__":
    main()

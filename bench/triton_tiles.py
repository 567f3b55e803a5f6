"""What one forward+backward of the Triton backend computes, counted under the interpreter (no
GPU): tiles of S formed by tl.dot, the torch matmuls around the kernels, and the evaluations of
-log P per element of S in pass 2, against the floor's three GEMMs (S = I·Tᵀ, dS·T, dSᵀ·I).

    python -m bench.triton_tiles [--batch 256] [--dim 64]    # appends to bench/results/triton_tiles.csv

Counts are exact, not timed: every call of the tile helper triton_tiles._dot_tile adds the
tile's elements inside [0, B)² (times D: one B×B×D GEMM is B² such elements), every torch
mm/addmm/bmm its M·N·K, every call of _nlp inside a kernel its tile's elements (choose B a
multiple of the tiles, as the default does, or the padding of edge tiles counts too). The
kernels run with their GPU tile configuration (TritonKernels' defaults).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import datetime
import os
import subprocess
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

HERE = Path(__file__).resolve().parent
CSV = HERE / "results" / "triton_tiles.csv"
FLOOR = 3.0  # GEMM-equivalents of S = I·Tᵀ, dS·T, dSᵀ·I
_MATMULS = {"mm": lambda a, b: a.shape[0] * a.shape[1] * b.shape[1],
            "addmm": lambda c, a, b: a.shape[0] * a.shape[1] * b.shape[1],
            "bmm": lambda a, b: a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]}  # fmt: skip


class _Matmuls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.macs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in _MATMULS:
            self.macs += _MATMULS[name](*args[:3] if name == "addmm" else args[:2])
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _counting(counts: dict):
    """counts[kernel]["dot"], counts[kernel]["nlp"]: elements, while kernels run (interpreter)."""
    from triton.runtime import interpreter

    from srem_kernels.backends.triton import passes as triton_passes

    from srem_kernels.backends.triton import tiles as triton_tiles

    current = ["?"]
    dot, nlp = triton_tiles._dot_tile, triton_passes._nlp
    launch = interpreter.InterpretedFunction.run

    def run(self, *args, **kwargs):
        current[0] = self.fn.__name__
        try:
            return launch(self, *args, **kwargs)
        finally:
            current[0] = "?"

    def counted_dot(x, y, r64, c64, rmask, cmask, *rest):
        counts[current[0]]["dot"] += int(rmask.handle.data.sum()) * int(cmask.handle.data.sum())
        return dot(x, y, r64, c64, rmask, cmask, *rest)

    def counted_nlp(m, z, logl, is_at):
        counts[current[0]]["nlp"] += int(z.handle.data.size)
        return nlp(m, z, logl, is_at)

    interpreter.InterpretedFunction.run = run
    triton_tiles._dot_tile, triton_passes._nlp = counted_dot, counted_nlp
    try:
        yield
    finally:
        interpreter.InterpretedFunction.run = launch
        triton_tiles._dot_tile, triton_passes._nlp = dot, nlp


def count(strategy: str, B: int = 256, D: int = 64, dtype=torch.float32, **kernel_kw) -> dict:
    """GEMM-equivalents (B×B×D each) of one forward+backward of TritonKernels(strategy), by
    kernel and for torch's matmuls, and pass 2's -log P evaluations per element of S."""
    from srem_kernels.backends.triton import kernels as triton_kernels

    if not triton_kernels.INTERPRET:
        raise RuntimeError("bench.triton_tiles counts under the interpreter: set TRITON_INTERPRET=1")
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1).to(dtype)
    txt = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1).to(dtype)
    v = torch.rand(B, generator=g)
    k = triton_kernels.TritonKernels(strategy, **kernel_kw)
    counts: dict = collections.defaultdict(collections.Counter)
    mm = _Matmuls()
    kw = dict(tau=0.05, eps=1e-10, bias=True)
    with _counting(counts), mm:
        saved = k.forward(img, txt, None, **kw)
        k.backward(img, txt, None, saved, g_cbcl=v, k_r=v, k_c=v, **kw)
    unit = B * B
    dots = {name: c["dot"] / unit for name, c in counts.items() if c["dot"]}
    total = sum(dots.values()) + mm.macs / (unit * D)
    return dict(strategy=strategy, B=B, D=D, dots=dots, torch_matmuls=mm.macs / (unit * D), total=total,
                ratio_to_floor=total / FLOOR, pass2_nlp_per_element=counts["_pass2_kernel"]["nlp"] / unit,
                dsim_nlp_per_element=counts["_dsim_kernel"]["nlp"] / unit)  # fmt: skip


def _device() -> str:
    """Where the count ran (it does not depend on it): the interpreter on this CPU."""
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        model = "CPU"
    return f"Triton interpreter, {model}, {os.cpu_count()} cores"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=HERE, capture_output=True, text=True).stdout
        return out.stdout.strip() + ("+dirty" if dirty.strip() else "")
    except OSError:
        return "unknown"


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m bench.triton_tiles", description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--out", type=Path, default=CSV)
    args = ap.parse_args(argv)
    from srem_kernels.backends.triton.kernels import STRATEGIES

    rows = []
    stamp = dict(device=_device(), date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), commit=_commit(),
                 command="python -m bench.triton_tiles " + " ".join(argv if argv is not None else sys.argv[1:]))  # fmt: skip
    print(f"B={args.batch} D={args.dim}: GEMM-equivalents (B×B×D) per forward+backward; floor {FLOOR:g}")
    for strategy in STRATEGIES:
        c = count(strategy, args.batch, args.dim)
        print(f"{strategy:>12}: tl.dot {sum(c['dots'].values()):.3f} ({', '.join(f'{k} {v:.3f}' for k, v in c['dots'].items())})"
              f" + torch {c['torch_matmuls']:.3f} = {c['total']:.3f} ({c['ratio_to_floor']:.3f}x floor); "
              f"-log P per element: pass 2 {c['pass2_nlp_per_element']:.3f}, dS {c['dsim_nlp_per_element']:.3f}")  # fmt: skip
        rows.append(dict(stamp, strategy=strategy, B=args.batch, D=args.dim,
                         pass1_dots=c["dots"].get("_pass1_kernel", 0.0), pass2_dots=c["dots"].get("_pass2_kernel", 0.0),
                         dsim_dots=c["dots"].get("_dsim_kernel", 0.0), torch_matmuls=c["torch_matmuls"],
                         total=c["total"], ratio_to_floor=c["ratio_to_floor"],
                         pass2_nlp_per_element=c["pass2_nlp_per_element"],
                         dsim_nlp_per_element=c["dsim_nlp_per_element"]))  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    new = not args.out.exists()
    with args.out.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)
    print(f"appended to {args.out}")
    return rows


if __name__ == "__main__":
    main()

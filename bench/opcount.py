"""What a call costs the host, counted rather than timed: operators that launch work, host reads,
host-to-device copies and kernel launches of our own.

On a GPU every ATen operator that computes something is a kernel launch (~4–8 µs of host time),
every `_local_scalar_dense` (`.item()`, `bool(t)`, `float(t)`) is a device synchronisation, and a
copy from host memory to the device stalls on pageable memory. These counts are deterministic, so
tests may guard them (a timing may not be asserted).

What is counted (`count(fn)` -> Counts):
  aten      ATen operators that launch work: everything but views (aliases of their input) and
            bare allocations (empty, empty_strided, empty_like, new_empty: no kernel runs)
  reads     aten._local_scalar_dense calls: host reads of a tensor value
  h2d       copies whose source is on the CPU and destination on another device, and tensors
            built from Python data (torch.tensor(...): on a device that is such a copy; counted
            on CPU tensors too, so the interpreter's runs show what a GPU run would copy)
  triton    Triton kernel launches (JIT or interpreter); the interpreter's own tensor traffic
            inside a launch is not counted (a GPU launch is one launch)
  by_op     the aten count by operator name, for finding what to remove

Custom operators (srem_kernels::fused_forward) are entered: the count includes what runs inside.

    python -m bench.opcount --backend cpu            # one forward+backward at B=128, D=256
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import os
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

ALLOCATIONS = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided"}
# the calls counted by main() and bench/fixed_cost.py: label -> loss_step's keywords
CONFIGS = {"defaults": {}, "clean given": {"clean": True}, "check_finite=False": {"check_finite": False}}


@dataclasses.dataclass
class Counts:
    aten: int = 0
    reads: int = 0
    h2d: int = 0
    triton: int = 0
    by_op: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def row(self) -> dict:
        return {"aten_ops": self.aten, "host_reads": self.reads, "h2d_copies": self.h2d, "triton_launches": self.triton}


def _devices(args, kwargs):
    out = []
    for a in list(args) + list((kwargs or {}).values()):
        if isinstance(a, torch.Tensor):
            out.append(a.device.type)
    return out


class _Counter(TorchDispatchMode):
    def __init__(self, counts: Counts):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace != "aten":  # our custom ops: count what they run, not the op itself
            return _call_inside(self, func, args, kwargs)
        name = func.overloadpacket.__name__
        c = self.counts
        if name == "_local_scalar_dense":
            c.reads += 1
        if name in ("lift_fresh", "lift_fresh_copy"):
            c.h2d += 1
        if name in ("copy_", "_to_copy", "to", "_copy_from"):
            devs = _devices(args, kwargs)
            dst = kwargs.get("device")
            if name == "copy_" and len(devs) >= 2 and devs[1] == "cpu" and devs[0] != "cpu":
                c.h2d += 1
            elif name == "_to_copy" and dst is not None and torch.device(dst).type != "cpu" and devs[:1] == ["cpu"]:
                c.h2d += 1
        if not func.is_view and name not in ALLOCATIONS:
            c.aten += 1
            c.by_op[name] += 1
        return func(*args, **kwargs)


def _call_inside(mode, func, args, kwargs):
    """Run a custom op's implementation with the mode still counting the ATen ops inside it:
    below the Python dispatch key the op would not be seen again, so call its registered
    implementation (the function torch.library wrapped) directly."""
    impl = _custom_impl(func)
    if impl is None:
        with _disable_current_modes():
            return func(*args, **kwargs)
    with mode:
        return impl(*args, **kwargs)


def _custom_impl(func):
    from torch._library.custom_ops import OPDEFS

    opdef = OPDEFS.get(f"{func.namespace}::{func._opname}")
    if opdef is None:
        return None
    fn = opdef._backend_fns.get("cpu") or opdef._backend_fns.get("cuda") or opdef._init_fn
    return fn


@contextlib.contextmanager
def _count_triton(counts: Counts):
    """Count Triton launches, one each, and hide the interpreter's own tensor traffic."""
    patched = []
    try:
        from triton.runtime import jit

        patched.append((jit.JITFunction, "run", jit.JITFunction.run))
        try:
            from triton.runtime import interpreter

            patched.append((interpreter.InterpretedFunction, "run", interpreter.InterpretedFunction.run))
        except ImportError:
            pass
    except ImportError:
        pass

    def wrap(orig):
        def run(self, *args, **kwargs):
            counts.triton += 1
            with _disable_current_modes():
                return orig(self, *args, **kwargs)

        return run

    for cls, attr, orig in patched:
        setattr(cls, attr, wrap(orig))
    try:
        yield
    finally:
        for cls, attr, orig in patched:
            setattr(cls, attr, orig)


def count(fn: Callable[[], object]) -> Counts:
    """Counts of one call of fn (run it once before, so lazy initialisation is not counted)."""
    counts = Counts()
    with _count_triton(counts), _Counter(counts):
        fn()
    return counts


def loss_step(backend: str, B: int = 128, D: int = 256, *, clean: bool = False, check_finite: bool = True,
              device: str = "cpu", seed: int = 0, **options) -> Callable[[], None]:  # fmt: skip
    """One forward+backward of srem_kernels.loss on fresh normalised embeddings."""
    import srem_kernels

    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1).to(device).requires_grad_()
    txt = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1).to(device).requires_grad_()
    c = torch.rand(B, generator=g).to(device) if clean else None

    def step():
        img.grad = txt.grad = None
        r = srem_kernels.loss(img, txt, backend=backend, clean=c, check_finite=check_finite, **options)
        r.loss.backward()

    return step


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.opcount", description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--top", type=int, default=15, help="operators to list")
    args = ap.parse_args(argv)
    if args.backend == "triton" and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    device = "cuda" if args.backend in ("triton", "cuda") and torch.cuda.is_available() else "cpu"
    for label, kw in CONFIGS.items():
        step = loss_step(args.backend, args.batch, args.dim, device=device, **kw)
        step()
        c = count(step)
        print(f"{args.backend:>9} B={args.batch} D={args.dim} {label:<20} {c.row()}")
        print("           ", ", ".join(f"{k} {v}" for k, v in c.by_op.most_common(args.top)))


if __name__ == "__main__":
    main()

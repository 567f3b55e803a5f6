"""The first-use self-check: the first call that runs a fused backend on a (device type, dtype,
shape class, path) in a process runs that backend's part of the self-check first (cases.plan:
from embeddings both strategies, or the similarity path, or the distributed loss's row ranges)
and caches the verdict; a failing part stops that call and every later one with a SelfCheckError.

On by default for CUDA tensors (kernels no test suite has run on this GPU), off for CPU tensors
(docs/selfcheck.md says why); SREM_SELFCHECK=0|1 or set_auto(True|False) decide instead. It is
skipped (nothing cached, so the next eligible call runs it) while torch.compile traces, while a
CUDA graph is being captured (with a warning) and under a tracing or counting dispatch mode
(make_fx, FakeTensorMode, bench/opcount.py): its own work would land in the graph or the count.
A compiled run meets it at run time instead, where its graph calls the kernels' custom op
(backends/fused.py, fused_forward). It runs no collective: every rank of a distributed loss
checks its own device.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings

import torch

from srem_kernels import _alloc, registry
from srem_kernels.backends import fused
from srem_kernels.errors import SelfCheckError
from srem_kernels.selfcheck import cases
from srem_kernels.selfcheck.report import ENV, CaseResult, failure_message

FUSED = tuple(n for n in registry.names() if n != "reference")  # the reference is the oracle

_LOCK = threading.RLock()  # one part at a time; a call of the same key waits for the verdict
_VERDICTS: dict[tuple, str | None] = {}  # key -> None (passed) or the error message
_WARNED: set[tuple] = set()
_LOCAL = threading.local()  # .active: this thread is inside a check (its own calls are not checked)
_SWITCH: list[bool | None] = [None]
_UNSEEN = object()


def set_auto(enabled: bool | None) -> None:
    """True/False: run the first-use check or not, whatever SREM_SELFCHECK says; None: back to
    SREM_SELFCHECK, else the default (on for CUDA tensors, off for CPU tensors)."""
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True, False or None, got {enabled!r}")
    _SWITCH[0] = enabled


def enabled(device: torch.device) -> bool:
    if _SWITCH[0] is not None:
        return _SWITCH[0]
    env = os.environ.get(ENV, "")
    if env in ("0", "1"):
        return env == "1"
    if env:
        raise ValueError(f"{ENV} must be 0 or 1 (unset: on for CUDA tensors, off for CPU tensors); got {env!r}")
    return device.type != "cpu"


def reset() -> None:
    """Forget every verdict and warning (tests; a process that rebuilt a backend)."""
    with _LOCK:
        _VERDICTS.clear()
        _WARNED.clear()


def shape_class(B: int, D: int | None) -> str:
    return "aligned" if B % 16 == 0 and (D is None or D % 16 == 0) else "odd"


def _tracing() -> bool:
    """A dispatch mode is active (make_fx, FakeTensorMode, an operator counter): the check's
    own operators would be traced or counted as the call's."""
    try:
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        return _get_current_dispatch_mode() is not None
    except ImportError:  # pragma: no cover - every torch this package supports has it
        return False


@contextlib.contextmanager
def _one_thread():
    """torch's CPU work on one thread. The check's tensors are tiny, and on a loaded CPU (data
    loader processes, a neighbour's job) waking a thread pool for each small operator costs ~10×
    (measured on this project's 2-core CPU at load 3: 21-47 ms a part against 78-519 ms); setting
    it per operator costs more than it saves. So the cpu backend's kernels are checked on one
    thread: their results are bitwise the same on any number (tests/test_cpu.py)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@contextlib.contextmanager
def checking():
    """The check's own state, whatever the caller's, one check at a time (the lock): autograd on,
    no autocast, one CPU thread, every kernel output poisoned (an element a kernel forgets to
    write reads as NaN, not as a stale right value), this thread's calls marked as the check's.
    The thread count and _alloc.POISON are process-wide: for those milliseconds another thread's
    CPU operators run on one thread and its kernel outputs get a fill."""
    with _LOCK:
        poison, active = _alloc.POISON, getattr(_LOCAL, "active", False)
        _alloc.POISON, _LOCAL.active = True, True
        try:
            with contextlib.ExitStack() as stack:
                for ctx in (torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False),
                            _one_thread()):  # fmt: skip
                    stack.enter_context(ctx)
                if torch.cuda.is_available():
                    stack.enter_context(torch.autocast("cuda", enabled=False))
                yield
        finally:
            _alloc.POISON, _LOCAL.active = poison, active


def _compiled_first_use(kernels, img, sim) -> None:
    """on_first_use where a compiled graph runs the kernels' custom op: the registry's backend that
    owns `kernels` (none: kernels a caller made itself, not checked here)."""
    for name, run in registry.loaded().items():
        if getattr(run, "kernels", None) is kernels:
            on_first_use(name, run, sim if sim is not None else img, None if sim is not None else img.shape[1])
            return


fused.COMPILED_FIRST_USE[0] = _compiled_first_use


def verdict(results: list[CaseResult], device: torch.device, dtype: torch.dtype) -> str | None:
    """None when every case passed, else the error message of the first failure."""
    bad = [r for r in results if not r.passed]
    if not bad:
        return None
    return failure_message(bad[0], [n for n in registry.usable(device, dtype) if n != bad[0].backend])


def record(key: tuple, message: str | None) -> None:
    """A verdict found by an explicit srem_kernels.selfcheck() (which covers the part)."""
    with _LOCK:
        _VERDICTS[key] = message


def key_of(backend: str, device: torch.device, dtype: torch.dtype, shape: str, path: str) -> tuple:
    """What a verdict stands for: a backend's part (cases.plan) on a device type."""
    return backend, device.type, dtype, shape, path


def on_first_use(backend: str, run, x: torch.Tensor, D: int | None = None, *, rows: bool = False) -> None:
    """The hook where a call has picked its backend: x its img (D its embedding size) or sim
    (D None); rows for the distributed loss (it runs the row-range kernels). Returns at once
    after the first time; raises SelfCheckError while the backend's part fails."""
    if backend not in FUSED or torch.compiler.is_compiling() or not enabled(x.device):
        return
    shape, path = shape_class(x.shape[0], D), "rows" if rows else "sim" if D is None else "embeddings"
    key = key_of(backend, x.device, x.dtype, shape, path)
    found = _VERDICTS.get(key, _UNSEEN)
    if found is None:
        return
    if found is not _UNSEEN:
        raise SelfCheckError(found)
    if getattr(_LOCAL, "active", False) or _tracing():
        return
    if x.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        if key not in _WARNED:
            _WARNED.add(key)
            warnings.warn(f"srem_kernels: the first-use self-check of backend {backend!r} ({x.dtype} on {x.device}) "
                          "is skipped while a CUDA graph is being captured; it runs at the next call outside capture. "
                          "Run srem_kernels.selfcheck() before capturing to check first.", stacklevel=3)  # fmt: skip
        return
    with _LOCK:
        if key not in _VERDICTS:
            with checking():
                results = cases.run_part(backend, run, x.device, x.dtype, shape, path, fail_fast=True)
            _VERDICTS[key] = verdict(results, x.device, x.dtype)
        found = _VERDICTS[key]
    if found is not None:
        raise SelfCheckError(found)

"""The backend registry: which implementations of the SREM loss exist, which can run here, and
which one `backend="auto"` picks.

A backend's implementation is a callable

    run(img, txt, sim, params: SREMParams, *, stats_only=False) -> (loss, per_sample, stats: dict[str, Tensor])

given either (img, txt) with sim=None or sim with img=txt=None, all inputs already validated
(their values by functional.py's one value check). The implementations live in
srem_kernels/backends/ (the fused ones behind backends/fused.py's contract); a loader imports
one only when it is first asked for, so nothing in backends/ imports this module.
`loss` is differentiable (without grad under stats_only, which skips all gradient work and is
called under torch.no_grad); `per_sample` and `stats` may be detached. The registry lists backends
fastest first: `auto` takes the first available one that runs the inputs' device and dtype.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

from srem_kernels._validate import FLOAT_DTYPES
from srem_kernels.errors import BackendUnavailable


@dataclass(frozen=True)
class Backend:
    name: str
    devices: tuple[str, ...]  # torch device types it runs on
    dtypes: tuple[torch.dtype, ...]
    loader: Callable[[], Callable]  # imports the implementation, or raises BackendUnavailable
    summary: str
    interpreted: bool = False  # Triton: also CPU tensors under TRITON_INTERPRET=1 (never chosen by auto)

    def unsupported(self, device: torch.device, dtype: torch.dtype, *, auto: bool = False) -> str | None:
        """Why this backend cannot take these inputs, or None if it can."""
        on_cpu = self.interpreted and not auto and device.type == "cpu" and _interpreting()
        if device.type not in self.devices and not on_cpu:
            return f"runs on {'/'.join(self.devices)} tensors, not {device.type}"
        if dtype not in self.dtypes:
            return f"does not take {dtype} inputs"
        return None


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str  # what it is when available, why not otherwise
    devices: tuple[str, ...]

    def __str__(self) -> str:
        mark = "yes" if self.available else "no "
        return f"{self.name:<10} {mark}  [{'/'.join(self.devices)}]  {self.reason}"


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _load_reference():
    from srem_kernels.backends import reference

    return reference.run


def _load_triton():
    try:
        import triton  # noqa: F401
    except ImportError as err:
        raise BackendUnavailable(f"triton is not installed ({err})") from None
    if not torch.cuda.is_available() and not _interpreting():
        raise BackendUnavailable("no CUDA device (TRITON_INTERPRET=1 runs the kernels on CPU tensors, for tests)")
    from srem_kernels.backends.triton import default

    return default.run


def _load_cpu():
    from srem_kernels.backends import cpu  # raises BackendUnavailable when the module was not built

    return cpu.run


def _load_cuda():
    from srem_kernels.backends import cuda  # raises BackendUnavailable without the module or a device

    return cuda.run


_FAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Fastest first: the order `auto` tries them in.
_REGISTRY: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("triton", ("cuda",), _FAST_DTYPES, _load_triton, "fused Triton kernels (streaming or materialised)",
                interpreted=True),
        Backend("cuda", ("cuda",), _FAST_DTYPES, _load_cuda, "fused CUDA C++ kernels (csrc/)"),
        Backend("cpu", ("cpu",), _FAST_DTYPES, _load_cpu, "fused multi-threaded C++ kernels (csrc/)"),
        Backend(
            "reference",
            ("cpu", "cuda"),
            FLOAT_DTYPES,
            _load_reference,
            "plain PyTorch (python_ref), materialises the B×B matrix",
        ),
    )
}


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


# name -> the loaded implementation or why it is unavailable. A plain dict, not functools.cache:
# torch.compile traces a dict lookup (guarding on it) and returns the loaded object, where it
# would trace through a cache wrapper into the loader and build the backend inside the graph.
_LOADED: dict[str, Callable | BackendUnavailable] = {}


def _load(name: str) -> Callable | BackendUnavailable:
    if name in _LOADED:
        return _LOADED[name]
    try:
        impl = _REGISTRY[name].loader()
    except BackendUnavailable as err:
        impl = err
    except ImportError as err:  # a compiled module that was not built, a missing dependency
        impl = BackendUnavailable(f"cannot be imported: {err}")
    _LOADED[name] = impl
    return impl


_load.cache_clear = _LOADED.clear  # forget the loads (tests)


def loaded() -> dict[str, Callable]:
    """The backends loaded so far that are available: name -> implementation."""
    return {name: impl for name, impl in _LOADED.items() if not isinstance(impl, BackendUnavailable)}


def backends() -> dict[str, BackendStatus]:
    """Every registered backend, whether it can run here, and why not."""
    out = {}
    for name, b in _REGISTRY.items():
        impl = _load(name)
        ok = not isinstance(impl, BackendUnavailable)
        out[name] = BackendStatus(name, ok, b.summary if ok else str(impl), b.devices)
    return out


def usable(device: torch.device, dtype: torch.dtype) -> list[str]:
    """The available backends that run these inputs, in auto's order (an error's alternatives)."""
    return [name for name, b in _REGISTRY.items()
            if not isinstance(_load(name), BackendUnavailable) and b.unsupported(device, dtype) is None]  # fmt: skip


def resolve(backend: str, device: torch.device, dtype: torch.dtype) -> tuple[str, Callable]:
    """The backend that runs a call: the named one, or for "auto" the fastest that can."""
    if backend == "auto":
        for name, b in _REGISTRY.items():
            impl = _load(name)
            if not isinstance(impl, BackendUnavailable) and b.unsupported(device, dtype, auto=True) is None:
                return name, impl
        why = "; ".join(f"{s.name}: {s.reason}" for s in backends().values())
        raise RuntimeError(f"no available backend runs {dtype} tensors on {device} ({why})")
    if not isinstance(backend, str) or backend not in _REGISTRY:
        raise ValueError(f"backend must be 'auto' or one of {', '.join(map(repr, _REGISTRY))}; got {backend!r}")
    b = _REGISTRY[backend]
    why = b.unsupported(device, dtype)
    if why is not None:
        raise ValueError(f"backend={backend!r} {why}")
    impl = _load(backend)
    if isinstance(impl, BackendUnavailable):
        raise RuntimeError(f"backend={backend!r} is not available: {impl}")
    return backend, impl

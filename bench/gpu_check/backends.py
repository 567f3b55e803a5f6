"""Which backend variants the GPU check runs, and how: through the public srem_kernels API, each
variant forced by the environment variable its backend reads at every call."""

from __future__ import annotations

import contextlib
import os

import torch

import srem_kernels

# backend -> [(variant name, environment that forces it)]
VARIANTS = {
    "triton": [("triton:streaming", {"SREM_TRITON_STRATEGY": "streaming"}),
               ("triton:materialised", {"SREM_TRITON_STRATEGY": "materialised"})],
    "cuda": [("cuda:own", {"SREM_CUDA_GEMM": "own"}), ("cuda:torch", {"SREM_CUDA_GEMM": "torch"})],
    "cpu": [("cpu", {})],
}  # fmt: skip


@contextlib.contextmanager
def forced(env: dict):
    """The variant's environment for the duration of a call, then the previous one."""
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def public(backend: str, **options):
    """A `run(img, txt, sim, params)` (tests/backend_checks.py) that calls srem_kernels.loss or
    loss_from_similarity with the params' options."""

    def run(img, txt, sim, params):
        kw = params.as_kwargs() | options
        if sim is None:
            r = srem_kernels.loss(img, txt, backend=backend, **kw)
        else:
            r = srem_kernels.loss_from_similarity(sim, backend=backend, **kw)
        return r.loss, r.per_sample, r.stats.as_dict()

    return run


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def unavailable(backend: str) -> str | None:
    """Why the backend cannot run here, or None."""
    status = srem_kernels.backends()[backend]
    return None if status.available else status.reason


def synchronize(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)

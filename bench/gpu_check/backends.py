"""Which backend variants the GPU check runs: each forced by the environment variable its backend
reads at every call (set it for a call with unittest.mock.patch.dict(os.environ, env))."""

from __future__ import annotations

import torch

import srem_kernels

# backend -> [(variant name, environment that forces it)]
VARIANTS = {
    "triton": [("triton:streaming", {"SREM_TRITON_STRATEGY": "streaming"}),
               ("triton:materialised", {"SREM_TRITON_STRATEGY": "materialised"})],
    "cuda": [("cuda:own", {"SREM_CUDA_GEMM": "own"}), ("cuda:torch", {"SREM_CUDA_GEMM": "torch"})],
    "cpu": [("cpu", {})],
}  # fmt: skip


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def unavailable(backend: str) -> str | None:
    """Why the backend cannot run here, or None."""
    status = srem_kernels.backends()[backend]
    return None if status.available else status.reason


def synchronize(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)

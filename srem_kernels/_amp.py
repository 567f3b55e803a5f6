"""Autocast stays off inside the loss. SPEC.md fixes the arithmetic — fp16/bf16 inputs accumulated
in fp32, fp32 and fp64 as given — and the kernels keep to it; an enclosing torch.autocast region
(mixed-precision training) would otherwise recast the loss's own fp32 GEMMs and reductions to 16
bits (the CPU and CUDA backends' torch.mm, the reference's every op). The inputs keep their dtype:
16-bit features from an autocast model go in as 16-bit inputs, which SPEC's tolerances cover.
"""

from __future__ import annotations

import contextlib

import torch


def off(device: torch.device):
    """A context with autocast disabled for `device`'s type (nothing to do for other types, or
    where autocast is off already: entering and leaving torch.autocast costs ~25 µs a call)."""
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return _NOTHING


_NOTHING = contextlib.nullcontext()  # reusable: it holds no state

"""Output allocation for the fused backends: every buffer a kernel writes comes from `empty`.

Tests switch POISON on (tests/conftest.py), so an element a kernel forgets to write reads as NaN
(or -1 for integer buffers) instead of passing by luck with whatever memory held.
"""

from __future__ import annotations

import torch

POISON = False


def empty(shape, *, dtype: torch.dtype, device) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    if POISON:
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out


def workspace(layout: dict, *, device) -> dict:
    """{name: tensor} for layout {name: (shape, dtype)}: views into one buffer per dtype, so a
    call's outputs cost one allocation per dtype (and one poisoning fill in tests), not one each.
    Each view is contiguous and aligned to 16 elements."""
    by_dtype: dict = {}
    for name, (shape, dtype) in layout.items():
        by_dtype.setdefault(dtype, []).append((name, tuple(shape)))
    out = {}
    for dtype, items in by_dtype.items():
        sizes = [max(1, _numel(shape)) for _, shape in items]
        starts, total = [], 0
        for n in sizes:
            starts.append(total)
            total += -(-n // 16) * 16
        buf = empty((total,), dtype=dtype, device=device)
        for (name, shape), at, n in zip(items, starts, sizes):
            out[name] = buf[at : at + _numel(shape)].view(shape)
    return {name: out[name] for name in layout}


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n

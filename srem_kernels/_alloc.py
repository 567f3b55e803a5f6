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

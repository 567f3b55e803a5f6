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
    """{name: tensor} for layout {name: (shape, dtype)}: views into one buffer per (dtype, shape),
    so a call's outputs cost one allocation (and one poisoning fill in tests) per kind of output,
    not one each. Each view is contiguous; views of one buffer come from one unbind (cheap)."""
    groups: dict = {}
    for name, (shape, dtype) in layout.items():
        groups.setdefault((dtype, tuple(shape)), []).append(name)
    out = {}
    for (dtype, shape), names in groups.items():
        buf = empty((len(names), *shape), dtype=dtype, device=device)
        out.update(zip(names, buf.unbind(0)))
    return {name: out[name] for name in layout}

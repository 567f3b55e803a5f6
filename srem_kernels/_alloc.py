"""Output allocation for the fused backends: every buffer a kernel writes comes from `empty`.

Tests switch POISON on (tests/conftest.py), so an element a kernel forgets to write reads as NaN
(or -1 for integer buffers) instead of passing by luck with whatever memory held.
"""

from __future__ import annotations

from collections.abc import Mapping

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


class Rows(Mapping):
    """Named tensors that are rows of a few buffers, and whole buffers beside them (a saved S):
    `where` maps each name to (buffer index, row) or (buffer index, None) for a whole buffer.
    A row's tensor (a view) is made when it is first read: a backend that hands its kernels
    pointers (`ptrs`; contiguous rows), a Function that saves the buffers for backward
    (`buffers`, and Rows(where, buffers) again there) and a result whose statistics nobody reads
    make no tensor per name (each ~1-2 µs in a call on this project's CPU; 24 such outputs a cpu call). Rows of
    one buffer share its version counter, so saving the buffers still catches an output changed
    in place before backward."""

    __slots__ = ("where", "buffers", "_made", "_addr")

    def __init__(self, where: dict, buffers):
        self.where, self.buffers, self._made, self._addr = where, tuple(buffers), {}, None

    def __getitem__(self, name: str) -> torch.Tensor:
        t = self._made.get(name)
        if t is None:
            b, row = self.where[name]
            t = self.buffers[b] if row is None else self.buffers[b][row]
            self._made[name] = t
        return t

    def ptrs(self, names) -> list[int]:
        """The addresses of the entries `names` (one call for a kernel's many pointer arguments)."""
        if self._addr is None:  # (base address, bytes per row) of each buffer
            self._addr = [(t.data_ptr(), t.stride(0) * t.element_size() if t.dim() else 0) for t in self.buffers]
        addr, where = self._addr, self.where
        return [addr[b][0] + (0 if row is None else row * addr[b][1]) for b, row in map(where.__getitem__, names)]

    @classmethod
    def of(cls, entries) -> "Rows":
        """`entries` (a mapping name -> tensor) as Rows, each a whole (contiguous) buffer; Rows as is."""
        if isinstance(entries, Rows):
            return entries
        names = list(entries)
        return cls({k: (n, None) for n, k in enumerate(names)}, [entries[k].contiguous() for k in names])

    def only(self, names: tuple) -> "Rows":
        """These entries alone, holding only the buffers they are in (what a result keeps need not
        keep a saved S alive)."""
        used = sorted({self.where[k][0] for k in names})
        where = {k: (used.index(self.where[k][0]), self.where[k][1]) for k in names}
        return Rows(where, [self.buffers[b] for b in used])

    def __or__(self, other) -> dict:
        return dict(self) | dict(other)

    def __iter__(self):
        return iter(self.where)

    def __len__(self) -> int:
        return len(self.where)

    def __contains__(self, name) -> bool:
        return name in self.where


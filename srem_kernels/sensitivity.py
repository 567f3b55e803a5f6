"""How the swapped classification entropy enters the loss: the `sensitivity` option (D).

SPEC.md's `sce` B-vector (from the kernels) is turned here into what the glue uses, and nothing
else: the weight w on the hinge, a per-sample margin m (or None: the given margin), and a factor
f on the clean weight (or None). The glue then forms

    L_i = lambda_hard * (c_i f_i) * w_i * L_hard_i(m_i) + lambda_cbcl * L_cbcl_i

with w, m, f constants in the gradient (as SPEC's w). Modes (docs/design.md):

    "weight"  w = exp(-sce), SPEC.md's sensitivity weight (the default)
    "margin"  w = 1, m = margin * exp(-sce): NCR-style soft margin, a sensitive pair's hinge
              asks for less separation instead of counting less
    "clean"   w = 1, f = SPEC's two-component GMM filtration applied to the batch's sce: the
              selection drops the pairs of the high-sce component (f = 0), keeps the rest (1)
    "rank"    w = 2 (B - r) / (B + 1), r the 0-based rank of sce_i in the batch's sce,
              ascending, ties averaged: the least sensitive pair gets 2B/(B+1), the most
              2/(B+1), and the weights average exactly 1 (exp(-sce)'s order, not its scale)
    None      the term is off (sce_weight=False): w = 1

"clean" and "rank" depend on the whole batch's sce: a rank of a distributed batch passes the
global batch's vector as `batch_sce` and its first row `lo` (srem_kernels/distributed.py).
Pure B-vector torch: no host reads, traceable by torch.compile.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from python_ref.filtration import gmm_filtration

MODES = ("weight", "margin", "clean", "rank")
BATCH_MODES = ("clean", "rank")  # need every sample's sce, not only this call's rows


class Terms(NamedTuple):
    weight: torch.Tensor  # w, a B-vector
    margin: torch.Tensor | None  # m, a B-vector, or None: the margin as given
    clean_factor: torch.Tensor | None  # f on the clean weight, a B-vector, or None: 1


def rank_weight(sce: torch.Tensor) -> torch.Tensor:
    """2 (B - r_i) / (B + 1) with r_i the average 0-based ascending rank of sce_i (mean exactly 1)."""
    B = sce.shape[0]
    ordered = torch.sort(sce).values
    below = torch.searchsorted(ordered, sce, right=False)  # how many are smaller
    upto = torch.searchsorted(ordered, sce, right=True)  # how many are smaller or equal
    r = (below + upto - 1).to(sce.dtype) / 2
    return 2 * (B - r) / (B + 1)


def terms(sce: torch.Tensor, mode: str | None, margin, *, batch_sce: torch.Tensor | None = None, lo: int = 0,
          gmm=gmm_filtration) -> Terms:  # fmt: skip
    """(w, m, f) of `mode` from this call's sce rows; `margin` a float or a B-vector in sce's
    dtype; `batch_sce` the whole batch's sce when `sce` is its rows lo.. (default: sce itself);
    `gmm` SPEC's filtration of a vector (the fused path passes its own routine, glue.py's)."""
    if mode is None:
        return Terms(torch.ones_like(sce), None, None)
    if mode == "weight":
        return Terms(torch.exp(-sce), None, None)
    if mode == "margin":
        return Terms(torch.ones_like(sce), margin * torch.exp(-sce), None)
    whole = sce if batch_sce is None else batch_sce
    mine = slice(lo, lo + sce.shape[0])
    if mode == "clean":
        return Terms(torch.ones_like(sce), None, gmm(whole)[mine].to(sce.dtype))
    if mode == "rank":
        return Terms(rank_weight(whole)[mine], None, None)
    raise ValueError(f"sensitivity must be one of {', '.join(map(repr, MODES))}; got {mode!r}")

"""The functional API: srem_kernels.loss and srem_kernels.loss_from_similarity."""

from __future__ import annotations

import torch

from srem_kernels import registry
from srem_kernels._validate import _flag, check_embeddings, check_params, check_similarity
from srem_kernels.result import SREMResult, SREMStats


def _call(run, img, txt, sim, params, stats_only: bool):
    if not _flag(stats_only, "stats_only"):
        return run(img, txt, sim, params)
    with torch.no_grad():
        return run(img, txt, sim, params, stats_only=True)


def _finish(name: str, out) -> SREMResult:
    loss, per_sample, stats = out
    return SREMResult(loss=loss, per_sample=per_sample.detach(), stats=SREMStats(**stats), backend=name)


def loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    *,
    tau: float = 0.05,
    margin: float | torch.Tensor = 0.2,
    lambda_hard: float = 1.0,
    lambda_cbcl: float = 1.0,
    bias: bool = True,
    sce_weight: bool = True,
    clean: torch.Tensor | None = None,
    select: str = "gmm",
    eps: float = 1e-10,
    reduction: str = "mean",
    backend: str = "auto",
    check_finite: bool = True,
    stats_only: bool = False,
) -> SREMResult:
    """The SREM loss (SPEC.md) of B paired embeddings img[i] ↔ txt[i], both B×D.

    Embeddings are used as given (normalise them first, VSE∞/CLIP style). `margin` is a float or
    a (B,) tensor; `clean` optional (B,) weights in [0, 1] that replace the in-batch filtration
    chosen by `select` ("gmm" or "none"). `reduction` is "mean", "sum" or "none" (the B-vector).
    `backend` is "auto" or a name from srem_kernels.backends(). `check_finite=False` skips the
    NaN/Inf scan of the inputs (one device sync per tensor). `stats_only=True` is the forward-only
    statistics call (scoring a training set batch by batch): no gradient work, `.loss` without grad.
    Returns an SREMResult: .loss (differentiable), .per_sample (L_i), .stats (SREMStats).
    """
    B, _ = check_embeddings(img, txt, check_finite)
    params = check_params(
        B, img.device, tau=tau, margin=margin, lambda_hard=lambda_hard, lambda_cbcl=lambda_cbcl, bias=bias,
        sce_weight=sce_weight, clean=clean, select=select, eps=eps, reduction=reduction, check_finite=check_finite,
    )  # fmt: skip
    name, run = registry.resolve(backend, img.device, img.dtype)
    return _finish(name, _call(run, img, txt, None, params, stats_only))


def loss_from_similarity(
    sim: torch.Tensor,
    *,
    tau: float = 0.05,
    margin: float | torch.Tensor = 0.2,
    lambda_hard: float = 1.0,
    lambda_cbcl: float = 1.0,
    bias: bool = True,
    sce_weight: bool = True,
    clean: torch.Tensor | None = None,
    select: str = "gmm",
    eps: float = 1e-10,
    reduction: str = "mean",
    backend: str = "auto",
    check_finite: bool = True,
    stats_only: bool = False,
) -> SREMResult:
    """The SREM loss from a precomputed B×B similarity matrix, sim[i, j] = s(image i, text j),
    for models whose similarity is not a dot product (e.g. SGRAF). Parameters as in `loss`."""
    B = check_similarity(sim, check_finite)
    params = check_params(
        B, sim.device, tau=tau, margin=margin, lambda_hard=lambda_hard, lambda_cbcl=lambda_cbcl, bias=bias,
        sce_weight=sce_weight, clean=clean, select=select, eps=eps, reduction=reduction, check_finite=check_finite,
    )  # fmt: skip
    name, run = registry.resolve(backend, sim.device, sim.dtype)
    return _finish(name, _call(run, None, None, sim, params, stats_only))

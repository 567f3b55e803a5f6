"""The functional API: srem_kernels.loss and srem_kernels.loss_from_similarity."""

from __future__ import annotations

import torch

from srem_kernels import _amp, distributed, registry
from srem_kernels.backends import fused, glue
from srem_kernels._validate import _flag, check_embeddings, check_params, check_similarity
from srem_kernels.result import SREMResult, SREMStats
from srem_kernels.selfcheck import auto as selfcheck


def _compute(img, txt, sim, B: int, *, backend, check_finite, stats_only, **options) -> SREMResult:
    """Shared by both entry points once the input tensors' shapes are checked: the options, the
    backend, the value checks (one routine, at most one host read), the call (under no_grad for
    the statistics call) and the result."""
    x = sim if sim is not None else img
    check_finite = _flag(check_finite, "check_finite")
    params = check_params(B, x.device, **options)
    stats_only = _flag(stats_only, "stats_only")
    name, run = registry.resolve(backend, x.device, x.dtype)
    selfcheck.on_first_use(name, run, x, None if sim is not None else img.shape[1])  # docs/selfcheck.md
    if check_finite:
        glue.check_values(img=img, txt=txt, sim=sim, margin=params.margin, clean=params.clean,
                          tau=params.tau if isinstance(params.tau, torch.Tensor) else None,
                          impl=fused.glue_impl(getattr(run, "kernels", None), x.device))
    with _amp.off(x.device):  # SPEC's precision, not an enclosing autocast region's
        if stats_only:
            with torch.no_grad():
                loss, per_sample, stats = run(img, txt, sim, params, stats_only=True)
        else:
            loss, per_sample, stats = run(img, txt, sim, params)
    strategy_for = getattr(getattr(run, "kernels", None), "strategy_for", None)
    strategy = strategy_for(B, img.shape[1], img.dtype, img.device) if strategy_for and sim is None else None
    return SREMResult(loss=loss, per_sample=per_sample.detach(), stats=_stats(stats), backend=name, strategy=strategy)


def _stats(stats) -> SREMStats:
    """The result's statistics: each left to the backend's mapping until read (SREMStats.of), or
    made at once in a traced call (torch.compile)."""
    return SREMStats(**stats) if torch.compiler.is_compiling() else SREMStats.of(stats)


def loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    *,
    tau: float | torch.Tensor = 0.05,
    margin: float | torch.Tensor = 0.2,
    lambda_hard: float = 1.0,
    lambda_cbcl: float = 1.0,
    bias: bool = True,
    sce_weight: bool = True,
    sensitivity: str = "weight",
    clean: torch.Tensor | None = None,
    select: str = "gmm",
    eps: float = 1e-10,
    reduction: str = "mean",
    backend: str = "auto",
    check_finite: bool = True,
    stats_only: bool = False,
    group=None,
) -> SREMResult:
    """The SREM loss (SPEC.md) of B paired embeddings img[i] ↔ txt[i], both B×D.

    Embeddings are used as given (normalise them first, VSE∞/CLIP style). `margin` is a float or
    a (B,) tensor; `clean` optional (B,) weights in [0, 1] that replace the in-batch filtration
    chosen by `select` ("gmm" or "none"). `sensitivity` says how sce enters the hinge: "weight"
    (SPEC's w = exp(-sce)), "margin", "clean" or "rank" (srem_kernels/sensitivity.py, docs/design.md);
    sce_weight=False turns it off. `reduction` is "mean", "sum" or "none" (the B-vector).
    `backend` is "auto" or a name from srem_kernels.backends(). `check_finite=True` checks the
    values of img, txt (or sim), a margin vector and `clean` (NaN/Inf; clean in [0, 1]) in one
    routine with at most one host read (a device sync); `check_finite=False` skips every value
    check, clean's range included (then NaN inputs give NaN results). `stats_only=True` is the forward-only
    statistics call (scoring a training set batch by batch): no gradient work, `.loss` without grad.
    Returns an SREMResult: .loss (differentiable), .per_sample (L_i), .stats (SREMStats).

    `group`: a torch.distributed process group (e.g. torch.distributed.group.WORLD). Each rank
    passes its own rows (sizes may differ); the loss is that of the global batch, their
    concatenation in rank order. `.loss` ("mean"/"sum") is the global loss on every rank,
    `.per_sample`/`.stats`/a "none" loss are the local rows' (indices into the global batch);
    margin and clean are the local rows'. Every rank must make the call and run the backward
    (collectives inside). Under DistributedDataParallel backward `loss * world_size`
    (srem_kernels/distributed.py, docs/distributed.md).
    """
    if group is not None:
        name, total, per_sample, stats = distributed.loss(
            img, txt, group=group, tau=tau, margin=margin, lambda_hard=lambda_hard, lambda_cbcl=lambda_cbcl,
            bias=bias, sce_weight=sce_weight, sensitivity=sensitivity, clean=clean, select=select, eps=eps,
            reduction=reduction, backend=backend, check_finite=check_finite, stats_only=stats_only,
        )  # fmt: skip
        return SREMResult(loss=total, per_sample=per_sample.detach(), stats=_stats(stats), backend=name)
    B, _ = check_embeddings(img, txt)  # their values: _compute, in one routine
    return _compute(
        img, txt, None, B, tau=tau, margin=margin, lambda_hard=lambda_hard, lambda_cbcl=lambda_cbcl, bias=bias,
        sce_weight=sce_weight, sensitivity=sensitivity, clean=clean, select=select, eps=eps, reduction=reduction,
        backend=backend, check_finite=check_finite, stats_only=stats_only,
    )  # fmt: skip


def loss_from_similarity(
    sim: torch.Tensor,
    *,
    tau: float | torch.Tensor = 0.05,
    margin: float | torch.Tensor = 0.2,
    lambda_hard: float = 1.0,
    lambda_cbcl: float = 1.0,
    bias: bool = True,
    sce_weight: bool = True,
    sensitivity: str = "weight",
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
    B = check_similarity(sim)  # its values: _compute, in one routine
    return _compute(
        None, None, sim, B, tau=tau, margin=margin, lambda_hard=lambda_hard, lambda_cbcl=lambda_cbcl, bias=bias,
        sce_weight=sce_weight, sensitivity=sensitivity, clean=clean, select=select, eps=eps, reduction=reduction,
        backend=backend, check_finite=check_finite, stats_only=stats_only,
    )  # fmt: skip

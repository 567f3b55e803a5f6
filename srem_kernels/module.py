"""SREMLoss: the nn.Module wrapper of srem_kernels.loss."""

from __future__ import annotations

import torch
from torch import nn

from srem_kernels import functional as F
from srem_kernels._validate import check_margin, check_options
from srem_kernels.result import SREMResult


class SREMLoss(nn.Module):
    """nn.Module form of srem_kernels.loss, with the same keyword parameters.

    The options are checked here, at construction. `forward(img, txt, clean=None, margin=None)`
    takes the per-batch tensors: optional (B,) clean weights, and a margin that overrides the
    constructor's (NCR's per-sample soft margin). It returns an SREMResult; train on `.loss`.
    forward(..., stats_only=True) is the forward-only statistics call (see srem_kernels.loss).
    `group` makes it the loss of a global batch split across the ranks (srem_kernels.loss).
    """

    def __init__(
        self,
        *,
        tau: float = 0.05,
        margin: float | torch.Tensor = 0.2,
        lambda_hard: float = 1.0,
        lambda_cbcl: float = 1.0,
        bias: bool = True,
        sce_weight: bool = True,
        sensitivity: str = "weight",
        select: str = "gmm",
        eps: float = 1e-10,
        reduction: str = "mean",
        backend: str = "auto",
        check_finite: bool = True,
        group=None,
    ):
        super().__init__()
        self.options = check_options(
            tau=tau, lambda_hard=lambda_hard, lambda_cbcl=lambda_cbcl, bias=bias,
            sce_weight=sce_weight, sensitivity=sensitivity, select=select, eps=eps, reduction=reduction,
        )  # fmt: skip
        self.margin = check_margin(margin)
        self.backend = backend
        self.check_finite = check_finite
        self.group = group  # a torch.distributed group: the loss of the ranks' global batch

    def forward(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        clean: torch.Tensor | None = None,
        margin: float | torch.Tensor | None = None,
        stats_only: bool = False,
    ) -> SREMResult:
        return F.loss(
            img, txt, margin=self.margin if margin is None else margin, clean=clean, stats_only=stats_only,
            backend=self.backend, check_finite=self.check_finite, group=self.group, **self.options,
        )  # fmt: skip

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        margin = "tensor" if isinstance(self.margin, torch.Tensor) else self.margin
        return f"{opts}, margin={margin}, backend={self.backend!r}"

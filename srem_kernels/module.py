"""SREMLoss: the nn.Module wrapper of srem_kernels.loss."""

from __future__ import annotations

import torch
from torch import nn

from srem_kernels import functional as F
from srem_kernels._validate import check_margin, check_options
from srem_kernels.result import SREMResult


class SREMLoss(nn.Module):
    """nn.Module form of srem_kernels.loss, with the same keyword parameters.

    The options are checked here, at construction. `forward(img, txt, clean=None, margin=None,
    tau=None)` takes the per-batch tensors: optional (B,) clean weights, a margin that overrides
    the constructor's (NCR's per-sample soft margin), and a tau that overrides the constructor's
    (a 0-d tensor, e.g. 1 / model.logit_scale.exp(): a temperature the model learns). It returns
    an SREMResult; train on `.loss`.

    `tau` at construction is a float, or a 0-d tensor the module then holds: an nn.Parameter is
    registered as the module's parameter (the loss owns a learnable temperature: give the
    optimizer criterion.parameters() too), any other tensor as a buffer (it moves with .to()).
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
        tau = self.options.pop("tau")
        if isinstance(tau, nn.Parameter):
            self.tau = tau  # registered: criterion.parameters() holds it
        elif isinstance(tau, torch.Tensor):
            self.register_buffer("tau", tau)
        else:
            self.tau = tau
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
        tau: float | torch.Tensor | None = None,
    ) -> SREMResult:
        return F.loss(
            img, txt, margin=self.margin if margin is None else margin, clean=clean, stats_only=stats_only,
            tau=self.tau if tau is None else tau, backend=self.backend, check_finite=self.check_finite,
            group=self.group, **self.options,
        )  # fmt: skip

    def extra_repr(self) -> str:
        tau = f"tensor({self.tau.item():g})" if isinstance(self.tau, torch.Tensor) else repr(self.tau)
        opts = ", ".join([f"tau={tau}"] + [f"{k}={v!r}" for k, v in self.options.items()])
        margin = "tensor" if isinstance(self.margin, torch.Tensor) else self.margin
        return f"{opts}, margin={margin}, backend={self.backend!r}"

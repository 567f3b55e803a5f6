"""SREM as a drop-in for open_clip's loss: `SREMClipLoss` (docs/open_clip.md).

open_clip (open_clip_torch 3.x, `open_clip_train/train.py`) calls its loss inside the autocast
block as `losses = loss(**model_out, output_dict=True)`, with `model_out` holding image_features,
text_features, logit_scale (already exp()'d, fp32, requires grad) and, for SigLIP models,
logit_bias; it then trains on `sum(losses.values())` and logs each entry. SREMClipLoss takes
ClipLoss's constructor and forward signatures; its temperature is tau = 1 / logit_scale,
differentiably (SPEC.md's dL/dtau). This module does not import open_clip.

With SPEC's defaults the loss is exactly `srem_kernels.loss(image_features, text_features,
tau=1 / logit_scale)`. Beyond ClipLoss's arguments:
  warmup_steps   SREM's warm-up, counted in optimizer steps: the complementary term alone
                 (lambda_hard = 0, no selection) for the first warmup_steps steps; default 0.
  accum_freq     open_clip's --accum-freq: its loss calls per optimizer step (the warm-up counts
                 training calls, with grad enabled, and divides by it).
  the rest       srem_kernels.loss's options (margin, lambda_hard, lambda_cbcl, bias, sce_weight,
                 sensitivity, select, eps, backend, check_finite).

The returned dict ("hinge_loss", "complementary_loss") holds loss terms only, since open_clip sums
every value: their sum is the loss (to one rounding), whose gradient flows through
complementary_loss (hinge_loss is its figure, detached). The last call's statistics — clean
share, mean weight, the GMM's means — are `last_stats`.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

import srem_kernels
from python_ref.filtration import gmm_fit
from srem_kernels._validate import check_options

KEYS = ("hinge_loss", "complementary_loss")


class _SumGradOverRanks(torch.autograd.Function):
    """Identity; backward sums the gradient over the ranks. The group path gives each rank its
    rows' share of dL/dtau; ClipLoss computes the whole global logits matrix on every rank, so
    logit_scale's gradient there is the whole one on every rank: this makes SREM's the same."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        g = g.clone()
        torch.distributed.all_reduce(g, group=ctx.group)
        return g, None


class _ScaleGrad(torch.autograd.Function):
    """Identity; backward multiplies the gradient by `factor` (gather_with_grad: world_size)."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.factor, None


class _Cancels(torch.autograd.Function):
    """logit_bias's exact contribution to the loss: 0, with a zero gradient (a constant added to
    every logit cancels in both softmaxes, in the hinge's differences of similarities and in the
    GMM of energies shifted alike). Returned, not dropped, so that DistributedDataParallel sees
    the parameter take part in the loss."""

    @staticmethod
    def forward(ctx, bias):
        ctx.like = bias
        return bias.new_zeros(())

    @staticmethod
    def backward(ctx, g):
        return torch.zeros_like(ctx.like)


class SREMClipStats:
    """What a call saw (detached; rows of this rank under world_size > 1), each formed when first
    read (no cost to a step that does not log it): clean_share (mean c), mean_weight (mean w),
    tau, the loss terms, and gmm_means — the two means of SPEC's GMM refitted on the call's
    energies (under world_size > 1 on this rank's rows, where the loss fitted the global batch's)."""

    def __init__(self, result: srem_kernels.SREMResult, tau, terms: dict):
        self.result = result
        self._tau = tau
        self.terms = {k: v.detach() for k, v in terms.items()}
        self._means = None

    @property
    def clean_share(self) -> torch.Tensor:
        return self.result.stats.clean.mean()

    @property
    def mean_weight(self) -> torch.Tensor:
        return self.result.stats.weight.mean()

    @property
    def tau(self) -> torch.Tensor:
        return self._tau.detach() if isinstance(self._tau, torch.Tensor) else torch.tensor(self._tau)

    @property
    def gmm_means(self) -> torch.Tensor:
        """(lower, upper) mean of the two-component GMM over the call's energies."""
        if self._means is None:
            self._means = gmm_fit(self.result.stats.energy.double())[1].sort().values
        return self._means

    def as_dict(self) -> dict[str, torch.Tensor]:
        m = self.gmm_means
        return {"clean_share": self.clean_share, "mean_weight": self.mean_weight, "tau": self.tau,
                "gmm_mean_low": m[0], "gmm_mean_high": m[1], **self.terms}  # fmt: skip


class SREMClipLoss(nn.Module):
    """open_clip's ClipLoss contract with the SREM loss (module docstring; docs/open_clip.md).

    world_size > 1: one global batch over torch.distributed's default group (srem_kernels.loss's
    group= path: exact, each rank computes and gets the gradients of its own rows). `local_loss`
    changes nothing (SREM's value is the global batch's loss on every rank; its cost is already
    each rank's rows only). `gather_with_grad` sets the features' gradient scale as it does
    ClipLoss's: True, DDP's average of the ranks' gradients is the global loss's (each rank's
    features get world_size × their rows' gradient); False, it is 1 / world_size of it. The
    temperature's gradient is, in both, the whole global one on every rank, as ClipLoss's
    logit_scale gets. `cache_labels` and `use_horovod` are accepted and ignored (SREM has no
    labels; open_clip's main branch dropped horovod).
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False, cache_labels: bool = False,
                 rank: int = 0, world_size: int = 1, use_horovod: bool = False, *, warmup_steps: int = 0,
                 accum_freq: int = 1, margin: float = 0.2, lambda_hard: float = 1.0, lambda_cbcl: float = 1.0,
                 bias: bool = True, sce_weight: bool = True, sensitivity: str = "weight", select: str = "gmm",
                 eps: float = 1e-10, backend: str = "auto", check_finite: bool = True):  # fmt: skip
        super().__init__()
        for name, v in (("warmup_steps", warmup_steps), ("rank", rank)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
                raise ValueError(f"{name} must be an integer ≥ 0, got {v!r}")
        for name, v in (("accum_freq", accum_freq), ("world_size", world_size)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name} must be an integer ≥ 1, got {v!r}")
        if rank >= world_size:
            raise ValueError(f"rank must be < world_size, got rank={rank}, world_size={world_size}")
        self.options = check_options(tau=0.05, lambda_hard=lambda_hard, lambda_cbcl=lambda_cbcl, bias=bias,
                                     sce_weight=sce_weight, sensitivity=sensitivity, select=select, eps=eps,
                                     reduction="mean")  # fmt: skip
        del self.options["tau"], self.options["reduction"]  # tau: 1 / logit_scale; open_clip sums scalars
        self.margin, self.backend, self.check_finite = margin, backend, check_finite
        self.local_loss, self.gather_with_grad, self.cache_labels = local_loss, gather_with_grad, cache_labels
        self.rank, self.world_size = int(rank), int(world_size)
        self.warmup_steps, self.accum_freq = int(warmup_steps), int(accum_freq)
        self.calls = 0  # training calls (grad enabled) so far: the warm-up's clock
        self.last_stats: SREMClipStats | None = None

    # ------------------------------------------------------------------ the warm-up's clock

    @property
    def step(self) -> int:
        """Optimizer steps taken so far, as the warm-up counts them."""
        return self.calls // self.accum_freq

    def set_step(self, step: int) -> None:
        """Set the clock, e.g. to start_epoch · steps_per_epoch when a run resumes (open_clip does
        not checkpoint the loss)."""
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"step must be an integer ≥ 0, got {step!r}")
        self.calls = int(step) * self.accum_freq

    def warming_up(self) -> bool:
        return self.step < self.warmup_steps

    # ------------------------------------------------------------------ the loss

    def _group(self):
        if self.world_size == 1:
            return None
        dist = torch.distributed
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(f"SREMClipLoss(world_size={self.world_size}) needs an initialised torch.distributed "
                               "process group (open_clip's init_distributed_device)")  # fmt: skip
        if dist.get_world_size() != self.world_size or dist.get_rank() != self.rank:
            raise ValueError(f"SREMClipLoss(rank={self.rank}, world_size={self.world_size}) does not match the "
                             f"process group (rank {dist.get_rank()} of {dist.get_world_size()})")  # fmt: skip
        return dist.group.WORLD

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale,
                logit_bias: torch.Tensor | None = None, output_dict: bool = False):  # fmt: skip
        img, txt = _features(image_features, "image_features"), _features(text_features, "text_features")
        tau = _temperature(logit_scale)
        if img.dtype != txt.dtype:  # two towers of different precision: both as the wider
            common = torch.promote_types(img.dtype, txt.dtype)
            img, txt = img.to(common), txt.to(common)
        warm = self.warming_up()  # this call's step, before the clock counts it
        if self.training and torch.is_grad_enabled():
            self.calls += 1
        opts = dict(self.options)
        if warm:
            opts.update(lambda_hard=0.0, select="none")
        group = self._group()
        if group is not None:
            if isinstance(tau, torch.Tensor) and tau.requires_grad:
                tau = _SumGradOverRanks.apply(tau, group)
            if self.gather_with_grad:
                img, txt = _ScaleGrad.apply(img, self.world_size), _ScaleGrad.apply(txt, self.world_size)
        out = srem_kernels.loss(img, txt, tau=tau, margin=self.margin, backend=self.backend,
                                check_finite=self.check_finite, group=group, **opts)  # fmt: skip
        loss = out.loss if logit_bias is None else out.loss + _Cancels.apply(logit_bias)  # + 0: the same bits
        terms = self._terms(out, loss, opts, group)
        self.last_stats = SREMClipStats(out, tau, terms)
        return terms if output_dict else loss

    def _terms(self, out, loss, opts: dict, group) -> dict[str, torch.Tensor]:
        """{"hinge_loss": λ_hard·mean(c·w·L_hard) (detached), "complementary_loss": the loss minus
        it}: their sum is the loss, and so is its gradient (through the second)."""
        s = out.stats
        total = (opts["lambda_hard"] * s.clean * s.weight * s.loss_hard).sum().to(torch.float64)
        if group is None:
            hinge = total / s.loss_hard.shape[0]
        else:  # the global batch's mean: one all-reduce of two numbers (no host copy: a fill)
            part = torch.stack([total, total.new_full((), s.loss_hard.shape[0])])
            torch.distributed.all_reduce(part, group=group)
            hinge = part[0] / part[1]
        hinge = hinge.to(loss.dtype)
        return {"hinge_loss": hinge, "complementary_loss": loss - hinge}

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return (f"world_size={self.world_size}, gather_with_grad={self.gather_with_grad}, "
                f"warmup_steps={self.warmup_steps}, accum_freq={self.accum_freq}, margin={self.margin}, {opts}")  # fmt: skip


def _features(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a B×D tensor (one row per pair), got {shape}")
    return x


def _temperature(logit_scale):
    """tau = 1 / logit_scale, differentiably: a 0-d tensor (a 1-element one is flattened), or a float."""
    if isinstance(logit_scale, torch.Tensor):
        if logit_scale.numel() != 1:
            raise ValueError(f"logit_scale must hold one value (open_clip's exp()'d scale), got shape "
                             f"{tuple(logit_scale.shape)}")  # fmt: skip
        return 1 / logit_scale.reshape(())
    if isinstance(logit_scale, bool) or not isinstance(logit_scale, numbers.Real) or not logit_scale > 0 \
            or not math.isfinite(logit_scale):  # fmt: skip
        raise ValueError(f"logit_scale must be a finite number > 0 or a tensor, got {logit_scale!r}")
    return 1.0 / float(logit_scale)

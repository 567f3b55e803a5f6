"""The glue every fused backend shares: what its kernels compute, and everything else.

A fused backend (triton, cuda, cpu) supplies a `Kernels` object with two methods that do all the
B×B work; this module turns them into a backend `run` with autograd. Everything that is only
B-vectors — the energies, the GMM filtration, the weights, the hinge, the reduction — happens
here, once, for every backend.

forward(img, txt, sim, *, tau, eps, bias) -> dict of B-vectors, from (img, txt) or from sim:
    lse_r, lse_c            log-sum-exp of the rows / columns of Z = S / tau
    pos                     S_ii
    ce_i2t, ce_t2i, entropy_i2t, entropy_t2i, sce
    hard_i2t, hard_i2t_index, hard_t2i, hard_t2i_index   (indices int64, ties: lowest index)
    loss_cbcl               L_cbcl_i
    A_r, A_c                A_r[i] = sum_{j≠i} b_ij Pr_ij / (1 - Pr_ij + eps), b_ij = 1 - Pc_ij
                            A_c[j] = sum_{i≠j} b'_ij Pc_ij / (1 - Pc_ij + eps), b'_ij = 1 - Pr_ij
                            (b = b' = 1 with bias=False)
  in the accumulation dtype (fp32, or fp64 where a backend takes fp64 inputs). The dict may hold
  more entries of the backend's own (split forms such as m_r, logl_r); it comes back whole as
  `saved` in backward.

backward(img, txt, sim, saved, *, tau, eps, bias, g_cbcl, k_r, k_c) -> (d_img, d_txt), or d_sim
  with `saved` the forward's dict and dL/dS formed tile by tile as
    dS_ij = ( g_cbcl_i (E_r_ij - Pr_ij A_r_i) + g_cbcl_j (E_c_ij - Pc_ij A_c_j) ) / tau
            - (k_r_i + k_c_i) [i = j] + k_r_i [j = hard_i2t_index_i] + k_c_j [i = hard_t2i_index_j]
    E_r_ij = b_ij Pr_ij / (1 - Pr_ij + eps) [i≠j],   E_c_ij = b'_ij Pc_ij / (1 - Pc_ij + eps) [i≠j]
  then d_img = dS · txt and d_txt = dSᵀ · img (or d_sim = dS), in the inputs' dtype.
  g_cbcl, k_r, k_c are B-vectors: the upstream gradient of L_i times lambda_cbcl, and times
  lambda_hard c_i w_i where the i2t / t2i hinge of sample i is active (else 0).

tests/dense_kernels.py executes this contract densely, in the cancellation-free forms an fp32
kernel needs to meet SPEC.md's 1e-5 (README, "Numerics").
"""

from __future__ import annotations

from typing import Protocol

import torch

from python_ref.filtration import clean_weights
from python_ref.srem import STATISTICS
from srem_kernels._validate import SREMParams

# The glue computes these statistics; the kernels' forward returns the others as they are.
GLUE_STATISTICS = ("energy_i2t", "energy_t2i", "energy", "weight", "clean", "loss_hard")
KERNEL_STATISTICS = tuple(k for k in STATISTICS if k not in GLUE_STATISTICS)


class Kernels(Protocol):
    def forward(self, img, txt, sim, *, tau: float, eps: float, bias: bool) -> dict[str, torch.Tensor]: ...

    def backward(self, img, txt, sim, saved, *, tau, eps, bias, g_cbcl, k_r, k_c): ...


class _FusedSREM(torch.autograd.Function):
    """per_sample L_i, differentiable; fills `out` with the B-vectors it came from (constants)."""

    @staticmethod
    def forward(ctx, img, txt, sim, kernels: Kernels, params: SREMParams, out: dict):
        saved = kernels.forward(img, txt, sim, tau=params.tau, eps=params.eps, bias=params.bias)
        energy = -params.tau * (saved["lse_r"] + saved["lse_c"]) / 2
        c = clean_weights(energy, params.clean, params.select)
        w = torch.exp(-saved["sce"]) if params.sce_weight else torch.ones_like(saved["sce"])
        margin = params.margin.to(energy.dtype) if isinstance(params.margin, torch.Tensor) else params.margin
        x_r = margin - saved["pos"] + saved["hard_i2t"]
        x_c = margin - saved["pos"] + saved["hard_t2i"]
        loss_hard = torch.relu(x_r) + torch.relu(x_c)
        per_sample = params.lambda_hard * c * w * loss_hard + params.lambda_cbcl * saved["loss_cbcl"]

        ctx.kernels, ctx.params, ctx.saved = kernels, params, saved
        ctx.hard_weight = params.lambda_hard * c * w
        ctx.active = (x_r > 0, x_c > 0)
        ctx.save_for_backward(img, txt, sim)
        out.update(saved, energy=energy, clean=c, weight=w, loss_hard=loss_hard)
        return per_sample

    @staticmethod
    def backward(ctx, g):
        img, txt, sim = ctx.saved_tensors
        p = ctx.params
        g = g.to(ctx.hard_weight.dtype)
        k = g * ctx.hard_weight
        grads = ctx.kernels.backward(
            img, txt, sim, ctx.saved, tau=p.tau, eps=p.eps, bias=p.bias, g_cbcl=g * p.lambda_cbcl,
            k_r=torch.where(ctx.active[0], k, 0), k_c=torch.where(ctx.active[1], k, 0),
        )  # fmt: skip
        if sim is not None:
            return None, None, grads, None, None, None
        return grads[0], grads[1], None, None, None, None


def run(kernels: Kernels, img, txt, sim, params: SREMParams):
    """A backend's `run` (see registry.py) on top of its kernels."""
    out: dict[str, torch.Tensor] = {}
    per_sample = _FusedSREM.apply(img, txt, sim, kernels, params, out)
    stats = {k: out[k] for k in KERNEL_STATISTICS}
    stats.update(
        energy_i2t=-params.tau * out["lse_r"],
        energy_t2i=-params.tau * out["lse_c"],
        **{k: out[k] for k in ("energy", "clean", "weight", "loss_hard")},
    )
    if params.reduction == "mean":
        loss = per_sample.mean()
    elif params.reduction == "sum":
        loss = per_sample.sum()
    else:
        loss = per_sample
    return loss, per_sample, stats

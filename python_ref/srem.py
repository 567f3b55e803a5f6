"""Plain-PyTorch reference of the SREM loss: one function per quantity of SPEC.md.

Every function below carries the SPEC.md name of the quantity it computes. The reference
materialises the B×B similarity matrix, runs in fp32 or fp64, and gets its gradient from
autograd; the quantities SPEC.md declares constant (clean weights c, sensitivity weights w,
the CBCL bias weights) are detached. It is the oracle every other backend is judged against,
so it favours the literal formula over speed.
"""

from __future__ import annotations

import torch

from python_ref.filtration import clean_weights, gmm_filtration

__all__ = [
    "compute_dtype",
    "similarity",
    "logits",
    "lse_r",
    "lse_c",
    "prob_r",
    "prob_c",
    "pos",
    "energy_i2t",
    "energy_t2i",
    "energy",
    "ce_i2t",
    "ce_t2i",
    "entropy_i2t",
    "entropy_t2i",
    "hard_i2t",
    "hard_t2i",
    "sce",
    "weight",
    "sensitivity_terms",
    "bias_weights",
    "loss_hard",
    "loss_cbcl",
    "constants",
    "per_sample_loss",
    "statistics",
    "reduce",
    "srem",
    "STATISTICS",
]

# The per-sample statistics of SPEC.md, in its order. Every backend returns exactly these.
STATISTICS = (
    "pos",
    "energy_i2t",
    "energy_t2i",
    "energy",
    "ce_i2t",
    "ce_t2i",
    "entropy_i2t",
    "entropy_t2i",
    "hard_i2t",
    "hard_i2t_index",
    "hard_t2i",
    "hard_t2i_index",
    "sce",
    "weight",
    "clean",
    "loss_hard",
    "loss_cbcl",
)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64 (the oracle); fp32, fp16 and bf16 are accumulated in fp32 (SPEC.md)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _eye(B: int, device) -> torch.Tensor:
    return torch.eye(B, dtype=torch.bool, device=device)


# ---------------------------------------------------------------- logits and the two softmaxes


def similarity(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    """S_ij = <img_i, txt_j>."""
    return img @ txt.T


def logits(S: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """Z = S / tau (tau a float, or a 0-d tensor: differentiable in it)."""
    return S / tau


def _constant(tau: float | torch.Tensor) -> float | torch.Tensor:
    """tau where SPEC.md holds the quantity constant (c, w, the bias weights, the statistics)."""
    return tau.detach() if isinstance(tau, torch.Tensor) else tau


def lse_r(Z: torch.Tensor) -> torch.Tensor:
    """lse_r[i] = log sum_j exp Z_ij (image i classifies the batch's texts)."""
    return torch.logsumexp(Z, dim=1)


def lse_c(Z: torch.Tensor) -> torch.Tensor:
    """lse_c[j] = log sum_i exp Z_ij (text j classifies the batch's images)."""
    return torch.logsumexp(Z, dim=0)


def prob_r(Z: torch.Tensor, lse_r: torch.Tensor) -> torch.Tensor:
    """Pr_ij = exp(Z_ij - lse_r[i]); rows sum to 1."""
    return torch.exp(Z - lse_r[:, None])


def prob_c(Z: torch.Tensor, lse_c: torch.Tensor) -> torch.Tensor:
    """Pc_ij = exp(Z_ij - lse_c[j]); columns sum to 1 (Pc_ij: text j picks image i)."""
    return torch.exp(Z - lse_c[None, :])


# ---------------------------------------------------------------- per-sample statistics


def pos(S: torch.Tensor) -> torch.Tensor:
    """pos_i = S_ii."""
    return S.diagonal()


def energy_i2t(lse_r: torch.Tensor, tau: float) -> torch.Tensor:
    """energy_i2t_i = -tau * lse_r[i]."""
    return -tau * lse_r


def energy_t2i(lse_c: torch.Tensor, tau: float) -> torch.Tensor:
    """energy_t2i_i = -tau * lse_c[i]."""
    return -tau * lse_c


def energy(energy_i2t: torch.Tensor, energy_t2i: torch.Tensor) -> torch.Tensor:
    """energy_i = (energy_i2t_i + energy_t2i_i) / 2."""
    return (energy_i2t + energy_t2i) / 2


def ce_i2t(Z: torch.Tensor, lse_r: torch.Tensor) -> torch.Tensor:
    """ce_i2t_i = lse_r[i] - Z_ii."""
    return lse_r - Z.diagonal()


def ce_t2i(Z: torch.Tensor, lse_c: torch.Tensor) -> torch.Tensor:
    """ce_t2i_i = lse_c[i] - Z_ii."""
    return lse_c - Z.diagonal()


def entropy_i2t(Z: torch.Tensor, lse_r: torch.Tensor) -> torch.Tensor:
    """entropy_i2t_i = lse_r[i] - sum_j Pr_ij Z_ij."""
    return lse_r - (prob_r(Z, lse_r) * Z).sum(dim=1)


def entropy_t2i(Z: torch.Tensor, lse_c: torch.Tensor) -> torch.Tensor:
    """entropy_t2i_i = lse_c[i] - sum_j Pc_ji Z_ji (column i)."""
    return lse_c - (prob_c(Z, lse_c) * Z).sum(dim=0)


def _hardest_off_diagonal(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row i: max_{j≠i} S_ij and its j, the lowest j on ties."""
    B = S.shape[0]
    off = S.masked_fill(_eye(B, S.device), float("-inf"))
    value = off.max(dim=1).values
    cols = torch.arange(B, device=S.device)
    hit = (off == value[:, None]) | (off.isnan() & value.isnan()[:, None])  # a NaN row points at its first NaN
    index = torch.where(hit, cols, B).min(dim=1).values
    # Gather at the chosen index so the gradient goes there and nowhere else.
    return S.gather(1, index[:, None]).squeeze(1), index


def hard_i2t(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hard_i2t, hard_i2t_index): max_{j≠i} S_ij and its j (ties: lowest index)."""
    return _hardest_off_diagonal(S)


def hard_t2i(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hard_t2i, hard_t2i_index): max_{j≠i} S_ji and its j (ties: lowest index)."""
    return _hardest_off_diagonal(S.T)


def sce(Z: torch.Tensor, lse_r: torch.Tensor, lse_c: torch.Tensor) -> torch.Tensor:
    """Swapped classification entropy (D).

    p_j = Pr_ij (image i over texts j) and q_j = Pc_ji (text i over images j), each scored
    under the other: sce_i = ( -sum_j p_j log q_j - sum_j q_j log p_j ) / 2.
    """
    log_pr = Z - lse_r[:, None]  # log Pr_ij
    log_pc_t = (Z - lse_c[None, :]).T  # [i, j] = log Pc_ji
    p, q = log_pr.exp(), log_pc_t.exp()
    return (-(p * log_pc_t).sum(dim=1) - (q * log_pr).sum(dim=1)) / 2


def weight(sce: torch.Tensor, sce_weight: bool) -> torch.Tensor:
    """Sensitivity weight w_i = exp(-sce_i) if sce_weight else 1 (D); a constant."""
    return torch.exp(-sce.detach()) if sce_weight else torch.ones_like(sce).detach()


def sensitivity_terms(sce: torch.Tensor, sce_weight: bool, sensitivity: str, margin) -> dict:
    """The package's `sensitivity` modes (docs/design.md; srem_kernels/sensitivity.py),
    written literally: {"weight": w, "margin": m_i, "clean_factor": f}, all constants.
    "weight": w = exp(-sce). "margin": w = 1, m_i = margin_i exp(-sce_i). "clean": w = 1, f = the
    GMM filtration of the batch's sce. "rank": w_i = 2 (B - r_i) / (B + 1), r_i = #{j: sce_j < sce_i}
    + #{j ≠ i: sce_j = sce_i} / 2. Off (sce_weight=False): w = 1."""
    sce = sce.detach()
    one = torch.ones_like(sce)
    out = {"weight": weight(sce, sce_weight), "margin": margin, "clean_factor": one}
    if not sce_weight or sensitivity == "weight":
        return out
    out["weight"] = one
    if sensitivity == "margin":
        out["margin"] = margin * torch.exp(-sce)
    elif sensitivity == "clean":
        out["clean_factor"] = gmm_filtration(sce)
    elif sensitivity == "rank":
        B = sce.shape[0]
        less = (sce[None, :] < sce[:, None]).sum(dim=1).to(sce.dtype)  # [i]: how many j have sce_j < sce_i
        ties = ((sce[None, :] == sce[:, None]).sum(dim=1) - 1).to(sce.dtype)
        out["weight"] = 2 * (B - (less + ties / 2)) / (B + 1)
    else:
        raise ValueError(f"unknown sensitivity {sensitivity!r}")
    return out


# ---------------------------------------------------------------- loss terms


def loss_hard(
    S: torch.Tensor, margin: torch.Tensor | float, hard_i2t: torch.Tensor, hard_t2i: torch.Tensor
) -> torch.Tensor:
    """L_hard_i = [m_i - S_ii + hard_i2t_i]_+ + [m_i - S_ii + hard_t2i_i]_+ (VSE++ max violation)."""
    p = S.diagonal()
    # relu's gradient is 1 where x > 0 and 0 at x = 0, as SPEC.md asks.
    return torch.relu(margin - p + hard_i2t) + torch.relu(margin - p + hard_t2i)


def bias_weights(Pr: torch.Tensor, Pc: torch.Tensor, bias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The CBCL bias weights, constants: (b_r, b_c) with b_r[i, j] = 1 - Pc_ij, the weight of
    element (i,j) in image i's problem, and b_c[j, i] = 1 - Pr_ji, its weight in text i's problem.
    Both are 1 with bias=False."""
    if not bias:
        return torch.ones_like(Pr), torch.ones_like(Pc)
    return (1 - Pc).detach(), (1 - Pr).detach()


def loss_cbcl(
    Z: torch.Tensor, lse_r: torch.Tensor, lse_c: torch.Tensor, eps: float, b_r: torch.Tensor, b_c: torch.Tensor
) -> torch.Tensor:
    """Cross-modal biased complementary term (D), over every off-diagonal element:

    L_cbcl_i = - sum_{j≠i} (1 - Pc_ij) log(1 - Pr_ij + eps) - sum_{j≠i} (1 - Pr_ji) log(1 - Pc_ji + eps)

    with the bias weights (b_r, b_c) of `bias_weights` (all 1: RCL's complementary loss).
    """
    diag = _eye(Z.shape[0], Z.device)
    # The diagonal is never a complementary label; zeroing it keeps log() finite there when eps=0.
    Pr = prob_r(Z, lse_r).masked_fill(diag, 0.0)
    Pc = prob_c(Z, lse_c).masked_fill(diag, 0.0)
    row = -(b_r * torch.log(1 - Pr + eps)).masked_fill(diag, 0.0).sum(dim=1)
    col = -(b_c * torch.log(1 - Pc + eps)).masked_fill(diag, 0.0).sum(dim=0)
    return row + col


# ---------------------------------------------------------------- the whole loss


def constants(
    S: torch.Tensor, tau: float, *, bias: bool, sce_weight: bool, clean: torch.Tensor | None, select: str,
    sensitivity: str = "weight", margin: float | torch.Tensor = 0.2,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """The quantities SPEC.md holds constant in the gradient, at the point S: the clean weights
    c, the sensitivity weights w, the margin m and the CBCL bias weights (b_r, b_c). All detached
    (from tau too: SPEC.md's 2026-12-07 change)."""
    S, tau = S.detach(), _constant(tau)
    Z = logits(S, tau)
    lr, lc = lse_r(Z), lse_c(Z)
    e = energy(energy_i2t(lr, tau), energy_t2i(lc, tau))
    b_r, b_c = bias_weights(prob_r(Z, lr), prob_c(Z, lc), bias)
    sens = sensitivity_terms(sce(Z, lr, lc), sce_weight, sensitivity, margin)
    return {
        "clean": clean_weights(e, clean, select).to(S.dtype) * sens["clean_factor"],
        "weight": sens["weight"],
        "margin": sens["margin"],
        "b_r": b_r,
        "b_c": b_c,
    }


def per_sample_loss(
    S: torch.Tensor,
    const: dict[str, torch.Tensor],
    *,
    tau: float | torch.Tensor,
    margin: float | torch.Tensor,
    eps: float,
    lambda_hard: float,
    lambda_cbcl: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_i = lambda_hard * c_i * w_i * L_hard_i + lambda_cbcl * L_cbcl_i with the `constants`
    given, differentiable in S (and in a tensor tau: through Z in L_cbcl alone, the hinge reads
    S). Returns (L, L_hard, L_cbcl)."""
    Z = logits(S, tau)
    lr, lc = lse_r(Z), lse_c(Z)
    l_hard = loss_hard(S, margin, hard_i2t(S)[0], hard_t2i(S)[0])
    l_cbcl = loss_cbcl(Z, lr, lc, eps, const["b_r"], const["b_c"])
    return lambda_hard * const["clean"] * const["weight"] * l_hard + lambda_cbcl * l_cbcl, l_hard, l_cbcl


def statistics(S: torch.Tensor, tau: float) -> dict[str, torch.Tensor]:
    """The per-sample statistics of SPEC.md that do not depend on the loss options, detached."""
    S, tau = S.detach(), _constant(tau)
    Z = logits(S, tau)
    lr, lc = lse_r(Z), lse_c(Z)
    e_i2t, e_t2i = energy_i2t(lr, tau), energy_t2i(lc, tau)
    h_i2t, h_i2t_index = hard_i2t(S)
    h_t2i, h_t2i_index = hard_t2i(S)
    return {
        "pos": pos(S),
        "energy_i2t": e_i2t,
        "energy_t2i": e_t2i,
        "energy": energy(e_i2t, e_t2i),
        "ce_i2t": ce_i2t(Z, lr),
        "ce_t2i": ce_t2i(Z, lc),
        "entropy_i2t": entropy_i2t(Z, lr),
        "entropy_t2i": entropy_t2i(Z, lc),
        "hard_i2t": h_i2t,
        "hard_i2t_index": h_i2t_index,
        "hard_t2i": h_t2i,
        "hard_t2i_index": h_t2i_index,
        "sce": sce(Z, lr, lc),
    }


def reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """loss = mean_i L_i ("mean"), sum_i L_i ("sum"), or the B-vector ("none")."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def srem(
    img: torch.Tensor | None = None,
    txt: torch.Tensor | None = None,
    *,
    sim: torch.Tensor | None = None,
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
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The SREM loss of SPEC.md from embeddings (img, txt) or from a similarity matrix (sim).

    Returns (loss, per_sample, stats): loss is reduced as asked and differentiable; per_sample
    is the differentiable B-vector L_i; stats holds every SPEC statistic as a detached B-vector,
    in the order of STATISTICS. A 0-d tensor tau gets its gradient from autograd, with c, w and
    the bias weights held constant (SPEC.md "Gradient"). Inputs are not validated here:
    srem_kernels does that.
    """
    if sim is None:
        cd = compute_dtype(img.dtype)
        S = similarity(img.to(cd), txt.to(cd))
    else:
        cd = compute_dtype(sim.dtype)
        S = sim.to(cd)
    if isinstance(margin, torch.Tensor):
        margin = margin.detach().to(cd)

    const = constants(S, tau, bias=bias, sce_weight=sce_weight, clean=clean, select=select, sensitivity=sensitivity,
                      margin=margin)  # fmt: skip
    per_sample, l_hard, l_cbcl = per_sample_loss(
        S, const, tau=tau, margin=const["margin"], eps=eps, lambda_hard=lambda_hard, lambda_cbcl=lambda_cbcl
    )
    loss = reduce(per_sample, reduction)
    stats = statistics(S, tau)
    stats.update(weight=const["weight"], clean=const["clean"], loss_hard=l_hard.detach(), loss_cbcl=l_cbcl.detach())
    return loss, per_sample, {k: stats[k] for k in STATISTICS}

"""The `Kernels` contract of srem_kernels/fused.py, executed densely in PyTorch.

It materialises B×B on purpose: it is the executable statement of what each fused backend's
kernels return (intermediates included: lse, A_r, A_c), so the shared glue can be tested
without them and kernel tests can compare intermediates. Arithmetic uses the cancellation-free
forms an fp32 kernel needs (README, "Numerics").
"""

from __future__ import annotations

import torch


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _similarity(img, txt, sim):
    if sim is not None:
        return sim.to(_acc(sim.dtype))
    cd = _acc(img.dtype)
    return img.to(cd) @ txt.to(cd).T


def _hardest(S):
    off = S.masked_fill(torch.eye(S.shape[0], dtype=torch.bool), float("-inf"))
    value = off.max(dim=1).values
    cols = torch.arange(S.shape[0])
    index = torch.where(off == value[:, None], cols, S.shape[0]).min(dim=1).values
    return value, index


def _softmax_stats(Z):
    """Per row: the max m and log l, l = sum_j exp(Z_ij - m) = 1 + (the sum without one maximal
    element). log1p of that sum keeps log l exact when the row is confident (l - 1 below fp32's
    epsilon); m and log l stay apart so that lse - Z = (m - Z) + log l does not cancel."""
    m, at = Z.max(dim=1)
    rest = torch.exp(Z - m[:, None]).scatter(1, at[:, None], 0.0).sum(dim=1)
    return m, torch.log1p(rest)


def _neg_log_probs(Z, saved):
    """(-log Pr, -log Pc), each (m - Z) + log l: non-negative, no cancellation."""
    nlp_r = (saved["m_r"][:, None] - Z) + saved["logl_r"][:, None]
    nlp_c = (saved["m_c"][None, :] - Z) + saved["logl_c"][None, :]
    return nlp_r, nlp_c


def _log_complement(P, one_minus_P, eps):
    """log(1 - P + eps) without losing eps or P: log1p(eps - P) while P < 1/2, and
    log((1 - P) + eps) with 1 - P = -expm1(-nlp) exact above (log1p(eps - P) is -inf in fp32 once
    P rounds to 1, eps being below fp32's resolution there)."""
    return torch.where(P < 0.5, torch.log1p(eps - P), torch.log(one_minus_P + eps))


def _bias_parts(Z, saved, eps, bias):
    nlp_r, nlp_c = _neg_log_probs(Z, saved)
    Pr, Pc = torch.exp(-nlp_r), torch.exp(-nlp_c)
    qr, qc = -torch.expm1(-nlp_r), -torch.expm1(-nlp_c)  # 1 - Pr, 1 - Pc, exact near P = 1
    off = ~torch.eye(Z.shape[0], dtype=torch.bool)
    b_r = qc if bias else torch.ones_like(Pc)
    b_c = qr if bias else torch.ones_like(Pr)
    E_r = torch.where(off, b_r * Pr / (qr + eps), 0)
    E_c = torch.where(off, b_c * Pc / (qc + eps), 0)
    log_r = torch.where(off, _log_complement(Pr, qr, eps), 0)
    log_c = torch.where(off, _log_complement(Pc, qc, eps), 0)
    return off, nlp_r, nlp_c, Pr, Pc, b_r, b_c, E_r, E_c, log_r, log_c


def _split_A(E, P, side):
    """The row's maximal element (`at`, the first; the one log l leaves out) and A without it
    (`A_rest`, summed, not subtracted): the backward needs them when an off-diagonal P is near 1,
    and that P is then the row's maximum. (At the diagonal E is 0 and A_rest = A.)"""
    at = P.argmax(dim=1)
    rest = E.scatter(1, at[:, None], 0.0).sum(dim=1)
    return {f"at_{side}": at, f"A_{side}_rest": rest}


def _dE(E, P, one_minus_P, A, at, A_rest):
    """d(row term)/dZ = E - P·A per element, except at `at`, where both are ~1/(1 - P) when P is
    near 1 and cancel: there it is E·(1 - P) - P·A_rest, the same value without the cancellation."""
    out = E - P * A[:, None]
    k = at[:, None]
    fixed = E.gather(1, k) * one_minus_P.gather(1, k) - P.gather(1, k) * A_rest[:, None]
    return out.scatter(1, k, fixed)


class DenseKernels:
    def forward(self, img, txt, sim, *, tau, eps, bias):
        S = _similarity(img, txt, sim)
        Z = S / tau
        m_r, logl_r = _softmax_stats(Z)
        m_c, logl_c = _softmax_stats(Z.T)
        saved = {"m_r": m_r, "logl_r": logl_r, "m_c": m_c, "logl_c": logl_c}
        off, nlp_r, nlp_c, Pr, Pc, b_r, b_c, E_r, E_c, log_r, log_c = _bias_parts(Z, saved, eps, bias)
        hard_r, idx_r = _hardest(S)
        hard_c, idx_c = _hardest(S.T)
        # sce_i = ( sum_j Pr_ij (-log Pc_ji) + sum_j Pc_ji (-log Pr_ij) ) / 2: non-negative terms
        sce = ((Pr * nlp_c.T).sum(1) + (Pc.T * nlp_r).sum(1)) / 2
        cbcl = -(b_r * log_r).sum(1) - (b_c * log_c).sum(0)
        return saved | {
            "lse_r": m_r + logl_r,
            "lse_c": m_c + logl_c,
            "pos": S.diagonal().clone(),
            "ce_i2t": nlp_r.diagonal().clone(),
            "ce_t2i": nlp_c.diagonal().clone(),
            "entropy_i2t": (Pr * nlp_r).sum(1),
            "entropy_t2i": (Pc * nlp_c).sum(0),
            "hard_i2t": hard_r,
            "hard_i2t_index": idx_r,
            "hard_t2i": hard_c,
            "hard_t2i_index": idx_c,
            "sce": sce,
            "loss_cbcl": cbcl,
            "A_r": E_r.sum(1),
            "A_c": E_c.sum(0),
            **_split_A(E_r, Pr, "r"),
            **_split_A(E_c.T, Pc.T, "c"),
        }

    def backward(self, img, txt, sim, saved, *, tau, eps, bias, g_cbcl, k_r, k_c):
        S = _similarity(img, txt, sim)
        Z = S / tau
        B = S.shape[0]
        _, nlp_r, nlp_c, Pr, Pc, _, _, E_r, E_c, _, _ = _bias_parts(Z, saved, eps, bias)
        row = _dE(E_r, Pr, -torch.expm1(-nlp_r), saved["A_r"], saved["at_r"], saved["A_r_rest"])
        col = _dE(E_c.T, Pc.T, -torch.expm1(-nlp_c).T, saved["A_c"], saved["at_c"], saved["A_c_rest"]).T
        dS = (g_cbcl[:, None] * row + g_cbcl[None, :] * col) / tau
        rows = torch.arange(B)
        dS[rows, rows] -= k_r + k_c
        dS[rows, saved["hard_i2t_index"]] += k_r
        dS[saved["hard_t2i_index"], rows] += k_c
        if sim is not None:
            return dS.to(sim.dtype)
        cd = dS.dtype
        return (dS @ txt.to(cd)).to(img.dtype), (dS.T @ img.to(cd)).to(txt.dtype)

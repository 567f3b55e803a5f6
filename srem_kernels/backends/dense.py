"""fused.py's `Kernels` contract executed densely in PyTorch, row ranges included.

It forms the rows and columns a call owns in full (Br×B each; B×B for a whole batch), on
purpose: it is the executable statement of what every fused backend's kernels return
(intermediates included: lse, A_r, A_c), so the glue and the distributed exchange can be tested
without them and kernel tests can compare intermediates; and it is how the `reference` backend
computes a rank's rows in the distributed loss. Arithmetic uses the cancellation-free forms an
fp32 kernel needs (docs/numerics.md).

Everything is written for a block of rows: Sr = S[lo:hi, :] (samples' i2t problems) and
Sc = S[:, lo:hi]ᵀ (their t2i problems, the rows of the swapped problem). A whole batch is the
block lo=0 with Sc = Sᵀ.
"""

from __future__ import annotations

import torch

from srem_kernels.backends.fused import swap_sides


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _blocks(img, txt, sim, lo, hi):
    """(Sr, Sc) in the accumulation dtype: rows lo..hi-1 of S and of Sᵀ."""
    if sim is not None:
        S = sim.to(_acc(sim.dtype))
        return S[lo:hi], S[:, lo:hi].T
    cd = _acc(img.dtype)
    x, y = img.to(cd), txt.to(cd)
    return x[lo:hi] @ y.T, y[lo:hi] @ x.T


def _diagonal(S, lo):
    """Mask of the block's diagonal: element (a, lo + a)."""
    a = torch.arange(S.shape[0], device=S.device)
    return torch.arange(S.shape[1], device=S.device)[None, :] == (lo + a)[:, None]


def _hardest(S, lo):
    off = S.masked_fill(_diagonal(S, lo), float("-inf"))
    value = off.max(dim=1).values
    cols = torch.arange(S.shape[1], device=S.device)
    index = torch.where(off == value[:, None], cols, S.shape[1]).min(dim=1).values
    return value, index


def _softmax_stats(Z):
    """Per row: the max m and log l, l = sum_j exp(Z_ij - m) = 1 + (the sum without one maximal
    element). log1p of that sum keeps log l exact when the row is confident (l - 1 below fp32's
    epsilon); m and log l stay apart so that lse - Z = (m - Z) + log l does not cancel."""
    m, at = Z.max(dim=1)
    rest = torch.exp(Z - m[:, None]).scatter(1, at[:, None], 0.0).sum(dim=1)
    return m, torch.log1p(rest)


def _nlp(m, logl, Z):
    """-log P = (m - Z) + log l: non-negative, no cancellation. The clamp holds P ≤ 1 where Z
    comes from another GEMM call than m did (one rounding apart)."""
    return ((m - Z) + logl).clamp_min(0)


def _log_complement(P, one_minus_P, eps):
    """log(1 - P + eps) without losing eps or P: log1p(eps - P) while P < 1/2, and
    log((1 - P) + eps) with 1 - P = -expm1(-nlp) exact above (log1p(eps - P) is -inf in fp32 once
    P rounds to 1, eps being below fp32's resolution there)."""
    return torch.where(P < 0.5, torch.log1p(eps - P), torch.log(one_minus_P + eps))


def _rows(m, logl):
    return m[:, None], logl[:, None]


def _cols(m, logl):
    return m[None, :], logl[None, :]


def _side(Z, own, other, off, eps, bias):
    """One direction's problem over Z: -log P and 1 - P under its softmax (`own`: m, logl shaped
    to broadcast over Z, per row or per column), the bias weights 1 - P' under the other
    direction's softmax (`other`), E = b P / (1 - P + eps) and log(1 - P + eps) off the diagonal."""
    nlp = _nlp(*own, Z)
    nlp_other = _nlp(*other, Z)
    P, q = torch.exp(-nlp), -torch.expm1(-nlp)  # 1 - P exact near P = 1
    b = -torch.expm1(-nlp_other) if bias else torch.ones_like(P)
    E = torch.where(off, b * P / (q + eps), 0)
    log_q = torch.where(off, _log_complement(P, q, eps), 0)
    return nlp, P, q, b, E, log_q


def _split_A(E, P, side):
    """The row's maximal element (`at`, the first; the one log l leaves out) and A without it
    (`A_rest`, summed, not subtracted): the backward needs them when an off-diagonal P is near 1,
    and that P is then the row's maximum. (At the diagonal E is 0 and A_rest = A.)"""
    at = P.argmax(dim=1)
    rest = E.scatter(1, at[:, None], 0.0).sum(dim=1)
    return {f"at_{side}": at, f"A_{side}_rest": rest}


def _pass1(Sr, Sc, lo, tau):
    Zr, Zc = Sr / tau, Sc / tau
    m_r, logl_r = _softmax_stats(Zr)
    m_c, logl_c = _softmax_stats(Zc)
    hard_r, idx_r = _hardest(Sr, lo)
    hard_c, idx_c = _hardest(Sc, lo)
    zd = Zr[_diagonal(Sr, lo)]
    return {
        "m_r": m_r, "logl_r": logl_r, "m_c": m_c, "logl_c": logl_c,
        "lse_r": m_r + logl_r, "lse_c": m_c + logl_c,
        "pos": Sr[_diagonal(Sr, lo)],
        "ce_i2t": (m_r - zd) + logl_r, "ce_t2i": (m_c - zd) + logl_c,
        "hard_i2t": hard_r, "hard_i2t_index": idx_r, "hard_t2i": hard_c, "hard_t2i_index": idx_c,
    }  # fmt: skip


def _pass2(Sr, Sc, lo, first, tau, eps, bias, stats_only):
    hi = lo + Sr.shape[0]
    g = {k: first[k] for k in ("m_r", "logl_r", "m_c", "logl_c")}
    own_r, own_c = (g["m_r"][lo:hi], g["logl_r"][lo:hi]), (g["m_c"][lo:hi], g["logl_c"][lo:hi])
    off = ~_diagonal(Sr, lo)
    # rows: Pr_ij (i2t of sample i) with bias 1 - Pc_ij; columns: Pc_ji (t2i) with bias 1 - Pr_ji
    nlp_r, Pr, _, b_r, E_r, log_r = _side(Sr / tau, _rows(*own_r), _cols(g["m_c"], g["logl_c"]), off, eps, bias)
    nlp_c, Pc, _, b_c, E_c, log_c = _side(Sc / tau, _rows(*own_c), _cols(g["m_r"], g["logl_r"]), off, eps, bias)
    out = {
        "entropy_i2t": (Pr * nlp_r).sum(1),
        "entropy_t2i": (Pc * nlp_c).sum(1),
        # sce_i = ( sum_j Pr_ij (-log Pc_ji) + sum_j Pc_ji (-log Pr_ij) ) / 2: non-negative terms
        "sce": ((Pr * nlp_c).sum(1) + (Pc * nlp_r).sum(1)) / 2,
        "loss_cbcl": -(b_r * log_r).sum(1) - (b_c * log_c).sum(1),
    }
    if not stats_only:
        out |= {"A_r": E_r.sum(1), "A_c": E_c.sum(1), **_split_A(E_r, Pr, "r"), **_split_A(E_c, Pc, "c")}
    return out


def _dS_rows(Sr, lo, s, tau, eps, bias, g, k_r, k_c, tau_grad=False):
    """dS[lo:hi, :] (fused.py's backward contract) from the whole batch's vectors `s`; with
    tau_grad also these rows' share of dL/dtau (fused.py's d_tau, in its cancellation-free form)."""
    hi = lo + Sr.shape[0]
    Z = Sr / tau
    off = ~_diagonal(Sr, lo)
    own_r, own_c = _rows(s["m_r"][lo:hi], s["logl_r"][lo:hi]), _cols(s["m_c"], s["logl_c"])
    nl_r, Pr, qr, _, E_r, _ = _side(Z, own_r, own_c, off, eps, bias)
    nl_c, Pc, qc, _, E_c, _ = _side(Z, own_c, own_r, off, eps, bias)  # Pc_ij under column j's softmax
    rows = torch.arange(lo, hi, device=Z.device)
    cols = torch.arange(Z.shape[1], device=Z.device)
    # E - P·A cancels at a row's (column's) maximal element when its P is near 1 (both are
    # ~1/(1 - P)): there the same value as E·(1 - P) - P·A_rest
    at_r = cols[None, :] == s["at_r"][lo:hi, None]
    at_c = s["at_c"][None, :] == rows[:, None]
    row = torch.where(at_r, E_r * qr - Pr * s["A_r_rest"][lo:hi, None], E_r - Pr * s["A_r"][lo:hi, None])
    col = torch.where(at_c, E_c * qc - Pc * s["A_c_rest"][None, :], E_c - Pc * s["A_c"][None, :])
    gr, gc = g[lo:hi, None] * row, g[None, :] * col
    dS = (gr + gc) / tau
    a = torch.arange(hi - lo, device=Z.device)
    dS[a, rows] -= k_r[lo:hi] + k_c[lo:hi]
    dS[a, s["hard_i2t_index"][lo:hi]] += k_r[lo:hi]
    mine = (s["hard_t2i_index"] >= lo) & (s["hard_t2i_index"] < hi)  # t2i hinges whose hardest image is ours
    dS[s["hard_t2i_index"][mine] - lo, cols[mine]] += k_c[mine]
    if not tau_grad:
        return dS
    return dS, ((gr * nl_r + gc * nl_c) / tau).sum()


class DenseKernels:
    supports_stats_only = True
    supports_rows = True

    def forward(self, img, txt, sim, *, tau, eps, bias, stats_only=False):
        B = (sim if sim is not None else img).shape[0]
        Sr, Sc = _blocks(img, txt, sim, 0, B)
        first = _pass1(Sr, Sc, 0, tau)
        return first | _pass2(Sr, Sc, 0, first, tau, eps, bias, stats_only)

    def backward(self, img, txt, sim, saved, *, tau, eps, bias, g_cbcl, k_r, k_c, tau_grad=False):
        B = (sim if sim is not None else img).shape[0]
        S, _ = _blocks(img, txt, sim, 0, B)
        out = _dS_rows(S, 0, saved, tau, eps, bias, g_cbcl.to(S.dtype), k_r.to(S.dtype), k_c.to(S.dtype), tau_grad)
        dS, d_tau = out if tau_grad else (out, None)
        if sim is not None:
            grads = dS.to(sim.dtype)
        else:
            cd = dS.dtype
            grads = (dS @ txt.to(cd)).to(img.dtype), (dS.T @ img.to(cd)).to(txt.dtype)
        return (grads, d_tau) if tau_grad else grads

    # ---------------------------------------------------------------- row ranges

    def pass1_rows(self, img, txt, lo, hi, *, tau):
        return _pass1(*_blocks(img, txt, None, lo, hi), lo, tau)

    def pass2_rows(self, img, txt, lo, hi, first, *, tau, eps, bias, stats_only=False):
        return _pass2(*_blocks(img, txt, None, lo, hi), lo, first, tau, eps, bias, stats_only)

    def backward_rows(self, img, txt, lo, hi, saved, *, tau, eps, bias, g_cbcl, k_r, k_c, tau_grad=False):
        Sr, Sc = _blocks(img, txt, None, lo, hi)
        g, k_r, k_c = (t.to(Sr.dtype) for t in (g_cbcl, k_r, k_c))
        cd = Sr.dtype
        out = _dS_rows(Sr, lo, saved, tau, eps, bias, g, k_r, k_c, tau_grad)  # rows lo..hi-1: their d_tau share
        dS, d_tau = out if tau_grad else (out, None)
        d_img = dS @ txt.to(cd)
        d_txt = _dS_rows(Sc, lo, swap_sides(saved), tau, eps, bias, g, k_c, k_r) @ img.to(cd)
        grads = d_img.to(img.dtype), d_txt.to(txt.dtype)
        return (grads, d_tau) if tau_grad else grads

"""The Triton backend's merge kernels: each sample's K partials of a pass (passes.py), in
slot order, into the Kernels contract's vectors (fused.py). One program per TM samples; cheap
(K·(8 + 4) words read per sample), deterministic."""

from __future__ import annotations

import triton
import triton.language as tl

from srem_kernels.backends.triton.tiles import _inv_tau, _log1p, _nlp, _side_load, _stats_merge, _sums_load


@triton.jit(do_not_specialize=["tau_arg"])
def _merge1_kernel(pf, pi, pos, r0, R, K, tau_arg,
                   m_r, logl_r, at_r, m_c, logl_c, at_c, lse_r, lse_c, ce_r, ce_c, hard_r, hidx_r, hard_c, hidx_c,
                   ACC: tl.constexpr, TAU_PTR: tl.constexpr, TM: tl.constexpr):  # fmt: skip
    """Pass 1: the split log-sum-exps, lse, ce (from S_ii in pos) and the hardest negatives."""
    x = tl.program_id(0) * TM + tl.arange(0, TM)
    mask = x < R
    mr, lr, ar, hr, ir = _side_load(pf, pi, 0, 0, x, K, R, mask)
    mc, lc, ac, hc, ic = _side_load(pf, pi, 3, 0, x, K, R, mask)
    for k in range(1, K):
        m2, l2, a2, h2, i2 = _side_load(pf, pi, 0, k, x, K, R, mask)
        mr, lr, ar, hr, ir = _stats_merge(mr, lr, ar, hr, ir, m2, l2, a2, h2, i2)
        m2, l2, a2, h2, i2 = _side_load(pf, pi, 3, k, x, K, R, mask)
        mc, lc, ac, hc, ic = _stats_merge(mc, lc, ac, hc, ic, m2, l2, a2, h2, i2)
    lgr = _log1p(lr)
    lgc = _log1p(lc)
    i = r0 + x
    inv_tau = _inv_tau(tau_arg, TAU_PTR).to(ACC)
    zd = tl.load(pos + x, mask=mask) * inv_tau  # as the tiles form z_ii
    tl.store(m_r + x, mr, mask=mask)
    tl.store(m_c + x, mc, mask=mask)
    tl.store(logl_r + x, lgr, mask=mask)
    tl.store(logl_c + x, lgc, mask=mask)
    tl.store(at_r + x, ar.to(tl.int64), mask=mask)
    tl.store(at_c + x, ac.to(tl.int64), mask=mask)
    tl.store(lse_r + x, mr + lgr, mask=mask)
    tl.store(lse_c + x, mc + lgc, mask=mask)
    tl.store(ce_r + x, _nlp(mr, zd, lgr, ar == i), mask=mask)  # -log Pr_ii
    tl.store(ce_c + x, _nlp(mc, zd, lgc, ac == i), mask=mask)
    tl.store(hard_r + x, hr, mask=mask)
    tl.store(hard_c + x, hc, mask=mask)
    tl.store(hidx_r + x, ir.to(tl.int64), mask=mask)
    tl.store(hidx_c + x, ic.to(tl.int64), mask=mask)


@triton.jit
def _merge2_kernel(pf, R, K, ent_r, ent_c, sce, cbcl, A_r, A_c, A_r_rest, A_c_rest,
                   WITH_A: tl.constexpr, TM: tl.constexpr):  # fmt: skip
    """Pass 2: the sums, in slot order."""
    x = tl.program_id(0) * TM + tl.arange(0, TM)
    mask = x < R
    s0, s1, s2, s3, s4, s5, s6, s7 = _sums_load(pf, 0, x, K, R, mask)
    for k in range(1, K):
        t0, t1, t2, t3, t4, t5, t6, t7 = _sums_load(pf, k, x, K, R, mask)
        s0 += t0
        s1 += t1
        s2 += t2
        s3 += t3
        s4 += t4
        s5 += t5
        s6 += t6
        s7 += t7
    tl.store(ent_r + x, s0, mask=mask)
    tl.store(ent_c + x, s1, mask=mask)
    tl.store(sce + x, s2 * 0.5, mask=mask)
    tl.store(cbcl + x, s3, mask=mask)
    if WITH_A:
        tl.store(A_r + x, s4, mask=mask)
        tl.store(A_c + x, s5, mask=mask)
        tl.store(A_r_rest + x, s6, mask=mask)
        tl.store(A_c_rest + x, s7, mask=mask)

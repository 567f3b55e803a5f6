"""backend="triton": the `Kernels` contract of fused.py (SPEC.md's B×B work) as Triton kernels.

Three kernels, shared by both strategies and by the similarity path; each gets its S tiles from
`_s_tile`, which either loads them from a B×B matrix (FROM_SIM) or recomputes them from img/txt
with tl.dot over D (streaming):

  _stats_kernel    pass 1. Program a owns rows a and columns a of S. Per step b it forms the tile
                   X = S[a, b] and C = S[b, a]ᵀ (C[i, j] = S_ji), so that every column quantity of
                   S is a row quantity of C, and one helper serves both. Online log-sum-exp in the
                   split form (m, l1): l = 1 + l1, l1 the sum without one maximal element, so that
                   log l = log1p(l1) stays exact for confident rows (README, "Numerics"); hardest
                   off-diagonal negative (ties: lowest index); S_ii.
  _coupled_kernel  pass 2, same tiling: entropies, sce (which couples (i,j) with (j,i): Pr from X
                   times -log Pc from C, elementwise), the CBCL term and A_r, A_c.
  _dsim_kernel     dS of fused.py's docstring for a panel of rows, one tile per program, no
                   reduction: the two gradient products are torch.matmul on the panel.

Strategies (TritonKernels(strategy=...) or SREM_TRITON_STRATEGY, else chosen by size/memory):
  materialised  S = img·txtᵀ once (torch.matmul, fp32 out), both passes read it, backward forms dS
                from it and uses torch.matmul for dS·txt and dSᵀ·img. Holds S (and dS) in memory.
  streaming     never a B×B buffer: the passes recompute tiles from img/txt; backward forms dS a
                panel of rows at a time (panel_rows × B) and accumulates the two products panel
                by panel in a fixed order. Extra memory O(B·D + panel_rows·B).

Deterministic: every output element is written by one program in a fixed loop order; no atomics.
Accumulation in fp32 (fp64 for fp64 inputs, the ACC constexpr); fp32 dot precision follows
torch.get_float32_matmul_precision(). Plain pointer arithmetic only (Triton 3.6 – 3.9).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
import triton
import triton.language as tl

from srem_kernels import _alloc, fused

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
STRATEGIES = ("streaming", "materialised")

@triton.jit
def _max_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


if INTERPRET:

    @triton.jit
    def _log1p(x):
        # The interpreter has no libdevice: log1p(x) = log(u) * x / (u - 1), u = 1 + x, is exact
        # to a few ulps (Goldberg 1991) because the rounding of u cancels in the quotient.
        u = 1.0 + x
        d = u - 1.0
        return tl.where(d == 0.0, x, tl.log(u) * (x / tl.where(d == 0.0, 1.0, d)))

    @triton.jit
    def _expm1(x):
        # Kahan's expm1: (u - 1) * x / log(u), u = exp(x), exact to a few ulps for the same reason;
        # u - 1 == 0 (|x| below fp's resolution at 1) gives x, u - 1 == -1 gives -1, u = inf gives inf.
        u = tl.exp(x)
        d = u - 1.0
        special = (d == 0.0) | (d == -1.0) | (u == float("inf"))
        r = d * (x / tl.log(tl.where(special, 2.0, u)))
        return tl.where(d == 0.0, x, tl.where(special, d, r))

    @triton.jit
    def _log(x):
        return tl.log(x)

    @triton.jit
    def _mma_tf32(x):
        # the tf32 MMA reads the top 19 bits of its fp32 operands; the interpreter's dot computes
        # in fp32, so it is told to (the rounding before it must make this a no-op)
        return ((x.to(tl.uint32, bitcast=True) >> 13) << 13).to(tl.float32, bitcast=True)

    @triton.jit
    def _rowmax(x, AXIS: tl.constexpr):
        # tl.max drops NaN here too (nanmax, as on the GPU) and a custom tl.reduce is slow: the
        # sum of the NaNs (0 without any) makes the max NaN
        return tl.max(x, axis=AXIS) + tl.sum(tl.where(x == x, 0.0, x), axis=AXIS)

else:  # pragma: no cover - GPU only
    try:
        from triton.language.extra import libdevice  # dispatching module, Triton ≥ 3.0
    except ImportError:
        from triton.language.extra.cuda import libdevice

    @triton.jit
    def _log1p(x):
        return libdevice.log1p(x)

    @triton.jit
    def _expm1(x):
        return libdevice.expm1(x)

    @triton.jit
    def _log(x):
        return libdevice.log(x)

    @triton.jit
    def _mma_tf32(x):
        return x  # the MMA itself drops the low 13 bits

    @triton.jit
    def _rowmax(x, AXIS: tl.constexpr):
        # tl.max drops NaN on the GPU (maxnum): a NaN of S must reach lse and the hardest negative
        return tl.reduce(x, AXIS, _max_nan)


@triton.jit
def _nlp(m, z, logl, is_at):
    """-log P = (m - z) + log l (no cancellation), and exactly log l at the element log l leaves
    out: m - z is 0 there only if this kernel's z has the bits of the tile m was taken from, and
    one ulp of z (|z| ~ 80) is far more than 1 - P on a confident row. Tiles recomputed from
    img/txt at other tile shapes or offsets (the dS kernel's, the interpreter's BLAS) need not."""
    return tl.where(is_at, logl, (m - z) + logl)


@triton.jit
def _one_minus_p(nlp):
    """1 - P for P = exp(-nlp), nlp = -log P ≥ 0: -expm1(-nlp), exact also where P is within an
    ulp of 1 (a confident off-diagonal), where 1 - exp(-nlp) is 0 or one ulp."""
    return -_expm1(-nlp)


@triton.jit
def _log_1m_eps(p, q, eps):
    """log(1 - p + eps), q = 1 - p from _one_minus_p: log1p(eps - p) while p is small (keeps eps
    and p), log(q + eps) for p ≥ 1/2 (eps - p rounds to -1 in fp32 once p rounds to 1, and
    log1p(-1) = -inf where the value is log(q + eps))."""
    return tl.where(p < 0.5, _log1p(eps - p), _log(q + eps))


@triton.jit
def _round_tf32(x):
    """fp32 -> the nearest TF32 (10 mantissa bits, ties away from zero: cvt.rna.tf32.f32, as
    cuBLAS/CUTLASS round operands), Inf and NaN unchanged. The tf32 MMA truncates whatever bits
    it is given; integer arithmetic, so the interpreter runs the same rounding the GPU does."""
    u = x.to(tl.uint32, bitcast=True)
    r = (((u + 0x1000) >> 13) << 13).to(tl.float32, bitcast=True)
    return tl.where((u & 0x7F800000) == 0x7F800000, x, r)


@triton.jit
def _scalar(hi, lo, ACC: tl.constexpr):
    """A host float passed as two fp32 kernel arguments (hi = fp32(v), lo = fp32(v - hi)): fp32(v)
    for fp32 accumulation, v to ~2^-48 for fp64. No device tensor, so no host-to-device copy."""
    if ACC == tl.float64:
        return tl.cast(hi, tl.float64) + tl.cast(lo, tl.float64)
    else:
        return hi


@triton.jit
def _s_tile(img, txt, sim, rows, cols, B, D, s_im, s_ik, s_tm, s_tk, s_sm, s_sn,
            FROM_SIM: tl.constexpr, ACC: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
            BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, ROUND_TF32: tl.constexpr):  # fmt: skip
    """S[rows, cols] in ACC, zeros outside [0, B)². An element of S need not be bitwise the same
    in every kernel (the dS kernel's 64×64 tiles compile to wgmma, the passes' 32×32 to mma.sync,
    and the interpreter's BLAS rounds by offset): nothing depends on it, since at a row's maximal
    element -log P is log l by construction (_nlp)."""
    rmask = rows < B
    cmask = cols < B
    r64 = rows.to(tl.int64)
    c64 = cols.to(tl.int64)
    if FROM_SIM:
        ptrs = sim + r64[:, None] * s_sm + c64[None, :] * s_sn
        s = tl.load(ptrs, mask=rmask[:, None] & cmask[None, :], other=0.0).to(ACC)
    else:
        s = tl.zeros((BM, BN), dtype=ACC)
        ks0 = tl.arange(0, BK)
        for k0 in range(0, D, BK):
            ks = k0 + ks0
            kmask = ks < D
            a = tl.load(img + r64[:, None] * s_im + ks[None, :] * s_ik, mask=rmask[:, None] & kmask[None, :], other=0.0)
            b = tl.load(txt + c64[None, :] * s_tm + ks[:, None] * s_tk, mask=kmask[:, None] & cmask[None, :], other=0.0)
            if UPCAST:  # the interpreter's dot on 16-bit operands is wrong; products are exact in fp32
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            if ROUND_TF32:
                a = _mma_tf32(_round_tf32(a))
                b = _mma_tf32(_round_tf32(b))
            s = tl.dot(a, b, s, input_precision=DOT_PREC, out_dtype=ACC)
    return s


@triton.jit
def _lse_hard_update(m, l1, at, hard, hidx, s, z, rows, cols, valid, B):
    """One tile's step of the online row statistics: (m, l1) of the split log-sum-exp of z, `at`
    the maximal element l1 leaves out (the row's first), and the hardest off-diagonal s with its
    lowest index."""
    zm = tl.where(valid, z, float("-inf"))
    tm = _rowmax(zm, 1)
    first = tl.min(tl.where(zm == tm[:, None], cols[None, :], B), axis=1)
    ts = tl.sum(tl.where(cols[None, :] == first[:, None], 0.0, tl.exp(zm - tm[:, None])), axis=1)
    up = tm > m  # strict: on a tie the earlier maximum stays the one left out
    l1 = tl.where(up, ts + (1.0 + l1) * tl.exp(m - tm), l1 + (1.0 + ts) * tl.exp(tm - m))
    at = tl.where(up, first, at)
    m = _max_nan(m, tm)
    sm = tl.where(valid & (rows[:, None] != cols[None, :]), s, float("-inf"))
    th = _rowmax(sm, 1)
    tidx = tl.min(tl.where(sm == th[:, None], cols[None, :], B), axis=1)
    better = (th > hard) | (th != th)  # strict: earlier tiles hold lower indices; a NaN sticks
    hidx = tl.where(better, tidx, hidx)
    hard = tl.where(better, th, hard)
    return m, l1, at, hard, hidx


@triton.jit
def _stats_kernel(img, txt, sim, inv_hi, inv_lo, B, D, s_im, s_ik, s_tm, s_tk, s_sm, s_sn, r0, r1,
                  m_r, logl_r, at_r, m_c, logl_c, at_c, lse_r, lse_c, pos, ce_r, ce_c,
                  hard_r, hidx_r, hard_c, hidx_c, FROM_SIM: tl.constexpr, ACC: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
                  BLOCK: tl.constexpr, BK: tl.constexpr, ROUND_TF32: tl.constexpr):  # fmt: skip
    """Samples r0..r1-1 (rows and columns of S); their statistics at [i - r0] of the outputs."""
    rows = r0 + tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    rmask = rows < r1
    inv_tau = _scalar(inv_hi, inv_lo, ACC)
    mr = tl.full((BLOCK,), float("-inf"), ACC)
    mc = tl.full((BLOCK,), float("-inf"), ACC)
    lr = tl.zeros((BLOCK,), ACC)
    lc = tl.zeros((BLOCK,), ACC)
    hr = tl.full((BLOCK,), float("-inf"), ACC)
    hc = tl.full((BLOCK,), float("-inf"), ACC)
    ir = tl.zeros((BLOCK,), tl.int32)
    ic = tl.zeros((BLOCK,), tl.int32)
    ar = tl.zeros((BLOCK,), tl.int32)
    ac = tl.zeros((BLOCK,), tl.int32)
    p = tl.zeros((BLOCK,), ACC)
    for b0 in range(0, B, BLOCK):
        cols = b0 + tl.arange(0, BLOCK)
        valid = rmask[:, None] & (cols < B)[None, :]
        x = _s_tile(img, txt, sim, rows, cols, B, D, s_im, s_ik, s_tm, s_tk, s_sm, s_sn,
                    FROM_SIM, ACC, DOT_PREC, UPCAST, BLOCK, BLOCK, BK, ROUND_TF32)  # fmt: skip
        c = tl.trans(_s_tile(img, txt, sim, cols, rows, B, D, s_im, s_ik, s_tm, s_tk, s_sm, s_sn,
                             FROM_SIM, ACC, DOT_PREC, UPCAST, BLOCK, BLOCK, BK, ROUND_TF32))  # fmt: skip
        mr, lr, ar, hr, ir = _lse_hard_update(mr, lr, ar, hr, ir, x, x * inv_tau, rows, cols, valid, B)
        mc, lc, ac, hc, ic = _lse_hard_update(mc, lc, ac, hc, ic, c, c * inv_tau, rows, cols, valid, B)
        p += tl.sum(tl.where(rows[:, None] == cols[None, :], x, 0.0), axis=1)
    lgr = _log1p(lr)
    lgc = _log1p(lc)
    zd = p * inv_tau  # bitwise the z_ii of the tiles
    o = rows - r0
    tl.store(m_r + o, mr, mask=rmask)
    tl.store(m_c + o, mc, mask=rmask)
    tl.store(logl_r + o, lgr, mask=rmask)
    tl.store(logl_c + o, lgc, mask=rmask)
    tl.store(at_r + o, ar.to(tl.int64), mask=rmask)
    tl.store(at_c + o, ac.to(tl.int64), mask=rmask)
    tl.store(lse_r + o, mr + lgr, mask=rmask)
    tl.store(lse_c + o, mc + lgc, mask=rmask)
    tl.store(pos + o, p, mask=rmask)
    tl.store(ce_r + o, (mr - zd) + lgr, mask=rmask)
    tl.store(ce_c + o, (mc - zd) + lgc, mask=rmask)
    tl.store(hard_r + o, hr, mask=rmask)
    tl.store(hard_c + o, hc, mask=rmask)
    tl.store(hidx_r + o, ir.to(tl.int64), mask=rmask)
    tl.store(hidx_c + o, ic.to(tl.int64), mask=rmask)


@triton.jit
def _coupled_kernel(img, txt, sim, inv_hi, inv_lo, eps_hi, eps_lo, B, D, s_im, s_ik, s_tm, s_tk, s_sm, s_sn, r0, r1,
                    m_r, logl_r, at_r, m_c, logl_c, at_c, ent_r, ent_c, sce, cbcl, A_r, A_c, A_r_rest, A_c_rest,
                    BIAS: tl.constexpr, WITH_A: tl.constexpr,
                    FROM_SIM: tl.constexpr, ACC: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
                    BLOCK: tl.constexpr, BK: tl.constexpr, ROUND_TF32: tl.constexpr):  # fmt: skip
    """Samples r0..r1-1, from pass 1's vectors of the whole batch; outputs at [i - r0]."""
    rows = r0 + tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    rmask = rows < r1
    inv_tau = _scalar(inv_hi, inv_lo, ACC)
    eps = _scalar(eps_hi, eps_lo, ACC)
    # own statistics: rows a of Pr and columns a of Pc
    mr_a = tl.load(m_r + rows, mask=rmask, other=0.0)[:, None]
    lr_a = tl.load(logl_r + rows, mask=rmask, other=0.0)[:, None]
    mc_a = tl.load(m_c + rows, mask=rmask, other=0.0)[:, None]
    lc_a = tl.load(logl_c + rows, mask=rmask, other=0.0)[:, None]
    at_ra = tl.load(at_r + rows, mask=rmask, other=-1)[:, None]
    at_ca = tl.load(at_c + rows, mask=rmask, other=-1)[:, None]
    er = tl.zeros((BLOCK,), ACC)
    ec = tl.zeros((BLOCK,), ACC)
    sw = tl.zeros((BLOCK,), ACC)
    cb = tl.zeros((BLOCK,), ACC)
    ar = tl.zeros((BLOCK,), ACC)
    ac = tl.zeros((BLOCK,), ACC)
    ar_rest = tl.zeros((BLOCK,), ACC)
    ac_rest = tl.zeros((BLOCK,), ACC)
    for b0 in range(0, B, BLOCK):
        cols = b0 + tl.arange(0, BLOCK)
        cmask = cols < B
        valid = rmask[:, None] & cmask[None, :]
        off = valid & (rows[:, None] != cols[None, :])
        zx = inv_tau * _s_tile(img, txt, sim, rows, cols, B, D, s_im, s_ik, s_tm, s_tk, s_sm, s_sn,
                               FROM_SIM, ACC, DOT_PREC, UPCAST, BLOCK, BLOCK, BK, ROUND_TF32)  # fmt: skip
        zc = inv_tau * tl.trans(_s_tile(img, txt, sim, cols, rows, B, D, s_im, s_ik, s_tm, s_tk, s_sm, s_sn,
                                        FROM_SIM, ACC, DOT_PREC, UPCAST, BLOCK, BLOCK, BK, ROUND_TF32))  # fmt: skip
        nx = _nlp(mr_a, zx, lr_a, cols[None, :] == at_ra)  # -log Pr_ij
        nc = _nlp(mc_a, zc, lc_a, cols[None, :] == at_ca)  # -log Pc_ji
        px = tl.exp(-nx)
        pc = tl.exp(-nc)
        er += tl.sum(tl.where(valid, px * nx, 0.0), axis=1)
        ec += tl.sum(tl.where(valid, pc * nc, 0.0), axis=1)
        sw += tl.sum(tl.where(valid, px * nc + pc * nx, 0.0), axis=1)
        qx = _one_minus_p(nx)  # 1 - Pr_ij
        qc = _one_minus_p(nc)  # 1 - Pc_ji
        if BIAS:
            mr_b = tl.load(m_r + cols, mask=cmask, other=0.0)[None, :]
            lr_b = tl.load(logl_r + cols, mask=cmask, other=0.0)[None, :]
            mc_b = tl.load(m_c + cols, mask=cmask, other=0.0)[None, :]
            lc_b = tl.load(logl_c + cols, mask=cmask, other=0.0)[None, :]
            at_cb = tl.load(at_c + cols, mask=cmask, other=-1)[None, :]
            at_rb = tl.load(at_r + cols, mask=cmask, other=-1)[None, :]
            bx = _one_minus_p(_nlp(mc_b, zx, lc_b, rows[:, None] == at_cb))  # 1 - Pc_ij
            bc = _one_minus_p(_nlp(mr_b, zc, lr_b, rows[:, None] == at_rb))  # 1 - Pr_ji
        else:
            bx = 1.0
            bc = 1.0
        cb -= tl.sum(tl.where(off, bx * _log_1m_eps(px, qx, eps) + bc * _log_1m_eps(pc, qc, eps), 0.0), axis=1)
        if WITH_A:
            ex = tl.where(off, bx * px / (qx + eps), 0.0)  # E_r[a, b]
            ecc = tl.where(off, bc * pc / (qc + eps), 0.0)  # E_c[b, a]
            ar += tl.sum(ex, axis=1)
            ac += tl.sum(ecc, axis=1)
            # without the maximal element, summed (A - E_at cancels where E_at is most of A)
            ar_rest += tl.sum(tl.where(cols[None, :] == at_ra, 0.0, ex), axis=1)
            ac_rest += tl.sum(tl.where(cols[None, :] == at_ca, 0.0, ecc), axis=1)
    o = rows - r0
    tl.store(ent_r + o, er, mask=rmask)
    tl.store(ent_c + o, ec, mask=rmask)
    tl.store(sce + o, sw * 0.5, mask=rmask)
    tl.store(cbcl + o, cb, mask=rmask)
    if WITH_A:
        tl.store(A_r + o, ar, mask=rmask)
        tl.store(A_c + o, ac, mask=rmask)
        tl.store(A_r_rest + o, ar_rest, mask=rmask)
        tl.store(A_c_rest + o, ac_rest, mask=rmask)


@triton.jit
def _dsim_kernel(img, txt, sim, inv_hi, inv_lo, eps_hi, eps_lo, B, D, s_im, s_ik, s_tm, s_tk, s_sm, s_sn,
                 m_r, logl_r, m_c, logl_c, A_r, A_c, A_r_rest, A_c_rest, at_r, at_c, hidx_r, hidx_c, g, k_r, k_c,
                 ds, ld_ds, r0, r1,
                 BIAS: tl.constexpr,
                 FROM_SIM: tl.constexpr, ACC: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
                 BLOCK: tl.constexpr, BK: tl.constexpr, ROUND_TF32: tl.constexpr):  # fmt: skip
    """dS[r0:r1, :] (fused.py's docstring), row i of the panel at ds + (i - r0) * ld_ds."""
    rows = r0 + tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    rmask = rows < r1
    cmask = cols < B
    inv_tau = _scalar(inv_hi, inv_lo, ACC)
    eps = _scalar(eps_hi, eps_lo, ACC)
    z = inv_tau * _s_tile(img, txt, sim, rows, cols, B, D, s_im, s_ik, s_tm, s_tk, s_sm, s_sn,
                          FROM_SIM, ACC, DOT_PREC, UPCAST, BLOCK, BLOCK, BK, ROUND_TF32)  # fmt: skip
    at_i = tl.load(at_r + rows, mask=rmask, other=-1)[:, None]
    at_j = tl.load(at_c + cols, mask=cmask, other=-1)[None, :]
    is_at_r = cols[None, :] == at_i
    is_at_c = rows[:, None] == at_j
    nr = _nlp(tl.load(m_r + rows, mask=rmask, other=0.0)[:, None], z, tl.load(logl_r + rows, mask=rmask, other=0.0)[:, None], is_at_r)
    nc = _nlp(tl.load(m_c + cols, mask=cmask, other=0.0)[None, :], z, tl.load(logl_c + cols, mask=cmask, other=0.0)[None, :], is_at_c)
    pr = tl.exp(-nr)
    pc = tl.exp(-nc)
    qr = _one_minus_p(nr)
    qc = _one_minus_p(nc)
    diag = rows[:, None] == cols[None, :]
    if BIAS:
        br = qc  # b_ij = 1 - Pc_ij, b'_ij = 1 - Pr_ij: the same element
        bc = qr
    else:
        br = 1.0
        bc = 1.0
    er = tl.where(diag, 0.0, br * pr / (qr + eps))
    ec = tl.where(diag, 0.0, bc * pc / (qc + eps))
    g_i = tl.load(g + rows, mask=rmask, other=0.0).to(ACC)[:, None]
    g_j = tl.load(g + cols, mask=cmask, other=0.0).to(ACC)[None, :]
    a_i = tl.load(A_r + rows, mask=rmask, other=0.0)[:, None]
    a_j = tl.load(A_c + cols, mask=cmask, other=0.0)[None, :]
    a_rest_i = tl.load(A_r_rest + rows, mask=rmask, other=0.0)[:, None]
    a_rest_j = tl.load(A_c_rest + cols, mask=cmask, other=0.0)[None, :]
    # E - P·A cancels at the row's (column's) maximal element when its P is near 1 (both are
    # ~1/(1 - P)): there the same value as E·(1 - P) - P·A_rest
    row = tl.where(is_at_r, er * qr - pr * a_rest_i, er - pr * a_i)
    col = tl.where(is_at_c, ec * qc - pc * a_rest_j, ec - pc * a_j)
    d = (g_i * row + g_j * col) * inv_tau
    kr_i = tl.load(k_r + rows, mask=rmask, other=0.0).to(ACC)[:, None]
    kc_i = tl.load(k_c + rows, mask=rmask, other=0.0).to(ACC)[:, None]
    kc_j = tl.load(k_c + cols, mask=cmask, other=0.0).to(ACC)[None, :]
    h_i = tl.load(hidx_r + rows, mask=rmask, other=-1)[:, None]
    h_j = tl.load(hidx_c + cols, mask=cmask, other=-1)[None, :]
    d = d - tl.where(diag, kr_i + kc_i, 0.0)
    d = d + tl.where(cols[None, :] == h_i, kr_i, 0.0)
    d = d + tl.where(rows[:, None] == h_j, kc_j, 0.0)
    ptrs = ds + (rows - r0).to(tl.int64)[:, None] * ld_ds + cols[None, :]
    tl.store(ptrs, d.to(ds.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])


# ---------------------------------------------------------------------------- Python side

# One fixed config per mode (opt-in tuning is for a GPU session). GPU: the pair kernels hold two
# tiles and their softmax terms, so 32×32 with 4 warps; the dS kernel one 64×64 tile with 8 warps.
# cuobjdump -res-usage (scripts/triton_aot_check.py, Triton 3.9, sm_90) for bf16 streaming and
# from a matrix: the coupled kernel with bias and A sums spills 96-104 B per thread (since expm1
# and A_rest; 0 before), the others ≤ 8 B; fp32/fp64 streaming (FMA dots) spill more (fp32 IEEE:
# stats 88 B, coupled 416 B). Timings have not chosen these yet. The interpreter runs programs one
# by one: big tiles.
_BLOCK = 64 if INTERPRET else 32
_DS_BLOCK = 64
_BK = 64 if INTERPRET else 32
_NUM_WARPS = 4
_DS_NUM_WARPS = 4 if INTERPRET else 8
_MATERIALISE_MAX_B = 32768  # S alone is 4 GiB there; beyond it streaming wins on memory anyway
_CPU_MEMORY = 8 << 30  # what the interpreter pretends is free
_PANEL_BYTES = 64 << 20  # streaming backward: the dS panel (< 1 % of a 65536² fp32 matrix)

# The forward's entries besides the Kernels contract, for the backward (names as in
# srem_kernels/dense_srem.py): the split log-sum-exp; each row's (column's) maximal element `at`, the
# one log l leaves out; A without it. REST_KEYS only where the backward will run (not stats_only).
SPLIT_KEYS = ("m_r", "logl_r", "at_r", "m_c", "logl_c", "at_c")
REST_KEYS = ("A_r_rest", "A_c_rest")
# Compile options of every launch. No mul/add contraction into FMA (LLVM and ptxas; the default
# is on through Triton 3.9): z = s·(1/tau) must round as it did when the row maximum m was taken,
# else (m - z) + log l at the maximum is log l plus z's rounding error, not log l, and 1 - P there
# (~1e-7 on confident rows) is lost. The interpreter never contracts; this makes the GPU agree.
_COMPILE_OPTIONS = {"enable_fp_fusion": False}
CONTRACT_KEYS = (
    "lse_r", "lse_c", "pos", "ce_i2t", "ce_t2i", "entropy_i2t", "entropy_t2i", "hard_i2t", "hard_i2t_index",
    "hard_t2i", "hard_t2i_index", "sce", "loss_cbcl", "A_r", "A_c",
)  # fmt: skip


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _grad_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of dS for the two gradient matmuls: bf16 keeps the tensor-core path (its range is
    fp32's); fp16 would underflow dS (g/B/tau), so it goes through fp32."""
    return dtype if dtype in (torch.bfloat16, torch.float32, torch.float64) else torch.float32


def _dot_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float64:
        return "ieee"
    if dtype == torch.float32:
        return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    return "tf32"  # 16-bit operands: the tensor-core default; precision is not a choice there


def _split(v: float) -> tuple[float, float]:
    """v as two fp32 kernel arguments (hi, lo) for _scalar."""
    hi = float(np.float32(v))
    return hi, float(np.float32(v - hi))


def _on(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensors' (cuda:1 as well)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _tile_size(name: str, value: int, least: int) -> int:
    if value < least or value & (value - 1):
        raise ValueError(f"{name} must be a power of two ≥ {least} (tl.dot on a GPU needs 16); got {value}")
    return value


def _matmul_acc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with a result in the accumulation dtype (fp32 for 16-bit inputs)."""
    acc = _acc_dtype(a.dtype)
    if a.dtype != acc and a.is_cuda:
        try:
            return torch.mm(a, b, out_dtype=acc)  # tensor cores, fp32 out (torch ≥ 2.8)
        except (TypeError, RuntimeError):
            pass
    return a.to(acc) @ b.to(acc)


class TritonKernels:
    """The Kernels contract of srem_kernels/fused.py in Triton (see the module docstring).

    strategy: "streaming", "materialised" or None/"auto" (then SREM_TRITON_STRATEGY, else chosen
    from B, D and free memory; the similarity path always reads the given matrix). block (the two
    passes), ds_block (the dS kernel), bk (D-chunk of tl.dot), panel_rows (streaming backward):
    tile sizes; tests use small ones to cross tile and panel edges.
    """

    supports_stats_only = True  # forward(..., stats_only=True) skips A_r, A_c and the saved S

    def __init__(self, strategy: str | None = None, *, block: int | None = None, ds_block: int | None = None,
                 bk: int | None = None, panel_rows: int | None = None):  # fmt: skip
        if strategy not in (None, "auto", *STRATEGIES):
            raise ValueError(f"strategy must be one of 'auto', {', '.join(map(repr, STRATEGIES))}; got {strategy!r}")
        self.strategy = strategy
        self.block = _tile_size("block", _BLOCK if block is None else block, 16)
        self.ds_block = _tile_size("ds_block", ds_block if ds_block is not None else block or _DS_BLOCK, 16)
        self.bk = _tile_size("bk", _BK if bk is None else bk, 16)
        self.panel_rows = panel_rows
        self._chosen: dict[tuple, str] = {}
        fused.register_kernels(self)

    # ------------------------------------------------------------------ planning

    def strategy_for(self, B: int, D: int, dtype: torch.dtype, device: torch.device) -> str:
        """The strategy of an (img, txt) call; fixed per shape once chosen, so that a traced
        (fake) call and the real one agree."""
        forced = self.strategy or os.environ.get("SREM_TRITON_STRATEGY") or "auto"
        if forced != "auto":
            if forced not in STRATEGIES:
                raise ValueError(f"SREM_TRITON_STRATEGY must be 'auto' or one of {STRATEGIES}; got {forced!r}")
            return forced
        key = (B, D, dtype, device)
        if key not in self._chosen:
            need = B * B * (_acc_dtype(dtype).itemsize + _grad_dtype(dtype).itemsize)
            free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else _CPU_MEMORY
            fits = B <= _MATERIALISE_MAX_B and need <= free // 2
            self._chosen[key] = "materialised" if fits else "streaming"
        return self._chosen[key]

    def saved_layout(self, img, txt, sim, *, stats_only: bool = False) -> dict[str, tuple[tuple, torch.dtype]]:
        """name -> (shape, dtype) of what forward returns, in order (fused.py's custom op uses it
        for its fake implementation)."""
        x = sim if sim is not None else img
        B, acc = x.shape[0], _acc_dtype(x.dtype)
        keys = list(CONTRACT_KEYS) + list(SPLIT_KEYS) + list(REST_KEYS)
        if stats_only:
            keys = [k for k in keys if k not in ("A_r", "A_c", *REST_KEYS)]
        out = {k: ((B,), torch.int64 if k.endswith("_index") or k.startswith("at_") else acc) for k in keys}
        if sim is None and not stats_only and self.strategy_for(B, img.shape[1], img.dtype, img.device) == "materialised":
            out["S"] = ((B, B), acc)
        return out

    def _launch_args(self, img, txt, sim, block=None, num_warps=_NUM_WARPS):
        """(source pointers and strides, B, D, constexprs) for FROM_SIM or tiles from img/txt."""
        if sim is not None:
            B, dtype = sim.shape[0], sim.dtype
            ptrs = (sim, sim, sim, 1, 0, 0, 0, 0, sim.stride(0), sim.stride(1))
            from_sim = True
        else:
            B, dtype = img.shape[0], img.dtype
            ptrs = (img, txt, img, img.shape[1], img.stride(0), img.stride(1), txt.stride(0), txt.stride(1), 0, 0)
            from_sim = False
        acc = _acc_dtype(dtype)
        meta = dict(
            FROM_SIM=from_sim,
            ACC=tl.float64 if acc == torch.float64 else tl.float32,
            DOT_PREC=_dot_precision(dtype),
            UPCAST=INTERPRET and dtype in (torch.float16, torch.bfloat16),
            ROUND_TF32=dtype == torch.float32 and _dot_precision(dtype) == "tf32",
            BLOCK=block or self.block,
            BK=self.bk,
            num_warps=num_warps,
            **_COMPILE_OPTIONS,
        )
        return B, ptrs, acc, meta

    # ------------------------------------------------------------------ forward

    def forward(self, img, txt, sim, *, tau, eps, bias, stats_only: bool = False):
        layout = self.saved_layout(img, txt, sim, stats_only=stats_only)
        dev = (sim if sim is not None else img).device
        out = {k: _alloc.empty(shape, dtype=dt, device=dev) for k, (shape, dt) in layout.items() if k != "S"}
        if "S" in layout:  # materialised: S once, then the passes read it
            out["S"] = _matmul_acc(img, txt.T)
            src = (None, None, out["S"])
        elif sim is None and self.strategy_for(img.shape[0], img.shape[1], img.dtype, dev) == "materialised":
            src = (None, None, _matmul_acc(img, txt.T))  # stats only: S lives for the call
        else:
            src = (img, txt, sim)
        B = src[2].shape[0] if src[2] is not None else src[0].shape[0]
        self._pass1(src, 0, B, out, tau)
        self._pass2(src, 0, B, out, out, tau, eps, bias, stats_only)
        return {k: out[k] for k in layout}

    def _pass1(self, src, lo, hi, out, tau):
        """_stats_kernel on samples lo..hi-1 of src = (img, txt, sim) into out's vectors (hi - lo
        long, or whole-batch ones when lo=0, hi=B)."""
        B, ptrs, acc, meta = self._launch_args(*src)
        with _on(out["m_r"]):
            _stats_kernel[(triton.cdiv(hi - lo, self.block),)](
                ptrs[0], ptrs[1], ptrs[2], *_split(1.0 / tau), B, *ptrs[3:], lo, hi,
                out["m_r"], out["logl_r"], out["at_r"], out["m_c"], out["logl_c"], out["at_c"], out["lse_r"],
                out["lse_c"], out["pos"], out["ce_i2t"], out["ce_t2i"], out["hard_i2t"], out["hard_i2t_index"],
                out["hard_t2i"], out["hard_t2i_index"], **meta,
            )  # fmt: skip

    def _pass2(self, src, lo, hi, first, out, tau, eps, bias, stats_only):
        """_coupled_kernel on samples lo..hi-1, reading pass 1's whole-batch vectors `first`."""
        B, ptrs, acc, meta = self._launch_args(*src)
        a = [out.get(k, out["sce"]) for k in ("A_r", "A_c", *REST_KEYS)]  # placeholders without WITH_A: never written
        with _on(out["sce"]):
            _coupled_kernel[(triton.cdiv(hi - lo, self.block),)](
                ptrs[0], ptrs[1], ptrs[2], *_split(1.0 / tau), *_split(eps), B, *ptrs[3:], lo, hi,
                *(first[k].contiguous() for k in SPLIT_KEYS), out["entropy_i2t"],
                out["entropy_t2i"], out["sce"], out["loss_cbcl"], *a, BIAS=bool(bias), WITH_A=not stats_only, **meta,
            )  # fmt: skip

    # ------------------------------------------------------------------ row ranges (fused.py)
    # Tiles are always recomputed from the gathered img/txt (streaming): a rank never holds B×B.

    supports_rows = True

    def _vectors(self, keys, n, img):
        acc = _acc_dtype(img.dtype)
        return {k: _alloc.empty((n,), dtype=torch.int64 if k.endswith("_index") or k.startswith("at_") else acc,
                                device=img.device) for k in keys}  # fmt: skip

    def pass1_rows(self, img, txt, lo, hi, *, tau):
        keys = (*SPLIT_KEYS, "lse_r", "lse_c", "pos", "ce_i2t", "ce_t2i", "hard_i2t", "hard_i2t_index", "hard_t2i",
                "hard_t2i_index")  # fmt: skip
        out = self._vectors(keys, hi - lo, img)
        self._pass1((img, txt, None), lo, hi, out, tau)
        return out

    def pass2_rows(self, img, txt, lo, hi, first, *, tau, eps, bias, stats_only=False):
        keys = ("entropy_i2t", "entropy_t2i", "sce", "loss_cbcl") + (() if stats_only else ("A_r", "A_c", *REST_KEYS))
        out = self._vectors(keys, hi - lo, img)
        self._pass2((img, txt, None), lo, hi, first, out, tau, eps, bias, stats_only)
        return out

    def backward_rows(self, img, txt, lo, hi, saved, *, tau, eps, bias, g_cbcl, k_r, k_c):
        B, D = img.shape
        gd = _grad_dtype(img.dtype)
        rows = min(self._panel_rows_for(B, gd), hi - lo)
        ds = _alloc.empty((rows, B), dtype=gd, device=img.device)
        grads = []
        # d_img[I] = dS[I, :]·txt; d_txt[I] = dS[:, I]ᵀ·img, the rows of the swapped problem
        for x, y, s, kr, kc in ((img, txt, saved, k_r, k_c), (txt, img, fused.swap_sides(saved), k_c, k_r)):
            out = _alloc.empty((hi - lo, D), dtype=img.dtype, device=img.device)
            y_g = y.to(gd)
            for r0 in range(lo, hi, rows):
                r1 = min(r0 + rows, hi)
                p = ds[: r1 - r0]
                self._dsim(x, y, None, s, tau, eps, bias, g_cbcl, kr, kc, p, r0, r1)
                out[r0 - lo : r1 - lo] = p @ y_g
            grads.append(out)
        return grads[0], grads[1]

    def _panel_rows_for(self, B, gd):
        """Rows of a streaming backward's dS panel."""
        return self.panel_rows or max(self.ds_block, (_PANEL_BYTES // (B * gd.itemsize)) // self.ds_block * self.ds_block)

    # ------------------------------------------------------------------ backward

    def backward(self, img, txt, sim, saved, *, tau, eps, bias, g_cbcl, k_r, k_c):
        if sim is not None:
            d_sim = _alloc.empty(sim.shape, dtype=sim.dtype, device=sim.device)
            self._dsim(None, None, sim, saved, tau, eps, bias, g_cbcl, k_r, k_c, d_sim, 0, sim.shape[0])
            return d_sim
        B, D = img.shape
        gd = _grad_dtype(img.dtype)
        txt_g, img_g = txt.to(gd), img.to(gd)
        if "S" in saved:  # materialised
            ds = _alloc.empty((B, B), dtype=gd, device=img.device)
            self._dsim(None, None, saved["S"], saved, tau, eps, bias, g_cbcl, k_r, k_c, ds, 0, B)
            return (ds @ txt_g).to(img.dtype), (ds.T @ img_g).to(txt.dtype)
        # streaming: dS a panel of rows at a time; the products accumulate in a fixed order
        rows = min(self._panel_rows_for(B, gd), B)
        ds = _alloc.empty((rows, B), dtype=gd, device=img.device)
        d_img = _alloc.empty((B, D), dtype=img.dtype, device=img.device)
        d_txt = torch.zeros((B, D), dtype=_acc_dtype(img.dtype), device=img.device)
        for r0 in range(0, B, rows):
            r1 = min(r0 + rows, B)
            p = ds[: r1 - r0]
            self._dsim(img, txt, None, saved, tau, eps, bias, g_cbcl, k_r, k_c, p, r0, r1)
            d_img[r0:r1] = p @ txt_g
            d_txt += (p.T @ img_g[r0:r1]).to(d_txt.dtype)
        return d_img, d_txt.to(txt.dtype)

    def _dsim(self, img, txt, sim, saved, tau, eps, bias, g_cbcl, k_r, k_c, out, r0, r1):
        B, ptrs, acc, meta = self._launch_args(img, txt, sim, self.ds_block, _DS_NUM_WARPS)
        vec = [saved[k].contiguous() for k in ("m_r", "logl_r", "m_c", "logl_c", "A_r", "A_c", "A_r_rest", "A_c_rest",
                                                  "at_r", "at_c", "hard_i2t_index", "hard_t2i_index")]  # fmt: skip
        gk = [v.to(acc).contiguous() for v in (g_cbcl, k_r, k_c)]
        grid = (triton.cdiv(r1 - r0, self.ds_block), triton.cdiv(B, self.ds_block))
        with _on(out):
            _dsim_kernel[grid](
                ptrs[0], ptrs[1], ptrs[2], *_split(1.0 / tau), *_split(eps), B, *ptrs[3:], *vec, *gk, out, out.stride(0), r0, r1,
                BIAS=bool(bias), **meta,
            )  # fmt: skip

"""The Triton backend's B×B kernels: the two forward passes over tile pairs and the dS kernel.

Pass kernels (PAIRS, one process): a program owns a pair of super-blocks (tiles._program)
and, for every pair of tile blocks {a, b} in it, forms X = S[a, b] and Yᵀ = S[b, a]ᵀ once (one
tile, X, where a = b), so each element of S is formed once per pass and its probabilities are
evaluated once in pass 2. Element (i, j) of X serves row i of S and column j; element (i, j) of
Yᵀ serves column i and row j. Reduced along j, both give sample i's (block a's) row and column
statistics, kept in registers over the program's b loop and written once per a; reduced along
i, sample j's (block b's), merged into b's slot in the partials buffer per pair (only this
program writes that slot). Every sample has K slots, one per super-block; a merge kernel
(merge.py) combines them in slot order. Deterministic: no atomics, fixed order.

Row ranges (not PAIRS, the distributed loss): a program owns row block a of the range and one
column super-block; both tiles of every pair are formed and only their row reduction is kept.

_dsim_kernel: dS (fused.py's docstring) one tile per program, no reduction; the two gradient
products are torch.matmul on dS.

_round_tf32_kernel: fp32 operands of tf32 dots rounded to the nearest TF32, once per call
(O(B·D)), not per tile in the B×B loops.
"""

from __future__ import annotations

import triton
import triton.language as tl

from srem_kernels.backends.triton.tiles import (
    _f64, _half, _inv_tau, _nlp, _one_minus_p, _pair_halves, _program, _round_tf32, _s_tile, _side_put, _stats_merge, _sums_put,
    _terms, _tile_stats,
)  # fmt: skip


@triton.jit(do_not_specialize=["tau_arg"])
def _pass1_kernel(img, txt, sim, tau_arg, B, D, s_im, s_ik, s_tm, s_tk, s_sm, s_sn, r0, R, NBM, NBD, G, K,
                  pf, pi, pos,
                  PAIRS: tl.constexpr, FROM_SIM: tl.constexpr, ACC: tl.constexpr, DOT_PREC: tl.constexpr,
                  UPCAST: tl.constexpr, TF32: tl.constexpr, TAU_PTR: tl.constexpr, BM: tl.constexpr,
                  BN: tl.constexpr, SPLIT: tl.constexpr, BK: tl.constexpr):  # fmt: skip
    """Partial split log-sum-exps and hardest negatives, rows and columns, of samples r0..r0+R-1
    into pf/pi; S_ii into pos[i - r0]. Tiles of BM × BD (BD = SPLIT·BN), reduced BN columns at
    a time."""
    BD: tl.constexpr = BN * SPLIT
    a0, a1, d0, d1, slot_a, slot_b, diag, live = _program(NBM, NBD, G, K, BM // BD, PAIRS)
    if live:
        inv_tau = _inv_tau(tau_arg, TAU_PTR).to(ACC)
        arm = tl.arange(0, BM)
        arn = tl.arange(0, BN)
        ard = tl.arange(0, BD)
        for a in range(a0, a1):
            x_a = a * BM + arm  # local sample index
            rows = r0 + x_a
            rmask = x_a < R
            mr = tl.full((BM,), float("-inf"), ACC)
            lr = tl.zeros((BM,), ACC)
            atr = tl.zeros((BM,), tl.int32) + B
            hr = mr
            hir = atr
            mc = mr
            lc = lr
            atc = atr
            hc = hr
            hic = hir
            for bd in range(tl.where(diag, a * (BM // BD), d0), d1):
                own = (bd * BD) // BM == a  # block a's own block of S: no transposed tile
                x0, x1, y0, y1 = _pair_halves(img, txt, sim, rows, bd * BD + ard, B, D, s_im, s_ik, s_tm, s_tk, s_sm,
                                              s_sn, own & PAIRS, FROM_SIM, ACC, DOT_PREC, UPCAST, TF32, BM, BD, BK,
                                              SPLIT)  # fmt: skip
                for h in tl.static_range(SPLIT):
                    x = _half(x0, x1, h)
                    yt = _half(y0, y1, h)
                    b = bd * SPLIT + h
                    if b * BN < B:  # the last dot tile's second half may lie beyond B
                        cols = b * BN + arn
                        cmask = cols < B
                        valid = rmask[:, None] & cmask[None, :]
                        zx = x * inv_tau
                        # along j: row i of S (sample i's i2t problem)
                        m2, l2, at2, h2, hi2 = _tile_stats(x, zx, cols[None, :], rows[:, None], valid, B, 1)
                        mr, lr, atr, hr, hir = _stats_merge(mr, lr, atr, hr, hir, m2, l2, at2, h2, hi2)
                        if (r0 + a * BM < b * BN + BN) & (b * BN < r0 + a * BM + BM):  # the tile holds some S_ii
                            dg = valid & (rows[:, None] == cols[None, :])
                            has = tl.max(dg.to(tl.int32), axis=1) > 0
                            tl.store(pos + x_a, tl.sum(tl.where(dg, x, 0.0), axis=1), mask=has)
                        first = a == a0
                        if PAIRS:  # along i: column j of S (sample j's t2i problem)
                            mcj, lcj, atcj, hcj, hicj = _tile_stats(x, zx, rows[:, None], cols[None, :], valid, B, 0)
                            _side_put(pf, pi, 3, slot_b, cols, K, R, cmask, first, mcj, lcj, atcj, hcj, hicj)
                        if not (own & PAIRS):  # Yᵀ[i, j] = S_ji: along j column i of S
                            zy = yt * inv_tau
                            m2, l2, at2, h2, hi2 = _tile_stats(yt, zy, cols[None, :], rows[:, None], valid, B, 1)
                            mc, lc, atc, hc, hic = _stats_merge(mc, lc, atc, hc, hic, m2, l2, at2, h2, hi2)
                            if PAIRS:  # along i: row j of S (own: sample j is in block a, its row is in mr)
                                mrj, lrj, atrj, hrj, hirj = _tile_stats(yt, zy, rows[:, None], cols[None, :], valid, B, 0)
                                _side_put(pf, pi, 0, slot_b, cols, K, R, cmask, first, mrj, lrj, atrj, hrj, hirj)
            # Block a's slot. A diagonal program has written its column side (its own block's X) and,
            # for a > a0, its row side (Yᵀ of the pairs {a', a}, a' < a): merged into, not overwritten.
            _side_put(pf, pi, 0, slot_a, x_a, K, R, rmask, ~diag | (a == a0), mr, lr, atr, hr, hir)
            _side_put(pf, pi, 3, slot_a, x_a, K, R, rmask, ~diag, mc, lc, atc, hc, hic)


@triton.jit(do_not_specialize=["tau_arg", "eps_bits"])
def _pass2_kernel(img, txt, sim, tau_arg, eps_bits, B, D, s_im, s_ik, s_tm, s_tk, s_sm, s_sn,
                  r0, R, NBM, NBD, G, K, m_r, logl_r, at_r, m_c, logl_c, at_c, pf, scr,
                  PAIRS: tl.constexpr, BIAS: tl.constexpr, WITH_A: tl.constexpr, FROM_SIM: tl.constexpr,
                  ACC: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr, TF32: tl.constexpr,
                  TAU_PTR: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, SPLIT: tl.constexpr,
                  BK: tl.constexpr):  # fmt: skip
    """Partial entropies, sce, CBCL and A sums of samples r0..r0+R-1 into pf, from pass 1's
    whole-batch split log-sum-exps (m, log l, at of rows and columns). scr: 2·BM×BM per
    super-block, where a diagonal program stages its own blocks' -log Pr and -log Pc for sce
    (P = exp(-(-log P)) recomputed where they are read: the same bits, half the buffer)."""
    BD: tl.constexpr = BN * SPLIT
    RT: tl.constexpr = BM // BN
    a0, a1, d0, d1, slot_a, slot_b, diag, live = _program(NBM, NBD, G, K, BM // BD, PAIRS)
    if live:
        inv_tau = _inv_tau(tau_arg, TAU_PTR).to(ACC)
        eps = _f64(eps_bits).to(ACC)
        arm = tl.arange(0, BM)
        arn = tl.arange(0, BN)
        ard = tl.arange(0, BD)
        zn = tl.zeros((BN,), ACC)
        stage = scr + tl.cast(slot_b, tl.int64) * (2 * BM * BM)
        for a in range(a0, a1):
            x_a = a * BM + arm
            rows = r0 + x_a
            rmask = x_a < R
            # sample i as a row of S (Pr_ij) and as a column (Pc_ji)
            mr_a = tl.load(m_r + rows, mask=rmask, other=0.0)[:, None]
            lr_a = tl.load(logl_r + rows, mask=rmask, other=0.0)[:, None]
            atr_a = tl.load(at_r + rows, mask=rmask, other=-1)[:, None]
            mc_a = tl.load(m_c + rows, mask=rmask, other=0.0)[:, None]
            lc_a = tl.load(logl_c + rows, mask=rmask, other=0.0)[:, None]
            atc_a = tl.load(at_c + rows, mask=rmask, other=-1)[:, None]
            e_r = tl.zeros((BM,), ACC)
            e_c = e_r
            sw = e_r
            cb = e_r
            A_r = e_r
            A_c = e_r
            A_rr = e_r
            A_cr = e_r
            for bd in range(tl.where(diag, a * (BM // BD), d0), d1):
                own = (bd * BD) // BM == a
                x0, x1, y0, y1 = _pair_halves(img, txt, sim, rows, bd * BD + ard, B, D, s_im, s_ik, s_tm, s_tk, s_sm,
                                              s_sn, own & PAIRS, FROM_SIM, ACC, DOT_PREC, UPCAST, TF32, BM, BD, BK,
                                              SPLIT)  # fmt: skip
                for h in tl.static_range(SPLIT):
                    zx = _half(x0, x1, h) * inv_tau
                    zy = _half(y0, y1, h) * inv_tau
                    b = bd * SPLIT + h
                    if b * BN < B:  # the last dot tile's second half may lie beyond B
                        cols = b * BN + arn
                        cmask = cols < B
                        valid = rmask[:, None] & cmask[None, :]
                        off = valid & (rows[:, None] != cols[None, :])
                        mr_b = tl.load(m_r + cols, mask=cmask, other=0.0)[None, :]
                        lr_b = tl.load(logl_r + cols, mask=cmask, other=0.0)[None, :]
                        atr_b = tl.load(at_r + cols, mask=cmask, other=-1)[None, :]
                        mc_b = tl.load(m_c + cols, mask=cmask, other=0.0)[None, :]
                        lc_b = tl.load(logl_c + cols, mask=cmask, other=0.0)[None, :]
                        atc_b = tl.load(at_c + cols, mask=cmask, other=-1)[None, :]
                        at_ux = cols[None, :] == atr_a
                        at_vx = rows[:, None] == atc_b
                        ux = _nlp(mr_a, zx, lr_a, at_ux)  # -log Pr_ij
                        vx = _nlp(mc_b, zx, lc_b, at_vx)  # -log Pc_ij
                        pux = tl.exp(-ux)
                        pvx = tl.exp(-vx)
                        ei, ci, ai, ri, ej, cj, aj, rj = _terms(ux, vx, pux, pvx, at_ux, at_vx, valid, off, eps, BIAS,
                                                                WITH_A)  # fmt: skip
                        e_r += ei
                        cb += ci
                        A_r += ai
                        A_rr += ri
                        if own & PAIRS:
                            # block a's own block of S: sce pairs (i, j) with (j, i), in another column
                            # half of it: staged, summed after the b loop; column sums are block a's
                            o = arm[:, None] * BM + ((b - a * RT) * BN + arn)[None, :]
                            tl.store(stage + o, ux)
                            tl.store(stage + BM * BM + o, vx)
                            _sums_put(pf, slot_b, cols, K, R, cmask, a == a0, zn, ej, zn, cj, zn, aj, zn, rj)
                        else:
                            at_uy = cols[None, :] == atc_a
                            at_vy = rows[:, None] == atr_b
                            uy = _nlp(mc_a, zy, lc_a, at_uy)  # -log Pc_ji
                            vy = _nlp(mr_b, zy, lr_b, at_vy)  # -log Pr_ji
                            puy = tl.exp(-uy)
                            pvy = tl.exp(-vy)
                            # sce_i = sum_j Pr_ij (-log Pc_ji) + Pc_ji (-log Pr_ij) for i in a, and
                            # the same for j in b; first, so that X's tiles die before Yᵀ's terms
                            sw += tl.sum(tl.where(valid, pux * uy + puy * ux, 0.0), axis=1)
                            sj = tl.sum(tl.where(valid, pvy * vx + pvx * vy, 0.0), axis=0)
                            ei2, ci2, ai2, ri2, ej2, cj2, aj2, rj2 = _terms(uy, vy, puy, pvy, at_uy, at_vy, valid, off,
                                                                           eps, BIAS, WITH_A)  # fmt: skip
                            e_c += ei2
                            cb += ci2
                            A_c += ai2
                            A_cr += ri2
                            if PAIRS:  # block b's samples: their row problems from Yᵀ, column problems from X
                                _sums_put(pf, slot_b, cols, K, R, cmask, a == a0, ej2, ej, sj, cj + cj2, aj2, aj, rj2, rj)
            if diag:  # sce of block a's own block, from the staged tiles: (j, i) read transposed
                tl.debug_barrier()
                for c in range(0, RT):
                    j = c * BN + arn
                    ok = rmask[:, None] & ((a * BM + j) < R)[None, :]
                    o = arm[:, None] * BM + j[None, :]
                    t = j[None, :] * BM + arm[:, None]
                    u = tl.load(stage + o)  # -log Pr_ij
                    v = tl.load(stage + BM * BM + t)  # -log Pc_ji
                    sw += tl.sum(tl.where(ok, tl.exp(-u) * v + tl.exp(-v) * u, 0.0), axis=1)
                tl.debug_barrier()  # the next row block stages into the same place
            _sums_put(pf, slot_a, x_a, K, R, rmask, ~diag, e_r, e_c, sw, cb, A_r, A_c, A_rr, A_cr)


@triton.jit(do_not_specialize=["tau_arg", "eps_bits"])
def _dsim_kernel(img, txt, sim, tau_arg, eps_bits, B, D, s_im, s_ik, s_tm, s_tk, s_sm, s_sn,
                 m_r, logl_r, m_c, logl_c, A_r, A_c, A_r_rest, A_c_rest, at_r, at_c, hidx_r, hidx_c, g, k_r, k_c,
                 ds, ld_ds, r0, r1, tau_part,
                 BIAS: tl.constexpr, FROM_SIM: tl.constexpr, ACC: tl.constexpr, DOT_PREC: tl.constexpr,
                 UPCAST: tl.constexpr, TF32: tl.constexpr, TAU_PTR: tl.constexpr, TAU_GRAD: tl.constexpr,
                 T: tl.constexpr, BK: tl.constexpr):  # fmt: skip
    """dS[r0:r1, :] (fused.py's docstring), row i of the panel at ds + (i - r0) * ld_ds. TAU_GRAD:
    the tile's share of d_tau (fused.py) into tau_part[program], one per program (no atomics:
    the caller sums them in a fixed order)."""
    rows = r0 + tl.program_id(0) * T + tl.arange(0, T)
    cols = tl.program_id(1) * T + tl.arange(0, T)
    rmask = rows < r1
    cmask = cols < B
    inv_tau = _inv_tau(tau_arg, TAU_PTR).to(ACC)
    eps = _f64(eps_bits).to(ACC)
    z = inv_tau * _s_tile(img, txt, sim, rows, cols, B, D, s_im, s_ik, s_tm, s_tk, s_sm, s_sn,
                          FROM_SIM, ACC, DOT_PREC, UPCAST, TF32, T, T, BK)  # fmt: skip
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
    gr = g_i * row
    gc = g_j * col
    d = (gr + gc) * inv_tau
    if TAU_GRAD:  # -log P is what -sum dS·Z reduces to per row and column (fused.py): no cancellation
        t = tl.where(rmask[:, None] & cmask[None, :], gr * nr + gc * nc, 0.0)
        tl.store(tau_part + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1),
                 tl.sum(tl.sum(t, axis=1), axis=0) * inv_tau)
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


@triton.jit
def _round_tf32_kernel(x, y, n, D, s_m, s_k, BLOCK: tl.constexpr):
    """y = x rounded to the nearest TF32 (tiles._round_tf32), x an n/D × D matrix with strides
    (s_m, s_k), y row-major."""
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = o < n
    v = tl.load(x + (o // D) * s_m + (o % D) * s_k, mask=mask)
    tl.store(y + o, _round_tf32(v), mask=mask)

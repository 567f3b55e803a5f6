"""Tile helpers of the Triton backend (@triton.jit device functions): forming a tile of S, the
probabilities and per-element terms of SPEC.md on it, online reductions and their merges.

Numerics (docs/numerics.md): a row's log-sum-exp in the split form (m, l1) with l = 1 + l1, l1
the sum without one maximal element `at` (the lowest index among equal maxima), so that
log l = log1p(l1) stays exact for confident rows; -log P = (m - z) + log l, and exactly log l at
`at` by construction, so a tile of S whose last bit differs between kernels (tile shapes, wgmma vs
mma.sync, the interpreter's BLAS rounding by offset) cannot move 1 - P there.

Where the interpreter and the GPU differ, each gets its own definition with the same arithmetic:
libdevice (log1p, expm1, log) on the GPU; the max (tl.max drops NaN on both; the GPU's
NaN-propagating tl.maximum in a custom reduction is slow in the interpreter); the tf32 MMA, which
reads the top 19 bits of its fp32 operands on the GPU, is emulated for the interpreter's fp32 dot.
"""

from __future__ import annotations

import contextlib
import os
import struct

import torch
import triton
import triton.language as tl

from srem_kernels import _tau as _tau_mod

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_INTERPRETED = tl.constexpr(INTERPRET)

# ---------------------------------------------------------------------------- launches (host side)
# Compile options of every launch (the passes' and the glue's). No mul/add contraction into FMA
# (LLVM and ptxas; the default is on through Triton 3.9): z = s·(1/tau) must round the same in
# every kernel, and (m - z) + log l must not become one fma. The interpreter never contracts;
# this makes the GPU agree.
_COMPILE_OPTIONS = {"enable_fp_fusion": False}


def _acc_tl(dtype: torch.dtype):
    """The ACC constexpr of inputs in `dtype`: fp64 for fp64, else fp32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def _on(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensors' (cuda:1 as well)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def bits(x: float) -> int:
    """A host float (tau, eps, a lambda, the margin) as a kernel argument: the bits of the double
    as a signed int64, read by _f64. Exact for fp64 accumulation (a Python float argument would be
    specialised as fp32), fp32(x) rounded to nearest for fp32; no device tensor, so no
    host-to-device copy. Kernels list these arguments in do_not_specialize: the JIT would
    otherwise specialise on the value (equal to 1, divisible by 16) and recompile."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def tau_argument(tau, device: torch.device) -> tuple[object, bool]:
    """A kernel's tau argument and its TAU_PTR constexpr (_tau): the bits of a float tau, or a
    pointer to a tensor tau's fp64 value in device memory (a learnable temperature, read where
    it lives: no host read; _tau_mod.kernel_form reads a CPU tau beside CUDA inputs on the host)."""
    t = _tau_mod.kernel_form(tau, device)
    if isinstance(t, torch.Tensor):
        return _tau_mod.f64(t), True
    return bits(t), False


@triton.jit
def _tau(arg, TAU_PTR: tl.constexpr):
    """tau in fp64: loaded through the pointer arg (TAU_PTR), else from its bits (bits())."""
    if TAU_PTR:
        t = tl.load(arg).to(tl.float64)
    else:
        t = _f64(arg)
    return t


@triton.jit
def _inv_tau(arg, TAU_PTR: tl.constexpr):
    """1/tau in fp64, correctly rounded (div.rn.f64): the bits Python's 1.0 / tau has, from a
    float tau and from a tensor tau alike; callers round it to ACC."""
    return 1.0 / _tau(arg, TAU_PTR)


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
        # what the tf32 MMA reads of an fp32 operand: a no-op on the operands kernels.py rounds
        # first, and the truncation the GPU would do to any it forgot
        return ((x.to(tl.uint32, bitcast=True) >> 13) << 13).to(tl.float32, bitcast=True)

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
def _f64(b):
    """The double whose bits() b is. Via int64: an argument whose bits fit 32 bits arrives as an
    i32 (the interpreter ignores annotations)."""
    return tl.cast(tl.cast(b, tl.int64), tl.float64, bitcast=True)


@triton.jit
def _round_tf32(x):
    """fp32 -> the nearest TF32 (10 mantissa bits, ties away from zero: cvt.rna.tf32.f32, as
    cuBLAS/CUTLASS round operands), Inf and NaN unchanged. The tf32 MMA truncates whatever bits
    it is given; integer arithmetic, so the interpreter runs the same rounding the GPU does.
    Applied once per call to the operands of tf32 dots (passes._round_tf32_kernel)."""
    u = x.to(tl.uint32, bitcast=True)
    r = (((u + 0x1000) >> 13) << 13).to(tl.float32, bitcast=True)
    return tl.where((u & 0x7F800000) == 0x7F800000, x, r)


# ---------------------------------------------------------------------------- tiles of S


@triton.jit
def _s_tile(x, y, sim, rows, cols, B, D, s_xm, s_xk, s_ym, s_yk, s_sm, s_sn,
            FROM_SIM: tl.constexpr, ACC: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
            TF32: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):  # fmt: skip
    """x[rows]·y[cols]ᵀ over D in ACC (tl.dot), or sim[rows, cols] (FROM_SIM, element (r, c) at
    sim + r·s_sm + c·s_sn); zeros outside [0, B)². The pass kernels form S[a, b] as (img, txt)
    and S[b, a]ᵀ as (txt, img) with the strides swapped: no transpose."""
    rmask = rows < B
    cmask = cols < B
    r64 = rows.to(tl.int64)
    c64 = cols.to(tl.int64)
    if FROM_SIM:
        s = tl.load(sim + r64[:, None] * s_sm + c64[None, :] * s_sn, mask=rmask[:, None] & cmask[None, :], other=0.0)
        return s.to(ACC)
    else:
        return _dot_tile(x, y, r64, c64, rmask, cmask, D, s_xm, s_xk, s_ym, s_yk, ACC, DOT_PREC, UPCAST, TF32,
                         BM, BN, BK)  # fmt: skip


@triton.jit
def _dot_tile(x, y, r64, c64, rmask, cmask, D, s_xm, s_xk, s_ym, s_yk, ACC: tl.constexpr, DOT_PREC: tl.constexpr,
              UPCAST: tl.constexpr, TF32: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):  # fmt: skip
    """One BM×BN tile of a product over all of D: what bench/triton_tiles.py counts."""
    s = tl.zeros((BM, BN), dtype=ACC)
    ks0 = tl.arange(0, BK)
    for k0 in range(0, D, BK):
        ks = k0 + ks0
        kmask = ks < D
        k64 = ks.to(tl.int64)  # a column-major operand's k·stride reaches B·D, past int32
        a = tl.load(x + r64[:, None] * s_xm + k64[None, :] * s_xk, mask=rmask[:, None] & kmask[None, :], other=0.0)
        b = tl.load(y + c64[None, :] * s_ym + k64[:, None] * s_yk, mask=kmask[:, None] & cmask[None, :], other=0.0)
        if UPCAST:  # the interpreter's dot on 16-bit operands is wrong; products are exact in fp32
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if TF32:  # fp32 operands of a tf32 dot, rounded to nearest once per call (kernels.py)
            a = _mma_tf32(a)
            b = _mma_tf32(b)
        s = tl.dot(a, b, s, input_precision=DOT_PREC, out_dtype=ACC)
    return s


@triton.jit
def _pair_halves(img, txt, sim, rows, cols, B, D, s_im, s_ik, s_tm, s_tk, s_sm, s_sn, own,
                 FROM_SIM: tl.constexpr, ACC: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
                 TF32: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr,
                 SPLIT: tl.constexpr):  # fmt: skip
    """X = S[rows, cols] and Yᵀ = S[cols, rows]ᵀ (not formed where `own`: X again), each as its
    SPLIT column halves (x0, x1, y0, y1; SPLIT = 1: the tiles twice). The dot forms BM × BD, the
    elementwise epilogue runs on BM × BD/SPLIT at a time (registers)."""
    x = _s_tile(img, txt, sim, rows, cols, B, D, s_im, s_ik, s_tm, s_tk, s_sm, s_sn,
                FROM_SIM, ACC, DOT_PREC, UPCAST, TF32, BM, BD, BK)  # fmt: skip
    if own:
        y = x
    else:
        y = _s_tile(txt, img, sim, rows, cols, B, D, s_tm, s_tk, s_im, s_ik, s_sn, s_sm,
                    FROM_SIM, ACC, DOT_PREC, UPCAST, TF32, BM, BD, BK)  # fmt: skip
    if SPLIT == 2:
        BN: tl.constexpr = BD // 2
        x0, x1 = tl.split(tl.permute(tl.reshape(x, (BM, 2, BN)), (0, 2, 1)))
        y0, y1 = tl.split(tl.permute(tl.reshape(y, (BM, 2, BN)), (0, 2, 1)))
        return x0, x1, y0, y1
    else:
        return x, x, y, y


@triton.jit
def _half(t0, t1, h: tl.constexpr):
    if h == 0:
        return t0
    else:
        return t1


# ---------------------------------------------------------------------------- probabilities


@triton.jit
def _nlp(m, z, logl, is_at):
    """-log P = (m - z) + log l (no cancellation), exactly log l at the element `at` that log l
    leaves out (there m - z would be 0 only if this z had the bits m was taken from)."""
    return tl.where(is_at, logl, (m - z) + logl)


@triton.jit
def _one_minus_p(nlp):
    """1 - P for P = exp(-nlp), nlp = -log P ≥ 0: -expm1(-nlp), exact also where P is within an
    ulp of 1 (a confident off-diagonal), where 1 - exp(-nlp) is 0 or one ulp."""
    return -_expm1(-nlp)


@triton.jit
def _terms(u, v, pu, pv, at_u, at_v, valid, off, eps, BIAS: tl.constexpr, WITH_A: tl.constexpr):
    """Pass 2's sums over one tile whose element (i, j) is an element of S: u = -log of its
    probability in sample i's problem (reduced along j, "i side"), v = -log of the one in sample
    j's (reduced along i, "j side"); at_u, at_v mark each side's maximal element. For S[a, b]
    u = -log Pr_ij, v = -log Pc_ij; for S[b, a]ᵀ u = -log Pc_ji, v = -log Pr_ji. Returns, per side,
    the entropy sum P·(-log P), the CBCL sum -(1 - P_other)·log(1 - P + eps) (off the diagonal;
    bias weight 1 without BIAS), and with WITH_A the A sum b·P/(1 - P + eps) and it without the
    maximal element. pu, pv: exp(-u), exp(-v)."""
    qu = -_expm1(-u)  # 1 - P (_one_minus_p, inlined: each device call costs the interpreter)
    qv = -_expm1(-v)
    ent_i = tl.sum(tl.where(valid, pu * u, 0.0), axis=1)
    ent_j = tl.sum(tl.where(valid, pv * v, 0.0), axis=0)
    if BIAS:
        bu = qv  # sample i's label j is weighted by the other modality's belief 1 - P_v
        bv = qu
    else:
        bu = 1.0
        bv = 1.0
    # log(1 - P + eps): log1p(eps - P) while P is small (keeps eps and P), log(q + eps) for
    # P ≥ 1/2 (eps - P rounds to -1 in fp32 once P rounds to 1, and log1p(-1) = -inf where the
    # value is log(q + eps))
    lu = tl.where(pu < 0.5, _log1p(eps - pu), _log(qu + eps))
    lv = tl.where(pv < 0.5, _log1p(eps - pv), _log(qv + eps))
    cb_i = -tl.sum(tl.where(off, bu * lu, 0.0), axis=1)
    cb_j = -tl.sum(tl.where(off, bv * lv, 0.0), axis=0)
    if WITH_A:
        eu = tl.where(off, bu * pu / (qu + eps), 0.0)
        ev = tl.where(off, bv * pv / (qv + eps), 0.0)
        a_i = tl.sum(eu, axis=1)
        a_j = tl.sum(ev, axis=0)
        # without the maximal element (A - E_at cancels where E_at is most of A)
        r_i = tl.sum(tl.where(at_u, 0.0, eu), axis=1)
        r_j = tl.sum(tl.where(at_v, 0.0, ev), axis=0)
    else:
        a_i = tl.zeros_like(ent_i)
        a_j = tl.zeros_like(ent_j)
        r_i = a_i
        r_j = a_j
    return ent_i, cb_i, a_i, r_i, ent_j, cb_j, a_j, r_j


# ---------------------------------------------------------------------------- reductions and merges


@triton.jit
def _stats_merge(m1, l1, at1, h1, i1, m2, l2, at2, h2, i2):
    """Two partial statistics (split log-sum-exp (m, l1, at), hardest negative and its index) of
    disjoint sets as one; `at` and the index the lowest among equal maxima, whatever order the
    parts come in. NaN propagates to m and h."""
    up = (m2 > m1) | ((m2 == m1) & (at2 < at1))
    l = tl.where(up, l2 + (1.0 + l1) * tl.exp(m1 - m2), l1 + (1.0 + l2) * tl.exp(m2 - m1))
    better = (h2 > h1) | ((h2 == h1) & (i2 < i1))
    m = tl.maximum(m1, m2, propagate_nan=tl.PropagateNan.ALL)
    h = tl.maximum(h1, h2, propagate_nan=tl.PropagateNan.ALL)
    return m, l, tl.where(up, at2, at1), h, tl.where(better, i2, i1)


@triton.jit
def _tile_stats(s, z, idx, other, valid, BIG, AXIS: tl.constexpr):
    """Along AXIS of one tile: the split log-sum-exp (m, l1, at) of z and the hardest
    off-diagonal s with its index. idx: the index of the reduced axis, other: the kept one
    (broadcastable to the tile); off the diagonal means idx != other. tl.max drops NaN (maxnum,
    on the GPU and in the interpreter): a NaN of S must reach lse and the hardest negative."""
    zm = tl.where(valid, z, float("-inf"))
    sm = tl.where(valid & (idx != other), s, float("-inf"))
    if _INTERPRETED:  # a custom reduction is slow here: the sum of the NaNs (0 without any) is added
        m = tl.max(zm, axis=AXIS) + tl.sum(tl.where(zm == zm, 0.0, zm), axis=AXIS)
        h = tl.max(sm, axis=AXIS) + tl.sum(tl.where(sm == sm, 0.0, sm), axis=AXIS)
    else:
        m = tl.reduce(zm, AXIS, _max_nan)
        h = tl.reduce(sm, AXIS, _max_nan)
    at = tl.min(tl.where(zm == tl.expand_dims(m, AXIS), idx, BIG), axis=AXIS)
    l1 = tl.sum(tl.where(idx == tl.expand_dims(at, AXIS), 0.0, tl.exp(zm - tl.expand_dims(m, AXIS))), axis=AXIS)
    hidx = tl.min(tl.where(sm == tl.expand_dims(h, AXIS), idx, BIG), axis=AXIS)
    return m, l1, at, h, hidx


# ---------------------------------------------------------------------------- the partials buffer
# Slot k of sample x, field f: pf[f, k, x] (ACC), pi[f, k, x] (int32). Pass 1: pf = m_r, l1_r,
# hard_r, m_c, l1_c, hard_c and pi = at_r, hidx_r, at_c, hidx_c; pass 2: pf = entropy_r,
# entropy_c, sce, cbcl, A_r, A_c, A_r_rest, A_c_rest.


@triton.jit
def _side_load(pf, pi, F0: tl.constexpr, k, x, K, R, mask):
    """One side's pass-1 partial (m, l1, at, hard, hidx) in slot k: fields F0..F0+2 of pf and
    F0//3*2, +1 of pi (F0 = 0: the row problem, 3: the column problem)."""
    I0: tl.constexpr = F0 // 3 * 2
    n = tl.cast(K, tl.int64) * R
    o = tl.cast(k, tl.int64) * R + x
    return (tl.load(pf + o + F0 * n, mask=mask), tl.load(pf + o + (F0 + 1) * n, mask=mask),
            tl.load(pi + o + I0 * n, mask=mask), tl.load(pf + o + (F0 + 2) * n, mask=mask),
            tl.load(pi + o + (I0 + 1) * n, mask=mask))  # fmt: skip


@triton.jit
def _side_put(pf, pi, F0: tl.constexpr, k, x, K, R, mask, first, m, l1, at, h, hi):
    """Write one side's partial into slot k, merged with what the slot holds unless `first`.
    Only this program ever touches the slot, so the result is fixed; the barrier orders this
    program's earlier stores (by other threads) before the loads."""
    if not first:
        tl.debug_barrier()
        m0, l0, at0, h0, hi0 = _side_load(pf, pi, F0, k, x, K, R, mask)
        m, l1, at, h, hi = _stats_merge(m0, l0, at0, h0, hi0, m, l1, at, h, hi)
    I0: tl.constexpr = F0 // 3 * 2
    n = tl.cast(K, tl.int64) * R
    o = tl.cast(k, tl.int64) * R + x
    tl.store(pf + o + F0 * n, m, mask=mask)
    tl.store(pf + o + (F0 + 1) * n, l1, mask=mask)
    tl.store(pi + o + I0 * n, at, mask=mask)
    tl.store(pf + o + (F0 + 2) * n, h, mask=mask)
    tl.store(pi + o + (I0 + 1) * n, hi, mask=mask)


@triton.jit
def _sums_load(pf, k, x, K, R, mask):
    n = tl.cast(K, tl.int64) * R
    p = pf + tl.cast(k, tl.int64) * R + x
    return (tl.load(p, mask=mask), tl.load(p + n, mask=mask), tl.load(p + 2 * n, mask=mask),
            tl.load(p + 3 * n, mask=mask), tl.load(p + 4 * n, mask=mask), tl.load(p + 5 * n, mask=mask),
            tl.load(p + 6 * n, mask=mask), tl.load(p + 7 * n, mask=mask))  # fmt: skip


@triton.jit
def _sums_put(pf, k, x, K, R, mask, first, s0, s1, s2, s3, s4, s5, s6, s7):
    """Pass 2's eight sums into slot k, added to what it holds unless `first` (see _side_put)."""
    if not first:
        tl.debug_barrier()
        t0, t1, t2, t3, t4, t5, t6, t7 = _sums_load(pf, k, x, K, R, mask)
        s0, s1, s2, s3, s4, s5, s6, s7 = t0 + s0, t1 + s1, t2 + s2, t3 + s3, t4 + s4, t5 + s5, t6 + s6, t7 + s7
    n = tl.cast(K, tl.int64) * R
    p = pf + tl.cast(k, tl.int64) * R + x
    tl.store(p, s0, mask=mask)
    tl.store(p + n, s1, mask=mask)
    tl.store(p + 2 * n, s2, mask=mask)
    tl.store(p + 3 * n, s3, mask=mask)
    tl.store(p + 4 * n, s4, mask=mask)
    tl.store(p + 5 * n, s5, mask=mask)
    tl.store(p + 6 * n, s6, mask=mask)
    tl.store(p + 7 * n, s7, mask=mask)


# ---------------------------------------------------------------------------- who owns what


@triton.jit
def _program(NBM, NBN, G, K, RT: tl.constexpr, PAIRS: tl.constexpr):
    """What this program owns: row blocks [a0, a1) of BM rows, column blocks [b0, b1) of BN
    columns (BM = RT·BN), the slot of its row side (slot_a) and of its column side (slot_b),
    whether it is a diagonal super-pair (it then owns, for row block A, the column blocks from
    A·RT on: A's own block of S as RT tiles X, the rest as pairs) and whether it owns anything.

    PAIRS (one process, all of S): the NBM row blocks are grouped into K super-blocks of G; the
    program (X, d) owns super-pair {X, (X + d) mod K}, d = 0..K//2 (for even K the pairs at
    distance K/2 once): every unordered pair of super-blocks, K//2 + 1 programs per X.
    Otherwise (row ranges): program (A, s) owns row block A of the range and the s-th group of G
    column blocks."""
    if PAIRS:
        X = tl.program_id(0)
        d = tl.program_id(1)
        Y = (X + d) % K
        live = (2 * d != K) | (X < d)
        a0 = X * G
        return a0, tl.minimum(a0 + G, NBM), Y * G * RT, tl.minimum((Y * G + G) * RT, NBN), Y, X, d == 0, live
    else:
        a0 = tl.program_id(0)
        s = tl.program_id(1)
        b0 = s * G
        return a0, a0 + 1, b0, tl.minimum(b0 + G, NBN), s, s, a0 < 0, a0 >= 0

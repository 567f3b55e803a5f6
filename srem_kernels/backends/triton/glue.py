"""The glue's B-vector work (srem_kernels/backends/glue.py) as Triton kernels, for CUDA tensors (the
`triton` and `cuda` backends) and, under TRITON_INTERPRET=1, CPU tensors (tests):

  _glue_kernel       ONE program: the energies (into the workspace first), SPEC.md's GMM
                     filtration on them (20 EM rounds, each two sweeps over the energies in
                     blocks), c, w, the hinge, L_i, the backward's hinge factors and the
                     reduction. One launch, no host round trip.
  _gmm_kernel        the GMM alone over a vector of energies (the distributed path's gathered
                     batch, the trainer's dataset-level selection); same code as the glue's.
  _upstream_kernel   the backward's g_cbcl, k_r, k_c from the loss's upstream gradient.
  _nonfinite_kernel  the value checks: sets a bit of a flag where a strided 2-D tensor holds
                     NaN/Inf (or, for clean weights, a value outside [0, 1]).

Deterministic: one program walks the batch in a fixed order and reduces with tl.sum (a fixed
tree); the value checks OR bits with atomics, which is order-free. The GMM runs in fp64
throughout, as csrc/cpu/glue.cpp does (O(B) work per round; its flags are then the fp64
reference's); the rest in the vectors' dtype. Scalars (tau, the lambdas, the margin) travel
as the bits of a double (tiles.bits), exact for fp64 inputs; a tensor tau as a pointer to its
fp64 value in device memory (tiles.tau_argument).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from python_ref.filtration import GMM_ROUNDS, GMM_VAR_FLOOR
from srem_kernels.backends.triton.tiles import _COMPILE_OPTIONS, _acc_tl, _f64, _on, _tau, bits, tau_argument

_BLOCK = 1024  # energies per step of the one-program kernels
_CHECK_ROWS, _CHECK_COLS = 32, 128
# python_ref/filtration.py's constants, as constexprs of every GMM launch
_GMM = dict(ROUNDS=GMM_ROUNDS, FLOOR=GMM_VAR_FLOOR)


@triton.jit
def _energy_at(x, stride, offs, mask):
    """Energies offs of a strided vector, in fp64 (the GMM's arithmetic)."""
    return tl.load(x + offs.to(tl.int64) * stride, mask=mask, other=0.0).to(tl.float64)


@triton.jit
def _lognorm(w, v):
    """log w - log(2π v) / 2 of a component, once per round (fp64)."""
    return tl.log(w) + (-0.5 * tl.log(6.283185307179586 * v))


@triton.jit
def _posterior(x, ln0, ln1, m0, m1, v0, v1):
    """Responsibilities (r0, r1) of one block of energies (fp64): the softmax over the two
    components of log w + log N(x; m, v), each from the pair's difference (neither is 1 - the
    other)."""
    d0 = x - m0
    d1 = x - m1
    diff = (ln1 - d1 * d1 / (2.0 * v1)) - (ln0 - d0 * d0 / (2.0 * v0))
    e = tl.exp(-tl.abs(diff))
    big = 1.0 / (1.0 + e)
    small = e / (1.0 + e)
    return tl.where(diff > 0.0, small, big), tl.where(diff > 0.0, big, small)


@triton.jit
def _gmm_fit(x, stride, B, BLOCK: tl.constexpr, ROUNDS: tl.constexpr, FLOOR: tl.constexpr):
    """(log-norms, means, variances) of both components after SPEC.md's ROUNDS EM rounds over
    the B energies of a strided vector, variances floored at FLOOR. fp64 throughout, as
    csrc/cpu/glue.cpp: the flags are then the fp64 reference's."""
    floor = tl.full((), FLOOR, tl.float64)
    lanes = tl.arange(0, BLOCK)
    lo = tl.full((BLOCK,), float("inf"), tl.float64)
    hi = tl.full((BLOCK,), float("-inf"), tl.float64)
    s = tl.zeros((BLOCK,), tl.float64)
    for b0 in range(0, B, BLOCK):
        offs = b0 + lanes
        mask = offs < B
        e = _energy_at(x, stride, offs, mask)
        lo = tl.minimum(lo, tl.where(mask, e, float("inf")))
        hi = tl.maximum(hi, tl.where(mask, e, float("-inf")))
        s += tl.where(mask, e, 0.0)
    mean = tl.sum(s, axis=0) / B
    ss = tl.zeros((BLOCK,), tl.float64)
    for b0 in range(0, B, BLOCK):
        offs = b0 + lanes
        mask = offs < B
        d = _energy_at(x, stride, offs, mask) - mean
        ss += tl.where(mask, d * d, 0.0)
    v0 = tl.maximum(tl.sum(ss, axis=0) / B, floor)
    v1 = v0
    m0 = tl.min(lo, axis=0)
    m1 = tl.max(hi, axis=0)
    w0 = tl.full((), 0.5, tl.float64)
    w1 = w0
    for _ in range(ROUNDS):
        ln0 = _lognorm(w0, v0)
        ln1 = _lognorm(w1, v1)
        n0 = tl.zeros((BLOCK,), tl.float64)
        n1 = tl.zeros((BLOCK,), tl.float64)
        s0 = tl.zeros((BLOCK,), tl.float64)
        s1 = tl.zeros((BLOCK,), tl.float64)
        for b0 in range(0, B, BLOCK):
            offs = b0 + lanes
            mask = offs < B
            e = _energy_at(x, stride, offs, mask)
            r0, r1 = _posterior(e, ln0, ln1, m0, m1, v0, v1)
            r0 = tl.where(mask, r0, 0.0)
            r1 = tl.where(mask, r1, 0.0)
            n0 += r0
            n1 += r1
            s0 += r0 * e
            s1 += r1 * e
        n0t = tl.sum(n0, axis=0)
        n1t = tl.sum(n1, axis=0)
        nm0 = tl.where(n0t > 0, tl.sum(s0, axis=0) / tl.where(n0t > 0, n0t, 1.0), m0)
        nm1 = tl.where(n1t > 0, tl.sum(s1, axis=0) / tl.where(n1t > 0, n1t, 1.0), m1)
        q0 = tl.zeros((BLOCK,), tl.float64)
        q1 = tl.zeros((BLOCK,), tl.float64)
        for b0 in range(0, B, BLOCK):  # spread about the new means, with this round's responsibilities
            offs = b0 + lanes
            mask = offs < B
            e = _energy_at(x, stride, offs, mask)
            r0, r1 = _posterior(e, ln0, ln1, m0, m1, v0, v1)
            q0 += tl.where(mask, r0 * (e - nm0) * (e - nm0), 0.0)
            q1 += tl.where(mask, r1 * (e - nm1) * (e - nm1), 0.0)
        # a component with no responsibility keeps its mean and variance (its weight becomes 0)
        v0 = tl.where(n0t > 0, tl.maximum(tl.sum(q0, axis=0) / tl.where(n0t > 0, n0t, 1.0), floor), v0)
        v1 = tl.where(n1t > 0, tl.maximum(tl.sum(q1, axis=0) / tl.where(n1t > 0, n1t, 1.0), floor), v1)
        m0 = nm0
        m1 = nm1
        w0 = n0t / B
        w1 = n1t / B
    return _lognorm(w0, v0), _lognorm(w1, v1), m0, m1, v0, v1


@triton.jit
def _low_clean(e, ln0, ln1, m0, m1, v0, v1):
    """c (0/1) of a block of fp64 energies: the lower-mean component's posterior > 1/2, or 1
    where the final means are equal (SPEC: no spread, no evidence of noise); and that posterior
    (1/2 there)."""
    r0, r1 = _posterior(e, ln0, ln1, m0, m1, v0, v1)
    low = tl.where(m1 < m0, r1, r0)
    same = m0 == m1
    c = tl.where(same, 1.0, tl.where(low > 0.5, 1.0, 0.0))
    return c, tl.where(same, 0.5, low)


@triton.jit
def _gmm_kernel(x, stride, B, clean, post, WITH_POST: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
                ROUNDS: tl.constexpr, FLOOR: tl.constexpr):  # fmt: skip
    """c (and the deciding posterior) of a strided vector of B energies. One program."""
    ln0, ln1, m0, m1, v0, v1 = _gmm_fit(x, stride, B, BLOCK, ROUNDS, FLOOR)
    lanes = tl.arange(0, BLOCK)
    for b0 in range(0, B, BLOCK):
        offs = b0 + lanes
        mask = offs < B
        c, p = _low_clean(_energy_at(x, stride, offs, mask), ln0, ln1, m0, m1, v0, v1)
        tl.store(clean + offs, c.to(ACC), mask=mask)
        if WITH_POST:
            tl.store(post + offs, p.to(ACC), mask=mask)


@triton.jit(do_not_specialize=["margin_bits", "tau_arg", "lambda_hard_bits", "lambda_cbcl_bits"])
def _glue_kernel(lse_r, lse_c, pos, hard_r, hard_c, sce, cbcl, margin, margin_stride, margin_bits, given,
                 given_stride, weight, factor, tau_arg, lambda_hard_bits, lambda_cbcl_bits, ws, loss, B,
                 HAS_MARGIN: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_FACTOR: tl.constexpr,
                 SELECT: tl.constexpr, SCE_WEIGHT: tl.constexpr, TAU_PTR: tl.constexpr,
                 REDUCTION: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, ROUNDS: tl.constexpr,
                 FLOOR: tl.constexpr):  # fmt: skip
    """glue.py's forward in one program: rows of ws (glue.ROWS) and the reduced loss.
    SELECT: 0 the given clean weights, 1 the GMM, 2 none; REDUCTION: 0 mean, 1 sum, 2 none.
    tau_arg: tau's bits, or (TAU_PTR) a pointer to it in fp64 (tiles._tau)."""
    tau = _tau(tau_arg, TAU_PTR).to(ACC)
    lam_h = _f64(lambda_hard_bits).to(ACC)
    lam_c = _f64(lambda_cbcl_bits).to(ACC)
    m_scalar = _f64(margin_bits).to(ACC)
    lanes = tl.arange(0, BLOCK)
    # the energies first (ws rows 0-2); the GMM then fits row 2 as _gmm_kernel fits its vector
    for b0 in range(0, B, BLOCK):
        offs = b0 + lanes
        mask = offs < B
        lr = tl.load(lse_r + offs, mask=mask, other=0.0)
        lc = tl.load(lse_c + offs, mask=mask, other=0.0)
        tl.store(ws + offs, -tau * lr, mask=mask)
        tl.store(ws + B + offs, -tau * lc, mask=mask)
        tl.store(ws + 2 * B + offs, -tau * (lr + lc) / 2.0, mask=mask)  # as glue.py's torch form
    energy = ws + 2 * B
    if SELECT == 1:
        tl.debug_barrier()  # row 2's stores, by all of the program's threads, before it is read
        ln0, ln1, m0, m1, v0, v1 = _gmm_fit(energy, 1, B, BLOCK, ROUNDS, FLOOR)
    total = tl.zeros((BLOCK,), tl.float64)
    for b0 in range(0, B, BLOCK):
        offs = b0 + lanes
        mask = offs < B
        if SELECT == 0:
            c = tl.load(given + offs.to(tl.int64) * given_stride, mask=mask, other=0.0).to(ACC)
        elif SELECT == 1:
            c, _p = _low_clean(_energy_at(energy, 1, offs, mask), ln0, ln1, m0, m1, v0, v1)
            c = c.to(ACC)
        else:
            c = tl.full((BLOCK,), 1.0, ACC)
        if HAS_FACTOR:  # a sensitivity mode's factor on c (srem_kernels/sensitivity.py)
            c = c * tl.load(factor + offs, mask=mask, other=0.0)
        if HAS_WEIGHT:
            w = tl.load(weight + offs, mask=mask, other=0.0)
        elif SCE_WEIGHT:
            w = tl.exp(-tl.load(sce + offs, mask=mask, other=0.0))
        else:
            w = tl.full((BLOCK,), 1.0, ACC)
        if HAS_MARGIN:
            m = tl.load(margin + offs.to(tl.int64) * margin_stride, mask=mask, other=0.0).to(ACC)
        else:
            m = m_scalar
        p = tl.load(pos + offs, mask=mask, other=0.0)
        x_r = m - p + tl.load(hard_r + offs, mask=mask, other=0.0)
        x_c = m - p + tl.load(hard_c + offs, mask=mask, other=0.0)
        lh = tl.maximum(x_r, 0.0) + tl.maximum(x_c, 0.0)
        hw = lam_h * c * w  # λ_hard c_i w_i: the hinge's weight in L_i
        li = hw * lh + lam_c * tl.load(cbcl + offs, mask=mask, other=0.0)
        tl.store(ws + 3 * B + offs, c, mask=mask)
        tl.store(ws + 4 * B + offs, w, mask=mask)
        tl.store(ws + 5 * B + offs, lh, mask=mask)
        tl.store(ws + 6 * B + offs, li, mask=mask)
        tl.store(ws + 7 * B + offs, tl.where(x_r > 0.0, hw, 0.0), mask=mask)
        tl.store(ws + 8 * B + offs, tl.where(x_c > 0.0, hw, 0.0), mask=mask)
        total += tl.where(mask, li.to(tl.float64), 0.0)
    t = tl.sum(total, axis=0)
    if REDUCTION == 0:
        t = t / B
    tl.store(loss, t.to(ACC))


@triton.jit(do_not_specialize=["scale_bits", "lambda_cbcl_bits"])
def _upstream_kernel(g, g_stride, scale_bits, lambda_cbcl_bits, hinge_r, hinge_c, out, B,
                     ACC: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """out[0] = g_cbcl, out[1] = k_r, out[2] = k_c (glue.py's upstream)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < B
    gi = tl.load(g + offs.to(tl.int64) * g_stride, mask=mask, other=0.0).to(ACC) * _f64(scale_bits).to(ACC)
    tl.store(out + offs, gi * _f64(lambda_cbcl_bits).to(ACC), mask=mask)
    tl.store(out + B + offs, gi * tl.load(hinge_r + offs, mask=mask, other=0.0), mask=mask)
    tl.store(out + 2 * B + offs, gi * tl.load(hinge_c + offs, mask=mask, other=0.0), mask=mask)


@triton.jit
def _nonfinite_kernel(x, rows, cols, s0, s1, flag, BIT: tl.constexpr, BOUND: tl.constexpr, EXP: tl.constexpr,
                      BR: tl.constexpr, BC: tl.constexpr):  # fmt: skip
    """flag |= BIT where rows×cols of x (strides s0, s1) hold NaN/Inf — x an integer view of the
    floats, EXP the exponent mask (all ones: NaN or ±Inf, in any dtype and in the interpreter) —
    or, with BOUND (x floating), a value outside [0, 1] (1: clean weights) or not in (0, inf)
    (2: a tensor tau)."""
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    rmask = r < rows
    bad = tl.zeros((BR,), tl.int32)  # per row: a 2-D flag tile would hold BR×BC registers more
    for c0 in range(0, cols, BC):
        c = c0 + tl.arange(0, BC)
        mask = rmask[:, None] & (c < cols)[None, :]
        v = tl.load(x + r.to(tl.int64)[:, None] * s0 + c.to(tl.int64)[None, :] * s1, mask=mask, other=0)
        if BOUND == 1:
            out = (v >= 0.0) & (v <= 1.0)
        elif BOUND == 2:
            out = (v > 0.0) & (v < float("inf"))
        else:
            out = (v & EXP) != EXP
        bad = tl.maximum(bad, tl.max(tl.where(mask & (out == 0), 1, 0), axis=1))
    if tl.max(bad, axis=0) > 0:
        tl.atomic_or(flag, BIT)


# ---------------------------------------------------------------------------- launches


def glue_forward(v, margin, clean, weight, factor, margin_value, tau, lambda_hard, lambda_cbcl, sce_weight, select,
                 reduction, ws, loss):  # fmt: skip
    """Fill ws (9×B) and loss (a 1-element tensor); see glue.py."""
    lse_r = v["lse_r"]
    B = lse_r.shape[0]
    acc = _acc_tl(lse_r.dtype)
    dummy = lse_r
    tau_arg, tau_ptr = tau_argument(tau, lse_r.device)
    with _on(lse_r):
        _glue_kernel[(1,)](
            lse_r, v["lse_c"], v["pos"], v["hard_i2t"], v["hard_t2i"], v["sce"], v["loss_cbcl"],
            margin if margin is not None else dummy, margin.stride(0) if margin is not None else 0, bits(margin_value),
            clean if clean is not None else dummy, clean.stride(0) if clean is not None else 0,
            weight if weight is not None else dummy, factor if factor is not None else dummy,
            tau_arg, bits(lambda_hard), bits(lambda_cbcl), ws, loss, B,
            HAS_MARGIN=margin is not None, HAS_WEIGHT=weight is not None, HAS_FACTOR=factor is not None,
            SELECT=select, SCE_WEIGHT=bool(sce_weight), TAU_PTR=tau_ptr, REDUCTION=reduction,
            ACC=acc, BLOCK=_BLOCK, **_GMM, **_COMPILE_OPTIONS,
        )  # fmt: skip


def gmm_filtration(energy: torch.Tensor, clean: torch.Tensor, post: torch.Tensor | None = None) -> None:
    """Write c (and the deciding posterior) of the energies into clean (and post)."""
    with _on(energy):
        _gmm_kernel[(1,)](
            energy, energy.stride(0), energy.shape[0], clean, post if post is not None else clean,
            WITH_POST=post is not None, ACC=_acc_tl(energy.dtype), BLOCK=_BLOCK, **_GMM, **_COMPILE_OPTIONS,
        )  # fmt: skip


def upstream(g, scale, lambda_cbcl, hinge_r, hinge_c, out) -> None:
    B = hinge_r.shape[0]
    with _on(hinge_r):
        _upstream_kernel[(triton.cdiv(B, _BLOCK),)](
            g, g.stride(0) if g.dim() else 0, bits(scale), bits(lambda_cbcl), hinge_r, hinge_c, out, B,
            ACC=_acc_tl(hinge_r.dtype), BLOCK=_BLOCK, **_COMPILE_OPTIONS,
        )  # fmt: skip


# the integer view of each float dtype and its exponent mask
_EXPONENT = {torch.float32: (torch.int32, 0x7F800000), torch.float64: (torch.int64, 0x7FF0000000000000),
             torch.float16: (torch.int16, 0x7C00), torch.bfloat16: (torch.int16, 0x7F80)}  # fmt: skip


_BOUND_CODES = {None: 0, "unit": 1, "positive": 2}


def nonfinite(x: torch.Tensor, flag: torch.Tensor, bit: int, bound: str | None = None) -> None:
    """flag |= bit where x (0-D, 1-D or 2-D, any strides) holds NaN/Inf, or with a bound a value
    outside it: "unit" [0, 1], "positive" (0, inf)."""
    x2 = x.reshape(1, 1) if x.dim() == 0 else x if x.dim() == 2 else x[:, None]
    rows, cols = x2.shape
    as_int, exp = _EXPONENT[x.dtype]
    with _on(x):
        _nonfinite_kernel[(triton.cdiv(rows, _CHECK_ROWS),)](
            x2 if bound else x2.view(as_int), rows, cols, x2.stride(0), x2.stride(1), flag, BIT=bit,
            BOUND=_BOUND_CODES[bound], EXP=exp, BR=_CHECK_ROWS, BC=_CHECK_COLS,
        )  # fmt: skip

"""The glue every fused backend shares: what its kernels compute, and everything else.

A fused backend (triton, cuda, cpu) supplies a `Kernels` object with two methods that do all the
B×B work; this module turns them into a backend `run` with autograd. Everything that is only
B-vectors — the energies, the GMM filtration, the weights, the hinge, the reduction, the
backward's upstream vectors — is srem_kernels/backends/glue.py's, one routine per device class, the same
for every backend. A Kernels object may name the glue it prefers (`glue = "triton"`: the Triton
routines also for CPU tensors under the interpreter).

tau: a float, or a detached 0-d tensor (any float dtype) on the inputs' device or the CPU — a
  learnable temperature. A kernel reads a tensor's value where it lives (_tau.kernel_form): from
  device memory on a GPU (no host read), from host memory on the CPU (no sync).

forward(img, txt, sim, *, tau, eps, bias) -> a mapping name -> B-vector (a dict, or an _alloc.Rows
  whose vectors are rows of a few buffers, each made when read), from (img, txt) or from sim:
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

backward(img, txt, sim, saved, *, tau, eps, bias, g_cbcl, k_r, k_c, tau_grad=False)
  -> (d_img, d_txt), or d_sim; with tau_grad, (that, d_tau)
  with `saved` the forward's dict and dL/dS formed tile by tile as
    dS_ij = ( g_cbcl_i (E_r_ij - Pr_ij A_r_i) + g_cbcl_j (E_c_ij - Pc_ij A_c_j) ) / tau
            - (k_r_i + k_c_i) [i = j] + k_r_i [j = hard_i2t_index_i] + k_c_j [i = hard_t2i_index_j]
    E_r_ij = b_ij Pr_ij / (1 - Pr_ij + eps) [i≠j],   E_c_ij = b'_ij Pc_ij / (1 - Pc_ij + eps) [i≠j]
  then d_img = dS · txt and d_txt = dSᵀ · img (or d_sim = dS), in the inputs' dtype.
  g_cbcl, k_r, k_c are B-vectors: the upstream gradient of L_i times lambda_cbcl, and times
  lambda_hard c_i w_i where the i2t / t2i hinge of sample i is active (else 0).
  d_tau (tau_grad): dL/dtau, a 0-d tensor in the accumulation dtype, one more reduction over the
  elements the pass already forms (SPEC.md "Gradient"). Only CBCL depends on tau, and each row of
  its part of dS sums to 0 (as each column does), so -sum_ij dS^cbcl_ij Z_ij is formed as
    d_tau = sum_ij ( g_cbcl_i R_ij (-log Pr_ij) + g_cbcl_j C_ij (-log Pc_ij) ) / tau
  with R = E_r - Pr A_r and C = E_c - Pc A_c the two parts above: -log P >= 0 is what the
  kernels hold for each element anyway, and it is small exactly where E is large (P near 1), so
  the sum does not cancel as sum dS·Z (Z ~ 1/tau) would.

Numerics the backward needs: E_r - Pr·A_r cancels at a row's maximal element when that
probability is near 1 (both ~1/(1 - P)); form it there as E·(1 - P) - P·A_rest, with A_rest the
sum without that element (dense.py returns at_r/A_r_rest, at_c/A_c_rest for it), and
1 - P as -expm1(log P). Compile the arithmetic without contracting (m - Z) + log l into one
fused multiply-add (Z must round as m did), or the row maximum's -log P is no longer log l.

srem_kernels/backends/dense.py executes this contract densely, in the cancellation-free forms an fp32
kernel needs to meet SPEC.md's 1e-5 (docs/numerics.md).

Optional parts of a Kernels object (the contract above does not change):
  saved_layout(img, txt, sim, *, stats_only) -> {name: (shape, dtype)}, the entries forward
      returns, in order. Kernels that have it and are registered (register_kernels, at
      construction) run behind the torch.library custom ops
      srem_kernels::fused_forward / fused_backward (their fake implementations come from it), so
      torch.compile(fullgraph=True) traces a step that calls the loss without a graph break.
      Kernels without it are called directly (eager works; compile sees the kernels themselves).
  forward(..., stats_only=True) where `supports_stats_only` is true: skip what only the
      backward needs (A_r, A_c, a saved S).
  eager: a module with takes(kernels, img, sim, params) -> bool and run(kernels, img, txt, params)
      -> (loss, per_sample, statistics), FusedRun's short path for the calls `takes` accepts: the
      same kernels and glue in fewer Python steps, bitwise this module's result (the cpu
      backend's: backends/cpu_eager.py).

Row ranges (the distributed loss, srem_kernels/distributed.py; kernels with `supports_rows`).
A rank holds the whole batch's embeddings img, txt (B×D, gathered) and owns samples [lo, hi): it
computes their rows and columns of S only, Br×B each (Br = hi - lo), never B×B.
  pass1_rows(img, txt, lo, hi, *, tau) -> dict of Br-vectors for samples lo..hi-1, holding at
      least lse_r and lse_c (the filtration needs every sample's energy), and whatever pass 2
      needs of other samples (split forms m_r, logl_r, at_r, ...).
  pass2_rows(img, txt, lo, hi, first, *, tau, eps, bias, stats_only=False) -> dict of
      Br-vectors, with `first` pass 1's dicts of every rank concatenated (B-vectors).
  The two dicts together hold every entry forward's does (A_r, A_c not under stats_only).
  backward_rows(img, txt, lo, hi, saved, *, tau, eps, bias, g_cbcl, k_r, k_c, tau_grad=False)
      -> (d_img[lo:hi], d_txt[lo:hi]) (with tau_grad: (that, d_tau of rows lo..hi-1 of S: the
      rank's share, the ranks' shares summing to the whole d_tau)), with `saved` both passes'
      dicts of every rank and g_cbcl, k_r, k_c B-vectors (as backward's). d_txt[lo:hi] = dS[:, lo:hi]ᵀ · img is the rows of the
      swapped problem: the loss is symmetric under img <-> txt with i2t <-> t2i, r <-> c, so
      dS[:, lo:hi]ᵀ is dS of (txt, img) on rows lo..hi-1 with the two sides' vectors exchanged
      (`swap_sides`).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Mapping
from typing import Optional, Protocol

import torch
from torch.fx.experimental.symbolic_shapes import guard_int

from python_ref.srem import STATISTICS
from srem_kernels import _alloc, _amp
from srem_kernels.backends import glue
from srem_kernels._validate import SREMParams

# The glue computes these statistics; the kernels' forward returns the others as they are.
GLUE_STATISTICS = ("energy_i2t", "energy_t2i", "energy", "weight", "clean", "loss_hard")
KERNEL_STATISTICS = tuple(k for k in STATISTICS if k not in GLUE_STATISTICS)


class Kernels(Protocol):
    def forward(self, img, txt, sim, *, tau: float, eps: float, bias: bool) -> dict[str, torch.Tensor]: ...

    def backward(self, img, txt, sim, saved, *, tau, eps, bias, g_cbcl, k_r, k_c): ...


# The kernel forward's B-vectors every backend returns (fused.py's docstring).
CONTRACT_KEYS = (
    "lse_r", "lse_c", "pos", "ce_i2t", "ce_t2i", "entropy_i2t", "entropy_t2i", "hard_i2t", "hard_i2t_index",
    "hard_t2i", "hard_t2i_index", "sce", "loss_cbcl", "A_r", "A_c",
)  # fmt: skip
# What run's autograd.Function returns besides the loss and per_sample, in this order (constants).
_STAT_OUTPUTS = KERNEL_STATISTICS + GLUE_STATISTICS

# What a side of the problem is called in the i2t (rows) and t2i (columns) direction.
_SIDES = (("m_r", "m_c"), ("logl_r", "logl_c"), ("at_r", "at_c"), ("A_r", "A_c"), ("A_r_rest", "A_c_rest"),
          ("k_r", "k_c"), ("hard_i2t_index", "hard_t2i_index"), ("hard_i2t", "hard_t2i"), ("lse_r", "lse_c"))  # fmt: skip


def concrete_size(n):
    """A size as an int. Under torch.compile a batch size may be symbolic; the fused backends choose
    a strategy per batch size, so the trace specialises to this one (a guard) instead of hashing a
    symbol."""
    return guard_int(n) if isinstance(n, torch.SymInt) else n


def swap_sides(vectors: dict) -> dict:
    """The same vectors named for the swapped problem (txt, img): r <-> c, i2t <-> t2i."""
    rename = {a: b for a, b in _SIDES} | {b: a for a, b in _SIDES}
    return {rename.get(k, k): v for k, v in vectors.items()}


class FusedRun:
    """A fused backend's `run` (registry.py): fused.run on its kernels, which stay reachable as
    `.kernels` (the distributed loss calls their row-range methods)."""

    def __init__(self, kernels):
        self.kernels = kernels

    def __call__(self, img, txt, sim, params, *, stats_only: bool = False):
        eager = getattr(self.kernels, "eager", None)  # a backend's own short path for its common call
        if eager is not None and not stats_only and eager.takes(self.kernels, img, sim, params):
            return eager.run(self.kernels, img, txt, params)
        return run(self.kernels, img, txt, sim, params, stats_only=stats_only)


# ---------------------------------------------------------------- custom ops around the kernels

_KERNELS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def register_kernels(kernels) -> str:
    """Make `kernels` (which has saved_layout) callable through the custom ops; call it when the
    kernels are constructed, not inside a compiled region (dynamo defers side effects)."""
    key = f"{type(kernels).__qualname__}@{id(kernels):x}"
    _KERNELS[key] = kernels
    kernels.op_key = key
    return key


def _op_key(kernels) -> str | None:
    """The name the custom ops find `kernels` under, or None: kernels are then called directly."""
    return getattr(kernels, "op_key", None)


def _kernel_forward(kernels, img, txt, sim, tau, eps, bias, stats_only):
    if stats_only and getattr(kernels, "supports_stats_only", False):
        return kernels.forward(img, txt, sim, tau=tau, eps=eps, bias=bias, stats_only=True)
    return kernels.forward(img, txt, sim, tau=tau, eps=eps, bias=bias)


def _device(img, sim):
    return (sim if sim is not None else img).device


def _op_tau(tau) -> tuple[float, torch.Tensor | None]:
    """tau as the custom ops take it: (the float, None) or (0.0, the tensor)."""
    return (0.0, tau) if isinstance(tau, torch.Tensor) else (float(tau), None)


# Called where a compiled graph runs the kernels (fused_forward below) with (kernels, img, sim):
# srem_kernels/selfcheck/auto.py sets it (a layer above this one) to run the first-use self-check
# there, since functional.py's own hook is skipped while dynamo traces and a compiled graph never
# runs functional.py again.
COMPILED_FIRST_USE: list = [None]


@torch.library.custom_op("srem_kernels::fused_forward", mutates_args=())
def fused_forward(
    img: Optional[torch.Tensor], txt: Optional[torch.Tensor], sim: Optional[torch.Tensor],
    kernels: str, tau: float, tau_t: Optional[torch.Tensor], eps: float, bias: bool, stats_only: bool,
) -> list[torch.Tensor]:  # fmt: skip
    """Kernels.forward of the kernels registered as `kernels`, as the list saved_layout orders
    (tau_t: a tensor tau, else the float tau)."""
    k = _KERNELS[kernels]
    if COMPILED_FIRST_USE[0] is not None:
        COMPILED_FIRST_USE[0](k, img, sim)
    layout = k.saved_layout(img, txt, sim, stats_only=stats_only)
    saved = _kernel_forward(k, img, txt, sim, tau if tau_t is None else tau_t, eps, bias, stats_only)
    if set(saved) != set(layout):
        raise RuntimeError(f"{kernels}.forward returned {sorted(saved)}, its saved_layout says {sorted(layout)}")
    return _unaliased([saved[name] for name in layout])


def _unaliased(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """A custom op's outputs may not share storage; the kernels return views of one workspace
    (_alloc.workspace), so under torch.compile (the only caller of the op) each view after the
    first of its buffer is copied out: B-vector copies, a cost of the compiled path alone."""
    seen, out = set(), []
    for t in tensors:
        key = t.untyped_storage().data_ptr()
        out.append(t.clone() if key in seen else t)
        seen.add(key)
    return out


@fused_forward.register_fake
def _(img, txt, sim, kernels, tau, tau_t, eps, bias, stats_only):
    layout = _KERNELS[kernels].saved_layout(img, txt, sim, stats_only=stats_only)
    return [torch.empty(shape, dtype=dtype, device=_device(img, sim)) for shape, dtype in layout.values()]


@torch.library.custom_op("srem_kernels::fused_backward", mutates_args=())
def fused_backward(
    img: Optional[torch.Tensor], txt: Optional[torch.Tensor], sim: Optional[torch.Tensor], saved: list[torch.Tensor],
    kernels: str, tau: float, tau_t: Optional[torch.Tensor], eps: float, bias: bool, g_cbcl: torch.Tensor,
    k_r: torch.Tensor, k_c: torch.Tensor, tau_grad: bool,
) -> list[torch.Tensor]:  # fmt: skip
    """Kernels.backward: [d_img, d_txt], or [d_sim]; then d_tau with tau_grad."""
    k = _KERNELS[kernels]
    names = list(k.saved_layout(img, txt, sim, stats_only=False))
    out = k.backward(img, txt, sim, dict(zip(names, saved)), tau=tau if tau_t is None else tau_t, eps=eps, bias=bias,
                     g_cbcl=g_cbcl, k_r=k_r, k_c=k_c, **({"tau_grad": True} if tau_grad else {}))  # fmt: skip
    grads, d_tau = out if tau_grad else (out, None)
    grads = [grads.contiguous()] if sim is not None else [grads[0].contiguous(), grads[1].contiguous()]
    return grads + ([d_tau.clone()] if tau_grad else [])


@fused_backward.register_fake
def _(img, txt, sim, saved, kernels, tau, tau_t, eps, bias, g_cbcl, k_r, k_c, tau_grad):
    like = [sim] if sim is not None else [img, txt]
    out = [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in like]
    return out + ([g_cbcl.new_empty(())] if tau_grad else [])


# ---------------------------------------------------------------- autograd around kernels and glue


def glue_impl(kernels, device) -> str:
    """The glue routine (glue.py) for these kernels' tensors on `device`."""
    return glue.implementation(device, prefer=getattr(kernels, "glue", None))


def _forward_saved(kernels, key, img, txt, sim, params, stats_only):
    if key is None or not torch.compiler.is_compiling():  # eager: the kernels directly (no op dispatch)
        return _kernel_forward(kernels, img, txt, sim, params.tau, params.eps, params.bias, stats_only)
    layout = kernels.saved_layout(img, txt, sim, stats_only=stats_only)
    out = fused_forward(img, txt, sim, key, *_op_tau(params.tau), params.eps, params.bias, stats_only)
    return dict(zip(layout, out))


def pack_saved(ctx, saved) -> list[torch.Tensor]:
    """What a Function saves of the kernels' forward: the buffers of an _alloc.Rows (its rows
    are views of them, made again only where backward reads them), else every entry in the order
    of ctx.names (the caller's). unpack_saved(ctx, that) gives the mapping back in backward."""
    if isinstance(saved, _alloc.Rows):
        ctx.rows_where = saved.where
        return list(saved.buffers)
    ctx.rows_where = None
    return [saved[n] for n in ctx.names]


def unpack_saved(ctx, packed: list[torch.Tensor]):
    """The kernels' forward output again (a mapping name -> tensor) from what _packed saved."""
    return _alloc.Rows(ctx.rows_where, packed) if ctx.rows_where is not None else dict(zip(ctx.names, packed))


def _stat_tensors(saved, out: dict) -> tuple:
    """The statistics in _STAT_OUTPUTS' order: the kernels' from `saved`, the glue's from `out`."""
    return tuple(saved[k] for k in KERNEL_STATISTICS) + tuple(out[k] for k in GLUE_STATISTICS)


def _kernel_backward(ctx, img, txt, sim, vectors, up, tau_grad: bool):
    """(grads as a list, d_tau or None) from the kernels, directly or through the custom op;
    `vectors` the forward's saved mapping."""
    p = ctx.params
    if ctx.key is None or not torch.compiler.is_compiling():
        extra = {"tau_grad": True} if tau_grad else {}
        out = ctx.kernels.backward(img, txt, sim, vectors, tau=p.tau, eps=p.eps, bias=p.bias, **up, **extra)
        grads, d_tau = out if tau_grad else (out, None)
        return ([grads] if sim is not None else list(grads)), d_tau
    out = fused_backward(img, txt, sim, [vectors[n] for n in ctx.names], ctx.key, *_op_tau(p.tau), p.eps, p.bias,
                         up["g_cbcl"], up["k_r"], up["k_c"], tau_grad)  # fmt: skip
    return (out[:-1], out[-1]) if tau_grad else (out, None)


def tau_gradient(d_tau: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """dL/dtau from a kernel's d_tau, shaped, typed and placed as the tau it is for."""
    return d_tau.to(dtype=tau.dtype).to(device=tau.device).reshape(tau.shape)


class _FusedSREM(torch.autograd.Function):
    """The loss (reduced as asked, differentiable), per_sample L_i (None for reduction "none":
    the loss is it) and the statistics it came from (constants). `tau` is the call's tensor tau
    (None for a float tau, which params holds); params.tau is what the kernels read.

    `sink`: a list (eager) that forward appends (per_sample, statistics) to, and then it returns
    the loss alone; None (under torch.compile, whose trace needs them as outputs) returns them as
    outputs marked non-differentiable. Autograd wraps each output: at B=128 on this project's
    CPU the 17 statistics as outputs cost ~20 µs of a ~1 ms call (measured in one process).
    Tensors made in forward are constants either way (forward runs without grad); the statistics
    are rows of buffers the Function saves, so one changed in place before backward still fails
    its version check."""

    @staticmethod
    def forward(ctx, img, txt, sim, margin, clean, tau, kernels, key, params: SREMParams, sink):
        ctx.set_materialize_grads(False)  # the statistics get no gradient: no zero-filled ones
        saved = _forward_saved(kernels, key, img, txt, sim, params, stats_only=False)
        impl = glue_impl(kernels, _device(img, sim))
        out = glue.forward(saved, params, margin, clean, impl=impl)
        ctx.kernels, ctx.key, ctx.params, ctx.impl = kernels, key, params, impl
        ctx.names = list(saved)
        ctx.tau_like = None if tau is None else tau.detach()  # dtype, device and shape of its gradient
        ctx.save_for_backward(img, txt, sim, out["hinge_r"], out["hinge_c"], *pack_saved(ctx, saved))
        per_sample = None if params.reduction == "none" else out["per_sample"]
        if sink is not None:
            sink.append((per_sample, Statistics(saved, out)))
            return out["loss"]
        stats = _stat_tensors(saved, out)
        ctx.mark_non_differentiable(*stats, *(() if per_sample is None else (per_sample,)))
        return (out["loss"], per_sample, *stats)

    @staticmethod
    def backward(ctx, g, *_):
        if g is None:
            return (None,) * 10
        img, txt, sim, hinge_r, hinge_c, *packed = ctx.saved_tensors
        vectors = unpack_saved(ctx, packed)
        p = ctx.params
        tau_grad = ctx.tau_like is not None and ctx.needs_input_grad[5]
        with _amp.off(g.device):  # a backward called inside an autocast region: SPEC's precision still
            up = glue.upstream(g, hinge_r, hinge_c, reduction=p.reduction, lambda_cbcl=p.lambda_cbcl, impl=ctx.impl)
            grads, d_tau = _kernel_backward(ctx, img, txt, sim, vectors, up, tau_grad)
        g_tau = tau_gradient(d_tau, ctx.tau_like) if tau_grad else None
        if sim is not None:
            return None, None, grads[0], None, None, g_tau, None, None, None, None
        return grads[0], grads[1], None, None, None, g_tau, None, None, None, None


def split_tensors(params: SREMParams):
    """(bare, margin, clean, tau): the call's tensors travel as autograd arguments, so params keep
    none of them — bare holds tau detached (a constant to the kernels and the glue); tau is the
    tensor tau whose gradient comes back, or None for a float."""
    margin, clean, tau = params.margin, params.clean, params.tau
    tau = tau if isinstance(tau, torch.Tensor) else None
    if tau is None and clean is None and not isinstance(margin, torch.Tensor):
        return params, margin, clean, None  # nothing to take out (dataclasses.replace costs ~15 µs)
    return dataclasses.replace(params, margin=0.0, clean=None, tau=params.tau if tau is None else tau.detach()), \
        margin, clean, tau  # fmt: skip


def run(kernels: Kernels, img, txt, sim, params: SREMParams, *, stats_only: bool = False):
    """A backend's `run` (see registry.py) on top of its kernels. stats_only: forward only, no
    gradient work (nothing saved; A_r, A_c skipped where the kernels support it)."""
    key = _op_key(kernels)
    bare, margin, clean, tau = split_tensors(params)
    if stats_only:
        with torch.no_grad():
            saved = _forward_saved(kernels, key, img, txt, sim, bare, stats_only=True)
            out = glue.forward(saved, bare, margin, clean, impl=glue_impl(kernels, _device(img, sim)))
            loss, per_sample = out["loss"], out["per_sample"]
            compiling = torch.compiler.is_compiling()  # a traced call keeps to plain dicts
            stats = dict(zip(_STAT_OUTPUTS, _stat_tensors(saved, out))) if compiling else Statistics(saved, out)
    else:
        if torch.compiler.is_compiling():
            loss, per_sample, *outs = _FusedSREM.apply(img, txt, sim, margin, clean, tau, kernels, key, bare, None)
            stats = dict(zip(_STAT_OUTPUTS, outs))
        else:
            sink: list = []
            loss = _FusedSREM.apply(img, txt, sim, margin, clean, tau, kernels, key, bare, sink)
            (per_sample, stats), = sink
        if per_sample is None:
            per_sample = loss.detach()
    return loss, per_sample, stats


def statistics(out) -> "Statistics":
    """SPEC's statistics from one mapping that holds the kernels' vectors and the glue's."""
    return Statistics(out, out)


class Statistics(Mapping):
    """SPEC's statistics by name (STATISTICS' order), each read from the kernels' vectors or the
    glue's rows when asked for (SREMStats.of leaves them there until a field is read). It keeps
    the statistics' rows alone: not a saved S, which a kept result would otherwise hold."""

    __slots__ = ("_kernel", "_glue")

    def __init__(self, kernel, glue_rows):
        self._kernel, self._glue = _only(kernel, KERNEL_STATISTICS), _only(glue_rows, GLUE_STATISTICS)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._glue[name] if name in _GLUE_SET else self._kernel[name]

    def __iter__(self):
        return iter(STATISTICS)

    def __len__(self) -> int:
        return len(STATISTICS)


_GLUE_SET = frozenset(GLUE_STATISTICS)


def _only(vectors, names: tuple):
    return vectors.only(names) if isinstance(vectors, _alloc.Rows) else {k: vectors[k] for k in names}

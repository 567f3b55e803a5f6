"""The glue after the kernels, in one place: everything of a call that is only B-vectors.

    forward   from the kernels' vectors (fused.py's contract): the energies, the clean weights c
              (given, SPEC.md's GMM filtration, or 1), the weights w, the hinge, L_i, the
              backward's hinge factors and the reduced loss — ROWS of one workspace, and `loss`
    upstream  the backward's g_cbcl, k_r, k_c from the loss's upstream gradient
    gmm_filtration   SPEC.md's GMM alone (the distributed path's gathered batch, the trainer's
              dataset-level selection)
    check_values     the value checks of a call's inputs (NaN/Inf, clean in [0, 1], a tensor
              tau finite and > 0): one host read at most

Each is ONE routine per device class — csrc/cpu/glue.cpp for CPU tensors, srem_kernels/
triton/glue.py for CUDA tensors (and for CPU tensors under TRITON_INTERPRET=1 where the kernels
are Triton's) — and the torch form below, which is the readable statement of what they compute,
the fallback where neither is built, and what the tests compare them with (its GMM is
python_ref's). `implementation()` says which runs.

Workspace rows (ws[k] for ROWS[k], each a B-vector in the accumulation dtype):
    energy_i2t = -tau lse_r          energy_t2i = -tau lse_c        energy = -tau (lse_r + lse_c) / 2
    clean      = c (times f)         weight = w = exp(-sce) or 1     loss_hard = [x_r]_+ + [x_c]_+
    per_sample = lambda_hard c w loss_hard + lambda_cbcl loss_cbcl
  (a `sensitivity` mode other than "weight" gives w, the margin m or a factor f on c as
  B-vectors: srem_kernels/sensitivity.py)
    hinge_r    = lambda_hard c w [x_r > 0]     hinge_c = lambda_hard c w [x_c > 0]
  with x_r = m - pos + hard_i2t, x_c = m - pos + hard_t2i. The backward's vectors are then
    g_cbcl = lambda_cbcl g_i,   k_r = g_i hinge_r,   k_c = g_i hinge_c
  with g_i the upstream gradient of L_i (g / B for "mean", g for "sum", g_i for "none").

Under torch.compile the routines run behind custom ops (srem_kernels::glue_forward,
srem_kernels::glue_upstream) whose fake implementations give the shapes; eager calls them
directly (a custom op's dispatch costs host time, and no kernel launch is saved by it).
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch

from python_ref.filtration import gmm_filtration as _reference_gmm, gmm_low_posterior
from srem_kernels import _alloc, _tau, sensitivity

ROWS = ("energy_i2t", "energy_t2i", "energy", "clean", "weight", "loss_hard", "per_sample", "hinge_r", "hinge_c")
SELECT = ("given", "gmm", "none")  # the routines' codes: the index
REDUCTION = ("mean", "sum", "none")
IMPLEMENTATIONS = ("cpu", "triton", "torch")
# the value checks' bits, lowest first in the error
CHECKED = ("img", "txt", "sim", "margin", "clean", "tau")


@functools.cache
def _cpu_module():
    try:
        from srem_kernels.backends import _srem_cpu
    except ImportError:
        return None
    return _srem_cpu if hasattr(_srem_cpu, "glue_forward") else None


@functools.cache
def _triton_module():
    try:
        from srem_kernels.backends.triton import glue as triton_glue
    except ImportError:  # triton not installed
        return None
    return triton_glue


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def implementation(device, prefer: str | None = None) -> str:
    """Which routine runs the glue for tensors on `device`: "cpu" (csrc/cpu/glue.cpp) for CPU
    tensors, "triton" for CUDA tensors, "torch" where that one is not built or installed.
    prefer="triton" (the Triton backend's kernels) takes the Triton routines for CPU tensors too
    when the interpreter runs them."""
    kind = device.type if isinstance(device, torch.device) else torch.device(device).type
    # the environment is read only where it decides (a call's fixed cost: ~3 µs a read here)
    return _implementation(kind, prefer, prefer == "triton" and kind == "cpu" and _interpreting())


@functools.cache
def _implementation(device: str, prefer: str | None, interpreting: bool) -> str:
    if device == "cuda" or (prefer == "triton" and device == "cpu" and interpreting):
        return "triton" if _triton_module() is not None else "torch"
    if device == "cpu" and _cpu_module() is not None:
        return "cpu"
    return "torch"


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- the torch form


def _torch_forward(v, margin, clean, weight, factor, margin_value, tau, lambda_hard, lambda_cbcl, sce_weight, select,
                   reduction):  # fmt: skip
    """(ws, loss) as the module docstring defines them, in plain torch."""
    lse_r, lse_c = v["lse_r"], v["lse_c"]
    energy = -tau * (lse_r + lse_c) / 2
    if SELECT[select] == "given":
        c = clean.to(energy.dtype)
    elif SELECT[select] == "gmm":
        c = _reference_gmm(energy)
    else:
        c = torch.ones_like(energy)
    if factor is not None:
        c = c * factor
    if weight is not None:
        w = weight.to(energy.dtype)
    else:
        w = torch.exp(-v["sce"]) if sce_weight else torch.ones_like(energy)
    m = margin.to(energy.dtype) if margin is not None else margin_value
    x_r = m - v["pos"] + v["hard_i2t"]
    x_c = m - v["pos"] + v["hard_t2i"]
    loss_hard = torch.relu(x_r) + torch.relu(x_c)
    hw = lambda_hard * c * w
    per_sample = hw * loss_hard + lambda_cbcl * v["loss_cbcl"]
    zero = torch.zeros_like(hw)
    ws = torch.stack([-tau * lse_r, -tau * lse_c, energy, c, w, loss_hard, per_sample,
                      torch.where(x_r > 0, hw, zero), torch.where(x_c > 0, hw, zero)])  # fmt: skip
    total = per_sample.double().sum()
    loss = (total / per_sample.shape[0] if REDUCTION[reduction] == "mean" else total).to(energy.dtype)
    return ws, loss


def _torch_upstream(g, scale, lambda_cbcl, hinge_r, hinge_c):
    gi = (g.to(hinge_r.dtype) * scale).expand(hinge_r.shape)
    return torch.stack([gi * lambda_cbcl, gi * hinge_r, gi * hinge_c])


# ---------------------------------------------------------------- the routines, by implementation

# the kernels' vectors the glue reads, in its routines' order
INPUTS = ("lse_r", "lse_c", "pos", "hard_i2t", "hard_t2i", "sce", "loss_cbcl")


def _forward(lse_r, lse_c, pos, hard_i2t, hard_t2i, sce, loss_cbcl, margin, clean, weight, factor, margin_value, tau,
             lambda_hard, lambda_cbcl, sce_weight, select, reduction, impl):  # fmt: skip
    v = dict(zip(INPUTS, (lse_r, lse_c, pos, hard_i2t, hard_t2i, sce, loss_cbcl)))
    if impl == "torch":
        return _torch_forward(v, margin, clean, weight, factor, margin_value, tau, lambda_hard, lambda_cbcl,
                              sce_weight, select, reduction)  # fmt: skip
    acc, B = lse_r.dtype, lse_r.shape[0]
    v = {k: t.contiguous() for k, t in v.items()}  # ours: contiguous already
    weight, factor = (None if t is None else t.to(acc).contiguous() for t in (weight, factor))
    ws = _alloc.empty((len(ROWS), B), dtype=acc, device=lse_r.device)
    loss = _alloc.empty((), dtype=acc, device=lse_r.device)
    if impl == "cpu":
        tau = _tau.host_value(tau) if _tau.is_tensor(tau) else tau  # CPU tensors here: no sync
        p = [v[k].data_ptr() for k in INPUTS]
        _cpu_module().glue_forward(
            B, *p, margin.data_ptr() if margin is not None else 0, margin.stride(0) if margin is not None else 0,
            margin_value, clean.data_ptr() if clean is not None else 0, clean.stride(0) if clean is not None else 0,
            weight.data_ptr() if weight is not None else 0, factor.data_ptr() if factor is not None else 0,
            select, sce_weight, reduction, tau, lambda_hard, lambda_cbcl, ws.data_ptr(), loss.data_ptr(),
            acc == torch.float64,
        )  # fmt: skip
    else:
        _triton_module().glue_forward(v, margin, clean, weight, factor, margin_value, tau, lambda_hard, lambda_cbcl,
                                      sce_weight, select, reduction, ws, loss)  # fmt: skip
    return ws, loss


def _upstream(g, hinge_r, hinge_c, scale, lambda_cbcl, impl):
    if impl == "torch":
        return _torch_upstream(g, scale, lambda_cbcl, hinge_r, hinge_c)
    g = g.to(hinge_r.dtype)
    out = _alloc.empty((3, hinge_r.shape[0]), dtype=hinge_r.dtype, device=hinge_r.device)
    if impl == "cpu":
        _cpu_module().glue_upstream(hinge_r.shape[0], g.data_ptr(), g.stride(0) if g.dim() else 0, scale, lambda_cbcl,
                                    hinge_r.data_ptr(), hinge_c.data_ptr(), out.data_ptr(),
                                    hinge_r.dtype == torch.float64)  # fmt: skip
    else:
        _triton_module().upstream(g, scale, lambda_cbcl, hinge_r, hinge_c, out)
    return out


# ---------------------------------------------------------------- custom ops for torch.compile


@torch.library.custom_op("srem_kernels::glue_forward", mutates_args=())
def glue_forward_op(
    lse_r: torch.Tensor, lse_c: torch.Tensor, pos: torch.Tensor, hard_i2t: torch.Tensor, hard_t2i: torch.Tensor,
    sce: torch.Tensor, loss_cbcl: torch.Tensor, margin: Optional[torch.Tensor], clean: Optional[torch.Tensor],
    weight: Optional[torch.Tensor], factor: Optional[torch.Tensor], margin_value: float, tau: float,
    tau_t: Optional[torch.Tensor], lambda_hard: float, lambda_cbcl: float, sce_weight: bool, select: int,
    reduction: int, impl: str,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """_forward; tau_t a tensor tau (then tau is unused)."""
    ws, loss = _forward(lse_r, lse_c, pos, hard_i2t, hard_t2i, sce, loss_cbcl, margin, clean, weight, factor,
                        margin_value, tau if tau_t is None else tau_t, lambda_hard, lambda_cbcl, sce_weight, select,
                        reduction, impl)  # fmt: skip
    return ws, loss


@glue_forward_op.register_fake
def _(lse_r, lse_c, pos, hard_i2t, hard_t2i, sce, loss_cbcl, margin, clean, weight, factor, margin_value, tau, tau_t,
      lambda_hard, lambda_cbcl, sce_weight, select, reduction, impl):  # fmt: skip
    return lse_r.new_empty((len(ROWS), lse_r.shape[0])), lse_r.new_empty(())


@torch.library.custom_op("srem_kernels::glue_upstream", mutates_args=())
def glue_upstream_op(g: torch.Tensor, hinge_r: torch.Tensor, hinge_c: torch.Tensor, scale: float, lambda_cbcl: float,
                     impl: str) -> torch.Tensor:  # fmt: skip
    return _upstream(g, hinge_r, hinge_c, scale, lambda_cbcl, impl)


@glue_upstream_op.register_fake
def _(g, hinge_r, hinge_c, scale, lambda_cbcl, impl):
    return hinge_r.new_empty((3, hinge_r.shape[0]))


# ---------------------------------------------------------------- what the backends call


def forward(vectors: dict, params, margin, clean, *, impl: str, select: str | None = None,
            batch_sce: torch.Tensor | None = None, lo: int = 0) -> dict:  # fmt: skip
    """The workspace's rows (ROWS) and "loss" from the kernels' `vectors`. `params` an
    SREMParams (tau, lambdas, sce_weight, sensitivity, select, reduction); `margin`, `clean` the
    call's (a float or a B-vector; None or a B-vector). `select` overrides params.select
    ("given": `clean` is the c to use, as the distributed path passes the global GMM's flags).
    A sensitivity mode other than SPEC's "weight" (srem_kernels/sensitivity.py) turns sce into a
    weight vector, a margin vector or a factor on c first (a few B-vector ops, only then);
    `batch_sce`, `lo`: the whole batch's sce when `vectors` hold its rows lo.. (distributed)."""
    e_dtype = vectors["lse_r"].dtype
    if select is None:
        select = "given" if clean is not None else params.select
    if isinstance(margin, torch.Tensor):
        margin = margin.to(e_dtype)
    weight = factor = None
    mode = params.sce_mode
    if mode not in (None, "weight"):
        t = sensitivity.terms(vectors["sce"], mode, margin, batch_sce=batch_sce, lo=lo,
                              gmm=lambda x: gmm_filtration(x, impl=impl))  # fmt: skip
        weight, factor = t.weight, t.clean_factor
        margin = margin if t.margin is None else t.margin
    m_vec = margin if isinstance(margin, torch.Tensor) else None
    m_val = 0.0 if isinstance(margin, torch.Tensor) else float(margin)
    c_vec = clean.to(e_dtype) if clean is not None else None
    tau = params.tau if _tau.is_tensor(params.tau) else float(params.tau)
    head = (*(vectors[k] for k in INPUTS), m_vec, c_vec, weight, factor, m_val)
    tail = (float(params.lambda_hard), float(params.lambda_cbcl), mode == "weight", SELECT.index(select),
            REDUCTION.index(params.reduction), impl)  # fmt: skip
    if torch.compiler.is_compiling():
        as_op = (0.0, tau) if _tau.is_tensor(tau) else (tau, None)
        ws, loss = glue_forward_op(*head, *as_op, *tail)
    else:
        ws, loss = _forward(*head, tau, *tail)
    out = dict(zip(ROWS, ws.unbind(0)))
    out["loss"] = out["per_sample"] if params.reduction == "none" else loss
    return out


def upstream_scale(reduction: str, B: int) -> float:
    """What the loss's upstream gradient is scaled by per sample: 1/B for "mean", else 1."""
    return 1.0 / B if reduction == "mean" else 1.0


def upstream(g, hinge_r, hinge_c, *, reduction: str, lambda_cbcl: float, impl: str) -> dict:
    """g_cbcl, k_r, k_c from the loss's upstream gradient g (a scalar for "mean"/"sum", a
    B-vector for "none")."""
    args = (g, hinge_r, hinge_c, upstream_scale(reduction, hinge_r.shape[0]), float(lambda_cbcl), impl)
    out = glue_upstream_op(*args) if torch.compiler.is_compiling() else _upstream(*args)
    return dict(zip(("g_cbcl", "k_r", "k_c"), out.unbind(0)))


def gmm_filtration(energy: torch.Tensor, *, impl: str | None = None, posterior: bool = False):
    """SPEC.md's clean flags c (0/1, the energies' dtype) of a vector of energies — and, with
    posterior=True, (c, the lower-mean component's final posterior): one routine per device
    class, fp64 arithmetic, no host round trip."""
    if energy.dim() != 1 or energy.shape[0] < 1:
        raise ValueError(f"energy must be a non-empty 1-D tensor, got shape {tuple(energy.shape)}")
    if energy.dtype not in (torch.float32, torch.float64):
        energy = energy.to(torch.float32)
    impl = impl or implementation(energy.device)
    B = energy.shape[0]
    if impl == "torch":
        c = _reference_gmm(energy)
        return (c, gmm_low_posterior(energy)) if posterior else c
    c = _alloc.empty((B,), dtype=energy.dtype, device=energy.device)
    post = _alloc.empty((B,), dtype=energy.dtype, device=energy.device) if posterior else None
    if impl == "cpu":
        _cpu_module().gmm_filtration(energy.data_ptr(), B, energy.stride(0), c.data_ptr(), 1,
                                     post.data_ptr() if post is not None else 0, energy.dtype == torch.float64)  # fmt: skip
    else:
        _triton_module().gmm_filtration(energy, c, post)
    return (c, post) if posterior else c


_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


def _tau_ok(tau: float) -> bool:
    return tau > 0 and tau != float("inf")  # False for NaN too


def check_values(*, img=None, txt=None, sim=None, margin=None, clean=None, tau=None, impl: str) -> None:
    """ValueError naming the first argument that holds NaN/Inf (img, txt, sim, a margin vector;
    a float margin or None is skipped), clean weights outside [0, 1], or a tensor tau that is not
    finite and > 0. CPU: the C++ checks, no host read; Triton: one launch per tensor into one
    flag, read once; torch: the flags as tensors, read once. A CPU tensor tau beside inputs on
    another device is read on the host (no sync)."""
    given = {k: t for k, t in zip(CHECKED, (img, txt, sim, margin, clean, tau)) if isinstance(t, torch.Tensor)}
    bad_tau = False
    if "tau" in given and (impl == "cpu" or given["tau"].device.type == "cpu"):
        bad_tau = not _tau_ok(_tau.host_value(given.pop("tau")))
    bad = 0
    if impl == "cpu":
        C = _cpu_module()
        threads = torch.get_num_threads()
        for bit, (name, t) in enumerate(given.items()):
            if name == "clean":
                c = t if t.dtype in (torch.float32, torch.float64) else t.float()
                hit = C.outside_unit(c.data_ptr(), c.shape[0], c.stride(0), c.dtype == torch.float64)
            else:
                t2 = t if t.dim() == 2 else t[:, None]
                hit = C.nonfinite(t2.data_ptr(), t2.shape[0], t2.shape[1], t2.stride(0), t2.stride(1),
                                  _DTYPE_CODES[t.dtype], threads)  # fmt: skip
            if hit:
                bad |= 1 << CHECKED.index(name)
                break
    elif impl == "triton" and given:
        T = _triton_module()
        flag = torch.zeros(1, dtype=torch.int32, device=next(iter(given.values())).device)
        for name, t in given.items():
            T.nonfinite(t, flag, 1 << CHECKED.index(name), bound=_BOUNDS.get(name))
        bad = int(flag[0])  # the one host read of a call
    elif given:
        flags = [_torch_bad(name, t) for name, t in given.items()]
        hits = torch.stack(flags).tolist()  # the one host read
        bad = sum(1 << CHECKED.index(name) for name, hit in zip(given, hits) if hit)
    if bad_tau:
        bad |= 1 << CHECKED.index("tau")
    if bad:
        name = CHECKED[(bad & -bad).bit_length() - 1]
        if name == "clean":
            raise ValueError("clean weights must lie in [0, 1]")
        if name == "tau":
            raise ValueError("tau must be finite and > 0 (a tensor tau's value is checked with the inputs'; "
                             "check_finite=False skips it)")  # fmt: skip
        raise ValueError(f"{name} contains NaN or Inf (pass check_finite=False to skip this check)")


# the value ranges the Triton check tests instead of finiteness
_BOUNDS = {"clean": "unit", "tau": "positive"}


def _torch_bad(name: str, t: torch.Tensor) -> torch.Tensor:
    if name == "clean":
        return ~((t >= 0) & (t <= 1)).all()
    if name == "tau":
        return ~((t > 0) & torch.isfinite(t))
    return ~torch.isfinite(t).all()

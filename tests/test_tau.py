"""A learnable temperature (SPEC.md, 2026-12-07): `tau` as a 0-d tensor, on every backend that runs
here — reference, the dense contract (fused.py's glue), cpu (both strategies, from sim) and
triton under the interpreter (both strategies, from sim).

dL/dtau is checked two ways: against the fp64 reference's autograd, and against a central
finite difference of the CBCL term with its bias weights frozen, computed without autograd (the
hinge reads S, not Z, so it carries no tau gradient). The embeddings' gradients and the loss must
be those of the same tau given as a float, bit for bit on the fused backends.
"""

from __future__ import annotations

import functools

import pytest
import torch

import python_ref as R
import srem_kernels
from srem_kernels import _tau
from srem_kernels._validate import check_params
from srem_kernels.backends import fused
from srem_kernels.backends.dense import DenseKernels
from tests.helpers import TOLERANCES, assert_rel_close, embeddings

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's masked lanes

CPU = srem_kernels.backends()["cpu"].available
TRITON = srem_kernels.backends()["triton"].available
# fp64: what an fp64 accumulation reaches (the issue asks ≤ 1e-4); others: SPEC's gradient bound
GRAD_TOL = {torch.float64: 1e-10, torch.float32: TOLERANCES["fp32"][1], torch.bfloat16: TOLERANCES["bf16"][1],
            torch.float16: TOLERANCES["fp16"][1]}  # fmt: skip
LOSS_TOL = {torch.float64: 1e-12, torch.float32: TOLERANCES["fp32"][0], torch.bfloat16: TOLERANCES["bf16"][0],
            torch.float16: TOLERANCES["fp16"][0]}  # fmt: skip

OPTIONS = {
    "default": {},
    "no-bias": {"bias": False, "reduction": "sum"},
    "select-none-no-sce": {"select": "none", "sce_weight": False, "lambda_cbcl": 2.0, "lambda_hard": 0.5},
    "none": {"reduction": "none", "tau": 0.1},
}


def _triton(strategy):
    from srem_kernels.backends.triton.kernels import TritonKernels

    return TritonKernels(strategy, block=32, block_n=16, split=2, panel_rows=16)


def _cpu(strategy):
    from srem_kernels.backends.cpu import CPUKernels

    return CPUKernels(strategy)


# name -> (kernels factory or a backend name, dtypes it is checked in)
RUNS = {
    "reference": ("reference", (torch.float64, torch.float32)),
    "dense": (DenseKernels, (torch.float64, torch.float32)),
    **({"cpu-materialised": (functools.partial(_cpu, "materialised"), (torch.float32, torch.bfloat16)),
        "cpu-streaming": (functools.partial(_cpu, "streaming"), (torch.float32, torch.float16))} if CPU else {}),
    **({"triton-materialised": (functools.partial(_triton, "materialised"), (torch.float64, torch.float32)),
        "triton-streaming": (functools.partial(_triton, "streaming"), (torch.float32, torch.bfloat16))} if TRITON else {}),
}  # fmt: skip
CASES = [(name, dtype) for name, (_, dtypes) in RUNS.items() for dtype in dtypes]
# every option set from embeddings and from sim on the cheap runs; the interpreted Triton kernels
# (seconds a call) on a cover of them: each option set, both paths, every strategy and dtype once
_TRITON_COVER = {("triton-materialised", torch.float64): (("default", True), ("no-bias", False)),
                 ("triton-materialised", torch.float32): (("select-none-no-sce", True), ("none", False)),
                 ("triton-streaming", torch.float32): (("default", False), ("select-none-no-sce", False)),
                 ("triton-streaming", torch.bfloat16): (("no-bias", False),)}  # fmt: skip
REFERENCE_CASES = [
    (name, dtype, case, from_sim)
    for name, dtype in CASES
    for case in OPTIONS
    for from_sim in (False, True)
    if not name.startswith("triton") or (case, from_sim) in _TRITON_COVER[(name, dtype)]
]


def _call(name, img, txt, sim, kw):
    """(loss, per_sample) of one backend run; img/txt or sim are the leaves, kw the loss's options."""
    impl, _ = RUNS[name]
    if isinstance(impl, str):
        if sim is not None:
            out = srem_kernels.loss_from_similarity(sim, backend=impl, **kw)
        else:
            out = srem_kernels.loss(img, txt, backend=impl, **kw)
        return out.loss
    x = sim if sim is not None else img
    params = check_params(x.shape[0], x.device, **_full(kw))
    return fused.run(impl(), img, txt, sim, params)[0]


def _full(kw):
    return dict(tau=0.05, margin=0.2, lambda_hard=1.0, lambda_cbcl=1.0, bias=True, sce_weight=True, clean=None,
                select="gmm", eps=1e-10, reduction="mean") | kw  # fmt: skip


def _run(name, img, txt, from_sim, kw, tau, upstream):
    """(loss, [grads of the leaves], tau's grad) with the upstream gradient `upstream`."""
    if from_sim:
        leaves = [(img.float() @ txt.float().T).to(img.dtype).requires_grad_()]
        loss = _call(name, None, None, leaves[0], kw | {"tau": tau})
    else:
        leaves = [img.clone().requires_grad_(), txt.clone().requires_grad_()]
        loss = _call(name, *leaves, None, kw | {"tau": tau})
    (loss * upstream.to(loss.dtype)).sum().backward()
    return loss.detach(), [t.grad for t in leaves], (tau.grad if isinstance(tau, torch.Tensor) else None)


def _reference(img, txt, from_sim, kw, tau_value, upstream):
    """fp64 reference from the same rounded inputs, tau as an fp64 leaf of the same value."""
    tau = torch.tensor(tau_value, dtype=torch.float64, requires_grad=True)
    kw = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in _full(kw).items()} | {"tau": tau}
    if from_sim:
        leaves = [(img.float() @ txt.float().T).to(img.dtype).double().requires_grad_()]
        loss = R.srem(sim=leaves[0], **kw)[0]
    else:
        leaves = [img.double().requires_grad_(), txt.double().requires_grad_()]
        loss = R.srem(*leaves, **kw)[0]
    (loss * upstream).sum().backward()
    return loss.detach(), [t.grad for t in leaves], tau.grad


def _inputs(B, D, dtype, case, seed=0):
    img, txt = embeddings(B, D, seed=seed, noise=0.7, dtype=dtype)
    kw = dict(OPTIONS[case])
    tau_value = kw.pop("tau", 0.05)
    shape = (B,) if kw.get("reduction") == "none" else ()
    upstream = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return img, txt, kw, tau_value, upstream


@pytest.mark.parametrize("name,dtype,case,from_sim", REFERENCE_CASES)
def test_tau_gradient_matches_reference(name, dtype, case, from_sim):
    B, D = (37, 11) if case != "none" else (5, 3)
    img, txt, kw, tau_value, upstream = _inputs(B, D, dtype, case, seed=B + D)
    tau = torch.tensor(tau_value, dtype=torch.float32, requires_grad=True)  # CLIP's: an fp32 parameter
    loss, grads, g_tau = _run(name, img, txt, from_sim, kw, tau, upstream)
    ref_loss, ref_grads, ref_tau = _reference(img, txt, from_sim, kw, float(tau), upstream)
    assert g_tau.dtype == tau.dtype and g_tau.shape == ()
    tol = GRAD_TOL[dtype] if dtype != torch.float64 else 1e-10
    assert_rel_close(g_tau, ref_tau, max(tol, 1e-7), "d tau")  # fp32 tau: its gradient is rounded to fp32
    assert_rel_close(loss, ref_loss, LOSS_TOL[dtype], "loss")
    for n, (gr, rg) in enumerate(zip(grads, ref_grads)):
        assert_rel_close(gr, rg, GRAD_TOL[dtype], f"grad {n}")


@pytest.mark.parametrize("from_sim", [False, True])
@pytest.mark.parametrize("name,dtype", [c for c in CASES if not c[0].startswith("triton") or c[1] != torch.float64])
def test_tensor_tau_is_the_float_tau(name, dtype, from_sim):
    """Same value as a float and as a tensor: the same loss and embeddings' gradients (bit for bit
    on the fused backends, whose kernels form 1/tau the same way from either)."""
    img, txt, kw, tau_value, upstream = _inputs(23, 9, dtype, "default", seed=4)
    tau = torch.tensor(tau_value, dtype=torch.float64, requires_grad=True)
    loss_t, grads_t, _ = _run(name, img, txt, from_sim, kw, tau, upstream)
    loss_f, grads_f, _ = _run(name, img, txt, from_sim, kw, tau_value, upstream)
    exact = name != "reference"
    check = torch.equal if exact else functools.partial(torch.allclose, rtol=1e-6, atol=0)
    assert check(loss_t, loss_f)
    for gt, gf in zip(grads_t, grads_f):
        assert check(gt, gf)


def _cbcl_finite_difference(S, tau, g, kw, h):
    """d/dtau of sum_i g_i lambda_cbcl L_cbcl_i(S / tau) with the bias weights frozen at tau:
    a central difference in fp64, no autograd."""
    p = _full(kw)
    with torch.no_grad():
        Z0 = S / tau
        b_r, b_c = R.bias_weights(R.prob_r(Z0, R.lse_r(Z0)), R.prob_c(Z0, R.lse_c(Z0)), p["bias"])

        def f(t):
            Z = S / t
            return (g * p["lambda_cbcl"] * R.loss_cbcl(Z, R.lse_r(Z), R.lse_c(Z), p["eps"], b_r, b_c)).sum()

        return ((f(tau + h) - f(tau - h)) / (2 * h)).item()


@pytest.mark.parametrize("name,dtype,case", [
    (name, dtype, case) for name, dtype in CASES if dtype in (torch.float64, torch.float32) for case in OPTIONS
    if not name.startswith("triton") or case == "default"
])  # fmt: skip
def test_tau_gradient_against_finite_difference(name, dtype, case):
    B, D = 29, 6
    img, txt, kw, tau_value, upstream = _inputs(B, D, dtype, case, seed=7)
    tau = torch.tensor(tau_value, dtype=torch.float64, requires_grad=True)
    _, _, g_tau = _run(name, img, txt, False, kw, tau, upstream)
    S = img.double() @ txt.double().T
    reduction = _full(kw)["reduction"]
    g = upstream / B if reduction == "mean" else upstream.expand(B)
    fd = _cbcl_finite_difference(S, tau_value, g, kw, h=1e-5 * tau_value)
    tol = 1e-6 if dtype == torch.float64 else GRAD_TOL[dtype]
    assert abs(g_tau.item() - fd) <= tol * abs(fd), (g_tau.item(), fd)


def test_hinge_alone_has_no_tau_gradient():
    img, txt = embeddings(17, 5, seed=2, dtype=torch.float32)
    tau = torch.tensor(0.05, requires_grad=True)
    out = srem_kernels.loss(img.requires_grad_(), txt, tau=tau, lambda_cbcl=0.0)
    out.loss.backward()
    assert tau.grad is not None and tau.grad.item() == 0.0 and out.loss.item() > 0


@pytest.mark.parametrize("tau_dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_tau_dtypes(tau_dtype):
    """Any float dtype: the value it holds is the tau, its gradient comes back in its dtype."""
    img, txt = embeddings(19, 7, seed=3, dtype=torch.float32)
    tau = torch.tensor(0.07, dtype=tau_dtype, requires_grad=True)
    out = srem_kernels.loss(img, txt, tau=tau)
    out.loss.backward()
    assert tau.grad.dtype == tau_dtype
    plain = srem_kernels.loss(img, txt, tau=tau.item())
    assert torch.equal(out.loss.detach(), plain.loss)
    assert torch.equal(out.stats.energy, plain.stats.energy)


def test_tau_without_grad_and_stats_only():
    img, txt = embeddings(19, 7, seed=3, dtype=torch.float32)
    tau = torch.tensor(0.05)
    a = srem_kernels.loss(img, txt, tau=tau)
    b = srem_kernels.loss(img, txt, tau=0.05)
    assert torch.equal(a.loss, b.loss)
    s = srem_kernels.loss(img, txt, tau=torch.tensor(0.05, requires_grad=True), stats_only=True)
    assert not s.loss.requires_grad and torch.equal(s.loss, b.loss)


def test_statistics_carry_no_tau_gradient():
    """c, w, the energies, sce: constants (SPEC's Changes, 2026-12-07)."""
    img, txt = embeddings(19, 7, seed=3, dtype=torch.float64)
    tau = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    for backend in ("reference", *(["cpu"] if CPU else [])):
        x = img if backend == "reference" else img.float()
        out = srem_kernels.loss(x, txt.to(x.dtype), tau=tau, backend=backend)
        for name, v in out.stats.as_dict().items():
            assert not v.requires_grad, (backend, name)


@pytest.mark.parametrize("bad,err,phrase", [
    (torch.tensor([0.05]), ValueError, "0-d tensor"),
    (torch.tensor(5), TypeError, "floating dtype"),
    (torch.tensor(0.0), ValueError, "tau must be finite and > 0"),
    (torch.tensor(-0.05), ValueError, "tau must be finite and > 0"),
    (torch.tensor(float("nan")), ValueError, "tau must be finite and > 0"),
    (torch.tensor(float("inf")), ValueError, "tau must be finite and > 0"),
    (torch.empty((), device="meta"), TypeError, "meta tensor"),
    ("0.05", TypeError, "tau must be a real number or a 0-d tensor"),
])  # fmt: skip
@pytest.mark.parametrize("backend", ["reference", *(["cpu"] if CPU else [])])
def test_bad_tau_is_named(bad, err, phrase, backend):
    img, txt = embeddings(6, 3, seed=0, dtype=torch.float32)
    with pytest.raises(err, match=phrase):
        srem_kernels.loss(img, txt, tau=bad, backend=backend)
    with pytest.raises(err, match=phrase):
        srem_kernels.loss_from_similarity(img @ txt.T, tau=bad, backend=backend)


@pytest.mark.skipif(not TRITON, reason="triton not installed")
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_bad_tau_value_in_the_triton_check(bad):
    """The Triton value check (the routine CUDA tensors get) flags a device tau out of range."""
    from srem_kernels.backends import glue

    good = torch.ones(4, 3)
    glue.check_values(img=good, txt=good, tau=torch.tensor(0.05, dtype=torch.float64), impl="triton")
    flag = torch.zeros(1, dtype=torch.int32)
    from srem_kernels.backends.triton import glue as tg

    tg.nonfinite(torch.tensor(bad, dtype=torch.float32), flag, 1 << 5, bound="positive")
    assert int(flag[0]) == 1 << 5


def test_host_value_reads_every_dtype_without_an_operator():
    from bench import opcount

    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        t = torch.tensor(0.0712, dtype=dtype)
        c = opcount.count(lambda: _tau.host_value(t))
        assert c.aten == 0 and c.reads == 0
        assert _tau.host_value(t) == t.item()
    assert _tau.host_value(torch.tensor([1.0, 0.25])[1]) == 0.25  # a view: its offset


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_tensor_tau_adds_no_host_read(backend):
    """A tensor tau is read where it lives: the host reads of a step (bench/opcount.py) are those
    of a float tau, with and without its gradient (the triton backend's check is its one read)."""
    if not srem_kernels.backends()[backend].available:
        pytest.skip(f"{backend} unavailable")
    from bench import opcount

    img, txt = embeddings(24, 8, seed=5, dtype=torch.float32)

    def step(tau, check):
        a = img.clone().requires_grad_()
        srem_kernels.loss(a, txt, tau=tau, backend=backend, check_finite=check).loss.backward()

    for check in (True, False):
        base = opcount.count(lambda: step(0.05, check))
        for tau in (torch.tensor(0.05), torch.tensor(0.05, requires_grad=True)):
            c = opcount.count(lambda: step(tau, check))
            assert (c.reads, c.h2d) == (base.reads, base.h2d), (backend, check, c.by_op)


def test_module_holds_a_learnable_tau():
    p = torch.nn.Parameter(torch.tensor(0.07))
    crit = srem_kernels.SREMLoss(tau=p)
    assert [q is p for q in crit.parameters()] == [True]
    img, txt = embeddings(13, 5, seed=1, dtype=torch.float32)
    crit(img, txt).loss.backward()
    assert p.grad is not None and p.grad.item() != 0
    assert "tau=tensor(0.07)" in repr(crit)
    buf = srem_kernels.SREMLoss(tau=torch.tensor(0.05))
    assert "tau" in dict(buf.named_buffers()) and not list(buf.parameters())
    other = torch.tensor(0.05, requires_grad=True)  # a per-call tau overrides the constructor's
    out = crit(img, txt, tau=other)
    out.loss.backward()
    assert other.grad is not None
    assert torch.equal(out.loss.detach(), srem_kernels.loss(img, txt, tau=0.05).loss)
    with pytest.raises(ValueError, match="0-d tensor"):
        srem_kernels.SREMLoss(tau=torch.ones(2))


def test_torch_compile_fullgraph_with_a_tensor_tau():
    """A training step that learns the temperature compiles with fullgraph=True (no graph break)
    through the public API: the reference, and the cpu and triton backends (their kernels behind
    the custom ops; the registry hands the loaded backend to the trace). Loss and every gradient,
    tau's included, match eager."""
    lin = torch.nn.Linear(8, 6)
    scale = torch.nn.Parameter(torch.tensor(3.0))  # CLIP: tau = 1 / exp(logit_scale)
    x, y = torch.randn(16, 8), torch.randn(16, 8)

    def embed():
        return torch.nn.functional.normalize(lin(x), dim=1), torch.nn.functional.normalize(lin(y), dim=1)

    for backend in ("reference", *(["cpu"] if CPU else []), *(["triton"] if TRITON else [])):
        def step():
            return srem_kernels.loss(*embed(), tau=1 / scale.exp(), backend=backend, check_finite=False).loss

        got = []
        for fn in (step, torch.compile(step, fullgraph=True, backend="aot_eager")):  # eager first: loads it
            lin.zero_grad()
            scale.grad = None
            loss = fn()
            loss.backward()
            got.append((loss.detach(), lin.weight.grad.clone(), scale.grad.clone()))
        for a, b in zip(*got):
            assert_rel_close(a, b, 1e-6, backend)
        assert got[0][2].item() != 0


_COMPILED_FROM_THE_START = r"""
import sys, torch, srem_kernels
backend = sys.argv[1]
scale = torch.nn.Parameter(torch.tensor(3.0))

def step(a, b):
    return srem_kernels.loss(a, b, tau=1 / scale.exp(), backend=backend, check_finite=False).loss

compiled = torch.compile(step, fullgraph=True, backend="aot_eager")  # before any eager call: nothing loaded
for B in (16, 12, 16):
    g = torch.Generator().manual_seed(B)
    img = torch.nn.functional.normalize(torch.randn(B, 8, generator=g), dim=1)
    txt = torch.nn.functional.normalize(img + 0.5 * torch.randn(B, 8, generator=g), dim=1)
    got = []
    for fn in (compiled, step):
        a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
        scale.grad = None
        loss = fn(a, b)
        loss.backward()
        got.append((loss.detach(), a.grad, b.grad, scale.grad.clone()))
    for x, y in zip(*got):
        assert torch.allclose(x, y, rtol=1e-6, atol=0), (backend, B, x, y)
print("ok")
"""


@pytest.mark.parametrize("backend", [*(["cpu"] if CPU else []), *(["triton"] if TRITON else [])])
def test_torch_compile_from_the_first_call_and_across_batch_sizes(backend):
    """A run that compiles its step before any eager call (the backend is loaded while dynamo
    traces) and meets a second batch size (a last, smaller batch): the strategy is chosen per batch
    size without a cache read or write inside the trace, so each graph traces whole and matches
    eager. In a fresh process, where nothing is loaded yet."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1") if backend == "triton" else dict(os.environ)
    out = subprocess.run([sys.executable, "-c", _COMPILED_FROM_THE_START, backend], capture_output=True, text=True,
                         env=env, timeout=600)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]

"""The glue after the kernels (srem_kernels/backends/glue.py): its CPU routine (csrc/cpu/glue.cpp) and its
Triton routine (srem_kernels/backends/triton/glue.py, under the interpreter here) against the torch form
and python_ref's GMM, the value checks, and the launch-lean bar (a count of operators and host
reads is deterministic, so it is guarded here; times are bench/'s)."""

from __future__ import annotations

import pytest
import torch

import srem_kernels
from bench import opcount
from python_ref.filtration import gmm_filtration as ref_gmm, gmm_low_posterior
from srem_kernels import _alloc
from srem_kernels.backends import glue
from srem_kernels._validate import SREMParams
from tests.helpers import TOLERANCES, assert_rel_close

# the routines that run on CPU tensors here: the C++ one, and Triton's under the interpreter
IMPLS = [i for i in ("cpu", "triton") if glue.implementation("cpu", prefer=i) == i]
if glue._cpu_module() is None:  # the C++ module is optional (setup.py skips it without a compiler)
    IMPLS = [i for i in IMPLS if i != "cpu"]


def _energies(kind: str, B: int, dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        x = torch.randn(B, generator=g, dtype=torch.float64) * 0.3 - 0.7
    elif kind == "two clusters":
        n = max(1, int(0.6 * B))
        x = torch.cat([-1.0 + 0.05 * torch.randn(n, generator=g, dtype=torch.float64),
                       -0.5 + 0.1 * torch.randn(B - n, generator=g, dtype=torch.float64)])  # fmt: skip
        x = x[torch.randperm(B, generator=g)]
    elif kind == "all equal":
        x = torch.full((B,), -0.37, dtype=torch.float64)
    elif kind == "skewed":  # a heavy tail: one component ends up small
        x = torch.cat([torch.randn(B - 3, generator=g, dtype=torch.float64) * 0.01, torch.tensor([5.0, 6.0, 7.0])])
    return x.to(dtype)


GMM_CASES = [("random", 2), ("random", 7), ("two clusters", 130), ("two clusters", 4099), ("all equal", 64),
             ("all equal", 2), ("skewed", 50), ("random", 1)]  # fmt: skip


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("kind,B", GMM_CASES)
def test_gmm_matches_the_reference(impl, dtype, kind, B):
    """Flags equal python_ref's GMM in fp64 on the same energies except where that posterior is
    within 1e-6 of 1/2; the deciding posterior within fp32's rounding of it."""
    e = _energies(kind, B, dtype, seed=B)
    c, post = glue.gmm_filtration(e, impl=impl, posterior=True)
    ref_c, ref_post = ref_gmm(e.double()), gmm_low_posterior(e.double())
    assert c.dtype == dtype and c.shape == (B,)
    decided = (ref_post - 0.5).abs() > 1e-6
    assert torch.equal(c.double()[decided], ref_c[decided]), (c, ref_c)
    if kind == "all equal":
        assert torch.equal(c, torch.ones_like(c))  # SPEC: no spread, every pair clean
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert (post.double() - ref_post).abs().max() <= tol


@pytest.mark.parametrize("impl", IMPLS)
def test_gmm_at_a_large_batch_and_strided(impl):
    B = 200_003 if impl == "cpu" else 20_011  # the interpreter runs the one program in numpy
    e = _energies("two clusters", 2 * B, torch.float32, seed=5)[::2]  # stride 2
    c, post = glue.gmm_filtration(e, impl=impl, posterior=True)
    ref_post = gmm_low_posterior(e.double())
    decided = (ref_post - 0.5).abs() > 1e-6
    assert torch.equal(c.double()[decided], ref_gmm(e.double())[decided])
    assert 0.3 < c.mean() < 0.9


def test_gmm_is_deterministic_and_the_same_in_both_routines():
    e = _energies("two clusters", 777, torch.float32, seed=3)
    runs = [glue.gmm_filtration(e, impl=i, posterior=True) for i in IMPLS for _ in range(2)]
    for c, p in runs[1:]:
        assert torch.equal(c, runs[0][0])
    assert torch.equal(runs[0][1], runs[1][1])


def test_gmm_refuses_what_is_not_a_vector():
    with pytest.raises(ValueError, match="energy must be a non-empty 1-D tensor"):
        glue.gmm_filtration(torch.zeros(3, 2))


# ---------------------------------------------------------------- forward and upstream


def _vectors(B, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: (lo + (hi - lo) * torch.rand(B, generator=g, dtype=torch.float64)).to(dtype)  # noqa: E731
    return {"lse_r": r(2, 4) + torch.randn(B, generator=g, dtype=torch.float64).to(dtype) * (r(0, 1) > 0.6),
            "lse_c": r(2, 4), "pos": r(0.3, 0.9), "hard_i2t": r(0.1, 0.9), "hard_t2i": r(0.1, 0.9),
            "sce": r(0.5, 3), "loss_cbcl": r(0, 2)}  # fmt: skip


GLUE_CASES = {
    "default": ({}, None, None),
    "clean given, sum": ({"reduction": "sum"}, None, "clean"),
    "margin vector, none": ({"reduction": "none", "sce_weight": False}, "margin", None),
    "select none": ({"select": "none", "lambda_hard": 0.5, "lambda_cbcl": 2.0}, None, None),
    # sensitivity modes (srem_kernels/sensitivity.py): a weight vector, a margin vector, a factor on c
    "sensitivity rank": ({"sensitivity": "rank"}, None, None),
    "sensitivity margin": ({"sensitivity": "margin", "reduction": "sum"}, "margin", None),
    "sensitivity clean, clean given": ({"sensitivity": "clean"}, None, "clean"),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", GLUE_CASES)
@pytest.mark.parametrize("B", [2, 37, 1500])
def test_forward_and_upstream_match_the_torch_form(impl, dtype, case, B):
    opts, margin, clean = GLUE_CASES[case]
    params = SREMParams(**opts)
    v = _vectors(B, dtype, seed=B)
    g = torch.Generator().manual_seed(7)
    margin = (0.1 + 0.2 * torch.rand(2 * B, generator=g))[::2] if margin else 0.2  # strided, fp32
    clean = torch.rand(B, generator=g) if clean else None
    got = glue.forward(v, params, margin, clean, impl=impl)
    ref = glue.forward(v, params, margin, clean, impl="torch")
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    for k in (*glue.ROWS, "loss"):
        assert got[k].dtype == dtype, k
        assert torch.allclose(got[k], ref[k], rtol=tol, atol=tol), (k, got[k], ref[k])
    assert torch.equal(got["clean"], ref["clean"])
    if clean is not None:
        assert got["clean"].data_ptr() != clean.data_ptr()
    grad = torch.randn(B, dtype=dtype, generator=g) if params.reduction == "none" else torch.tensor(0.7, dtype=dtype)
    up = glue.upstream(grad, got["hinge_r"], got["hinge_c"], reduction=params.reduction,
                       lambda_cbcl=params.lambda_cbcl, impl=impl)  # fmt: skip
    up_ref = glue.upstream(grad, got["hinge_r"], got["hinge_c"], reduction=params.reduction,
                           lambda_cbcl=params.lambda_cbcl, impl="torch")  # fmt: skip
    for k in up:
        assert torch.allclose(up[k], up_ref[k], rtol=tol, atol=0), k


def test_upstream_of_an_expanded_gradient():
    """reduction="none" after .sum(): autograd hands a stride-0 vector."""
    v = _vectors(9, torch.float32, seed=1)
    out = glue.forward(v, SREMParams(reduction="none"), 0.2, None, impl=IMPLS[0])
    g = torch.tensor(1.5).expand(9)
    for impl in IMPLS:
        up = glue.upstream(g, out["hinge_r"], out["hinge_c"], reduction="none", lambda_cbcl=2.0, impl=impl)
        assert torch.equal(up["g_cbcl"], torch.full((9,), 3.0))
        assert torch.equal(up["k_r"], 1.5 * out["hinge_r"])


def test_the_implementation_by_device():
    assert glue.implementation("cpu") == ("cpu" if glue._cpu_module() else "torch")
    if not torch.cuda.is_available():
        assert glue.implementation("cpu", prefer="triton") == "triton"  # conftest: TRITON_INTERPRET=1


# ---------------------------------------------------------------- value checks


def _bad(kind, dtype):
    x = torch.randn(13, 6).to(dtype)
    x[4, 3] = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}[kind]
    return x


@pytest.mark.parametrize("impl", IMPLS + ["torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("kind", ["nan", "inf", "-inf"])
def test_value_checks_name_the_argument(impl, dtype, kind):
    good = torch.randn(13, 6).to(dtype)
    glue.check_values(img=good, txt=good.T.contiguous().T, impl=impl)  # non-contiguous, fine
    with pytest.raises(ValueError, match="^img contains NaN or Inf"):
        glue.check_values(img=_bad(kind, dtype), txt=_bad(kind, dtype), impl=impl)
    with pytest.raises(ValueError, match="^txt contains NaN or Inf"):
        glue.check_values(img=good, txt=_bad(kind, dtype).T, impl=impl)
    with pytest.raises(ValueError, match="^sim contains NaN or Inf"):
        glue.check_values(sim=_bad(kind, dtype)[:6], impl=impl)
    with pytest.raises(ValueError, match="^margin contains NaN or Inf"):
        glue.check_values(img=good, txt=good, margin=_bad(kind, torch.float32)[:, 3], impl=impl)


@pytest.mark.parametrize("impl", IMPLS + ["torch"])
def test_clean_range_check(impl):
    good = torch.randn(5, 3)
    glue.check_values(img=good, txt=good, clean=torch.tensor([0.0, 1.0, 0.5, -0.0, 1e-30]), impl=impl)
    for bad in (1.0000001, -1e-8, float("nan")):
        c = torch.tensor([0.0, 1.0, bad, 0.5, 0.2])
        with pytest.raises(ValueError, match="clean weights must lie in"):
            glue.check_values(img=good, txt=good, clean=c, impl=impl)


# ---------------------------------------------------------------- the launch-lean bar (issue 11)

# the fused backends whose public path runs on CPU tensors here: cpu where its module is built,
# triton under the interpreter
BACKENDS = (["cpu"] if srem_kernels.backends()["cpu"].available else []) + (["triton"] if not torch.cuda.is_available() else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_launching_operators_and_host_reads_per_step(backend, monkeypatch):
    """One forward+backward at B=128, D=256: ≤ 30 launching ATen operators with defaults, ≤ 25
    with clean= given; ≤ 1 host read, 0 with check_finite=False; no host-to-device copy from the
    glue (the Triton kernels' own are issue 17's). Counted without the tests' poisoning fills."""
    monkeypatch.setattr(_alloc, "POISON", False)
    for kw, ops, reads in (({}, 30, 1), ({"clean": True}, 25, 1), ({"check_finite": False}, 30, 0)):
        step = opcount.loss_step(backend, 128, 256, **kw)
        step()
        c = opcount.count(step)
        assert c.aten <= ops, (kw, c.row(), c.by_op)
        assert c.reads <= reads, (kw, c.row(), c.by_op)


def _public_and_reference(backend):
    """One call through the public path (reduction "none") and the fp64 reference's, its backward run."""
    g = torch.Generator().manual_seed(17)
    img = torch.nn.functional.normalize(torch.randn(17, 8, generator=g), dim=1).requires_grad_()
    txt = torch.nn.functional.normalize(torch.randn(17, 8, generator=g), dim=1).requires_grad_()
    out = srem_kernels.loss(img, txt, backend=backend, reduction="none")
    ref_img, ref_txt = (x.detach().double().requires_grad_() for x in (img, txt))
    ref = srem_kernels.loss(ref_img, ref_txt, backend="reference", reduction="none")
    ref.loss.sum().backward()
    return (img, txt, out), (ref_img, ref_txt, ref)


def _gradients_match(ours, theirs) -> None:
    """SPEC's fp32 bar against the fp64 reference."""
    grad_tol = TOLERANCES["fp32"][1]
    assert_rel_close(ours[0].grad, theirs[0].grad, grad_tol, "d img")
    assert_rel_close(ours[1].grad, theirs[1].grad, grad_tol, "d txt")


@pytest.mark.parametrize("backend", BACKENDS)
def test_public_path_results_survive_the_one_workspace(backend):
    """The statistics are views of one workspace: each is still its own B-vector, the loss and
    its gradient right."""
    (img, txt, out), ref = _public_and_reference(backend)
    assert_rel_close(out.loss, ref[2].loss, TOLERANCES["fp32"][0], "loss")
    assert torch.equal(out.per_sample, out.loss.detach())
    for k, v in out.stats.as_dict().items():
        assert v.shape == (17,) and not v.requires_grad, k
    out.loss.sum().backward()
    _gradients_match((img, txt), ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_statistic_edited_in_place_stops_the_backward_loudly(backend):
    """The statistics are views of the buffers the backward reads (one workspace, no copies): a
    caller who edits one in place gets autograd's version error at backward, never a gradient
    computed from the edited values (docs/api.md: clone a statistic before changing it)."""
    for name in srem_kernels.SREMStats.names():
        (img, txt, out), _ = _public_and_reference(backend)
        getattr(out.stats, name).fill_(1)
        with pytest.raises(RuntimeError, match="modified by an inplace operation|is a view"):
            out.loss.sum().backward()
        assert img.grad is None and txt.grad is None, name


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_triton_routines_on_cuda_tensors(dtype):
    """The Triton routines as a GPU runs them (compiled, not interpreted): GMM, forward, upstream
    and the value checks against the torch form and python_ref's GMM."""
    assert glue.implementation("cuda") == "triton"
    for kind, B in GMM_CASES + [("two clusters", 100_003)]:
        e = _energies(kind, B, dtype, seed=B)
        c, post = glue.gmm_filtration(e.cuda(), posterior=True)
        ref_post = gmm_low_posterior(e.double())
        decided = (ref_post - 0.5).abs() > 1e-6
        assert torch.equal(c.cpu().double()[decided], ref_gmm(e.double())[decided]), (kind, B)
    for case, (opts, margin, clean) in GLUE_CASES.items():
        params = SREMParams(**opts)
        v = {k: t.cuda() for k, t in _vectors(1500, dtype, seed=3).items()}
        m = (0.1 + 0.2 * torch.rand(1500, device="cuda")) if margin else 0.2
        cl = torch.rand(1500, device="cuda") if clean else None
        got, ref = glue.forward(v, params, m, cl, impl="triton"), glue.forward(v, params, m, cl, impl="torch")
        for k in (*glue.ROWS, "loss"):
            assert torch.allclose(got[k], ref[k], rtol=1e-6, atol=1e-6), (case, k)
    good = torch.randn(300, 70, device="cuda", dtype=torch.bfloat16)
    glue.check_values(img=good, txt=good, impl="triton")
    bad = good.clone()
    bad[7, 9] = float("inf")
    with pytest.raises(ValueError, match="^txt contains NaN or Inf"):
        glue.check_values(img=good, txt=bad, impl="triton")

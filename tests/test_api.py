"""The public API: srem_kernels.loss / loss_from_similarity / SREMLoss, the backend registry, and
a clear error, naming the argument, for every bad input, raised before any backend runs."""

from __future__ import annotations

import pytest
import torch

import python_ref as R
import srem_kernels
from srem_kernels import registry
from tests.helpers import assert_rel_close, embeddings

B, D = 6, 5


@pytest.fixture
def pair():
    return embeddings(B, D, seed=0, dtype=torch.float32)


@pytest.fixture
def no_backend_runs(monkeypatch):
    """Fail the test if any backend is reached: errors must come first."""

    def boom(*args, **kwargs):
        raise AssertionError("a backend ran before the input was rejected")

    monkeypatch.setattr(registry, "_load", lambda name: boom)


# ---------------------------------------------------------------- results


def test_loss_matches_reference_and_has_every_statistic(pair):
    img, txt = (t.clone().requires_grad_() for t in pair)
    out = srem_kernels.loss(img, txt, backend="reference")
    assert isinstance(out, srem_kernels.SREMResult) and out.backend == "reference"
    loss, per, stats = R.srem(*pair)
    assert_rel_close(out.loss, loss, 0, "loss")
    assert_rel_close(out.per_sample, per, 0, "per_sample")
    assert srem_kernels.SREMStats.names() == R.STATISTICS
    for name, value in out.stats.as_dict().items():
        assert value.shape == (B,) and not value.requires_grad, name
        assert torch.equal(value, stats[name]), name
    assert out.stats.hard_i2t_index.dtype == torch.int64
    assert out.loss.requires_grad and not out.per_sample.requires_grad
    out.loss.backward()
    assert img.grad.shape == (B, D) and torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0


def test_loss_from_similarity_matches_loss(pair):
    img, txt = pair
    a = srem_kernels.loss(img, txt, select="none")
    sim = (img @ txt.T).requires_grad_()
    b = srem_kernels.loss_from_similarity(sim, select="none")
    assert_rel_close(b.loss, a.loss, 1e-6, "loss")
    b.loss.backward()
    assert sim.grad.shape == (B, B)


@pytest.mark.parametrize("reduction,shape", [("mean", ()), ("sum", ()), ("none", (B,))])
def test_reductions(pair, reduction, shape):
    out = srem_kernels.loss(*pair, reduction=reduction)
    assert out.loss.shape == shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_and_gradient_dtype(dtype):
    img, txt = (t.requires_grad_() for t in embeddings(B, D, seed=1, dtype=dtype))
    out = srem_kernels.loss(img, txt)
    assert out.loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    out.loss.backward()
    assert img.grad.dtype == dtype and txt.grad.dtype == dtype


def test_non_contiguous_inputs():
    img, txt = embeddings(2 * B, D + 3, seed=2)
    a, b = img[::2, 1:-2], txt[::2, 2:-1]
    assert not a.is_contiguous()
    assert_rel_close(srem_kernels.loss(a, b).loss, R.srem(a.contiguous(), b.contiguous())[0], 1e-14, "loss")


def test_module(pair):
    crit = srem_kernels.SREMLoss(tau=0.1, lambda_cbcl=0.5, select="none")
    out = crit(*pair)
    ref = srem_kernels.loss(*pair, tau=0.1, lambda_cbcl=0.5, select="none")
    assert torch.equal(out.loss, ref.loss)
    clean = torch.tensor([1.0, 0.0, 1.0, 0.5, 1.0, 0.0])
    margin = torch.linspace(0.1, 0.3, B)
    out = crit(*pair, clean=clean, margin=margin)
    ref = srem_kernels.loss(*pair, tau=0.1, lambda_cbcl=0.5, clean=clean, margin=margin)
    assert torch.equal(out.loss, ref.loss) and torch.equal(out.stats.clean, clean)
    assert "tau=0.1" in repr(crit)


def test_clean_bool_mask_is_a_weight(pair):
    mask = torch.tensor([True, False, True, True, False, True])
    out = srem_kernels.loss(*pair, clean=mask)
    assert torch.equal(out.stats.clean, mask.float())


def test_check_finite_false_lets_nan_through(pair):
    img, txt = pair
    img = img.clone()
    img[0, 0] = float("nan")
    out = srem_kernels.loss(img, txt, check_finite=False)
    assert torch.isnan(out.loss)


# ---------------------------------------------------------------- the registry


def test_backends_report_availability_and_reasons():
    status = srem_kernels.backends()
    assert set(status) == {"triton", "cuda", "cpu", "reference"}
    assert status["reference"].available
    for s in status.values():
        assert s.reason, s.name  # what it is, or why it is not available
        assert s.name in str(s)


def test_auto_picks_the_first_available_backend_for_the_device(pair, monkeypatch):
    first = next(n for n, s in srem_kernels.backends().items() if s.available and "cpu" in s.devices)
    assert srem_kernels.loss(*pair).backend == first
    # a faster CPU backend that becomes available is preferred
    fast = registry.Backend("cpu", ("cpu",), (torch.float32,), lambda: R_run, "test double")

    def R_run(img, txt, sim, params):
        return R.srem(img, txt, sim=sim, **params.as_kwargs())

    monkeypatch.setitem(registry._REGISTRY, "cpu", fast)
    registry._load.cache_clear()
    try:
        assert srem_kernels.loss(*pair).backend == "cpu"
        # ... but not for a dtype it does not take
        assert srem_kernels.loss(*(t.double() for t in pair)).backend == "reference"
    finally:
        monkeypatch.undo()
        registry._load.cache_clear()


def test_unavailable_backend_says_why(pair, monkeypatch):
    def missing():
        raise registry.BackendUnavailable("not built here")

    monkeypatch.setitem(registry._REGISTRY, "cpu", registry.Backend("cpu", ("cpu",), (torch.float32,), missing, "x"))
    registry._load.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="backend='cpu' is not available: not built here"):
            srem_kernels.loss(*pair, backend="cpu")
    finally:
        monkeypatch.undo()
        registry._load.cache_clear()


def test_backend_for_another_device_is_refused(pair, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton' runs on cuda tensors, not cpu"):
        srem_kernels.loss(*pair, backend="triton")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter runs on CPU tensors")
def test_triton_takes_cpu_tensors_under_the_interpreter(pair):
    """What srem_kernels.backends() tells the user: TRITON_INTERPRET=1 runs the Triton kernels on
    CPU tensors, through the whole public path; auto never picks them for CPU tensors."""
    r = srem_kernels.loss(*pair, backend="triton")
    ref = srem_kernels.loss(*(x.double() for x in pair), backend="reference")
    assert r.backend == "triton"
    assert torch.allclose(r.loss.double(), ref.loss, rtol=1e-5, atol=0)
    assert srem_kernels.loss(*pair).backend != "triton"


# ---------------------------------------------------------------- bad input

BAD_INPUTS = {
    # name: (make kwargs from the pair, exception, message)
    "img not a tensor": (lambda i, t: dict(img=i.tolist(), txt=t), TypeError, "img must be a torch.Tensor"),
    "img 1-D": (lambda i, t: dict(img=i[0], txt=t), ValueError, "img must be a 2-D tensor"),
    "txt 3-D": (lambda i, t: dict(img=i, txt=t[None]), ValueError, "txt must be a 2-D tensor"),
    "B mismatch": (lambda i, t: dict(img=i, txt=t[:-1]), ValueError, "same batch size B"),
    "D mismatch": (lambda i, t: dict(img=i, txt=t[:, :-1]), ValueError, "same embedding size D"),
    "B < 2": (lambda i, t: dict(img=i[:1], txt=t[:1]), ValueError, "B ≥ 2"),
    "D = 0": (lambda i, t: dict(img=i[:, :0], txt=t[:, :0]), ValueError, "D ≥ 1"),
    "integer img": (lambda i, t: dict(img=(i * 10).long(), txt=t), TypeError, "img must have a floating dtype"),
    "integer txt": (lambda i, t: dict(img=i, txt=(t * 10).int()), TypeError, "txt must have a floating dtype"),
    "mixed dtypes": (lambda i, t: dict(img=i, txt=t.half()), TypeError, "same dtype"),
    "different devices": (lambda i, t: dict(img=i, txt=t.to("meta")), ValueError, "same device"),
    "NaN in img": (lambda i, t: dict(img=_with(i, float("nan")), txt=t), ValueError, "img contains NaN or Inf"),
    "Inf in txt": (lambda i, t: dict(img=i, txt=_with(t, float("inf"))), ValueError, "txt contains NaN or Inf"),
    "tau = 0": (lambda i, t: dict(img=i, txt=t, tau=0.0), ValueError, "tau must be > 0"),
    "tau < 0": (lambda i, t: dict(img=i, txt=t, tau=-0.05), ValueError, "tau must be > 0"),
    "tau NaN": (lambda i, t: dict(img=i, txt=t, tau=float("nan")), ValueError, "tau must be finite"),
    "tau a string": (lambda i, t: dict(img=i, txt=t, tau="0.05"), TypeError, "tau must be a real number"),
    "margin wrong length": (lambda i, t: dict(img=i, txt=t, margin=torch.full((B + 1,), 0.2)), ValueError, r"margin must have shape \(B,\)"),
    "margin column": (lambda i, t: dict(img=i, txt=t, margin=torch.full((B, 1), 0.2)), ValueError, r"margin must have shape \(B,\)"),
    "margin 0-d tensor": (lambda i, t: dict(img=i, txt=t, margin=torch.tensor(0.2)), ValueError, r"margin must have shape \(B,\)"),
    "margin NaN": (lambda i, t: dict(img=i, txt=t, margin=_with(torch.full((B,), 0.2), float("nan"))), ValueError, "margin contains NaN"),
    "margin integer": (lambda i, t: dict(img=i, txt=t, margin=torch.ones(B, dtype=torch.long)), TypeError, "margin must have a floating dtype"),
    "margin other device": (lambda i, t: dict(img=i, txt=t, margin=torch.full((B,), 0.2, device="meta")), ValueError, "margin must be on the inputs' device"),
    "clean above 1": (lambda i, t: dict(img=i, txt=t, clean=_with(torch.ones(B), 1.5)), ValueError, r"clean weights must lie in \[0, 1\]"),
    "clean negative": (lambda i, t: dict(img=i, txt=t, clean=_with(torch.ones(B), -0.1)), ValueError, r"clean weights must lie in \[0, 1\]"),
    "clean NaN": (lambda i, t: dict(img=i, txt=t, clean=_with(torch.ones(B), float("nan"))), ValueError, r"clean weights must lie in \[0, 1\]"),
    "clean wrong length": (lambda i, t: dict(img=i, txt=t, clean=torch.ones(B - 1)), ValueError, r"clean must have shape \(B,\)"),
    "clean scalar": (lambda i, t: dict(img=i, txt=t, clean=torch.tensor(1.0)), ValueError, r"clean must have shape \(B,\)"),
    "clean a list": (lambda i, t: dict(img=i, txt=t, clean=[1.0] * B), TypeError, "clean must be a torch.Tensor"),
    "clean integer": (lambda i, t: dict(img=i, txt=t, clean=torch.ones(B, dtype=torch.long)), TypeError, "clean must have a floating dtype"),
    "sparse img": (lambda i, t: dict(img=i.to_sparse(), txt=t), TypeError, "img must be a dense"),
    "sparse csr txt": (lambda i, t: dict(img=i, txt=t.to_sparse_csr()), TypeError, r"txt must be a dense \(strided\) tensor, got layout torch.sparse_csr"),
    "nested img": (lambda i, t: dict(img=torch.nested.nested_tensor([i[:3], i[3:]], layout=torch.jagged), txt=t), TypeError, "img must be a dense .* layout nested"),
    "meta img and txt": (lambda i, t: dict(img=i.to("meta"), txt=t.to("meta")), TypeError, "img is a meta tensor"),
    "sparse margin": (lambda i, t: dict(img=i, txt=t, margin=torch.full((B,), 0.2).to_sparse()), TypeError, "margin must be a dense"),
    "sparse clean": (lambda i, t: dict(img=i, txt=t, clean=torch.ones(B).to_sparse()), TypeError, "clean must be a dense"),
    "sparse bool clean": (lambda i, t: dict(img=i, txt=t, clean=torch.ones(B, dtype=torch.bool).to_sparse()), TypeError, "clean must be a dense"),
    "unknown backend": (lambda i, t: dict(img=i, txt=t, backend="fastest"), ValueError, "backend must be 'auto' or one of"),
    "unknown reduction": (lambda i, t: dict(img=i, txt=t, reduction="avg"), ValueError, "reduction must be one of"),
    "unknown select": (lambda i, t: dict(img=i, txt=t, select="energy"), ValueError, "select must be one of"),
    "negative lambda_hard": (lambda i, t: dict(img=i, txt=t, lambda_hard=-1.0), ValueError, "lambda_hard must be ≥ 0"),
    "lambda_cbcl Inf": (lambda i, t: dict(img=i, txt=t, lambda_cbcl=float("inf")), ValueError, "lambda_cbcl must be finite"),
    "negative eps": (lambda i, t: dict(img=i, txt=t, eps=-1e-10), ValueError, "eps must be ≥ 0"),
    "bias not a bool": (lambda i, t: dict(img=i, txt=t, bias=1), TypeError, "bias must be True or False"),
    "sce_weight not a bool": (lambda i, t: dict(img=i, txt=t, sce_weight="yes"), TypeError, "sce_weight must be True or False"),
    "unknown sensitivity": (lambda i, t: dict(img=i, txt=t, sensitivity="entropy"), ValueError, "sensitivity must be one of"),
    "sensitivity without sce_weight": (lambda i, t: dict(img=i, txt=t, sensitivity="rank", sce_weight=False), ValueError,
                                       "sensitivity='rank' needs sce_weight=True"),
}


def _with(x, value):
    x = x.clone()
    x.view(-1)[1] = value
    return x


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_rejected_before_any_backend(pair, no_backend_runs, case):
    make, exc, msg = BAD_INPUTS[case]
    with pytest.raises(exc, match=msg):
        srem_kernels.loss(**make(*pair))


SIM_BAD_INPUTS = {
    "not square": (lambda s: dict(sim=s[:, :-1]), ValueError, "sim must be a square B×B matrix"),
    "1-D": (lambda s: dict(sim=s[0]), ValueError, "sim must be a 2-D tensor"),
    "B < 2": (lambda s: dict(sim=s[:1, :1]), ValueError, "sim needs a batch of B ≥ 2"),
    "integer": (lambda s: dict(sim=(s * 10).long()), TypeError, "sim must have a floating dtype"),
    "sparse": (lambda s: dict(sim=s.to_sparse()), TypeError, "sim must be a dense"),
    "meta": (lambda s: dict(sim=s.to("meta")), TypeError, "sim is a meta tensor"),
    "NaN": (lambda s: dict(sim=_with(s, float("nan"))), ValueError, "sim contains NaN or Inf"),
    "clean wrong length": (lambda s: dict(sim=s, clean=torch.ones(B + 1)), ValueError, r"clean must have shape \(B,\)"),
    "tau = 0": (lambda s: dict(sim=s, tau=0), ValueError, "tau must be > 0"),
}


@pytest.mark.parametrize("case", SIM_BAD_INPUTS)
def test_bad_similarity_input_is_rejected(pair, no_backend_runs, case):
    make, exc, msg = SIM_BAD_INPUTS[case]
    with pytest.raises(exc, match=msg):
        srem_kernels.loss_from_similarity(**make(pair[0] @ pair[1].T))


@pytest.mark.parametrize(
    "kwargs,exc,msg",
    [
        (dict(tau=0.0), ValueError, "tau must be > 0"),
        (dict(reduction="max"), ValueError, "reduction must be one of"),
        (dict(select="loss"), ValueError, "select must be one of"),
        (dict(margin="0.2"), TypeError, "margin must be a real number"),
        (dict(bias=None), TypeError, "bias must be True or False"),
        (dict(sensitivity="Rank"), ValueError, "sensitivity must be one of"),
    ],
)
def test_module_checks_options_at_construction(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        srem_kernels.SREMLoss(**kwargs)


def test_module_checks_tensors_at_call(pair):
    crit = srem_kernels.SREMLoss(backend="nonexistent")
    with pytest.raises(ValueError, match="backend must be"):
        crit(*pair)
    with pytest.raises(ValueError, match=r"clean must have shape"):
        srem_kernels.SREMLoss()(*pair, clean=torch.ones(2))


def test_checked_options_are_remembered_by_type_and_value(pair, no_backend_runs):
    """The scalar options are checked once per distinct set (_validate's cache): an accepted set
    must not let a look-alike through (1 == True, 1.0 == 1 as dict keys), a rejected set raises
    again each call, and each call gets its own dict."""
    from srem_kernels._validate import check_options

    good = dict(tau=0.05, lambda_hard=1.0, lambda_cbcl=1.0, bias=True, sce_weight=True, select="gmm", eps=1e-10,
                reduction="mean")  # fmt: skip
    first = check_options(**good)
    first["reduction"] = "poisoned"  # a caller that edits its dict must not change the next call's
    assert check_options(**good)["reduction"] == "mean"
    for _ in range(2):
        with pytest.raises(TypeError, match="bias must be True or False"):
            check_options(**(good | dict(bias=1)))
        with pytest.raises(TypeError, match="sce_weight must be True or False"):
            srem_kernels.loss(*pair, sce_weight=1)
        with pytest.raises(ValueError, match="tau must be > 0"):
            check_options(**(good | dict(tau=-0.05)))
    assert type(check_options(**(good | dict(lambda_hard=1)))["lambda_hard"]) is float


def test_checked_params_are_remembered_by_type_and_value(pair):
    """check_params' cache for plain arguments: the same frozen SREMParams for the same call, a
    look-alike (1 for True, 1 for 1.0) checked on its own, a rejected call raising every time."""
    from srem_kernels._validate import check_params

    kw = dict(tau=0.05, margin=0.2, clean=None, lambda_hard=1.0, lambda_cbcl=1.0, bias=True, sce_weight=True,
              sensitivity="weight", select="gmm", eps=1e-10, reduction="mean")  # fmt: skip
    first = check_params(B, torch.device("cpu"), **kw)
    assert check_params(B, torch.device("cpu"), **kw) is first
    assert type(check_params(B, torch.device("cpu"), **(kw | dict(margin=1))).margin) is float
    for _ in range(2):
        with pytest.raises(TypeError, match="bias must be True or False"):
            check_params(B, torch.device("cpu"), **(kw | dict(bias=1)))
        with pytest.raises(TypeError, match="margin must be a real number"):
            check_params(B, torch.device("cpu"), **(kw | dict(margin="0.2")))
    margin = torch.full((B,), 0.2)  # tensors are checked every call, never cached
    assert check_params(B, torch.device("cpu"), **(kw | dict(margin=margin))).margin is margin
    with pytest.raises(ValueError, match=r"margin must have shape"):
        check_params(B + 1, torch.device("cpu"), **(kw | dict(margin=margin)))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_statistics_are_made_when_read_and_equal_the_whole_set(pair, backend):
    """SREMStats.of leaves each field to the backend's mapping until it is read; to a reader it is
    SREMStats(**mapping): fields, as_dict, repr, replace, copy and pickle."""
    import copy
    import dataclasses
    import pickle

    if not srem_kernels.backends()[backend].available:
        pytest.skip(f"{backend} unavailable")
    out = srem_kernels.loss(*pair, backend=backend)
    whole = srem_kernels.SREMStats(**{k: getattr(out.stats, k) for k in srem_kernels.SREMStats.names()})
    fresh = srem_kernels.loss(*pair, backend=backend).stats
    assert [k for k in srem_kernels.SREMStats.names() if k in fresh.__dict__] == []  # nothing made yet
    assert torch.equal(fresh.clean, whole.clean) and list(k for k in fresh.__dict__ if k != "_source") == ["clean"]
    for other in (fresh, copy.copy(fresh), copy.deepcopy(fresh), pickle.loads(pickle.dumps(fresh))):
        assert sorted(other.as_dict()) == sorted(whole.as_dict())
        for k in srem_kernels.SREMStats.names():
            assert torch.equal(getattr(other, k), getattr(whole, k)), k
    assert "_source" not in pickle.loads(pickle.dumps(fresh)).__dict__
    assert torch.equal(dataclasses.replace(fresh, pos=torch.zeros(B)).sce, whole.sce)
    assert repr(fresh).startswith("SREMStats(pos=tensor(")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fresh.nope
    with pytest.raises(dataclasses.FrozenInstanceError):
        fresh.pos = torch.zeros(B)

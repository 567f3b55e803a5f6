"""The glue shared by the fused backends (srem_kernels/fused.py), driven by the dense executable
form of the kernel contract: loss, statistics and gradients against the fp64 reference."""

from __future__ import annotations

import pytest
import torch

import python_ref as R
from srem_kernels import fused
from srem_kernels._validate import check_params
from tests.dense_kernels import DenseKernels
from tests.helpers import TOLERANCES, assert_rel_close, embeddings

OPTIONS = {
    "default": {},
    "no-bias": {"bias": False},
    "no-sce": {"sce_weight": False, "reduction": "sum"},
    "clean-given": {"clean": "random", "reduction": "none"},
    "select-none": {"select": "none", "lambda_hard": 0.5, "lambda_cbcl": 2.0, "margin": "vector"},
}


def _params(B, case, seed):
    kw = dict(tau=0.05, margin=0.2, lambda_hard=1.0, lambda_cbcl=1.0, bias=True, sce_weight=True, clean=None,
              select="gmm", eps=1e-10, reduction="mean")  # fmt: skip
    kw.update(OPTIONS[case])
    g = torch.Generator().manual_seed(seed)
    if kw["clean"] == "random":
        kw["clean"] = torch.rand(B, generator=g)
    if kw["margin"] == "vector":
        kw["margin"] = 0.1 + 0.2 * torch.rand(B, generator=g)
    return kw


def _run_both(img, txt, kw, from_sim):
    """(fused result, fp64 reference result, grads of each) for the same rounded inputs."""
    B = img.shape[0]
    params = check_params(B, img.device, check_finite=True, **kw)
    a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
    x, y = img.double().requires_grad_(), txt.double().requires_grad_()
    ref_kw = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in params.as_kwargs().items()}
    if from_sim:
        out = fused.run(DenseKernels(), None, None, a @ b.T, params)
        ref = R.srem(sim=x @ y.T, **ref_kw)
    else:
        out = fused.run(DenseKernels(), a, b, None, params)
        ref = R.srem(x, y, **ref_kw)
    g = torch.randn(out[0].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (out[0] * g.to(out[0].dtype)).sum().backward()
    (ref[0] * g).sum().backward()
    return out, ref, (a.grad, b.grad), (x.grad, y.grad)


@pytest.mark.parametrize("from_sim", [False, True])
@pytest.mark.parametrize("case", OPTIONS)
@pytest.mark.parametrize("B,D", [(2, 5), (37, 33), (64, 16)])
def test_fused_glue_matches_reference(case, B, D, from_sim):
    img, txt = embeddings(B, D, seed=B + D, noise=0.7, dtype=torch.float32)
    out, ref, grads, ref_grads = _run_both(img, txt, _params(B, case, B), from_sim)
    tol, gtol = TOLERANCES["fp32"]
    assert_rel_close(out[0], ref[0], tol, "loss")
    assert_rel_close(out[1], ref[1], tol, "per_sample")
    assert set(out[2]) == set(R.STATISTICS)
    for k in R.STATISTICS:
        if k.endswith("_index") or k == "clean":
            assert torch.equal(out[2][k], ref[2][k].to(out[2][k].dtype)), k
        else:
            assert_rel_close(out[2][k], ref[2][k], tol, k)
    assert_rel_close(grads[0], ref_grads[0], gtol, "d img")
    assert_rel_close(grads[1], ref_grads[1], gtol, "d txt")


def test_fused_glue_in_fp64_is_exact():
    img, txt = embeddings(23, 7, seed=3, noise=1.0)
    out, ref, grads, ref_grads = _run_both(img, txt, _params(23, "default", 0), False)
    assert_rel_close(out[0], ref[0], 1e-13, "loss")
    assert_rel_close(grads[0], ref_grads[0], 1e-12, "d img")
    assert_rel_close(grads[1], ref_grads[1], 1e-12, "d txt")


def test_kernel_buffers_are_poisoned_in_tests():
    from srem_kernels import _alloc

    assert torch.isnan(_alloc.empty((3,), dtype=torch.float32, device="cpu")).all()
    assert (_alloc.empty((3,), dtype=torch.int64, device="cpu") == -1).all()


def test_confident_wrong_match_keeps_the_loss_finite():
    """An off-diagonal probability that rounds to 1 in fp32 (B=2, D=1, both texts closer to the
    other image): the complementary term must stay finite and match the fp64 reference."""
    img = torch.tensor([[-1.0], [1.0]])
    txt = torch.tensor([[1.0], [1.0]])
    out, ref, _, _ = _run_both(img, txt, _params(2, "default", 0), False)
    assert torch.isfinite(out[0]) and ref[0] > 1
    assert_rel_close(out[0], ref[0], TOLERANCES["fp32"][0], "loss")

"""The glue shared by the fused backends (srem_kernels/backends/fused.py), driven by the dense executable
form of the kernel contract: loss, statistics and gradients against the fp64 reference."""

from __future__ import annotations

import functools

import pytest
import torch

from srem_kernels.backends import fused
from srem_kernels.backends.dense import DenseKernels
from tests.backend_checks import check_against_reference, run_both
from tests.helpers import TOLERANCES, assert_rel_close, embeddings

OPTIONS = {
    "default": {},
    "no-bias": {"bias": False},
    "no-sce": {"sce_weight": False, "reduction": "sum"},
    "clean-given": {"clean": "random", "reduction": "none"},
    "select-none": {"select": "none", "lambda_hard": 0.5, "lambda_cbcl": 2.0, "margin": "vector"},
    # the sensitivity modes (srem_kernels/sensitivity.py)
    "sce-margin": {"sensitivity": "margin", "margin": "vector"},
    "sce-clean": {"sensitivity": "clean", "reduction": "none"},
    "sce-clean-given": {"sensitivity": "clean", "clean": "random", "reduction": "sum"},
    "sce-rank": {"sensitivity": "rank"},
}


def _params(B, case, seed):
    kw = dict(tau=0.05, margin=0.2, lambda_hard=1.0, lambda_cbcl=1.0, bias=True, sce_weight=True, sensitivity="weight",
              clean=None, select="gmm", eps=1e-10, reduction="mean")  # fmt: skip
    kw.update(OPTIONS[case])
    g = torch.Generator().manual_seed(seed)
    if kw["clean"] == "random":
        kw["clean"] = torch.rand(B, generator=g)
    if kw["margin"] == "vector":
        kw["margin"] = 0.1 + 0.2 * torch.rand(B, generator=g)
    return kw


def _run_both(img, txt, kw, from_sim):
    return run_both(functools.partial(fused.run, DenseKernels()), img, txt, kw, from_sim)


@pytest.mark.parametrize("from_sim", [False, True])
@pytest.mark.parametrize("case", OPTIONS)
@pytest.mark.parametrize("B,D", [(2, 5), (37, 33), (64, 16)])
def test_fused_glue_matches_reference(case, B, D, from_sim):
    img, txt = embeddings(B, D, seed=B + D, noise=0.7, dtype=torch.float32)
    check_against_reference(functools.partial(fused.run, DenseKernels()), img, txt, _params(B, case, B), from_sim, "fp32")


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


@pytest.mark.parametrize("B,D,seed", [(37, 1, 0), (37, 1, 1), (64, 2, 3)])
def test_confident_unnormalised_inputs(B, D, seed):
    """|Z| up to ~80: off-diagonal probabilities within an ulp of 1 (the backward's E − P·A then
    cancels at the row's maximum) and diagonal ones of 1e-30: SPEC's fp32 bar still holds."""
    img, txt = embeddings(B, D, seed=seed, noise=0.7, normalize=False, dtype=torch.float32)
    check_against_reference(functools.partial(fused.run, DenseKernels()), img, txt, _params(B, "default", 0), False, "fp32")


def test_workspace_views_are_disjoint_contiguous_and_poisoned():
    from srem_kernels import _alloc

    layout = {"a": ((5,), torch.float32), "i": ((7,), torch.int64), "S": ((3, 4), torch.float32), "z": ((), torch.float32)}
    w = _alloc.workspace(layout, device="cpu")
    assert list(w) == list(layout)
    for name, (shape, dtype) in layout.items():
        assert w[name].shape == shape and w[name].dtype == dtype and w[name].is_contiguous(), name
    assert torch.isnan(w["S"]).all() and (w["i"] == -1).all()
    for value, name in enumerate(("a", "S", "z")):
        w[name].fill_(float(value))
    assert (w["a"] == 0).all() and (w["S"] == 1).all() and w["z"] == 2  # no overlap: each kept its own

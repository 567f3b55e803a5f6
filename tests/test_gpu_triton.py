"""backend="triton" on a real GPU at real sizes (pytest -m gpu; scripts/gpu_check.sh runs it).

The checks of tests/test_triton.py without the interpreter: against the fp64 reference up to
B=8192 (the reference materialises a dozen fp64 B×B matrices); at B=32768 the two strategies
against each other (both exact against the reference at smaller B) and run-to-run determinism.
"""

from __future__ import annotations

import pytest
import torch

from srem_kernels.backends import fused
from srem_kernels._validate import check_params
from tests.backend_checks import DTYPES, check_against_reference, check_rows_against_dense, split
from tests.helpers import TOLERANCES, assert_rel_close, embeddings
from tests.test_triton import params_for, run_with

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::RuntimeWarning")]
triton_kernels = pytest.importorskip("srem_kernels.backends.triton.kernels")


@pytest.mark.parametrize("strategy", triton_kernels.STRATEGIES)
@pytest.mark.parametrize("dtype,B,D,case", [
    ("fp32", 4096, 256, "default"), ("fp32", 1000, 33, "no-bias"), ("bf16", 8192, 1024, "default"),
    ("fp16", 4097, 200, "clean-given"), ("bf16", 2, 33, "select-none"), ("fp32", 37, 1, "select-none"),
])  # fmt: skip
def test_matches_reference_at_size(strategy, dtype, B, D, case):
    img, txt = embeddings(B, D, seed=B + D, noise=0.7, dtype=DTYPES[dtype], device="cuda")
    k = triton_kernels.TritonKernels(strategy)
    check_against_reference(run_with(k), img, txt, params_for(B, case, seed=B), False, dtype)


@pytest.mark.parametrize("strategy", triton_kernels.STRATEGIES)
@pytest.mark.parametrize("B,D,seed", [(37, 1, 0), (64, 2, 3), (1000, 4, 5)])  # top-2 gaps ≥ 6e-5: indices exact
def test_confident_unnormalised_inputs_at_size(strategy, B, D, seed):
    """Off-diagonal probabilities within an ulp of 1 (tests/test_triton.py) on the GPU, where the
    dS kernel's tiles (64×64) are not the passes' (64×32 or 64×16), nor its MMA layout."""
    img, txt = embeddings(B, D, seed=seed, noise=0.7, normalize=False, dtype=torch.float32, device="cuda")
    check_against_reference(run_with(triton_kernels.TritonKernels(strategy)), img, txt, params_for(B, "default"), False, "fp32")


def test_tf32_follows_matmul_precision():
    """The review's case (B=2048, D=256): with truncated TF32 operands one clean flag flips and
    ce is off by 7.5e-3; rounded to nearest (as the kernels do) 5e-4 and no flip, for both
    strategies (materialised: cuBLAS's TF32)."""
    img, txt = embeddings(2048, 256, seed=1, noise=0.7, dtype=torch.float32, device="cuda")
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        for strategy in triton_kernels.STRATEGIES:
            k = triton_kernels.TritonKernels(strategy)
            check_against_reference(run_with(k), img, txt, params_for(2048, "default"), False, "tf32")
    finally:
        torch.set_float32_matmul_precision(old)


def test_similarity_path_at_size():
    img, txt = embeddings(4096, 128, seed=3, noise=0.7, dtype=torch.float32, device="cuda")
    check_against_reference(run_with(triton_kernels.TritonKernels()), img, txt, params_for(4096, "default"), True, "fp32")


def _run(k, img, txt, params):
    a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
    loss, per, stats = fused.run(k, a, b, None, params)
    loss.backward()
    return [loss.detach(), per, *stats.values(), a.grad, b.grad]


def test_strategies_agree_and_are_deterministic_at_32768():
    B, D = 32768, 256
    img, txt = embeddings(B, D, seed=7, noise=0.7, dtype=torch.bfloat16, device="cuda")
    params = check_params(B, torch.device("cuda"), **params_for(B, "default"))
    results = {}
    for strategy in triton_kernels.STRATEGIES:
        k = triton_kernels.TritonKernels(strategy)
        first, second = _run(k, img, txt, params), _run(k, img, txt, params)
        for x, y in zip(first, second):
            assert torch.equal(x, y), strategy
        results[strategy] = first
    tol = TOLERANCES["bf16"][0]
    for x, y in zip(results["streaming"], results["materialised"]):
        if x.is_floating_point():
            assert torch.isfinite(x).all()
            assert_rel_close(x, y, tol, "streaming vs materialised")


@pytest.mark.parametrize("dtype,B,D,parts", [("fp32", 4096, 256, 2), ("bf16", 5000, 1024, 3), ("fp16", 37, 33, 4)])
def test_row_ranges_at_size(dtype, B, D, parts):
    img, txt = embeddings(B, D, seed=B + D, noise=0.7, dtype=DTYPES[dtype], device="cuda")
    check_rows_against_dense(triton_kernels.TritonKernels(), img, txt, split(B, parts), bias=True, tol_key=dtype)


@pytest.mark.parametrize("strategy", triton_kernels.STRATEGIES)
def test_nan_reaches_the_statistics_at_size(strategy):
    """The GPU's max drops NaN (maxnum): check_finite=False with a NaN row of S gives NaN, not
    finite wrong statistics (tests/test_triton_numerics.py has the small case)."""
    B, D, bad = 4096, 256, 1234
    img, txt = embeddings(B, D, seed=2, noise=0.7, dtype=torch.bfloat16, device="cuda")
    img[bad, 7] = float("nan")
    out = triton_kernels.TritonKernels(strategy).forward(img, txt, None, tau=0.05, eps=1e-10, bias=True)
    others = torch.arange(B, device="cuda") != bad
    assert out["lse_r"][bad].isnan() and out["lse_r"][others].isfinite().all()
    assert out["hard_i2t"][bad].isnan() and out["hard_i2t"][others].isfinite().all()
    assert out["lse_c"].isnan().all() and out["hard_t2i"][others].isnan().all()
    assert out["sce"].isnan().all() and out["A_c"].isnan().all()

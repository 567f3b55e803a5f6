"""The `cpu` backend (csrc/cpu/srem_cpu.cpp via srem_kernels/cpu_srem.py) against the fp64
reference: every statistic, the loss and both gradients, odd shapes, fp32/fp16/bf16,
non-contiguous inputs, the similarity path, several panels, determinism."""

from __future__ import annotations

import pytest
import torch

import srem_kernels
from srem_kernels import registry
from tests.backend_checks import DTYPES, check_against_reference, check_rows_against_dense, split
from srem_kernels.dense_srem import DenseKernels
from tests.helpers import assert_rel_close, embeddings
from tests.test_fused import OPTIONS, _params

status = srem_kernels.backends()["cpu"]
pytestmark = pytest.mark.skipif(not status.available, reason=f"cpu backend unavailable: {status.reason}")


@pytest.fixture
def cpu_run():
    return registry.resolve("cpu", torch.device("cpu"), torch.float32)[1]


@pytest.fixture
def small_panels(monkeypatch):
    """16-row panels, so B=37 and B=130 stream through several panels, the last one partial."""
    monkeypatch.setenv("SREM_CPU_PANEL_ROWS", "16")


def _inputs(B, D, dtype, seed):
    img, txt = embeddings(B, D, seed=seed, noise=0.7, normalize=D > 1)  # D=1 normalised is ±1: all ties
    return img.to(dtype), txt.to(dtype)


@pytest.mark.parametrize("from_sim", [False, True], ids=["embeddings", "sim"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,D", [(2, 1), (2, 33), (37, 1), (37, 33), (130, 1), (130, 33)])
def test_cpu_matches_reference(cpu_run, small_panels, B, D, dtype, from_sim):
    img, txt = _inputs(B, D, DTYPES[dtype], seed=B * 100 + D)
    check_against_reference(cpu_run, img, txt, _params(B, "default", B), from_sim, dtype)


@pytest.mark.parametrize("from_sim", [False, True], ids=["embeddings", "sim"])
@pytest.mark.parametrize("case", OPTIONS)
def test_cpu_options_match_reference(cpu_run, small_panels, case, from_sim):
    img, txt = _inputs(53, 17, torch.float32, seed=7)
    check_against_reference(cpu_run, img, txt, _params(53, case, 3), from_sim, "fp32")


def test_cpu_default_panels_match_reference(cpu_run):
    img, txt = _inputs(300, 24, torch.float32, seed=11)
    check_against_reference(cpu_run, img, txt, _params(300, "default", 1), False, "fp32")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_non_contiguous_inputs(cpu_run, small_panels, dtype):
    img, txt = _inputs(37, 33, DTYPES[dtype], seed=5)
    # transposed storage, and a strided view of a wider buffer
    a = img.T.contiguous().T
    b = torch.zeros(37, 66, dtype=txt.dtype)[:, ::2].copy_(txt)
    assert not a.is_contiguous() and not b.is_contiguous()
    check_against_reference(cpu_run, a, b, _params(37, "default", 2), False, dtype)
    sim = (img.float() @ txt.float().T).to(img.dtype).T.contiguous().T  # column-major sim
    assert not sim.is_contiguous()
    params = srem_kernels._validate.check_params(37, sim.device, check_finite=True, **_params(37, "default", 2))
    out = cpu_run(None, None, sim, params)
    ref = cpu_run(None, None, sim.contiguous(), params)
    assert torch.equal(out[1], ref[1])


def test_cpu_kernel_intermediates_match_dense_contract(small_panels):
    """lse, A_r, A_c and every B-vector of the contract, against srem_kernels/dense_srem.py (fp32)."""
    from srem_kernels.cpu_srem import CPUKernels

    img, txt = _inputs(130, 33, torch.float32, seed=3)
    for bias in (True, False):
        d = DenseKernels().forward(img, txt, None, tau=0.05, eps=1e-10, bias=bias)
        c = CPUKernels().forward(img, txt, None, tau=0.05, eps=1e-10, bias=bias)
        for k, v in d.items():
            if k.endswith("_index"):
                assert torch.equal(c[k], v), k
            else:
                assert_rel_close(c[k], v, 1e-5, k)


def test_cpu_confident_pairs_b2():
    """B=2 with near-certain pairs (ce ≈ 1e-9): only the cancellation-free forms reach 1e-5."""
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[0.999, 0.0447], [0.0447, 0.999]])
    run = registry.resolve("cpu", img.device, img.dtype)[1]
    check_against_reference(run, img, txt, _params(2, "select-none", 0), False, "fp32")


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_is_deterministic(small_panels, threads):
    img, txt = _inputs(130, 33, torch.float32, seed=9)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runs = []
        for _ in range(2):
            a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
            out = srem_kernels.loss(a, b, backend="cpu")
            out.loss.backward()
            runs.append((out.loss.detach(), out.per_sample, *out.stats.as_dict().values(), a.grad, b.grad))
    finally:
        torch.set_num_threads(before)
    for x, y in zip(*runs):
        assert torch.equal(x, y)


def test_cpu_through_public_api():
    img, txt = _inputs(64, 16, torch.bfloat16, seed=4)
    out = srem_kernels.loss(img, txt, backend="cpu", reduction="none")
    assert out.backend == "cpu" and out.loss.shape == (64,) and out.loss.dtype == torch.float32


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,D,parts,bias", [(37, 33, 3, True), (130, 8, 2, False), (5, 3, 4, True)])
def test_cpu_row_ranges_match_dense_contract(small_panels, B, D, parts, dtype, bias):
    """The distributed loss's row ranges (fused.py), uneven ones across 16-row panels."""
    from srem_kernels.cpu_srem import CPUKernels

    img, txt = _inputs(B, D, DTYPES[dtype], seed=B)
    check_rows_against_dense(CPUKernels(), img, txt, split(B, parts), bias=bias, tol_key=dtype)

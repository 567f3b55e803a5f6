"""The `cuda` backend (csrc/cuda/srem_cuda.cu via srem_kernels/backends/cuda.py) on a GPU, against the
fp64 reference: every statistic, the loss and both gradients, odd and real sizes, fp32/fp16/bf16,
non-contiguous inputs, the similarity path, several panels, determinism, CUDA errors as
exceptions; each with the panels and products formed by the module's kernels and by torch.mm.
Run with `pytest -m gpu` on a machine with a CUDA device (skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch

import srem_kernels
from srem_kernels import registry
from tests.backend_checks import DTYPES, check_against_reference, check_rows_against_dense, split
from tests.helpers import TOLERANCES, assert_rel_close, embeddings
from tests.test_fused import OPTIONS, _params

pytestmark = pytest.mark.gpu


@pytest.fixture(params=["own", "torch"], ids=["own-gemm", "torch-gemm"])
def cuda_run(request, monkeypatch):
    """The registered cuda backend, its panels and products formed by its own kernels or by
    torch.mm (SREM_CUDA_GEMM, srem_kernels/backends/cuda.py)."""
    status = srem_kernels.backends()["cuda"]
    if not status.available:
        pytest.fail(f"a CUDA device is here but the cuda backend is not available: {status.reason}")
    monkeypatch.setenv("SREM_CUDA_GEMM", request.param)
    return registry.resolve("cuda", torch.device("cuda"), torch.float32)[1]


@pytest.fixture
def ieee_fp32():
    """SPEC's fp32 tolerance is for IEEE dot products (the kernels' fp32 path is always IEEE; the
    reference's own matmul must be too)."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def _inputs(B, D, dtype, seed):
    img, txt = embeddings(B, D, seed=seed, noise=0.7, normalize=D > 1)
    return img.to(device="cuda", dtype=dtype), txt.to(device="cuda", dtype=dtype)


@pytest.mark.parametrize("from_sim", [False, True], ids=["embeddings", "sim"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,D,panel", [(2, 1, 0), (37, 33, 16), (130, 1, 64), (130, 33, 0), (1000, 96, 256),
                                       (2048, 512, 0)])  # fmt: skip
def test_cuda_matches_reference(cuda_run, ieee_fp32, monkeypatch, B, D, panel, dtype, from_sim):
    if panel:
        monkeypatch.setenv("SREM_CUDA_PANEL_ROWS", str(panel))
    img, txt = _inputs(B, D, DTYPES[dtype], seed=B + D)
    check_against_reference(cuda_run, img, txt, _params(B, "default", B), from_sim, dtype)


@pytest.mark.parametrize("case", OPTIONS)
def test_cuda_options_match_reference(cuda_run, ieee_fp32, monkeypatch, case):
    monkeypatch.setenv("SREM_CUDA_PANEL_ROWS", "64")
    img, txt = _inputs(300, 40, torch.float32, seed=5)
    check_against_reference(cuda_run, img, txt, _params(300, case, 3), False, "fp32")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_non_contiguous_inputs(cuda_run, ieee_fp32, dtype):
    img, txt = _inputs(257, 48, DTYPES[dtype], seed=8)
    a = img.T.contiguous().T
    b = torch.zeros(257, 96, dtype=txt.dtype, device="cuda")[:, ::2].copy_(txt)
    assert not a.is_contiguous() and not b.is_contiguous()
    check_against_reference(cuda_run, a, b, _params(257, "default", 2), False, dtype)


def test_cuda_agrees_with_cpu_backend(cuda_run, ieee_fp32):
    img, txt = _inputs(512, 64, torch.float32, seed=12)
    gpu = srem_kernels.loss(img, txt, backend="cuda", reduction="none")
    cpu = srem_kernels.loss(img.cpu(), txt.cpu(), backend="cpu", reduction="none")
    tol = TOLERANCES["fp32"][0]
    assert_rel_close(gpu.loss, cpu.loss, 2 * tol, "per-sample loss")
    for k, v in cpu.stats.as_dict().items():
        if k.endswith("_index") or k == "clean":
            assert torch.equal(gpu.stats.as_dict()[k].cpu(), v), k
        else:
            assert_rel_close(gpu.stats.as_dict()[k], v, 2 * tol, k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_column_panel_is_the_transposed_row_panel(cuda_run, ieee_fp32, dtype):
    """Pass 2 takes the column panels Q = T[r0:r1]·Iᵀ as the transposed rows of the row panels
    P = I[r0:r1]·Tᵀ, bit for bit (expected of the own fp32 FMAs; unproven for WMMA and cuBLAS: a
    difference moves Z at a row maximum by up to an ulp). B=4099 in the default panels: a full
    panel and a 3-row one."""
    from srem_kernels.backends.cuda import _panel_rows

    B = 4099
    img, txt = _inputs(B, 1024, DTYPES[dtype], seed=B)
    k, rows = cuda_run.kernels, _panel_rows(B)
    P, Q = (torch.empty(B, B, device="cuda") for _ in range(2))
    for r0 in range(0, B, rows):
        r1 = min(B, r0 + rows)
        k._panel(img, txt, r0, r1, P[r0:r1])
        k._panel(txt, img, r0, r1, Q[r0:r1])
    differ = P != Q.T
    assert not differ.any(), f"{int(differ.sum())} of {B * B} differ, max |P - Qᵀ| {float((P - Q.T).abs().max()):.2e}"


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_cuda_is_deterministic(cuda_run, dtype):
    img, txt = _inputs(4096, 256, DTYPES[dtype], seed=9)
    runs = []
    for _ in range(2):
        a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
        out = srem_kernels.loss(a, b, backend="cuda")
        out.loss.backward()
        runs.append((out.loss.detach(), out.per_sample, *out.stats.as_dict().values(), a.grad, b.grad))
    for x, y in zip(*runs):
        assert torch.equal(x, y)


def test_cuda_errors_are_exceptions(cuda_run):
    from srem_kernels.backends import _srem_cuda as C
    from srem_kernels.backends import cuda as cuda_backend

    dev = torch.cuda.current_device()
    with pytest.raises(RuntimeError, match="unknown dtype code"):
        C.similarity(0, 1, 1, 0, 1, 1, 99, 1, 1, 1, 0, 1, dev, torch.cuda.current_stream().cuda_stream)
    cuda_backend.synchronize()


@pytest.mark.parametrize("dtype,B,D,parts", [("fp32", 4096, 256, 2), ("bf16", 5000, 1024, 3), ("fp16", 37, 33, 4)])
def test_cuda_row_ranges_match_dense_contract(cuda_run, ieee_fp32, dtype, B, D, parts):
    """The distributed loss's row ranges (fused.py, panels.py) on the device."""
    img, txt = _inputs(B, D, DTYPES[dtype], seed=B)
    check_rows_against_dense(cuda_run.kernels, img, txt, split(B, parts), bias=True, tol_key=dtype)

"""The `cpu` backend (csrc/cpu/ via srem_kernels/backends/cpu.py) against the fp64 reference: every
statistic, the loss and both gradients, odd shapes, fp32/fp16/bf16, non-contiguous inputs, for
both strategies (materialised S, streamed panels) and the similarity path; several panels;
bitwise determinism across thread counts; the strategy choice."""

from __future__ import annotations

import pytest
import torch

import srem_kernels
from srem_kernels import registry
from srem_kernels.backends import fused
from tests.backend_checks import DTYPES, check_against_reference, check_rows_against_dense, split
from srem_kernels.backends.dense import DenseKernels
from tests.helpers import assert_rel_close, embeddings
from tests.test_fused import OPTIONS, _params

status = srem_kernels.backends()["cpu"]
pytestmark = pytest.mark.skipif(not status.available, reason=f"cpu backend unavailable: {status.reason}")

if status.available:
    from srem_kernels.backends.cpu import CPUKernels, parse_bytes

STRATEGIES = ("materialised", "streaming")
# (strategy, from_sim): the similarity path always reads the given matrix, whatever the strategy
PATHS = {"materialised": ("materialised", False), "streaming": ("streaming", False), "sim": (None, True)}


def _run(strategy):
    return fused.FusedRun(CPUKernels(strategy))


@pytest.fixture
def small_panels(monkeypatch):
    """16-row panels, so B=37 and B=130 stream through several panels, the last one partial."""
    monkeypatch.setenv("SREM_CPU_PANEL_ROWS", "16")


def _inputs(B, D, dtype, seed):
    img, txt = embeddings(B, D, seed=seed, noise=0.7, normalize=D > 1)  # D=1 normalised is ±1: all ties
    return img.to(dtype), txt.to(dtype)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,D", [(2, 1), (2, 33), (37, 1), (37, 33), (130, 1), (130, 33), (301, 7)])
def test_cpu_matches_reference(small_panels, B, D, dtype, path):
    strategy, from_sim = PATHS[path]
    img, txt = _inputs(B, D, DTYPES[dtype], seed=B * 100 + D)
    check_against_reference(_run(strategy), img, txt, _params(B, "default", B), from_sim, dtype)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", OPTIONS)
def test_cpu_options_match_reference(small_panels, case, path):
    strategy, from_sim = PATHS[path]
    img, txt = _inputs(53, 17, torch.float32, seed=7)
    check_against_reference(_run(strategy), img, txt, _params(53, case, 3), from_sim, "fp32")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cpu_default_panels_match_reference(strategy):
    """The default panel and pass-2 tile sizes, not the tests' small ones: at B=1600 pass 2's panels
    are 48 rows, so each holds two diagonal tasks (the second transposes its tile from row 32)."""
    img, txt = _inputs(1600, 24, torch.float32, seed=11)
    check_against_reference(_run(strategy), img, txt, _params(1600, "default", 1), False, "fp32")


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_non_contiguous_inputs(small_panels, dtype, strategy):
    img, txt = _inputs(37, 33, DTYPES[dtype], seed=5)
    # transposed storage, and a strided view of a wider buffer
    a = img.T.contiguous().T
    b = torch.zeros(37, 66, dtype=txt.dtype)[:, ::2].copy_(txt)
    assert not a.is_contiguous() and not b.is_contiguous()
    check_against_reference(_run(strategy), a, b, _params(37, "default", 2), False, dtype)


SIM_LAYOUTS = {  # the same values in other strides: copied per panel, or read in place
    "column-major": lambda s: s.T.contiguous().T,
    "wide rows": lambda s: torch.zeros(s.shape[0], 2 * s.shape[1] + 3, dtype=s.dtype)[:, : s.shape[1]].copy_(s),
}


@pytest.mark.parametrize("layout", SIM_LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_strided_sim_with_gradient(small_panels, dtype, layout):
    img, txt = _inputs(37, 33, DTYPES[dtype], seed=5)
    check_against_reference(_run(None), img, txt, _params(37, "default", 2), True, dtype, sim_layout=SIM_LAYOUTS[layout])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cpu_kernel_intermediates_match_dense_contract(small_panels, strategy):
    """lse, A_r, A_c and every B-vector of the contract, against srem_kernels/backends/dense.py (fp32);
    the materialised forward also saves S, the streaming one nothing B×B."""
    img, txt = _inputs(130, 33, torch.float32, seed=3)
    for bias in (True, False):
        d = DenseKernels().forward(img, txt, None, tau=0.05, eps=1e-10, bias=bias)
        c = CPUKernels(strategy).forward(img, txt, None, tau=0.05, eps=1e-10, bias=bias)
        for k, v in d.items():
            if k.endswith("_index"):
                assert torch.equal(c[k], v), k
            else:
                assert_rel_close(c[k], v, 1e-5, k)
        assert ("S" in c) == (strategy == "materialised")
        assert all(t.dim() == 1 for k, t in c.items() if k != "S")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cpu_confident_pairs_b2(strategy):
    """B=2 with near-certain pairs (ce ≈ 1e-9): only the cancellation-free forms reach 1e-5."""
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[0.999, 0.0447], [0.0447, 0.999]])
    check_against_reference(_run(strategy), img, txt, _params(2, "select-none", 0), False, "fp32")


@pytest.mark.parametrize("path", PATHS)
def test_cpu_confident_mismatches(small_panels, path):
    """Swapped texts, so that image i's text sits at j: off-diagonal probabilities near 1, the
    branch of log(1 - P + eps) that only a softmax's maximal element can need, in rows and columns
    of one panel (5 <-> 6) and of panels far apart (3 <-> 290, 100 <-> 200)."""
    strategy, from_sim = PATHS[path]
    img, txt = _inputs(301, 24, torch.float32, seed=13)
    txt = img + 0.05 * txt
    swaps = [(3, 290), (5, 6), (100, 200)]
    perm = torch.arange(301)
    for a, b in swaps:
        perm[a], perm[b] = b, a
    txt = torch.nn.functional.normalize(txt[perm], dim=1)
    S = img @ txt.T
    Pr = torch.softmax(S.double() / 0.05, dim=1)
    Pc = torch.softmax(S.double() / 0.05, dim=0)
    for a, b in swaps:  # the case is what it says: P ≥ 1/2 off the diagonal, both ways
        assert Pr[a, b] > 0.5 and Pr[b, a] > 0.5 and Pc[a, b] > 0.5 and Pc[b, a] > 0.5
    # select="none": on such a batch the GMM's clean flags flip with the last bit of an energy
    check_against_reference(_run(strategy), img, txt, _params(301, "select-none", 4), from_sim, "fp32")


def _one_call(img, txt, sim=False):
    if sim:
        s = (img @ txt.T).requires_grad_()
        out = srem_kernels.loss_from_similarity(s, backend="cpu")
        out.loss.backward()
        return (out.loss.detach(), out.per_sample, *out.stats.as_dict().values(), s.grad)
    a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
    out = srem_kernels.loss(a, b, backend="cpu")
    out.loss.backward()
    return (out.loss.detach(), out.per_sample, *out.stats.as_dict().values(), a.grad, b.grad)


@pytest.fixture
def deterministic_setup(monkeypatch):
    """Panels of 96 rows: B=600 crosses pass 2's tasks of 256 columns and 32 rows and several panels."""
    monkeypatch.setenv("SREM_CPU_PANEL_ROWS", "96")
    before = torch.get_num_threads()
    yield _inputs(600, 33, torch.float32, seed=9)
    torch.set_num_threads(before)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_is_deterministic(monkeypatch, deterministic_setup, path, threads):
    """Bitwise the same results call after call (and with torch's own GEMMs on the same threads)."""
    strategy, from_sim = PATHS[path]
    if strategy:
        monkeypatch.setenv("SREM_CPU_STRATEGY", strategy)
    torch.set_num_threads(threads)
    img, txt = deterministic_setup
    first, second = _one_call(img, txt, from_sim), _one_call(img, txt, from_sim)
    for x, y in zip(first, second):
        assert torch.equal(x, y)


@pytest.mark.parametrize("path", PATHS)
def test_cpu_kernels_are_independent_of_thread_count(monkeypatch, deterministic_setup, path):
    """The kernels on 1, 2 and 3 threads (uneven splits) give bitwise the same results. torch's
    GEMMs stay on one thread here: their own results may change with the thread count (for some
    shapes 1 and 3 threads differ in the last bit), which no kernel can undo."""
    from srem_kernels.backends import cpu as cpu_backend

    strategy, from_sim = PATHS[path]
    if strategy:
        monkeypatch.setenv("SREM_CPU_STRATEGY", strategy)
    torch.set_num_threads(1)
    img, txt = deterministic_setup
    runs = []
    for t in (1, 2, 3):
        monkeypatch.setattr(cpu_backend, "_threads", lambda t=t: t)
        runs.append(_one_call(img, txt, from_sim))
    for other in runs[1:]:
        for x, y in zip(runs[0], other):
            assert torch.equal(x, y)


@pytest.mark.parametrize("path", PATHS)
def test_cpu_nan_propagates(monkeypatch, path):
    """check_finite=False with a NaN in the inputs: NaN in the loss and the gradients, not a number."""
    strategy, from_sim = PATHS[path]
    if strategy:
        monkeypatch.setenv("SREM_CPU_STRATEGY", strategy)
    img, txt = _inputs(40, 8, torch.float32, seed=2)
    img[3, 1] = float("nan")
    if from_sim:
        s = (img @ txt.T).requires_grad_()
        out = srem_kernels.loss_from_similarity(s, backend="cpu", check_finite=False)
        out.loss.backward()
        grads = [s.grad]
    else:
        a, b = img.requires_grad_(), txt.clone().requires_grad_()
        out = srem_kernels.loss(a, b, backend="cpu", check_finite=False, select="none")
        out.loss.backward()
        grads = [a.grad, b.grad]
    assert torch.isnan(out.loss) and torch.isnan(out.stats.sce[3]) and torch.isnan(out.stats.loss_cbcl[3])
    assert all(torch.isnan(g).any() for g in grads)


def test_cpu_through_public_api():
    img, txt = _inputs(64, 16, torch.bfloat16, seed=4)
    out = srem_kernels.loss(img, txt, backend="cpu", reduction="none")
    assert out.backend == "cpu" and out.loss.shape == (64,) and out.loss.dtype == torch.float32
    assert out.strategy == "materialised"  # 16 KiB of S: within any budget
    assert srem_kernels.loss_from_similarity(img.float() @ txt.float().T, backend="cpu").strategy is None


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cpu_strategy_env_is_reported(monkeypatch, strategy):
    monkeypatch.setenv("SREM_CPU_STRATEGY", strategy)
    img, txt = _inputs(40, 8, torch.float32, seed=1)
    assert srem_kernels.loss(img, txt, backend="cpu").strategy == strategy


def test_cpu_strategy_by_memory_budget(monkeypatch):
    monkeypatch.delenv("SREM_CPU_STRATEGY", raising=False)
    B = 1000
    need = CPUKernels.materialised_bytes(B)
    assert need >= 4 * B * B
    f32, cpu = torch.float32, torch.device("cpu")
    assert CPUKernels(memory=need).strategy_for(B, 8, f32, cpu) == "materialised"
    assert CPUKernels(memory=need - 1).strategy_for(B, 8, f32, cpu) == "streaming"
    monkeypatch.setenv("SREM_CPU_MEMORY", "1M")
    assert CPUKernels().strategy_for(B, 8, f32, cpu) == "streaming"
    monkeypatch.setenv("SREM_CPU_MEMORY", "4G")
    assert CPUKernels().strategy_for(B, 8, f32, cpu) == "materialised"
    assert CPUKernels(memory="1M").strategy_for(B, 8, f32, cpu) == "streaming"  # the argument wins
    assert CPUKernels("materialised", memory=0).strategy_for(B, 8, f32, cpu) == "materialised"  # forced


def test_cpu_strategy_errors(monkeypatch):
    with pytest.raises(ValueError, match="strategy"):
        CPUKernels("tiled")
    with pytest.raises(ValueError, match="memory"):
        CPUKernels(memory="lots")
    monkeypatch.setenv("SREM_CPU_STRATEGY", "tiled")
    with pytest.raises(ValueError, match="SREM_CPU_STRATEGY"):
        CPUKernels().strategy_for(8, 2, torch.float32, torch.device("cpu"))
    monkeypatch.setenv("SREM_CPU_STRATEGY", "auto")
    monkeypatch.setenv("SREM_CPU_MEMORY", "-3")
    with pytest.raises(ValueError, match="SREM_CPU_MEMORY"):
        CPUKernels().strategy_for(8, 2, torch.float32, torch.device("cpu"))
    assert parse_bytes("1.5K", "x") == 1536 and parse_bytes("2GiB", "x") == 2 << 30 and parse_bytes(7, "x") == 7


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,D,parts,bias", [(37, 33, 3, True), (130, 8, 2, False), (5, 3, 4, True)])
def test_cpu_row_ranges_match_dense_contract(small_panels, B, D, parts, dtype, bias):
    """The distributed loss's row ranges (fused.py), uneven ones across 16-row panels."""
    img, txt = _inputs(B, D, DTYPES[dtype], seed=B)
    check_rows_against_dense(CPUKernels(), img, txt, split(B, parts), bias=bias, tol_key=dtype)


def test_cpu_registry_run_is_cpu_kernels():
    run = registry.resolve("cpu", torch.device("cpu"), torch.float32)[1]
    assert isinstance(run.kernels, CPUKernels)


def test_cpu_kept_matrices_are_reused_only_when_free(monkeypatch):
    """The materialised S and the backward's dS panel of a call are handed to the next call once
    no tensor holds them (after the first call's backward), never while a forward's S is still
    saved; results are those of fresh buffers."""
    from srem_kernels.backends import cpu as cpu_backend

    kept = cpu_backend._KeptMatrices(keep=4)
    monkeypatch.setattr(kept, "MIN_BYTES", 0)
    monkeypatch.setattr(cpu_backend, "KEPT", kept)
    monkeypatch.setenv("SREM_CPU_STRATEGY", "materialised")
    img, txt = _inputs(40, 8, torch.float32, seed=6)
    first = _one_call(img, txt)
    ptrs = {a.ctypes.data for a in kept._arrays}
    assert len(ptrs) == 2  # S (saved while the backward ran) and the dS panel
    assert all(torch.equal(x, y) for x, y in zip(first, _one_call(img, txt)))  # the same buffers, the same results
    assert {a.ctypes.data for a in kept._arrays} == ptrs
    a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
    one, two = srem_kernels.loss(a, b, backend="cpu"), srem_kernels.loss(a, b, backend="cpu")  # both S saved
    # at B=40 S and the panel have one shape: the two saved S took both buffers, not one twice
    assert {x.ctypes.data for x in kept._arrays} == ptrs
    (one.loss + two.loss).backward()
    assert len({x.ctypes.data for x in kept._arrays}) == 3  # a backward's panel could take neither
    assert torch.equal(a.grad, 2 * first[-2]) and torch.equal(b.grad, 2 * first[-1])
    kept.clear()
    assert not kept._arrays


def test_pass2_workspace_in_python_is_the_kernels():
    """materialised_bytes sizes pass 2's per-panel sums in Python (torch.compile traces the strategy
    choice); the C++ pass allocates by its own srem_cpu_pass2_workspace: the two must agree."""
    from srem_kernels.backends import cpu as cpu_backend

    sizes = [*range(1, 600), 1023, 1024, 1025, 2047, 2048, 2897, 4095, 4096, 4097, 8191, 16384, 32768, 65537]
    assert [cpu_backend._pass2_workspace(B) for B in sizes] == [cpu_backend._C.pass2_workspace(B) for B in sizes]

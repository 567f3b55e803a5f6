"""backend="triton" (srem_kernels/backends/triton/kernels.py) against the fp64 reference, within SPEC.md's
tolerances: every statistic, the loss and both gradients, both strategies, every dtype, odd
shapes, the similarity path, non-contiguous inputs, determinism, stats_only and torch.compile.

Without a GPU the kernels run on CPU tensors through Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1): shapes stay small, and small tiles (32-row blocks, 32-column dot tiles
reduced 16 columns at a time), three super-blocks and dS panels of 48 rows make B=37 and B=130
cross tile, super-block and panel edges; test_work_splits varies the tiling and the split.
tests/test_gpu_triton.py repeats this at real sizes.
The comparison itself is tests/backend_checks.py, shared with the other fused backends.
"""

from __future__ import annotations

import functools

import pytest
import torch
import triton

import srem_kernels
from srem_kernels import registry
from srem_kernels.backends import fused
from srem_kernels._validate import check_params
from tests.backend_checks import DTYPES, check_against_reference, check_rows_against_dense, run_both, split
from srem_kernels.backends.dense import DenseKernels
from tests.helpers import TOLERANCES, assert_rel_close, embeddings

triton_kernels = pytest.importorskip("srem_kernels.backends.triton.kernels")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# masked lanes of edge tiles compute -inf - -inf and the like, which numpy reports; they are never stored
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

OPTIONS = {
    "default": {},
    "no-bias": {"bias": False, "reduction": "sum"},
    "clean-given": {"clean": "random", "reduction": "none", "tau": 0.1},
    "select-none": {"select": "none", "lambda_hard": 0.5, "lambda_cbcl": 2.0, "margin": "vector", "sce_weight": False},
    "sce-margin": {"sensitivity": "margin", "margin": "vector", "reduction": "sum"},
    "sce-clean": {"sensitivity": "clean"},
    "sce-rank": {"sensitivity": "rank", "clean": "random"},
}


def kernels(strategy, **kw):
    """Small tiles: 32 rows × 32 columns per dot, reduced 16 columns at a time."""
    kw.setdefault("block", 32)
    kw.setdefault("block_n", 16)
    kw.setdefault("split", 2)
    kw.setdefault("panel_rows", 48)
    return triton_kernels.TritonKernels(strategy, **kw)


def params_for(B, case, seed=0):
    """The loss's keyword arguments for an OPTIONS case (tensors on DEVICE)."""
    kw = dict(tau=0.05, margin=0.2, lambda_hard=1.0, lambda_cbcl=1.0, bias=True, sce_weight=True, clean=None,
              select="gmm", eps=1e-10, reduction="mean")  # fmt: skip
    kw.update(OPTIONS[case])
    g = torch.Generator().manual_seed(seed)
    if kw["clean"] == "random":
        kw["clean"] = torch.rand(B, generator=g).to(DEVICE)
    if kw["margin"] == "vector":
        kw["margin"] = (0.1 + 0.2 * torch.rand(B, generator=g)).to(DEVICE)
    return kw


def run_with(k, sim_layout=None):
    """The backend `run` of kernels k, as backend_checks calls it; sim_layout="transposed" hands
    the kernels a column-major sim (they take its strides; the gradient still reaches sim)."""
    if sim_layout == "transposed":
        return lambda a, b, s, params: fused.run(k, a, b, s.T.contiguous().T, params)
    return functools.partial(fused.run, k)


# (strategy, dtype, B, D, options): odd B and D around the tile (32) and panel (48) sizes, every
# dtype with each strategy, every option set at least once; not the full product (interpreter).
CASES = [
    ("streaming", "fp32", 37, 33, "default"),
    ("streaming", "fp32", 2, 33, "default"),
    ("streaming", "fp32", 37, 1, "select-none"),
    ("streaming", "fp32", 130, 200, "clean-given"),
    ("streaming", "fp16", 37, 200, "no-bias"),
    ("streaming", "bf16", 130, 33, "default"),
    ("materialised", "fp32", 37, 33, "select-none"),
    ("materialised", "fp32", 130, 1, "default"),
    ("materialised", "fp32", 2, 200, "no-bias"),
    ("materialised", "fp16", 130, 33, "default"),
    ("materialised", "bf16", 37, 1, "clean-given"),
    ("streaming", "fp32", 37, 33, "sce-rank"),
    ("streaming", "fp32", 130, 33, "sce-clean"),
    ("materialised", "fp32", 37, 33, "sce-margin"),
]


@pytest.mark.parametrize("strategy,dtype,B,D,case", CASES)
def test_matches_reference(strategy, dtype, B, D, case):
    img, txt = embeddings(B, D, seed=B * 7 + D, noise=0.7, dtype=DTYPES[dtype], device=DEVICE)
    check_against_reference(run_with(kernels(strategy)), img, txt, params_for(B, case, seed=B), False, dtype)


# (strategy, dtype, B, tiles): square and rectangular tiles, one or two dot tiles per block's own
# block, K = 1 (one diagonal program), 2 and 4 (even: the pair at distance K/2 owned once), 3
SPLITS = [
    ("streaming", "fp32", 130, dict(block=32, block_n=16, split=1, splits=2)),
    ("streaming", "bf16", 250, dict(block=32, block_n=16, split=2, splits=4)),
    ("streaming", "fp32", 37, dict(block=16, block_n=16, split=1, splits=1)),
    ("materialised", "fp32", 250, dict(block=64, block_n=16, split=2, splits=3)),
    ("materialised", "fp16", 70, dict(block=32, block_n=16, split=1, splits=4)),
]


@pytest.mark.parametrize("strategy,dtype,B,tiles", SPLITS)
def test_work_splits(strategy, dtype, B, tiles):
    img, txt = embeddings(B, 24, seed=B + 1, noise=0.7, dtype=DTYPES[dtype], device=DEVICE)
    check_against_reference(run_with(kernels(strategy, **tiles)), img, txt, params_for(B, "default"), False, dtype)


@pytest.mark.parametrize("strategy", triton_kernels.STRATEGIES)
@pytest.mark.parametrize("B,D,seed", [(37, 1, 0), (37, 1, 1), (64, 2, 3)])
def test_confident_unnormalised_inputs(strategy, B, D, seed):
    """|Z| up to ~80: off-diagonal probabilities within an ulp of 1 and diagonal ones of 1e-30.
    Needs 1 - P as -expm1(-log P), the backward's E - P·A at a row's maximum as
    E·(1 - P) - P·A_rest, and -log P = log l exactly there even where the dS kernel's tile of S
    differs from the forward's in the last bit (B=64 streaming: the 48-row panels put S at other
    tile offsets, and the interpreter's BLAS rounds by offset)."""
    img, txt = embeddings(B, D, seed=seed, noise=0.7, normalize=False, dtype=torch.float32, device=DEVICE)
    check_against_reference(run_with(kernels(strategy)), img, txt, params_for(B, "default"), False, "fp32")


@pytest.mark.parametrize("strategy", triton_kernels.STRATEGIES)
def test_confident_wrong_match_b2(strategy):
    """B=2, D=1: both texts closer to image 1, an off-diagonal Pc that rounds to 1 in fp32. The
    loss stays finite and exact. (Not d img: it is 1e-7 here, the difference of two terms of 3.3,
    so fp32's rounding is all of it; ties make the indices arbitrary.)"""
    img = torch.tensor([[-1.0], [1.0]], device=DEVICE)
    txt = torch.tensor([[1.0], [1.0]], device=DEVICE)
    out, ref, grads, ref_grads = run_both(run_with(kernels(strategy)), img, txt, params_for(2, "default"), False)
    assert torch.isfinite(out[0]) and ref[0] > 1
    tol, gtol = TOLERANCES["fp32"]
    for name, o, r in [("loss", out[0], ref[0]), ("per_sample", out[1], ref[1]), ("loss_cbcl", out[2]["loss_cbcl"],
                       ref[2]["loss_cbcl"]), ("sce", out[2]["sce"], ref[2]["sce"])]:  # fmt: skip
        assert_rel_close(o, r, tol, name)
    assert_rel_close(grads[1], ref_grads[1], gtol, "d txt")


@pytest.mark.parametrize("dtype,B,case,layout", [
    ("fp32", 37, "default", True), ("fp32", 130, "no-bias", "transposed"), ("bf16", 37, "select-none", True),
])  # fmt: skip
def test_similarity_path(dtype, B, case, layout):
    img, txt = embeddings(B, 24, seed=B, noise=0.7, dtype=torch.float32, device=DEVICE)
    check_against_reference(run_with(kernels(None), layout), img.to(DTYPES[dtype]), txt.to(DTYPES[dtype]),
                            params_for(B, case), True, dtype)  # fmt: skip


@pytest.mark.parametrize("strategy", triton_kernels.STRATEGIES)
def test_non_contiguous_inputs(strategy):
    img, txt = embeddings(2 * 37, 40, seed=5, noise=0.7, dtype=torch.float32, device=DEVICE)
    a, b = img[::2, 1:-6], txt.T.contiguous().T[1::2, 3:-4]  # row-strided and column-major
    assert not a.is_contiguous() and not b.is_contiguous()
    check_against_reference(run_with(kernels(strategy)), a, b, params_for(37, "default"), False, "fp32")


def test_column_strides_past_int32():
    """Operands whose column stride times the D index passes 2^31 (as column-major img/txt of
    B·D ≥ 2^31 elements would): the dot tiles' offsets must be int64 (an int32 product wraps and
    reads 4 GiB before the operand). Views, column stride 2^30, of one 4 GiB bf16 buffer of which
    only the 2·B·D elements in use are written (on the CPU the pages of the rest are never
    touched) give what their contiguous copies give, bit for bit (the same values, the same dots)."""
    B, D, stride = 40, 3, 2**30
    img, txt = embeddings(B, D, seed=6, noise=0.7, dtype=torch.bfloat16, device=DEVICE)
    big = torch.empty(stride * (D - 1) + 2 * B, dtype=torch.bfloat16, device=DEVICE)
    a, b = (big.as_strided((B, D), (1, stride), offset) for offset in (0, B))
    a.copy_(img)
    b.copy_(txt)
    v = torch.rand(B, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    kw = dict(tau=0.05, eps=1e-10, bias=True)
    k = kernels("streaming")
    runs = []
    for x, y in ((a, b), (img, txt)):
        out = k.forward(x, y, None, **kw)
        grads = k.backward(x, y, None, out, g_cbcl=v, k_r=v, k_c=v, **kw)
        runs.append({**out, "d_img": grads[0], "d_txt": grads[1]})
    for name, t in runs[0].items():
        assert torch.equal(t, runs[1][name]), name


def test_streaming_gradients_do_not_depend_on_the_panels():
    """The streaming backward forms dS a panel of rows at a time and sums the panels' products
    dS[P]ᵀ·img[P] into d_txt in fp32, rounding to bf16 once at the end: with five 32-row panels
    the gradients are one panel's up to that rounding (a few elements one bf16 ulp apart). Each
    panel's product rounded to bf16 before the sum moved a third of d_txt, by 2.7e-3 relative."""
    B, D = 130, 33
    img, txt = embeddings(B, D, seed=3, noise=0.7, dtype=torch.bfloat16, device=DEVICE)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(B, generator=g).to(DEVICE) for _ in range(3)]
    kw = dict(tau=0.05, eps=1e-10, bias=True)
    runs = []
    for rows in (32, B + 30):
        k = kernels("streaming", ds_block=32, panel_rows=rows)
        out = k.forward(img, txt, None, **kw)
        runs.append(k.backward(img, txt, None, out, g_cbcl=v[0], k_r=v[1], k_c=v[2], **kw))
    for name, a, b in zip(("d img", "d txt"), *runs):
        a, b = a.double(), b.double()
        assert (a != b).double().mean() <= 0.01 and (a - b).norm() <= 1e-5 * b.norm(), name


@pytest.mark.parametrize("strategy", triton_kernels.STRATEGIES)
def test_intermediates_match_the_dense_contract(strategy):
    """lse, A_r, A_c and the backward's split forms (m, log l, at, A_rest) against
    srem_kernels/backends/dense.py in fp64."""
    img, txt = embeddings(37, 33, seed=2, noise=0.7, dtype=torch.float32, device=DEVICE)
    for bias in (True, False):
        out = kernels(strategy).forward(img, txt, None, tau=0.05, eps=1e-10, bias=bias)
        ref = DenseKernels().forward(img.double().cpu(), txt.double().cpu(), None, tau=0.05, eps=1e-10, bias=bias)
        names = triton_kernels.CONTRACT_KEYS + triton_kernels.SPLIT_KEYS + triton_kernels.REST_KEYS
        assert set(out) - {"S"} == set(names)
        for name in names:
            if name.endswith("_index") or name.startswith("at_"):
                assert torch.equal(out[name].cpu(), ref[name]), name
            else:
                assert_rel_close(out[name], ref[name], TOLERANCES["fp32"][0], name)


def test_fp64_gradcheck():
    """The accumulator follows fp64 inputs (ACC constexpr), exact enough for gradcheck. Options
    where SPEC's constants (w, bias weights, c) do not move with the inputs, so the numerical
    gradient is the analytic one."""
    B, D = 5, 3
    img, txt = (t.requires_grad_() for t in embeddings(B, D, seed=4, noise=1.0, device=DEVICE))
    params = check_params(B, img.device, tau=0.5, margin=0.3, lambda_hard=1.0, lambda_cbcl=1.0,
                          bias=False, sce_weight=False, clean=None, select="none", eps=1e-10, reduction="sum")  # fmt: skip
    for strategy in triton_kernels.STRATEGIES:
        k = kernels(strategy, block=16, split=1, panel_rows=4)  # one square tile (B=5)
        assert torch.autograd.gradcheck(lambda a, b: fused.run(k, a, b, None, params)[0], (img, txt))


@pytest.mark.parametrize("strategy", triton_kernels.STRATEGIES)
def test_deterministic(strategy):
    img, txt = embeddings(130, 33, seed=9, noise=0.7, dtype=torch.float32, device=DEVICE)
    k = kernels(strategy)
    params = check_params(130, torch.device(DEVICE), **params_for(130, "default"))
    runs = []
    for _ in range(2):
        a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
        loss, per, stats = fused.run(k, a, b, None, params)
        loss.backward()
        runs.append([loss, per, *stats.values(), a.grad, b.grad])
    for x, y in zip(*runs):
        assert torch.equal(x, y)


@pytest.fixture
def triton_on_this_device(monkeypatch):
    """The registry's triton entry also taking this device's tensors (CPU ones under the interpreter)."""
    entry = registry._REGISTRY["triton"]
    monkeypatch.setitem(registry._REGISTRY, "triton", registry.Backend(
        "triton", (DEVICE,), entry.dtypes, entry.loader, entry.summary))  # fmt: skip
    registry._load.cache_clear()
    yield
    monkeypatch.undo()
    registry._load.cache_clear()


@pytest.mark.parametrize("strategy", triton_kernels.STRATEGIES)
def test_stats_only(strategy, monkeypatch, triton_on_this_device):
    monkeypatch.setenv("SREM_TRITON_STRATEGY", strategy)
    img, txt = embeddings(37, 33, seed=3, noise=0.7, dtype=torch.float32, device=DEVICE)
    a = img.clone().requires_grad_()
    full = srem_kernels.loss(a, txt, backend="triton")
    only = srem_kernels.loss(a, txt, backend="triton", stats_only=True)
    assert only.backend == "triton" and not only.loss.requires_grad and full.loss.requires_grad
    assert torch.equal(only.loss, full.loss.detach()) and torch.equal(only.per_sample, full.per_sample)
    for name, value in only.stats.as_dict().items():
        assert torch.equal(value, getattr(full.stats, name)), name
    # no gradient work: A_r, A_c are neither computed nor returned, nothing saved
    layout = triton_kernels.TritonKernels().saved_layout(img, txt, None, stats_only=True)
    assert "A_r" not in layout and "S" not in layout
    sim_only = srem_kernels.loss_from_similarity(img @ txt.T, backend="triton", stats_only=True)
    assert_rel_close(sim_only.loss, full.loss, TOLERANCES["fp32"][0], "loss from sim")


@pytest.mark.parametrize("backend", [n for n, s in srem_kernels.backends().items() if s.available and "cpu" in s.devices])
def test_stats_only_on_cpu_backends_and_bad_flag(backend):
    img, txt = embeddings(6, 5, seed=0, dtype=torch.float32)
    a = img.clone().requires_grad_()
    out = srem_kernels.loss(a, txt, stats_only=True, backend=backend)
    assert out.backend == backend and not out.loss.requires_grad
    full = srem_kernels.loss(img, txt, backend=backend)
    assert torch.equal(out.loss, full.loss)
    for name, value in out.stats.as_dict().items():
        assert torch.equal(value, full.stats.as_dict()[name]), name
    out = srem_kernels.SREMLoss(backend=backend)(a, txt, stats_only=True)
    assert not out.loss.requires_grad
    with pytest.raises(TypeError, match="stats_only"):
        srem_kernels.loss(img, txt, stats_only=1)


def test_torch_compile_fullgraph_training_step():
    """A step that calls the loss compiles with fullgraph=True (no graph break): the reference
    backend through the public API, and the triton kernels behind fused.py's custom ops (their
    fake implementations trace; the interpreter runs them). aot_eager keeps it fast on CPU;
    both gradients match eager."""
    lin = torch.nn.Linear(8, 6).to(DEVICE)
    streaming, materialised = kernels("streaming"), kernels("materialised")  # the latter saves S (B×B)
    params = check_params(16, torch.device(DEVICE), **params_for(16, "default"))
    x, y = torch.randn(16, 8, device=DEVICE), torch.randn(16, 8, device=DEVICE)

    def embed():
        return torch.nn.functional.normalize(lin(x), dim=1), torch.nn.functional.normalize(lin(y), dim=1)

    def step_reference():
        out = srem_kernels.loss(*embed(), backend="reference", check_finite=False)
        return out.loss, out.stats.energy

    def step_streaming():
        loss, _, stats = fused.run(streaming, *embed(), None, params)
        return loss, stats["energy"]

    def step_materialised():
        loss, _, stats = fused.run(materialised, *embed(), None, params)
        return loss, stats["energy"]

    for step in (step_reference, step_streaming, step_materialised):
        compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
        grads = []
        for fn in (compiled, step):
            lin.zero_grad()
            loss, energy = fn()
            loss.backward()
            grads.append((loss.detach(), energy, lin.weight.grad.clone()))
        for a, b in zip(*grads):
            assert_rel_close(a, b, 1e-6, step.__name__)


def test_strategy_choice_and_forcing(monkeypatch):
    k = triton_kernels.TritonKernels()
    monkeypatch.delenv("SREM_TRITON_STRATEGY", raising=False)
    assert k.strategy_for(1024, 64, torch.float32, torch.device(DEVICE)) == "materialised"
    assert k.strategy_for(1 << 17, 64, torch.bfloat16, torch.device(DEVICE)) == "streaming"
    monkeypatch.setenv("SREM_TRITON_STRATEGY", "streaming")
    assert k.strategy_for(1024, 64, torch.float32, torch.device(DEVICE)) == "streaming"
    assert triton_kernels.TritonKernels("materialised").strategy_for(1 << 17, 64, torch.float32, torch.device("cpu")) == "materialised"
    monkeypatch.setenv("SREM_TRITON_STRATEGY", "fast")
    with pytest.raises(ValueError, match="SREM_TRITON_STRATEGY"):
        triton_kernels.TritonKernels().strategy_for(64, 8, torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match="strategy"):
        triton_kernels.TritonKernels("fast")


def test_registry_lists_triton_as_available_here(monkeypatch):
    status = srem_kernels.backends()["triton"]
    assert status.available, status.reason
    if not torch.cuda.is_available():  # without the interpreter a CPU-only machine says why not
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(srem_kernels.BackendUnavailable, match="no CUDA device"):
            registry._load_triton()


@pytest.mark.parametrize("dtype,B,D,parts,bias", [("fp32", 37, 33, 3, True), ("bf16", 70, 20, 2, False),
                                                  ("fp32", 5, 3, 4, True)])  # fmt: skip
def test_row_ranges_match_dense_contract(dtype, B, D, parts, bias):
    """The distributed loss's row ranges (fused.py): uneven ranges across tile and panel edges,
    always streamed from the gathered embeddings."""
    img, txt = embeddings(B, D, seed=B, noise=0.7, dtype=DTYPES[dtype], device=DEVICE)
    check_rows_against_dense(kernels("streaming", panel_rows=16), img, txt, split(B, parts), bias=bias, tol_key=dtype)


@pytest.mark.parametrize("strategy", [*triton_kernels.STRATEGIES, "similarity"])
def test_hot_path_has_no_host_reads_or_copies(strategy):
    """The kernels' forward and backward read nothing back to the host and copy nothing to the
    device (bench/opcount.py counts both; the interpreter's runs show what a GPU run would do), so
    a training step can be captured in a CUDA graph. The glue around them (fused.py) is not
    counted here."""
    from bench import opcount

    B, D = 37, 20
    img, txt = embeddings(B, D, seed=1, noise=0.7, dtype=torch.float32, device=DEVICE)
    sim = img @ txt.T if strategy == "similarity" else None
    x, y = (None, None) if sim is not None else (img, txt)
    k = kernels(None if sim is not None else strategy, panel_rows=16)
    g = torch.rand(B, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    kw = dict(tau=0.05, eps=1e-10, bias=True)

    def step():
        saved = k.forward(x, y, sim, **kw)
        k.backward(x, y, sim, saved, g_cbcl=g, k_r=g, k_c=g, **kw)
        k.forward(x, y, sim, stats_only=True, **kw)

    step()
    c = opcount.count(step)
    assert (c.reads, c.h2d) == (0, 0), c.by_op
    # pass 1 + merge, pass 2 + merge (twice: full and stats only), dS (panels of 16 rows streaming)
    assert c.triton == 8 + (triton.cdiv(B, 16) if strategy == "streaming" else 1)


@pytest.mark.parametrize("kw,name", [({"bk": 8}, "bk"), ({"block": 48}, "block"), ({"ds_block": 0}, "ds_block"),
                                     ({"bk": 24}, "bk"), ({"block_n": 8}, "block_n"), ({"split": 3}, "split"),
                                     ({"block": 16, "block_n": 16, "split": 2}, "block_n · split"),
                                     ({"splits": 0}, "splits")])  # fmt: skip
def test_tile_sizes_are_checked(kw, name):
    """tl.dot on a GPU needs every dimension ≥ 16 (the interpreter takes any): refused up front."""
    with pytest.raises(ValueError, match=name):
        triton_kernels.TritonKernels("streaming", **kw)

"""The `cpu` backend's short eager path (srem_kernels/backends/cpu_eager.py): which calls take it,
and that they come out bitwise as fused.run's general path computes them on the same kernels —
the loss, L_i, every statistic and both gradients, for every option it takes, odd batch sizes,
each input dtype and an upstream gradient that is not all ones (test_cpu.py's reference checks
run through FusedRun: the short path where it applies, fused.run elsewhere). Outputs are poisoned
before each call (conftest.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

import srem_kernels
from srem_kernels._validate import check_params
from srem_kernels.backends import fused
from tests.helpers import embeddings

status = srem_kernels.backends()["cpu"]
pytestmark = pytest.mark.skipif(not status.available, reason=f"cpu backend unavailable: {status.reason}")

if status.available:
    from srem_kernels.backends import cpu_eager
    from srem_kernels.backends.cpu import CPUKernels

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# the options the short path takes: float tau and margin, no clean, SPEC's sensitivity term or none
TAKEN = {
    "default": {},
    "no-bias": {"bias": False, "eps": 0.0},
    "no-sce, sum": {"sce_weight": False, "reduction": "sum"},
    "select-none, none": {"select": "none", "reduction": "none", "lambda_hard": 0.5, "lambda_cbcl": 2.0},
    "tau, margin": {"tau": 0.11, "margin": 0.35},
}
# calls it leaves to fused.run
LEFT = {
    "tensor tau": {"tau": "tensor"},
    "margin vector": {"margin": "vector"},
    "clean given": {"clean": "random"},
    "sensitivity margin": {"sensitivity": "margin"},
    "sensitivity rank": {"sensitivity": "rank"},
}


def _kwargs(B, options, seed):
    kw = dict(tau=0.05, margin=0.2, lambda_hard=1.0, lambda_cbcl=1.0, bias=True, sce_weight=True, sensitivity="weight",
              clean=None, select="gmm", eps=1e-10, reduction="mean") | options  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    if kw["tau"] == "tensor":
        kw["tau"] = torch.tensor(0.07)
    if kw["margin"] == "vector":
        kw["margin"] = 0.1 + 0.2 * torch.rand(B, generator=g)
    if kw["clean"] == "random":
        kw["clean"] = torch.rand(B, generator=g)
    return kw


def _call(run, img, txt, kw, upstream):
    """(loss, per_sample, statistics, d_img, d_txt) of one call with a weighted upstream gradient."""
    (x, y), B = [t.detach().clone().requires_grad_(True) for t in (img, txt)], img.shape[0]
    loss, per_sample, stats = run(x, y, None, check_params(B, img.device, **kw))
    (loss * (upstream if loss.dim() else upstream[0])).sum().backward()
    return loss.detach(), per_sample, stats, x.grad, y.grad


def _counted(monkeypatch, name: str) -> list:
    """One entry per call of cpu_eager.<name> from here on."""
    runs, real = [], getattr(cpu_eager, name)
    monkeypatch.setattr(cpu_eager, name, lambda *a: runs.append(1) or real(*a))
    return runs


@pytest.fixture
def spy(monkeypatch):
    """How many calls the short path ran."""
    return _counted(monkeypatch, "run")


@pytest.fixture
def node_spy(monkeypatch):
    """How many calls the short path ran through its C++ node."""
    return _counted(monkeypatch, "_node_run")


@pytest.fixture(params=["node", "python"])
def short_path(request, monkeypatch):
    """The short path through its C++ node (skipped where it is not built: see
    test_the_node_is_built_where_torchs_headers_are), or through its Python Function."""
    from srem_kernels.backends import cpu

    if request.param == "node" and cpu_eager.NODE is None:
        pytest.skip("_srem_cpu_node is not built")
    if request.param == "python":
        monkeypatch.setattr(cpu, "_NODE_ROWS", None)
    return request.param


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", TAKEN)
@pytest.mark.parametrize("B,D", [(2, 3), (37, 33), (130, 7)])
def test_short_path_is_bitwise_the_general_path(spy, node_spy, short_path, B, D, case, dtype):
    img, txt = embeddings(B, D, seed=B * 7 + D, noise=0.7)
    img, txt = img.to(dtype), txt.to(dtype)
    kw = _kwargs(B, TAKEN[case], seed=B)
    upstream = torch.rand(B, generator=torch.Generator().manual_seed(D)) + 0.5
    kernels = CPUKernels("materialised")
    short = _call(fused.FusedRun(kernels), img, txt, kw, upstream)
    assert spy == [1], "the call did not take the short path"
    # the node takes every call here but reduction "none" (B <= 130: S below the kept matrices)
    assert node_spy == ([1] if short_path == "node" and kw["reduction"] != "none" else [])
    general = _call(lambda *a: fused.run(kernels, *a), img, txt, kw, upstream)
    names = ("loss", "per_sample", "statistics", "d_img", "d_txt")
    for name, a, b in zip(names, short, general):
        pairs = [(f"{name}.{k}", a[k], b[k]) for k in a] if isinstance(a, Mapping) else [(name, a, b)]
        assert not isinstance(a, Mapping) or sorted(a) == sorted(b)
        for what, u, v in pairs:
            assert u.dtype == v.dtype and u.shape == v.shape, what
            assert torch.equal(u, v), f"{what} differs between the short and the general path"
            assert not u.is_floating_point() or torch.isfinite(u).all(), what


@pytest.mark.parametrize("case", LEFT)
def test_other_calls_take_the_general_path(spy, case):
    img, txt = [t.requires_grad_(True) for t in embeddings(16, 5, seed=1, noise=0.7, dtype=torch.float32)]
    kw = _kwargs(16, LEFT[case], seed=2)
    srem_kernels.loss(img, txt, backend="cpu", **kw).loss.backward()
    assert spy == [], f"{case}: the short path took a call it does not handle"


def test_streaming_stats_only_and_similarity_take_the_general_path(spy, monkeypatch):
    img, txt = [t.requires_grad_(True) for t in embeddings(16, 5, seed=1, noise=0.7, dtype=torch.float32)]
    srem_kernels.loss(img, txt, backend="cpu", stats_only=True)
    srem_kernels.loss_from_similarity(img @ txt.T, backend="cpu").loss.backward()
    monkeypatch.setenv("SREM_CPU_STRATEGY", "streaming")
    srem_kernels.loss(img, txt, backend="cpu").loss.backward()
    assert spy == []
    monkeypatch.setenv("SREM_CPU_STRATEGY", "materialised")
    out = srem_kernels.loss(img, txt, backend="cpu")
    out.loss.backward()
    assert spy == [1] and out.strategy == "materialised"


@pytest.mark.parametrize("stat", ["pos", "hard_i2t_index", "sce", "energy", "clean", "loss_hard"])
@pytest.mark.parametrize("short", [True, False], ids=["short", "general"])
def test_a_statistic_changed_in_place_fails_backward(stat, short, short_path):
    """The statistics are rows of buffers the backward reads: changing one in place before
    backward is caught by autograd's version check, on every path."""
    img, txt = [t.requires_grad_(True) for t in embeddings(12, 4, seed=3, noise=0.7, dtype=torch.float32)]
    margin = 0.2 if short else torch.full((12,), 0.2)  # a margin vector: the general path
    out = srem_kernels.loss(img, txt, backend="cpu", margin=margin)
    getattr(out.stats, stat).add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.loss.backward()


def test_short_path_backward_ignores_autocast(short_path):
    img, txt = [t.requires_grad_(True) for t in embeddings(24, 8, seed=4, noise=0.7, dtype=torch.float32)]
    out = srem_kernels.loss(img, txt, backend="cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out.loss.backward()
    ref = [t.detach().clone().requires_grad_(True) for t in (img, txt)]
    srem_kernels.loss(*ref, backend="cpu").loss.backward()
    assert torch.equal(img.grad, ref[0].grad) and torch.equal(txt.grad, ref[1].grad)


def test_the_node_is_built_where_torchs_headers_are():
    """setup.py builds _srem_cpu_node wherever torch ships its C++ headers (every torch wheel):
    the node's tests above skip only where it truly cannot be built."""
    from torch.utils import cpp_extension

    header = Path(cpp_extension.include_paths()[0]) / "torch" / "csrc" / "autograd" / "custom_function.h"
    if header.exists():
        assert cpu_eager.NODE is not None, "torch's headers are here but _srem_cpu_node is not built (see setup.py's notice)"


def test_which_short_calls_the_node_runs(spy, node_spy, monkeypatch):
    """The node runs the short path's mean and sum calls while S is below the kept matrices' size;
    reduction "none", a larger S, and kernels whose forward or backward is not CPUKernels' own (a
    subclass's, or the self-check tests' injected faults) take the Python Function."""
    if cpu_eager.NODE is None:
        pytest.skip("_srem_cpu_node is not built")
    from srem_kernels.backends import cpu

    def call(B, kernels=None, **kw):
        img, txt = [t.requires_grad_(True) for t in embeddings(B, 4, seed=B, noise=0.7, dtype=torch.float32)]
        run = fused.FusedRun(kernels or CPUKernels("materialised"))
        loss = run(img, txt, None, check_params(B, img.device, **_kwargs(B, kw, seed=1)))[0]
        loss.sum().backward()

    call(16)
    call(16, reduction="sum")
    assert spy == [1, 1] and node_spy == [1, 1]
    call(16, reduction="none")
    big = next(b for b in range(8, 4096, 8) if 4 * b * b >= cpu.KEPT.MIN_BYTES)
    call(big)
    assert spy == [1] * 4 and node_spy == [1, 1]

    class Subclass(CPUKernels):
        def forward(self, *a, **kw):
            return super().forward(*a, **kw)

    call(16, Subclass("materialised"))
    own = CPUKernels.backward
    monkeypatch.setattr(CPUKernels, "backward", lambda self, *a, **kw: own(self, *a, **kw))  # as a fault is injected
    call(16)
    assert spy == [1] * 6 and node_spy == [1, 1]


def test_node_backward_runs_twice_with_retain_graph(short_path):
    img, txt = [t.requires_grad_(True) for t in embeddings(20, 6, seed=5, noise=0.7, dtype=torch.float32)]
    out = srem_kernels.loss(img, txt, backend="cpu")
    out.loss.backward(retain_graph=True)
    first = img.grad.clone(), txt.grad.clone()
    out.loss.backward()
    assert torch.equal(img.grad, 2 * first[0]) and torch.equal(txt.grad, 2 * first[1])

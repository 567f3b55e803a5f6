"""The self-check (srem_kernels/selfcheck/, docs/selfcheck.md): a correct backend passes at every
dtype it serves; a wrong kernel — a perturbed forward or backward, a wrong strategy, a wrong 16-bit
path, a kernel that raises or leaves an output unwritten — is refused with a message naming the
backend, the case and the error; the first-use hook runs once per key, only where it should
(not while torch.compile traces, not under a counting or tracing dispatch mode, no collective),
leaves the caller's RNG alone; the report and `python -m srem_kernels.selfcheck`.

The Triton backend runs under the interpreter on CPU tensors: the same code path as on a GPU."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import python_ref as R
import srem_kernels
from python_ref.filtration import gmm_low_posterior
from srem_kernels import _alloc, registry
from srem_kernels.selfcheck import auto, cases, judge
from tests.helpers import TOLERANCES

ROOT = Path(__file__).resolve().parents[1]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = (["cpu"] if srem_kernels.backends()["cpu"].available and DEVICE.type == "cpu" else []) + ["triton"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
needs_cpu = pytest.mark.skipif(not srem_kernels.backends()["cpu"].available, reason="cpu backend not built")


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """No verdict cached, the switch and SREM_SELFCHECK unset, before and after every test."""
    monkeypatch.delenv("SREM_SELFCHECK", raising=False)
    auto.reset()
    auto.set_auto(None)
    yield
    auto.reset()
    auto.set_auto(None)


@pytest.fixture
def parts(monkeypatch):
    """Every part the first-use hook runs: [(backend, dtype, shape, path, results)]."""
    ran = []
    run_part = cases.run_part

    def spy(backend, run, device, dtype, shape, path, **kw):
        results = run_part(backend, run, device, dtype, shape, path, **kw)
        ran.append((backend, dtype, shape, path, results))
        return results

    monkeypatch.setattr(cases, "run_part", spy)
    return ran


def _pair(B=64, D=32, dtype=torch.float32, seed=0):
    """Fresh random unit embeddings (sizes multiples of 16 by default: the "aligned" class)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1)
    txt = torch.nn.functional.normalize(img + 0.5 * torch.randn(B, D, generator=g), dim=1)
    return img.to(device=DEVICE, dtype=dtype), txt.to(device=DEVICE, dtype=dtype)


def _kernels_class(backend):
    return type(registry.resolve(backend, DEVICE, torch.float32)[1].kernels)


# ---------------------------------------------------------------- the problems


def test_the_tolerances_are_specs():
    assert judge.TOLERANCES == TOLERANCES


@pytest.mark.parametrize("shape", cases.SHAPES)
def test_the_problems_keep_their_margins(shape):
    """Every case's inputs, as fp64 and rounded to each dtype: GMM posteriors ≥ 0.05 from the
    threshold (TF32's ~1e-3 error cannot flip a clean flag) and no hardest-negative near-tie
    (fp32 indices may be compared exactly)."""
    B, D = cases.SHAPES[shape]
    for seed in cases.SEEDS[shape].values():
        for dtype in (torch.float64, *DTYPES.values()):
            img, txt = (t.to(dtype).double() for t in cases.pairs(B, D, seed))
            S = img @ txt.T
            lse_r, lse_c = torch.logsumexp(S / 0.05, 1), torch.logsumexp(S / 0.05, 0)
            post = gmm_low_posterior(-0.05 * (lse_r + lse_c) / 2)
            assert (post - 0.5).abs().min() >= 0.05, (shape, seed, dtype)
            off = S.masked_fill(torch.eye(B, dtype=torch.bool), -math.inf)
            for M in (off, off.T):
                top = M.topk(2, dim=1).values
                assert (top[:, 0] - top[:, 1]).min() >= 2e-5, (shape, seed, dtype)
            assert 0 < int((post > 0.5).sum()) < B  # both components hold samples


def test_the_variant_tables_name_the_backends_own_variants():
    from srem_kernels.backends import cpu
    from srem_kernels.backends.triton import kernels as tk

    assert set(cases.VARIANTS["cpu"][1]) == set(cpu.STRATEGIES)
    assert set(cases.VARIANTS["triton"][1]) == set(tk.STRATEGIES)
    assert '"own", "torch"' in (ROOT / "srem_kernels" / "backends" / "cuda.py").read_text()  # GEMMS (no GPU here)
    assert set(auto.FUSED) == {"triton", "cuda", "cpu"}


# ---------------------------------------------------------------- a correct backend passes


@needs_cpu
def test_selfcheck_passes_the_cpu_backend_at_every_dtype_and_prints_its_report():
    report = srem_kernels.selfcheck(device="cpu", backends="cpu")
    per_shape = 5  # registered, the other strategy, tensor tau, sim, rows
    assert report.ok and report.checked and len(report.cases) == 3 * 2 * per_shape, str(report)
    assert {(c.tol_key, c.B) for c in report.cases} == {(d, B) for d in DTYPES for B, _ in cases.SHAPES.values()}
    text = str(report)
    for needed in ("srem_kernels self-check on cpu", "torch " + torch.__version__, "Triton", "img/txt, streaming",
                   "row ranges", "sim", f"PASS: {len(report.cases)} of {len(report.cases)} cases passed"):
        assert needed in text, needed


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_first_use_passes_a_correct_backend_at_every_dtype(backend, dtype, parts, monkeypatch):
    """Through the public path (the hook in functional.py): the backend's part for the call's
    dtype, shape class and path (embeddings: both strategies), every case run and passed, the
    call's own result returned."""
    monkeypatch.setenv("SREM_SELFCHECK", "1")
    out = srem_kernels.loss(*_pair(dtype=DTYPES[dtype]), backend=backend)
    assert out.backend == backend and torch.isfinite(out.loss)
    ((name, dt, shape, path, results),) = parts
    assert (name, dt, shape, path) == (backend, DTYPES[dtype], "aligned", "embeddings")
    labels = [r.case for r in results]
    assert labels[:2] == ["img/txt, materialised (registered)", "img/txt, streaming (fresh kernels)"], labels
    assert all(r.passed for r in results), [r.what_failed() for r in results if not r.passed]


# ---------------------------------------------------------------- a wrong kernel is refused


def _forward_perturbed(key, rel, only=None):
    """A Kernels.forward that scales one output by (1 + rel); only(self, img, sim): where."""

    def wrap(orig):
        def forward(self, img, txt, sim, **kw):
            out = orig(self, img, txt, sim, **kw)
            if only is None or only(self, img, sim):
                out[key].mul_(1 + rel)
            return out

        return forward

    return "forward", wrap


def _backward_scaled(rel):
    def wrap(orig):
        def backward(self, img, txt, sim, saved, **kw):
            grads = orig(self, img, txt, sim, saved, **kw)
            return grads * (1 + rel) if sim is not None else (grads[0] * (1 + rel), grads[1])

        return backward

    return "backward", wrap


def _streaming(self, img, sim):
    return sim is None and self.strategy_for(img.shape[0], img.shape[1], img.dtype, img.device) == "streaming"


def _sixteen_bit_through_fp8():
    """A 16-bit path that loses the inputs' precision (fp8 e4m3: 3 mantissa bits); fp32 untouched."""

    def wrap(orig):
        def forward(self, img, txt, sim, **kw):
            def lossy(t):
                return t if t is None or t.dtype == torch.float32 else t.to(torch.float8_e4m3fn).to(t.dtype)

            return orig(self, lossy(img), lossy(txt), lossy(sim), **kw)

        return forward

    return "forward", wrap


def _raises():
    def wrap(orig):
        def forward(self, img, txt, sim, **kw):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

        return forward

    return "forward", wrap


# name: (fault, dtype of the call, the case it shows in, what the message says)
FAULTS = {
    "forward": (_forward_perturbed("sce", 1e-3), "fp32", "img/txt, materialised (registered)",
                "sce: relative error 1.00e-03 > tolerance 1e-05"),
    "backward": (_backward_scaled(1e-3), "fp32", "img/txt, materialised (registered)",
                 "d img: relative error 1.00e-03 > tolerance 1e-04"),
    "strategy": (_forward_perturbed("lse_r", 1e-3, only=_streaming), "fp32", "img/txt, streaming (fresh kernels)",
                 "energy_i2t: relative error"),
    "16-bit path": (_sixteen_bit_through_fp8(), "bf16", "img/txt, materialised (registered)", "relative error"),
    "raises": (_raises(), "fp32", "img/txt, materialised (registered)",
               "raised RuntimeError: CUDA error: an illegal memory access was encountered"),
}  # fmt: skip
# the interpreter is slow (~3 s a case): triton gets the fault of its tensor-core path; the others
# are the same plan and judge, shown on cpu
TRITON_FAULTS = ("16-bit path",)


@pytest.mark.parametrize("backend,fault", [(b, f) for b in BACKENDS for f in FAULTS if b != "triton" or f in TRITON_FAULTS])
def test_a_wrong_kernel_is_refused_with_a_clear_message(backend, fault, parts, monkeypatch):
    (method, wrap), dtype, case, says = FAULTS[fault]
    cls = _kernels_class(backend)
    monkeypatch.setattr(cls, method, wrap(getattr(cls, method)))
    monkeypatch.setenv("SREM_SELFCHECK", "1")
    pair = _pair(dtype=DTYPES[dtype])
    with pytest.raises(srem_kernels.SelfCheckError) as err:
        srem_kernels.loss(*pair, backend=backend)
    msg = str(err.value)
    for needed in (f"backend {backend!r}", f"({dtype} inputs)", f"Case {case!r}", says, "backend='reference'",
                   "SREM_SELFCHECK=0", "python -m srem_kernels.selfcheck"):
        assert needed in msg, (needed, msg)
    assert isinstance(err.value, RuntimeError)
    # the verdict stands: the next call raises without checking again; SREM_SELFCHECK=0 lets it through
    with pytest.raises(srem_kernels.SelfCheckError):
        srem_kernels.loss(*pair, backend=backend)
    assert len(parts) == 1
    monkeypatch.setenv("SREM_SELFCHECK", "0")  # at the user's own risk: the wrong kernel runs
    if fault == "raises":
        with pytest.raises(RuntimeError, match="illegal memory access") as raised:
            srem_kernels.loss(*pair, backend=backend)
        assert not isinstance(raised.value, srem_kernels.SelfCheckError)
    else:
        assert srem_kernels.loss(*pair, backend=backend).backend == backend


@needs_cpu
def test_a_16_bit_fault_leaves_fp32_alone(monkeypatch):
    (method, wrap), *_ = FAULTS["16-bit path"]
    cls = _kernels_class("cpu")
    monkeypatch.setattr(cls, method, wrap(getattr(cls, method)))
    auto.set_auto(True)
    srem_kernels.loss(*_pair(dtype=torch.float32), backend="cpu")
    with pytest.raises(srem_kernels.SelfCheckError, match="fp16 inputs"):
        srem_kernels.loss(*_pair(dtype=torch.float16), backend="cpu")


@needs_cpu
def test_an_output_a_kernel_leaves_unwritten_is_caught_without_the_tests_poisoning(monkeypatch):
    """The check poisons the outputs itself: an element no kernel writes reads as NaN."""
    monkeypatch.setattr(_alloc, "POISON", False)
    cls = _kernels_class("cpu")
    forward = cls.forward

    def forgetful(self, img, txt, sim, **kw):
        out = forward(self, img, txt, sim, **kw)
        pos = _alloc.empty(out["pos"].shape, dtype=out["pos"].dtype, device=out["pos"].device)
        pos[:-1] = out["pos"][:-1]  # the last sample's S_ii never written
        return out | {"pos": pos}

    monkeypatch.setattr(cls, "forward", forgetful)
    auto.set_auto(True)
    with pytest.raises(srem_kernels.SelfCheckError, match="pos: relative error inf"):
        srem_kernels.loss(*_pair(), backend="cpu")
    assert _alloc.POISON is False  # the caller's setting is back


def test_the_tensor_tau_case_judges_dl_dtau():
    """The tensor-tau case on the reference backend in fp64: it passes as is, and fails naming
    dL/dtau when the gradient of tau is off by sum(g)."""
    _, ref = registry.resolve("reference", DEVICE, torch.float64)

    def run(img, txt, sim, params, **kw):  # the reference in fp64 on the case's fp32 inputs
        return ref(*(None if t is None else t.double() for t in (img, txt, sim)), params, **kw)

    case = cases.Case("tensor tau", "img/txt, tensor tau (dL/dtau)", cases.SEEDS["odd"]["tensor tau"],
                      cases.OPTIONS["tensor tau"])  # fmt: skip
    good = cases.run_case(case, "reference", run, DEVICE, torch.float32, "odd")
    assert good.passed and "d tau" in [q.name for q in good.quantities], good.what_failed()

    def off(img, txt, sim, params, **kw):  # dL/dtau gains sum(g)
        loss, per_sample, stats = run(img, txt, sim, params, **kw)
        return loss + (params.tau - params.tau.detach()), per_sample, stats

    bad = cases.run_case(case, "reference", off, DEVICE, torch.float32, "odd")
    assert not bad.passed and bad.what_failed().startswith("d tau: relative error"), bad.what_failed()


# ---------------------------------------------------------------- when the first-use check runs


@needs_cpu
def test_off_by_default_on_cpu_tensors_and_switched_by_env_or_set_auto(parts, monkeypatch):
    pair = _pair()
    srem_kernels.loss(*pair, backend="cpu")
    assert parts == []  # the default on CPU tensors
    auto.set_auto(True)
    monkeypatch.setenv("SREM_SELFCHECK", "0")
    srem_kernels.loss(*pair, backend="cpu")
    assert len(parts) == 1  # set_auto wins over the environment
    auto.set_auto(None)
    auto.reset()
    srem_kernels.loss(*pair, backend="cpu")
    assert len(parts) == 1
    monkeypatch.setenv("SREM_SELFCHECK", "yes")
    with pytest.raises(ValueError, match="SREM_SELFCHECK must be 0 or 1"):
        srem_kernels.loss(*pair, backend="cpu")
    with pytest.raises(TypeError, match="enabled"):
        auto.set_auto(1)
    monkeypatch.delenv("SREM_SELFCHECK")
    assert auto.enabled(torch.device("cuda")) and not auto.enabled(torch.device("cpu"))  # the defaults


@needs_cpu
def test_once_per_backend_dtype_and_shape_class(parts, monkeypatch):
    """A size that is not a multiple of 16 runs other compiled kernels: its own part, once."""
    monkeypatch.setenv("SREM_SELFCHECK", "1")
    for _ in range(2):
        srem_kernels.loss(*_pair(), backend="cpu")
        srem_kernels.loss(*_pair(B=37), backend="cpu", stats_only=True)
        srem_kernels.loss_from_similarity(_pair()[0] @ _pair()[1].T, backend="cpu")
        srem_kernels.loss(*_pair(dtype=torch.bfloat16), backend="cpu")
        srem_kernels.loss(*_pair(), backend="reference")  # the oracle is never checked
    assert [p[1:4] for p in parts] == [(torch.float32, "aligned", "embeddings"), (torch.float32, "odd", "embeddings"),
                                       (torch.float32, "aligned", "sim"), (torch.bfloat16, "aligned", "embeddings")]  # fmt: skip


@needs_cpu
def test_an_explicit_selfcheck_stands_for_the_first_use(parts, monkeypatch):
    report = srem_kernels.selfcheck(device="cpu", backends=["cpu"], dtypes=["fp32"])
    assert report.ok and len(parts) == 2 * len(cases.PATHS)
    parts.clear()
    monkeypatch.setenv("SREM_SELFCHECK", "1")
    srem_kernels.loss(*_pair(), backend="cpu")
    srem_kernels.loss(*_pair(B=37, D=5), backend="cpu")
    assert parts == []


@needs_cpu
def test_first_use_inside_no_grad_and_inference_mode(parts, monkeypatch):
    monkeypatch.setenv("SREM_SELFCHECK", "1")
    with torch.inference_mode():
        out = srem_kernels.loss(*_pair(), backend="cpu", stats_only=True)
    assert not out.loss.requires_grad and all(r.passed for r in parts[0][-1])


@needs_cpu
def test_first_use_leaves_the_callers_rng_alone(monkeypatch):
    monkeypatch.setenv("SREM_SELFCHECK", "1")
    pair = _pair()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    srem_kernels.loss(*pair, backend="cpu")
    assert torch.equal(torch.get_rng_state(), state)


@needs_cpu
def test_concurrent_first_calls_check_once(parts, monkeypatch):
    monkeypatch.setenv("SREM_SELFCHECK", "1")
    slow = cases.run_part

    def slower(*a, **kw):
        time.sleep(0.2)  # the other thread arrives while this one checks
        return slow(*a, **kw)

    monkeypatch.setattr(cases, "run_part", slower)
    errors = []

    def call():
        try:
            srem_kernels.loss(*_pair(), backend="cpu")
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(parts) == 1


@needs_cpu
def test_skipped_under_a_counting_dispatch_mode_and_run_after_it(parts, monkeypatch):
    """bench/opcount.py counts a call's operators: the check is not among them (and not cached:
    the next call outside the counter runs it)."""
    from bench import opcount

    monkeypatch.setattr(_alloc, "POISON", False)
    step = opcount.loss_step("cpu", 64, 32)
    step()
    quiet = opcount.count(step)
    monkeypatch.setenv("SREM_SELFCHECK", "1")
    counted = opcount.count(step)
    assert parts == [] and counted.row() == quiet.row()
    step()
    assert len(parts) == 1


@needs_cpu
def test_skipped_while_torch_compile_traces(parts):
    """The hook traces with fullgraph=True (no graph break) and runs nothing there."""
    auto.set_auto(True)
    _, run = registry.resolve("cpu", torch.device("cpu"), torch.float32)
    x = _pair()[0]

    def f(x):
        auto.on_first_use("cpu", run, x, x.shape[1])
        return x * 2

    torch._dynamo.reset()
    out = torch.compile(f, fullgraph=True, backend="eager")(x)
    assert torch.equal(out, x * 2) and parts == []


@needs_cpu
def test_the_distributed_part_adds_the_row_ranges_and_runs_no_collective(parts, monkeypatch):
    """Every rank checks its own device: no collective inside the check (each one raises here)."""
    import torch.distributed as dist

    def collective(*a, **kw):
        raise AssertionError("a collective inside the self-check")

    for name in ("all_gather_into_tensor", "all_reduce", "broadcast", "barrier", "all_gather", "reduce_scatter"):
        monkeypatch.setattr(dist, name, collective, raising=False)
    auto.set_auto(True)
    _, run = registry.resolve("cpu", torch.device("cpu"), torch.float32)
    auto.on_first_use("cpu", run, _pair()[0], 32, rows=True)
    ((*_, path, results),) = parts
    assert path == "rows" and [r.case for r in results] == [cases.ROWS_LABEL] and results[0].passed


@pytest.mark.gpu
def test_skipped_while_a_cuda_graph_is_captured():
    auto.set_auto(True)
    _, run = registry.resolve("triton", DEVICE, torch.float32)
    x = _pair()[0]
    g = torch.cuda.CUDAGraph()
    with pytest.warns(UserWarning, match="CUDA graph is being captured"), torch.cuda.graph(g):
        auto.on_first_use("triton", run, x, x.shape[1])
    assert auto._VERDICTS == {}
    auto.on_first_use("triton", run, x, x.shape[1])  # outside capture: it runs, and passes
    assert list(auto._VERDICTS.values()) == [None]


# ---------------------------------------------------------------- the entry points


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="backends must name fused backends"):
        srem_kernels.selfcheck(backends=["reference"])
    with pytest.raises(ValueError, match="dtypes must be among"):
        srem_kernels.selfcheck(dtypes=["fp64"])
    with pytest.raises(ValueError, match="device must be"):
        srem_kernels.selfcheck(device="gpu0")


def test_a_backend_that_does_not_run_here_is_reported_not_checked():
    report = srem_kernels.selfcheck(device="cpu", backends=["cuda"])
    assert not report.checked and report.ok and "cuda" in report.skipped
    assert "NOTHING CHECKED" in str(report) and "not checked: cuda:" in str(report)


def test_the_package_is_callable_however_it_is_imported():
    import importlib

    mod = importlib.import_module("srem_kernels.selfcheck")
    assert srem_kernels.selfcheck is mod and callable(mod)
    assert issubclass(srem_kernels.SelfCheckError, RuntimeError)


def test_registry_usable_lists_the_alternatives_in_autos_order():
    names = registry.usable(torch.device("cpu"), torch.float32)
    assert names[-1] == "reference" and ("cpu" in names) == srem_kernels.backends()["cpu"].available


@needs_cpu
def test_python_m_selfcheck_prints_its_report():
    """As a command (runpy warns where the package imported the module it runs: an error here)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "srem_kernels.selfcheck", "--backend",
                          "cpu", "--dtype", "fp32"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASS: 10 of 10 cases passed" in res.stdout  # 2 shapes × 5 cases
    assert f"versions: srem_kernels {srem_kernels.__version__} (" in res.stdout


def test_the_command_exits_2_when_nothing_was_checked_and_1_on_a_failure(capsys, monkeypatch):
    from srem_kernels.selfcheck.__main__ import main

    assert main(["--device", "cpu", "--backend", "cuda"]) == 2 and "NOTHING CHECKED" in capsys.readouterr().out
    if srem_kernels.backends()["cpu"].available:
        (method, wrap), *_ = FAULTS["backward"]
        cls = _kernels_class("cpu")
        monkeypatch.setattr(cls, method, wrap(getattr(cls, method)))
        assert main(["--device", "cpu", "--backend", "cpu", "--dtype", "fp32"]) == 1
        out = capsys.readouterr().out
        assert "FAIL cpu fp32 img/txt, materialised (registered) (B=112, D=48): d img: relative error" in out, out


@needs_cpu
@pytest.mark.parametrize("fault", [None, "backward"])
def test_a_compiled_only_run_is_checked_when_its_graph_first_runs(fault, parts, monkeypatch):
    """A step that only ever calls the loss through torch.compile(fullgraph=True): the trace holds
    no check, and the graph's first run of the kernels (the custom op) runs the first-use part —
    it passes a correct backend and refuses a wrong one — once, not on later runs."""
    monkeypatch.setattr(_alloc, "POISON", False)
    if fault is not None:
        (method, wrap) = _backward_scaled(1e-3)
        cls = _kernels_class("cpu")
        monkeypatch.setattr(cls, method, wrap(getattr(cls, method)))
    auto.set_auto(True)
    img, txt = _pair()
    a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()

    def step(a, b):
        return srem_kernels.loss(a, b, backend="cpu", check_finite=False).loss

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    if fault is not None:
        with pytest.raises(srem_kernels.SelfCheckError, match="backend 'cpu'.*d img: relative error"):
            compiled(a, b)
        assert len(parts) == 1
        return
    loss = compiled(a, b)
    assert len(parts) == 1 and all(r.passed for r in parts[0][4])
    loss.backward()
    compiled(a, b).backward()
    assert len(parts) == 1  # the verdict stands
    eager = srem_kernels.loss(img, txt, backend="cpu").loss
    assert torch.allclose(loss.detach(), eager, rtol=1e-6, atol=0)

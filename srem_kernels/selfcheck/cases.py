"""The self-check's problems: for one fused backend, dtype and shape class, the fixed cases of
its part — its registered kernels and every other variant of them (strategy, GEMM) from
embeddings, the similarity path, a tensor tau, the distributed loss's row ranges — and how each
runs against the fp64 reference (judge.py).

Every case is deterministic: its inputs come from its own seed (no global RNG is touched), in
fp64 on the CPU, rounded to the dtype, then moved to the device; the reference gets the same
rounded values in fp64. The inputs are a noisy correspondence in miniature: a quarter of the
texts belong to another image, so the energies are bimodal, the GMM's posteriors stay ≥ 0.05 from
its threshold and the hardest negatives have no near-tie (tests/test_selfcheck.py checks both),
and an exact output (a clean flag, an fp32 index) may be compared exactly.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import torch

from srem_kernels._validate import SREMParams, check_params
from srem_kernels.backends import fused
from srem_kernels.backends.dense import DenseKernels
from srem_kernels.selfcheck.judge import Outputs, Quantity, TOLERANCES, hardest_index, judge, reference, rel_error
from srem_kernels.selfcheck.report import CaseResult

DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# (B, D) by class. Triton specialises its kernels on whether sizes and strides are multiples of 16
# (and the cuda backend picks WMMA by alignment): "aligned" gets the compiled code a typical
# training shape gets, "odd" the masked edges of an odd one. B > 64 crosses the Triton tiles and
# the cuda panels (64 rows), D the dot's K chunks.
SHAPES = {"aligned": (112, 48), "odd": (97, 33)}
# The inputs' seed of each kind of case, per class: inputs whose GMM and hardest-negative margins
# hold, a different one per case (a stale buffer of an earlier case cannot pass for a result)
SEEDS = {"aligned": {"registered": 7, "variant": 44, "sim": 46, "tensor tau": 32, "rows": 10},
         "odd": {"registered": 26, "variant": 27, "sim": 46, "tensor tau": 57, "rows": 34}}  # fmt: skip
# A backend's variants besides its registered kernels: (the Kernels argument, its values)
VARIANTS = {"triton": ("strategy", ("streaming", "materialised")), "cpu": ("strategy", ("streaming", "materialised")),
            "cuda": ("gemm", ("own", "torch"))}  # fmt: skip
# The loss options of each kind of case (SPEC's defaults otherwise); "vector" and "weights" are
# drawn from the case's seed. Varied so that a wrong constant in one path shows.
OPTIONS = {
    "registered": {"reduction": "none"},  # the defaults: GMM filtration, bias, exp(-sce); an upstream per sample
    "variant": {"tau": 0.07, "margin": "vector", "clean": "weights", "lambda_hard": 0.7, "lambda_cbcl": 1.3},
    "sim": {"bias": False, "select": "none", "sensitivity": "margin", "reduction": "sum"},
    "tensor tau": {"reduction": "none"},
}


ROWS_LABEL = "row ranges (distributed loss)"


@dataclass(frozen=True)
class Case:
    kind: str  # "embeddings", "sim", "tensor tau", "rows"
    label: str
    seed: int
    options: dict = field(default_factory=dict)
    kernels: object = None  # fresh Kernels of a variant; None: the registered run


def pairs(B: int, D: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised fp64 embeddings on the CPU: row i of both shares a latent, except a quarter of
    the texts, which belong to another image."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(B, D, generator=g, dtype=torch.float64)
    img = latent + 0.5 * torch.randn(B, D, generator=g, dtype=torch.float64)
    txt = latent + 0.5 * torch.randn(B, D, generator=g, dtype=torch.float64)
    swap = torch.randperm(B, generator=g)[: B // 4]
    txt[swap] = txt[swap.roll(1)].clone()
    return torch.nn.functional.normalize(img, dim=1), torch.nn.functional.normalize(txt, dim=1)


def tol_key(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """SPEC's tolerance class: fp32 dots follow torch's float32 matmul precision on CUDA and in
    Triton (TF32 below "highest"); the cpu backend's are IEEE."""
    name = DTYPES[dtype]
    tf32_dots = device.type == "cuda" or backend == "triton"
    return "tf32" if name == "fp32" and tf32_dots and torch.get_float32_matmul_precision() != "highest" else name


@functools.cache
def variant_in_use(backend: str, kernels, B: int, D: int, dtype: torch.dtype, device: torch.device) -> str | None:
    attr = VARIANTS.get(backend, (None,))[0]
    if attr == "strategy":
        return kernels.strategy_for(B, D, dtype, device)
    if attr == "gemm":
        return kernels.gemm_for_call()
    return None


PATHS = ("embeddings", "sim", "rows")  # what a call runs: (img, txt), sim, the distributed loss's row ranges


def plan(backend: str, run, device: torch.device, dtype: torch.dtype, shape: str, path: str) -> list[Case]:
    """The cases of a backend's part for one dtype, shape class and path, most telling first:
    "embeddings" its registered kernels, each other variant, a tensor tau; "sim" the similarity
    path; "rows" the row ranges (kernels that have them)."""
    B, D = SHAPES[shape]
    seed = SEEDS[shape]
    kernels = getattr(run, "kernels", None)
    if path == "sim":
        return [Case("sim", "sim", seed["sim"], OPTIONS["sim"])]
    if path == "rows":
        return [Case("rows", ROWS_LABEL, seed["rows"])] if getattr(kernels, "supports_rows", False) else []
    used = variant_in_use(backend, kernels, B, D, dtype, device) if kernels is not None else None
    cases = [Case("embeddings", f"img/txt, {used} (registered)" if used else "img/txt", seed["registered"],
                  OPTIONS["registered"])]  # fmt: skip
    if used is not None:
        attr, values = VARIANTS[backend]
        cases += [Case("embeddings", f"img/txt, {v} (fresh kernels)", seed["variant"], OPTIONS["variant"],
                       type(kernels)(**{attr: v})) for v in values if v != used]  # fmt: skip
    cases.append(Case("tensor tau", "img/txt, tensor tau (dL/dtau)", seed["tensor tau"], OPTIONS["tensor tau"]))
    return cases


def _options(case: Case, B: int, device) -> dict:
    """SPEC's defaults with the case's options; a "vector" margin and "weights" clean (fp32, on
    the device) drawn from its seed."""
    g = torch.Generator().manual_seed(case.seed + 1)
    out = SREMParams().as_kwargs() | case.options
    if isinstance(out["margin"], str):
        out["margin"] = (0.1 + 0.2 * torch.rand(B, generator=g)).to(device)
    if isinstance(out["clean"], str):
        out["clean"] = torch.rand(B, generator=g).to(device)
    return out


def _ref_params(params: SREMParams) -> dict:
    return {k: (v.detach().double().cpu() if isinstance(v, torch.Tensor) else v) for k, v in params.as_kwargs().items()}


def _run_loss(case: Case, backend_run, B, D, dtype, device, key) -> list[Quantity]:
    """A loss case (embeddings, sim, tensor tau): the backend's run and its backward against the reference."""
    from_sim = case.kind == "sim"
    img64, txt64 = (t.to(dtype).double() for t in pairs(B, D, case.seed))  # the rounded values, in fp64
    opts = _options(case, B, device)
    tensor_tau = case.kind == "tensor tau"
    tau = torch.tensor(opts["tau"], dtype=torch.float32, device=device, requires_grad=True) if tensor_tau else None
    params = check_params(B, device, **(opts | ({"tau": tau} if tensor_tau else {})))
    sim64 = (img64 @ txt64.T).to(dtype).double() if from_sim else None
    shape = () if params.reduction != "none" else (B,)
    g = torch.randn(shape, generator=torch.Generator().manual_seed(case.seed + 2), dtype=torch.float64)
    ref, S, dS = reference(img64, txt64, sim64, _ref_params(params) | {"tau": opts["tau"]}, g, tensor_tau=tensor_tau)
    if from_sim:
        leaves = [sim64.to(device=device, dtype=dtype).requires_grad_()]
        loss, per_sample, stats = backend_run(None, None, leaves[0], params)
    else:
        leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in (img64, txt64)]
        loss, per_sample, stats = backend_run(leaves[0], leaves[1], None, params)
    (loss * g.to(device=loss.device, dtype=loss.dtype)).sum().backward()
    names = ("d sim",) if from_sim else ("d img", "d txt")
    grads = dict(zip(names, (t.grad for t in leaves))) | ({"d tau": tau.grad} if tensor_tau else {})
    out = Outputs(loss, per_sample, stats, grads)
    return judge(out, ref, tol_key=key, S=S, dS=dS, inputs={"img": img64, "txt": txt64}, dtype=dtype)


def _run_rows(case: Case, kernels, B, D, dtype, device, key) -> list[Quantity]:
    """The row-range kernels of the distributed loss, called per range as two ranks would (no
    collective: both ranges here), against the fused contract executed densely in fp64."""
    tol, gtol = TOLERANCES[key]
    img64, txt64 = (t.to(dtype).double() for t in pairs(B, D, case.seed))
    img, txt = img64.to(device=device, dtype=dtype), txt64.to(device=device, dtype=dtype)
    tau, eps, bounds = 0.05, 1e-10, ((0, B // 3), (B // 3, B))
    g = torch.Generator().manual_seed(case.seed + 2)
    up = {"g_cbcl": torch.randn(B, generator=g, dtype=torch.float64),
          "k_r": torch.rand(B, generator=g, dtype=torch.float64) * (torch.rand(B, generator=g) > 0.4),
          "k_c": torch.rand(B, generator=g, dtype=torch.float64) * (torch.rand(B, generator=g) > 0.4)}  # fmt: skip
    dense = DenseKernels()
    ref = dense.forward(img64, txt64, None, tau=tau, eps=eps, bias=True)
    d_ref = dense.backward(img64, txt64, None, ref, tau=tau, eps=eps, bias=True, **up)

    def cat(parts):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    first = cat([kernels.pass1_rows(img, txt, lo, hi, tau=tau) for lo, hi in bounds])
    got = first | cat([kernels.pass2_rows(img, txt, lo, hi, first, tau=tau, eps=eps, bias=True) for lo, hi in bounds])
    acc = got["lse_r"].dtype
    grads = [kernels.backward_rows(img, txt, lo, hi, got, tau=tau, eps=eps, bias=True,
                                   **{k: v.to(device, acc) for k, v in up.items()}) for lo, hi in bounds]  # fmt: skip
    S = img64 @ txt64.T
    q = [hardest_index(k, got[k], ref, S, key) if k.endswith("_index") else Quantity(k, rel_error(got[k], ref[k]), tol)
         for k in fused.CONTRACT_KEYS]  # fmt: skip
    for name, i in (("d img", 0), ("d txt", 1)):
        o = torch.cat([gr[i] for gr in grads])
        q.append(Quantity(name, rel_error(o, d_ref[i]), gtol) if o.dtype == dtype else
                 Quantity(name, float("inf"), gtol, note=f"dtype {o.dtype}, the inputs' is {dtype}"))  # fmt: skip
    return q


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # an asynchronous kernel error belongs to this case


def run_case(case: Case, backend: str, run, device: torch.device, dtype: torch.dtype, shape: str) -> CaseResult:
    B, D = SHAPES[shape]
    key = tol_key(backend, device, dtype)
    t0 = time.perf_counter()
    quantities, error = [], ""
    try:
        if case.kind == "rows":
            quantities = _run_rows(case, run.kernels, B, D, dtype, device, key)
        else:
            backend_run = run if case.kernels is None else fused.FusedRun(case.kernels)
            quantities = _run_loss(case, backend_run, B, D, dtype, device, key)
        _synchronize(device)
    except Exception as err:  # noqa: BLE001 - a kernel that raises (or crashes the device) is a failing kernel
        error = f"{type(err).__name__}: {err}".strip()[:500]
    return CaseResult(backend, device.type, DTYPES[dtype], key, case.label, B, None if case.kind == "sim" else D,
                      tuple(quantities), time.perf_counter() - t0, error)  # fmt: skip


def run_part(backend: str, run, device: torch.device, dtype: torch.dtype, shape: str, path: str, *,
             fail_fast: bool) -> list[CaseResult]:  # fmt: skip
    """The backend's part for one dtype, shape class and path: every case in order (up to the
    first failure with fail_fast)."""
    results = []
    for case in plan(backend, run, device, dtype, shape, path):
        results.append(run_case(case, backend, run, device, dtype, shape))
        if fail_fast and not results[-1].passed:
            break
    return results

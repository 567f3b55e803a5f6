"""srem_kernels.loss(..., group=...) on real process groups: 2 and 3 CPU processes over gloo on
loopback, against the fp64 reference on the concatenated batch (loss, every statistic of each
rank's rows, both gradients), unequal local sizes, bad inputs on one rank (every rank raises,
none hangs), and DistributedDataParallel's parameter gradients against one process.

One spawn per group size runs every case (processes cost seconds to start); the tests then check
what each rank returned.
"""

from __future__ import annotations

import functools

import pytest
import torch

import python_ref as R
from tests.distributed_worker import run_ranks, values
from tests.helpers import TOLERANCES, assert_rel_close, embeddings

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")

DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16}
# name -> (backend, dtype, sizes per rank for 2 and 3 ranks, D, options)
CASES = {
    "cpu-default": ("cpu", "fp32", {2: (9, 8), 3: (6, 6, 5)}, 33, {}),
    "cpu-unequal-sum": ("cpu", "fp32", {2: (3, 11), 3: (1, 9, 4)}, 16, {"reduction": "sum", "bias": False}),
    "cpu-none-clean-margin": ("cpu", "fp32", {2: (7, 6), 3: (5, 2, 6)}, 8,
                              {"reduction": "none", "clean": "random", "margin": "vector"}),
    "cpu-bf16": ("cpu", "bf16", {2: (8, 8), 3: (6, 5, 5)}, 24, {}),
    "reference-fp64": ("reference", "fp64", {2: (10, 7), 3: (4, 8, 5)}, 12, {"sce_weight": False}),
    "triton-fp32": ("triton", "fp32", {2: (9, 8), 3: (6, 6, 5)}, 20, {"select": "none", "lambda_hard": 0.5}),
    # sensitivity modes that rank or cluster the global batch's sce, and the per-sample margin
    "cpu-sce-rank": ("cpu", "fp32", {2: (9, 8), 3: (6, 6, 5)}, 16, {"sensitivity": "rank"}),
    "reference-sce-clean": ("reference", "fp64", {2: (10, 7), 3: (4, 8, 5)}, 12, {"sensitivity": "clean"}),
    "cpu-sce-margin": ("cpu", "fp32", {2: (7, 6), 3: (5, 2, 6)}, 8, {"sensitivity": "margin", "margin": "vector"}),
}  # fmt: skip
TOL = {"fp32": TOLERANCES["fp32"], "bf16": TOLERANCES["bf16"], "fp64": (1e-11, 1e-10)}


def _global_inputs(name, world):
    backend, dt, sizes, D, opts = CASES[name]
    sizes = sizes[world]
    B = sum(sizes)
    img, txt = embeddings(B, D, seed=B * 31 + D, noise=0.7, dtype=DTYPES[dt])
    g = torch.Generator().manual_seed(B + D)
    kw = dict(opts)
    if kw.get("clean") == "random":
        kw["clean"] = torch.rand(B, generator=g, dtype=torch.float64)
    if kw.get("margin") == "vector":
        kw["margin"] = 0.1 + 0.2 * torch.rand(B, generator=g, dtype=torch.float64)
    upstream = torch.randn(B, generator=g, dtype=torch.float64)  # for reduction="none"
    return backend, sizes, img, txt, kw, upstream


def _local(kw, lo, hi, dtype):
    return {k: (v[lo:hi].to(torch.float32) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


def _call(backend):
    """srem_kernels.loss, except for triton: the registry gives it CUDA tensors only, so its
    kernels run on CPU tensors under the interpreter through distributed.loss's test hook."""
    import srem_kernels
    from srem_kernels import distributed
    from srem_kernels.result import SREMResult, SREMStats

    if backend != "triton":
        return srem_kernels.loss
    from srem_kernels.backends.triton.kernels import TritonKernels

    def call(img, txt, **kw):
        kw = {"tau": 0.05, "margin": 0.2, "lambda_hard": 1.0, "lambda_cbcl": 1.0, "bias": True, "sce_weight": True,
              "sensitivity": "weight", "clean": None, "select": "gmm", "eps": 1e-10, "reduction": "mean", "check_finite": True,
              "stats_only": False} | kw  # fmt: skip
        name, total, per_sample, stats = distributed.loss(img, txt, kernels=TritonKernels(), **kw)
        return SREMResult(total, per_sample.detach(), SREMStats(**stats), name)

    return call


def _rank_cases(rank, world):
    """Every case on this rank: its rows' loss, per_sample, statistics and gradients."""
    import torch.distributed as dist

    from srem_kernels import _alloc

    _alloc.POISON = True
    out = {}
    for name in CASES:
        backend, sizes, img, txt, kw, upstream = _global_inputs(name, world)
        lo = sum(sizes[:rank])
        hi = lo + sizes[rank]
        a, b = img[lo:hi].clone().requires_grad_(), txt[lo:hi].clone().requires_grad_()
        call = _call(backend)
        res = call(a, b, backend=backend, group=dist.group.WORLD, **_local(kw, lo, hi, img.dtype))
        if res.loss.dim() == 0:
            res.loss.backward()
        else:
            (res.loss * upstream[lo:hi].to(res.loss.dtype)).sum().backward()
        stats_only = call(a, b, backend=backend, group=dist.group.WORLD, stats_only=True, **_local(kw, lo, hi, img.dtype))
        out[name] = {
            "backend": res.backend, "loss": res.loss.detach(), "per_sample": res.per_sample,
            "stats": res.stats.as_dict(), "d_img": a.grad, "d_txt": b.grad,
            "stats_only_loss": stats_only.loss, "stats_only_energy": stats_only.stats.energy,
        }  # fmt: skip
    return out


@functools.cache
def _results(world):
    return values(run_ranks(_rank_cases, world, timeout=240))


def _reference(name, world):
    backend, sizes, img, txt, kw, upstream = _global_inputs(name, world)
    x, y = img.double().requires_grad_(), txt.double().requires_grad_()
    loss, per_sample, stats = R.srem(x, y, **kw)
    (loss if loss.dim() == 0 else loss * upstream).sum().backward()
    return sizes, loss.detach(), per_sample.detach(), stats, x.grad, y.grad


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("name", CASES)
def test_global_batch_matches_one_process(name, world):
    """The ranks' rows, concatenated in rank order, are the outputs of one call on the global
    batch: SPEC's relative error is taken over those global vectors (a rank's few rows alone can
    have a norm too small for it)."""
    ranks = [r[name] for r in _results(world)]
    sizes, loss, per_sample, stats, d_img, d_txt = _reference(name, world)
    tol, gtol = TOL[CASES[name][1]]
    for rank, got in enumerate(ranks):
        assert got["backend"] == CASES[name][0]
        assert got["per_sample"].shape == (sizes[rank],) and got["d_img"].shape[0] == sizes[rank]
        if loss.dim() == 0:
            assert_rel_close(got["loss"], loss, tol, f"rank {rank} of {world}: loss")
            assert_rel_close(got["stats_only_loss"], loss, tol, f"rank {rank} of {world}: stats_only loss")

    def cat(key, sub=None):
        return torch.cat([(r[key] if sub is None else r[key][sub]) for r in ranks])

    if loss.dim() == 1:
        assert_rel_close(cat("loss"), loss, tol, "loss (none)")
    assert_rel_close(cat("per_sample"), per_sample, tol, "per_sample")
    assert_rel_close(cat("stats_only_energy"), stats["energy"], tol, "stats_only energy")
    for k in R.STATISTICS:
        o, r = cat("stats", k), stats[k]
        if k == "clean" or (k.endswith("_index") and CASES[name][1] != "bf16"):
            assert torch.equal(o, r.to(o.dtype)), f"{k}\n{o}\n{r}"
        elif k.endswith("_index"):  # 16-bit: near-ties may round either way; the index must attain the maximum
            _, _, img, txt, _, _ = _global_inputs(name, world)
            S = img.double() @ txt.double().T
            M = S if k == "hard_i2t_index" else S.T
            assert_rel_close(M.gather(1, o[:, None]).squeeze(1), stats[k.removesuffix("_index")], tol, k)
        else:
            assert_rel_close(o, r, tol, k)
    assert_rel_close(cat("d_img"), d_img, gtol, "d img")
    assert_rel_close(cat("d_txt"), d_txt, gtol, "d txt")


def test_every_rank_has_the_same_global_loss():
    for name in CASES:
        losses = [r[name]["loss"] for r in _results(3)]
        if losses[0].dim() == 0:
            assert all(torch.equal(x, losses[0]) for x in losses), name


# ---------------------------------------------------------------- bad inputs: every rank raises, none hangs


def _bad(rank, img, txt, kw):
    """Per case: what rank `rank` passes (img, txt, options) when one rank's inputs are wrong."""
    return {
        "one rank's txt has another D": (img, txt[:, :-1] if rank == 1 else txt, kw),
        "D differs between ranks": (img[:, : 8 - rank], txt[:, : 8 - rank], kw),
        "tau differs between ranks": (img, txt, kw | {"tau": 0.05 + 0.01 * rank}),
        "a rank without rows": (img[:0] if rank == 1 else img, txt[:0] if rank == 1 else txt, kw),
        "NaN on one rank": (img.index_fill(0, torch.tensor([0]), float("nan")) if rank == 0 else img, txt, kw),
        "grad on one rank only": (img.detach().requires_grad_(rank == 0), txt.detach(), kw),
        "clean on one rank only": (img, txt, kw | ({"clean": torch.ones(img.shape[0])} if rank == 1 else {})),
        "clean out of range on one rank": (img, txt, kw | {"clean": torch.full((img.shape[0],), 1.5 if rank == 1 else 1.0)}),
        "sensitivity differs between ranks": (img, txt, kw | {"sensitivity": ("weight", "rank")[rank]}),
    }


def _rank_bad_inputs(rank, world):
    import torch.distributed as dist

    import srem_kernels

    img, txt = embeddings(10, 8, seed=5 + rank, noise=0.7, dtype=torch.float32)
    out = {}
    for case, (a, b, kw) in _bad(rank, img, txt, {}).items():
        try:
            srem_kernels.loss(a, b, group=dist.group.WORLD, **kw)
            out[case] = ("returned", "")
        except Exception as err:  # noqa: BLE001
            out[case] = (type(err).__name__, str(err))
    # the group is still in step: a good call afterwards works
    out["after"] = float(srem_kernels.loss(img, txt, group=dist.group.WORLD).loss)
    return out


BAD = {  # case: (rank 0's error, rank 1's error), as (type, a phrase of the message)
    "one rank's txt has another D": (("RuntimeError", "rank(s) [1] of the group rejected"), ("ValueError", "same embedding size D")),
    "D differs between ranks": (("ValueError", "D (the embedding size) must be the same on every rank"),) * 2,
    "tau differs between ranks": (("ValueError", "tau must be the same on every rank"),) * 2,
    "a rank without rows": (("RuntimeError", "rank(s) [1]"), ("ValueError", "at least 1 pair(s) on every rank")),
    "NaN on one rank": (("ValueError", "img contains NaN"), ("RuntimeError", "rank(s) [0]")),
    "grad on one rank only": (("ValueError", "whether img/txt (or tau) require grad must be the same"),) * 2,
    "clean on one rank only": (("ValueError", "clean (given on every rank or on none)"),) * 2,
    "clean out of range on one rank": (("RuntimeError", "rank(s) [1]"), ("ValueError", r"clean weights must lie in [0, 1]")),
    "sensitivity differs between ranks": (("ValueError", "sensitivity must be the same on every rank"),) * 2,
}  # fmt: skip


@functools.cache
def _bad_results():
    return values(run_ranks(_rank_bad_inputs, 2, timeout=120, group_timeout=20))


@pytest.mark.parametrize("case", BAD)
def test_bad_input_on_one_rank_raises_on_every_rank(case):
    for rank, got in enumerate(r[case] for r in _bad_results()):
        kind, phrase = BAD[case][rank]
        assert got[0] == kind and phrase in got[1], f"rank {rank}: {got}"


def test_group_still_works_after_rejected_calls():
    after = [r["after"] for r in _bad_results()]
    assert after[0] == after[1] and after[0] > 0


def test_group_needs_an_initialised_process_group():
    import srem_kernels

    img, txt = embeddings(4, 3, seed=0, dtype=torch.float32)
    if torch.distributed.is_initialized():
        pytest.skip("a process group is initialised in this process")
    with pytest.raises(RuntimeError, match="needs an initialised torch.distributed process group"):
        srem_kernels.loss(img, txt, group=object())


# ---------------------------------------------------------------- DistributedDataParallel


class _Encoders(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.img = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
        self.txt = torch.nn.Linear(5, 8)

    def forward(self, a, b):
        n = torch.nn.functional.normalize
        return n(self.img(a), dim=1), n(self.txt(b), dim=1)


def _ddp_data():
    g = torch.Generator().manual_seed(7)
    return torch.randn(21, 6, generator=g), torch.randn(21, 5, generator=g), (12, 9)


def _rank_ddp(rank, world):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import srem_kernels

    a, b, sizes = _ddp_data()
    lo = sum(sizes[:rank])
    hi = lo + sizes[rank]
    model = DDP(_Encoders())
    loss_fn = srem_kernels.SREMLoss(group=dist.group.WORLD)
    out = loss_fn(*model(a[lo:hi], b[lo:hi]))
    (out.loss * dist.get_world_size()).backward()  # DDP averages over the ranks (docs/distributed.md)
    return float(out.loss), {k: p.grad for k, p in model.module.named_parameters()}


def test_ddp_parameter_gradients_equal_one_process():
    import srem_kernels

    ranks = values(run_ranks(_rank_ddp, 2, timeout=120))
    a, b, _ = _ddp_data()
    model = _Encoders()
    out = srem_kernels.loss(*model(a, b))
    out.loss.backward()
    for rank, (loss, grads) in enumerate(ranks):
        assert_rel_close(torch.tensor(loss), out.loss, TOLERANCES["fp32"][0], f"rank {rank}: loss")
        for k, p in model.named_parameters():
            assert_rel_close(grads[k], p.grad, TOLERANCES["fp32"][1], f"rank {rank}: grad of {k}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_nccl_group_of_one_matches_plain_call(backend):
    """The NCCL path (CUDA tensors, collectives on the device) in a group of one: the same as the
    plain call up to the row-range kernels' rounding."""
    import torch.distributed as dist

    import srem_kernels

    if dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    if not srem_kernels.backends()[backend].available:
        pytest.skip(f"{backend}: {srem_kernels.backends()[backend].reason}")
    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1)
    try:
        img, txt = embeddings(300, 64, seed=1, noise=0.7, dtype=torch.bfloat16, device="cuda")
        grads = []
        for group in (None, dist.group.WORLD):
            a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
            out = srem_kernels.loss(a, b, backend=backend, group=group)
            out.loss.backward()
            grads.append((out.loss.detach(), out.stats.energy, a.grad, b.grad))
        for name, x, y in zip(("loss", "energy", "d img", "d txt"), *grads):
            assert_rel_close(x, y, TOLERANCES["bf16"][0], name)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- a learnable temperature

TAU_BACKENDS = ("cpu", "reference", "triton")


def _tau_inputs():
    img, txt = embeddings(19, 12, seed=19, noise=0.7, dtype=torch.float32)
    return img, txt, (11, 8), 0.07


def _rank_tau(rank, world):
    """Per backend: the global loss, this rank's embedding gradients and its share of tau's
    gradient; then DDP on encoders with CLIP's learnable logit_scale."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import srem_kernels

    img, txt, sizes, tau0 = _tau_inputs()
    lo = sum(sizes[:rank])
    hi = lo + sizes[rank]
    out = {}
    for backend in TAU_BACKENDS:
        a, b = img[lo:hi].clone().requires_grad_(), txt[lo:hi].clone().requires_grad_()
        tau = torch.tensor(tau0, requires_grad=True)
        res = _call(backend)(a, b, tau=tau, backend=backend, group=dist.group.WORLD)
        res.loss.backward()
        out[backend] = (res.loss.detach(), a.grad, b.grad, tau.grad)
    x, y, ddp_sizes = _ddp_data()
    lo = sum(ddp_sizes[:rank])
    hi = lo + ddp_sizes[rank]
    model = DDP(_ClipEncoders())
    i, t, scale = model(x[lo:hi], y[lo:hi])
    loss = srem_kernels.loss(i, t, tau=1 / scale, group=dist.group.WORLD).loss
    (loss * dist.get_world_size()).backward()  # DDP averages over the ranks (docs/distributed.md)
    out["ddp"] = (float(loss), {k: p.grad for k, p in model.module.named_parameters()})
    return out


class _ClipEncoders(_Encoders):
    """_Encoders with CLIP's temperature: logit_scale = log(1/0.07), scale = exp(logit_scale)."""

    def __init__(self):
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(1 / 0.07).log())

    def forward(self, a, b):
        return (*super().forward(a, b), self.logit_scale.exp())


@functools.cache
def _tau_results():
    return values(run_ranks(_rank_tau, 2, timeout=180))


@pytest.mark.parametrize("backend", TAU_BACKENDS)
def test_tau_gradient_over_ranks_equals_one_process(backend):
    """Loss and embedding gradients as one process on the whole batch; each rank's tau gradient is
    its rows' share, and the shares sum to one process's (≤ 1e-5)."""
    img, txt, sizes, tau0 = _tau_inputs()
    a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
    tau = torch.tensor(tau0, requires_grad=True)
    import srem_kernels

    one = srem_kernels.loss(a, b, tau=tau, backend=backend).loss  # triton: the interpreter's, named
    one.backward()
    ranks = [r[backend] for r in _tau_results()]
    for rank, (loss, *_rest) in enumerate(ranks):
        assert_rel_close(loss, one.detach(), 1e-5, f"rank {rank}: loss")
    assert_rel_close(torch.cat([r[1] for r in ranks]), a.grad, 1e-5, "d img")
    assert_rel_close(torch.cat([r[2] for r in ranks]), b.grad, 1e-5, "d txt")
    shares = torch.stack([r[3] for r in ranks])
    assert (shares != 0).all()  # each rank holds a part, not the whole
    assert_rel_close(shares.sum(), tau.grad, 1e-5, "d tau (summed over ranks)")


def test_ddp_learns_the_temperature_as_one_process():
    """DDP with a learnable logit_scale (tau = 1 / exp(logit_scale)): every parameter's gradient,
    the temperature's included, is one process's on the concatenated batch."""
    import srem_kernels

    x, y, _ = _ddp_data()
    model = _ClipEncoders()
    i, t, scale = model(x, y)
    out = srem_kernels.loss(i, t, tau=1 / scale)
    out.loss.backward()
    assert model.logit_scale.grad.item() != 0
    for rank, (loss, grads) in enumerate(r["ddp"] for r in _tau_results()):
        assert_rel_close(torch.tensor(loss), out.loss, 1e-5, f"rank {rank}: loss")
        for k, p in model.named_parameters():
            assert_rel_close(grads[k], p.grad, 1e-5, f"rank {rank}: grad of {k}")

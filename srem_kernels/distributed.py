"""The SREM loss of one global batch split across the ranks of a torch.distributed group.

Rank r passes its own rows (B_r pairs); the global batch is their concatenation in rank order
(B = sum B_r; sizes may differ). Every rank computes the statistics and the gradient of its own
samples only — rows lo..hi-1 of S for their i2t problems and columns lo..hi-1 for their t2i
problems, Br×B each, with its backend's row-range kernels (fused.py) — so no rank holds the B×B
matrix or the whole batch's gradient. What crosses the group, per call:

  forward   1. the shapes, dtypes and options of every rank (a few numbers): a rank whose inputs
               are bad makes every rank raise here, before any other collective, instead of hanging
            2. the embeddings: all-gather of img and txt (2·B·D values)
            3. pass 1's per-sample vectors (lse, split forms, hardest negatives: ~12 per sample):
               the column side of the coupled terms and the GMM over the global batch's energies
            4. pass 2's per-sample vectors (A, A_rest, at, L_i: ~8 per sample); before it, with
               sensitivity="clean" or "rank" only, every sample's sce (they rank or cluster the
               global batch's)
  backward  5. the upstream gradients g, k_r, k_c (3 per sample)

Memory per rank: the gathered embeddings (2·B·D, kept for the backward), O(B) vectors, and the
backend's work space for Br×B tiles (panels, or none for streaming kernels).

The filtration runs on every rank over the same gathered energies, so every rank gets the same
clean flags. `.loss` ("mean"/"sum") is the global loss on every rank, reduced from the gathered
L_i in rank order. Its gradient for the local embeddings is d(global loss)/d(local embeddings):
the rows of one process's gradient on the concatenated batch. DistributedDataParallel averages
parameter gradients over the ranks, so backward `loss * world_size` there (docs/distributed.md).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from python_ref.srem import reduce
from srem_kernels import _amp, _tau, registry, sensitivity
from srem_kernels.backends import fused, glue
from srem_kernels.selfcheck import auto as selfcheck
from srem_kernels._validate import REDUCTIONS, SELECTS, SENSITIVITIES, _flag, check_embeddings, check_params, SREMParams

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# torch ≥ 2.12 renamed it; the GPU image's 2.11 has only the old name
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which rows of the global batch each rank holds."""

    sizes: tuple[int, ...]
    rank: int

    @property
    def B(self) -> int:
        return sum(self.sizes)

    @property
    def lo(self) -> int:
        return sum(self.sizes[: self.rank])

    @property
    def hi(self) -> int:
        return self.lo + self.sizes[self.rank]


# ---------------------------------------------------------------- agreement before any data moves

# What every rank must agree on, as numbers: (name as the error says it, value). A tensor tau's
# value travels as the tensor (agree gathers it on the collective's device: no host read of its own).
def _fields(img, params: SREMParams | None, stats_only, needs_grad) -> list[tuple[str, float | torch.Tensor]]:
    p = params
    margin = p.margin if p is not None and not isinstance(p.margin, torch.Tensor) else float("nan")
    return [
        ("D (the embedding size)", img.shape[1] if p is not None else -1),
        ("dtype", _DTYPES.index(img.dtype) if p is not None else -1),
        ("tau", p.tau if p else 0), ("tau (a float, or a tensor on every rank)", _tau.is_tensor(p.tau) if p else 0),
        ("lambda_hard", p.lambda_hard if p else 0),
        ("lambda_cbcl", p.lambda_cbcl if p else 0), ("eps", p.eps if p else 0),
        ("bias", p.bias if p else 0), ("sce_weight", p.sce_weight if p else 0),
        ("sensitivity", SENSITIVITIES.index(p.sensitivity) if p else 0),
        ("select", SELECTS.index(p.select) if p else 0), ("reduction", REDUCTIONS.index(p.reduction) if p else 0),
        ("margin (a float, or a tensor on every rank)", margin),
        ("clean (given on every rank or on none)", p.clean is not None if p else 0),
        ("stats_only", stats_only), ("whether img/txt (or tau) require grad", needs_grad),
    ]  # fmt: skip


def collective_device(group) -> torch.device:
    """Where small tensors for `group`'s collectives live: the current GPU for NCCL, else CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else torch.device("cpu")


def agree(group, error: Exception | None, n: int, fields: list[tuple[str, float]]) -> Layout:
    """One all-gather of every rank's (ok, B_r, fields): raises on every rank if any rank's inputs
    are bad (that rank its own error) or the ranks disagree; else the layout."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    dev = collective_device(group)
    mine = torch.tensor([error is None, n, *(0.0 if _tau.is_tensor(v) else float(v) for _, v in fields)],
                        dtype=torch.float64).to(dev)  # fmt: skip
    for k, (_, v) in enumerate(fields):
        if _tau.is_tensor(v):  # a tensor tau: its value, copied on its device
            mine[2 + k] = v.detach().to(device=dev, dtype=torch.float64)
    every = torch.empty(world * mine.numel(), dtype=torch.float64, device=dev)
    _all_gather(every, mine, group=group)
    every = every.cpu().view(world, -1)
    if error is not None:
        raise error
    bad = [r for r in range(world) if every[r, 0] == 0]
    if bad:
        raise RuntimeError(f"srem_kernels.loss: rank(s) {bad} of the group rejected their inputs (their error says "
                           "why); every rank stops here, before the loss exchanges any data")  # fmt: skip
    for k, (name, _) in enumerate(fields):
        col = every[:, 2 + k]
        if not all(bool(v == col[0]) or (bool(v.isnan()) and bool(col[0].isnan())) for v in col):
            shown = [_DTYPES[int(v)] for v in col] if name == "dtype" else col.tolist()
            raise ValueError(f"srem_kernels.loss(group=...): {name} must be the same on every rank, got {shown} by rank")
    sizes = tuple(int(v) for v in every[:, 1])
    if sum(sizes) < 2:
        raise ValueError(f"img and txt need a global batch of B ≥ 2 pairs, got B={sum(sizes)} (per rank {list(sizes)})")
    return Layout(sizes, rank)


# ---------------------------------------------------------------- the exchange


def gather_rows(x: torch.Tensor, layout: Layout, group) -> torch.Tensor:
    """Every rank's x (B_r × k, any dtype) concatenated in rank order: B × k. Sent as bytes
    (padded to the largest B_r: all_gather_into_tensor needs equal shares), so every dtype travels
    on gloo and NCCL alike."""
    n, big = x.shape[0], max(layout.sizes)
    raw = x.contiguous().view(torch.uint8)
    if n < big:
        raw = torch.cat([raw, raw.new_zeros(big - n, raw.shape[1])])
    out = raw.new_empty(len(layout.sizes) * big, raw.shape[1])
    _all_gather(out, raw, group=group)
    parts = [out[r * big : r * big + s] for r, s in enumerate(layout.sizes)]
    return torch.cat(parts).view(x.dtype)


def gather_vectors(vectors: dict[str, torch.Tensor], layout: Layout, group) -> dict[str, torch.Tensor]:
    """Per-sample vectors of every rank, concatenated: one collective for all of them."""
    n = layout.sizes[layout.rank]
    cols = [v.contiguous().view(torch.uint8).view(n, v.element_size()) for v in vectors.values()]
    every = gather_rows(torch.cat(cols, dim=1), layout, group)
    out, at = {}, 0
    for name, v in vectors.items():
        w = v.element_size()
        out[name] = every[:, at : at + w].contiguous().view(v.dtype).view(-1)
        at += w
    return out


def gather_embeddings(img, txt, layout: Layout, group):
    """(img, txt) of the global batch, detached, in one collective."""
    both = torch.cat([img.detach().contiguous().view(torch.uint8), txt.detach().contiguous().view(torch.uint8)], dim=1)
    every = gather_rows(both, layout, group)
    w = every.shape[1] // 2
    return every[:, :w].contiguous().view(img.dtype), every[:, w:].contiguous().view(txt.dtype)


# ---------------------------------------------------------------- forward, backward


def _forward(kernels, img, txt, margin, clean, params: SREMParams, layout: Layout, group, stats_only: bool):
    lo, hi, p = layout.lo, layout.hi, params
    x, y = gather_embeddings(img, txt, layout, group)
    p1 = kernels.pass1_rows(x, y, lo, hi, tau=p.tau)
    first = gather_vectors(p1, layout, group)
    p2 = kernels.pass2_rows(x, y, lo, hi, first, tau=p.tau, eps=p.eps, bias=p.bias, stats_only=stats_only)
    impl = fused.glue_impl(kernels, x.device)
    select = None
    if clean is None and p.select == "gmm":  # the GMM over the global batch, the same on every rank
        energy = -_tau.kernel_form(p.tau, x.device) * (first["lse_r"] + first["lse_c"]) / 2  # as the glue forms it
        clean, select = glue.gmm_filtration(energy, impl=impl)[lo:hi], "given"
    # modes that rank or cluster the batch's sce see the global batch's (all ranks take this branch alike)
    batch_sce = gather_vectors({"sce": p2["sce"]}, layout, group)["sce"] if p.sce_mode in sensitivity.BATCH_MODES else None
    # L_i of the local rows; the reduction is over the gathered L_i below
    out = glue.forward(p1 | p2, dataclasses.replace(p, reduction="none"), margin, clean, impl=impl, select=select,
                       batch_sce=batch_sce, lo=lo)  # fmt: skip
    per_sample = out["per_sample"]
    second = gather_vectors(({} if stats_only else p2) | {"per_sample": per_sample}, layout, group)
    total = reduce(second.pop("per_sample"), p.reduction) if p.reduction != "none" else per_sample.clone()
    stats = fused.statistics(p1 | p2 | out)
    return total, per_sample, stats, (x, y, first | second, out["hinge_r"], out["hinge_c"], impl)


class _DistributedSREM(torch.autograd.Function):
    """(loss, per_sample, *statistics) of the local rows; only the loss is differentiable. `tau`
    the call's tensor tau (None for a float tau); its gradient is this rank's share of the global
    loss's (the rows of dS it owns), as the encoders' parameter gradients are: summed over the
    ranks — DistributedDataParallel's all-reduce, with the loss times world_size — it is one
    process's on the concatenated batch."""

    @staticmethod
    def forward(ctx, img, txt, margin, clean, tau, kernels, params: SREMParams, layout: Layout, group):
        ctx.set_materialize_grads(False)  # the statistics get no gradient: no zero-filled ones
        total, per_sample, stats, (x, y, saved, hinge_r, hinge_c, impl) = _forward(
            kernels, img, txt, margin, clean, params, layout, group, stats_only=False
        )
        ctx.kernels, ctx.params, ctx.layout, ctx.group, ctx.names = kernels, params, layout, group, list(saved)
        ctx.impl = impl
        ctx.tau_like = None if tau is None else tau.detach()
        ctx.save_for_backward(x, y, hinge_r, hinge_c, *saved.values())
        outs = tuple(stats[k] for k in STATISTICS_ORDER)
        ctx.mark_non_differentiable(per_sample, *outs)
        return (total, per_sample, *outs)

    @staticmethod
    def backward(ctx, g_total, *_):
        if g_total is None:
            return (None,) * 9
        with _amp.off(g_total.device):
            return _DistributedSREM._backward(ctx, g_total)

    @staticmethod
    def _backward(ctx, g_total):
        x, y, hinge_r, hinge_c, *vectors = ctx.saved_tensors
        p, layout = ctx.params, ctx.layout
        g = g_total.to(hinge_r.dtype)
        if p.reduction == "mean":
            g = g / layout.B  # of the global batch
        g = g.expand(hinge_r.shape)  # a scalar's gradient reaches every local L_i
        mine = glue.upstream(g, hinge_r, hinge_c, reduction="none", lambda_cbcl=p.lambda_cbcl, impl=ctx.impl)
        every = gather_vectors(mine, layout, ctx.group)
        tau_grad = ctx.tau_like is not None and ctx.needs_input_grad[4]
        out = ctx.kernels.backward_rows(x, y, layout.lo, layout.hi, dict(zip(ctx.names, vectors)), tau=p.tau,
                                        eps=p.eps, bias=p.bias, **every, **({"tau_grad": True} if tau_grad else {}))  # fmt: skip
        (d_img, d_txt), d_tau = out if tau_grad else (out, None)
        g_tau = fused.tau_gradient(d_tau, ctx.tau_like) if tau_grad else None
        return d_img, d_txt, None, None, g_tau, None, None, None, None


STATISTICS_ORDER = fused.KERNEL_STATISTICS + fused.GLUE_STATISTICS


def row_kernels(name: str, run):
    kernels = getattr(run, "kernels", None)
    if not getattr(kernels, "supports_rows", False):
        raise ValueError(f"backend={name!r} has no row-range kernels, which the distributed loss (group=...) needs")
    return kernels


def check_group(group):
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("group=... needs an initialised torch.distributed process group (init_process_group)")
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group must be a torch.distributed ProcessGroup (e.g. torch.distributed.group.WORLD), got {type(group).__name__}")
    if dist.get_rank(group) < 0:
        raise ValueError("group: this process is not a member of the group")


def loss(img, txt, *, group, backend, check_finite, stats_only, kernels=None, **options):
    """srem_kernels.loss(..., group=group): see the module docstring. Returns
    (backend name, loss, per_sample, stats dict) of the local rows. `kernels` (tests) bypasses
    the registry: row-range kernels to run, e.g. Triton's on CPU tensors under the interpreter."""
    check_group(group)  # before anything: without a group there is nobody to tell
    error, n, params, name, needs_grad, x = None, 0, None, None, False, img
    try:
        n, _ = check_embeddings(img, txt, min_batch=1)
        params = check_params(n, img.device, **options)
        stats_only = _flag(stats_only, "stats_only")
        if kernels is None:
            name, run = registry.resolve(backend, img.device, img.dtype)
            kernels = row_kernels(name, run)
            # each rank checks its own kernels once, no collective (docs/selfcheck.md); a failure is
            # this rank's error, which the agreement below makes every rank raise
            selfcheck.on_first_use(name, run, img, img.shape[1], rows=True)
        else:
            name = backend
        tau_t = params.tau if _tau.is_tensor(params.tau) else None
        if _flag(check_finite, "check_finite"):  # the local rows' values, as one process checks them
            glue.check_values(img=img, txt=txt, margin=params.margin, clean=params.clean, tau=tau_t,
                              impl=fused.glue_impl(kernels, img.device))
        if dist.get_backend(group) == "nccl" and img.device.type != "cuda":
            raise ValueError(f"img and txt must be CUDA tensors for an NCCL group, got {img.device}")
        wants = img.requires_grad or txt.requires_grad or (tau_t is not None and tau_t.requires_grad)
        needs_grad = not stats_only and torch.is_grad_enabled() and wants
    except (TypeError, ValueError, RuntimeError) as err:
        error, params = err, None
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        x = torch.empty(0, 0)
    layout = agree(group, error, n, _fields(x, params, bool(stats_only) if error is None else 0, needs_grad))
    bare, margin, clean, tau = fused.split_tensors(params)
    if stats_only or not needs_grad:  # no backward: skip A and its exchange (stats do not need them)
        with torch.no_grad(), _amp.off(img.device):
            total, per_sample, stats, _ = _forward(kernels, img, txt, margin, clean, bare, layout, group, True)
        return name, total, per_sample, stats
    with _amp.off(img.device):  # SPEC's precision, not an enclosing autocast region's
        total, per_sample, *outs = _DistributedSREM.apply(img, txt, margin, clean, tau, kernels, bare, layout, group)
    return name, total, per_sample, dict(zip(STATISTICS_ORDER, outs))

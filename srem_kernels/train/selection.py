"""Dataset-level clean-sample selection (SPEC.md's filtration over the whole training set) and
its precision/recall against the ground-truth noise flags."""

from __future__ import annotations

import torch

import srem_kernels
from srem_kernels.backends import glue
from srem_kernels.result import SREMStats
from srem_kernels.train.data import Split
from srem_kernels.train.methods import loss_inputs


def batch_statistics(img=None, txt=None, *, sim=None, tau: float, backend: str, group=None) -> SREMStats:
    """SPEC.md's per-sample statistics of one batch: the forward-only statistics call, from
    embeddings or from a similarity network's B×B `sim`. With a process group, img and txt are this
    rank's rows of the batch and so are the statistics."""
    opts = dict(tau=tau, select="none", backend=backend, check_finite=False, stats_only=True)
    if sim is not None:
        return srem_kernels.loss_from_similarity(sim, **opts).stats
    return srem_kernels.loss(img, txt, **opts, **({} if group is None else {"group": group})).stats


def scoring_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A fixed random partition of the n pairs into batches of batch_size (a last batch of one pair
    joins the one before: the statistics need B >= 2)."""
    order = torch.randperm(n, generator=generator)
    chunks = list(order.split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) < 2:
        last = chunks.pop()
        chunks[-1] = torch.cat([chunks[-1], last])
    return chunks


@torch.no_grad()
def pair_energies(model, split: Split, *, batch_size: int, tau: float, backend: str, seed: int, dist=None) -> torch.Tensor:
    """The energy (SPEC.md) of every training pair, each scored in a batch of batch_size pairs as
    in training, with the model in eval mode.

    Multi-process (`dist` a dist.Dist with a group; batch_size is then the global batch): the
    scoring batches are the single process's, each rank encodes and scores its contiguous slice
    of every one (statistics call with the group: the energies are those of the whole scoring
    batch), and the ranks' energies are merged exactly, so every rank returns the same vector."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    group = None if dist is None else dist.group
    energy = (torch.empty if group is None else torch.zeros)(len(split), dtype=torch.float64)
    for idx in scoring_batches(len(split), batch_size, torch.Generator().manual_seed(seed)):
        by = group
        if group is not None:
            if min(dist.sizes(len(idx))) >= 1:
                idx = dist.local(idx)
            else:  # a last batch of fewer pairs than ranks: every rank scores all of it, rank 0 keeps it
                by = None
        images, captions = split.batch(idx)
        captions = tuple(t.to(device) for t in captions) if isinstance(captions, tuple) else captions.to(device)
        pairs = loss_inputs(model(images.to(device), captions))
        e = batch_statistics(**pairs, tau=tau, backend=backend, group=by).energy.double().cpu()
        if group is None or by is not None or dist.main:
            energy[idx] = e
    model.train(was_training)
    if group is not None:
        from srem_kernels.train.dist import merge_rows

        energy = merge_rows(energy, dist)
    return energy


def select_clean(energy: torch.Tensor) -> torch.Tensor:
    """Clean flags (0/1) of SPEC.md's two-component GMM fitted to the energies of all pairs: the
    loss's own GMM routine (glue.py), in fp64."""
    return glue.gmm_filtration(energy.double())


def selection_metrics(clean: torch.Tensor, noisy: torch.Tensor | None) -> dict[str, float]:
    """Fraction selected; with ground truth, precision (selected pairs that are clean) and recall
    (clean pairs that are selected)."""
    picked = clean.bool()
    out = {"selected": picked.double().mean().item()}
    if noisy is not None:
        true_clean = ~noisy.bool()
        hit = (picked & true_clean).sum().item()
        out["precision"] = hit / max(int(picked.sum()), 1)
        out["recall"] = hit / max(int(true_clean.sum()), 1)
    return out


def hinge_metrics(clean: torch.Tensor, weight: torch.Tensor, noisy: torch.Tensor | None) -> dict[str, float]:
    """What the hinge actually used over an epoch, per pair: `clean` the clean weights c (after
    any sensitivity factor), `weight` c·w. The selection metrics of c > 0.5, the mean hinge weight
    and, with ground truth, `weight_precision`: the share of the total hinge weight on clean pairs."""
    out = selection_metrics(clean > 0.5, noisy)
    out["weight_mean"] = weight.double().mean().item()
    if noisy is not None:
        total = weight.double().sum().item()
        out["weight_precision"] = weight.double()[~noisy.bool()].sum().item() / total if total > 0 else float("nan")
    return out


def separation_auc(energy: torch.Tensor, noisy: torch.Tensor) -> float:
    """Probability that a random noisy pair has a higher energy than a random clean pair (ties
    count one half): how well the energy separates them, whatever the GMM's threshold."""
    noisy = noisy.bool()
    n_noisy, n_clean = int(noisy.sum()), int((~noisy).sum())
    if n_noisy == 0 or n_clean == 0:
        return float("nan")
    order = torch.argsort(energy.double(), stable=True)
    ranks = torch.empty(len(energy), dtype=torch.float64)
    ranks[order] = torch.arange(1, len(energy) + 1, dtype=torch.float64)
    # average ranks over ties
    uniq, inv = torch.unique(energy.double(), return_inverse=True)
    ranks = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, ranks)[inv] / torch.bincount(inv)[inv]
    return ((ranks[noisy].sum() - n_noisy * (n_noisy + 1) / 2) / (n_noisy * n_clean)).item()

"""The training objectives: SREM, its ablations and the baselines, one name each. Every method but
InfoNCE is a special case of SPEC.md's loss and goes through srem_kernels.loss."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

import srem_kernels


@dataclass(frozen=True)
class Method:
    name: str
    options: dict = field(default_factory=dict)  # srem_kernels.loss keyword arguments
    selection: str = "none"  # "dataset": a GMM over the whole training set; "inbatch": SPEC's select="gmm"
    warmup: bool = False  # SREM's warm-up: the complementary term alone for the first epochs
    infonce: bool = False

    def describe(self) -> str:
        if self.infonce:
            return "symmetric InfoNCE"
        return f"srem_kernels.loss({', '.join(f'{k}={v!r}' for k, v in self.options.items())}), selection={self.selection}"


METHODS = {
    "srem": Method("srem", {}, selection="dataset", warmup=True),
    "vsepp": Method("vsepp", {"lambda_cbcl": 0.0, "select": "none", "sce_weight": False}),
    "infonce": Method("infonce", infonce=True),
    "rcl": Method("rcl", {"bias": False, "lambda_hard": 0.0, "select": "none"}),
    "srem-nobias": Method("srem-nobias", {"bias": False}, selection="dataset", warmup=True),
    "srem-nosce": Method("srem-nosce", {"sce_weight": False}, selection="dataset", warmup=True),
    "srem-inbatch": Method("srem-inbatch", {"select": "gmm"}, selection="inbatch", warmup=True),
    # the ablation of docs/ablation_protocol.md: how sce enters (the `sensitivity` option), the hinge's weight
    "srem-sce-margin": Method("srem-sce-margin", {"sensitivity": "margin"}, selection="dataset", warmup=True),
    "srem-sce-clean": Method("srem-sce-clean", {"sensitivity": "clean"}, selection="dataset", warmup=True),
    "srem-sce-rank": Method("srem-sce-rank", {"sensitivity": "rank"}, selection="dataset", warmup=True),
    "srem-nosce-lh0.5": Method("srem-nosce-lh0.5", {"sce_weight": False, "lambda_hard": 0.5}, selection="dataset",
                               warmup=True),
    "srem-nosce-lh2": Method("srem-nosce-lh2", {"sce_weight": False, "lambda_hard": 2.0}, selection="dataset",
                             warmup=True),
    "srem-nohinge": Method("srem-nohinge", {"lambda_hard": 0.0, "select": "none"}),  # CBCL alone: srem's warm-up loss throughout
}


def infonce(sim: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) of a B×B similarity: cross-entropy of the diagonal over rows and
    over columns. Multi-process, `sim` is the global batch's (embeddings from dist.gather_rows):
    every rank computes the same global loss, and its gradient reaches this rank's rows alone
    (open_clip's gather-without-grad), which is d(global loss)/d(local rows) as
    srem_kernels.loss(group=) gives."""
    logits = sim / tau
    target = torch.arange(len(sim), device=sim.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def loss_inputs(out) -> dict:
    """batch_loss's inputs from what a model returns: a dual encoder's (img, txt) embeddings, or a
    similarity network's B×B similarity (sgraf.SimilarityModel)."""
    return {"img": out[0], "txt": out[1]} if isinstance(out, tuple) else {"sim": out}


def batch_loss(method: Method, img=None, txt=None, *, sim=None, tau: float, margin: float, clean: torch.Tensor | None,
               warming_up: bool, backend: str, dist=None, sizes: list[int] | None = None):
    """(loss, SREMResult or None) of one batch: from embeddings `img`, `txt`, or from a similarity
    network's B×B `sim` (srem_kernels.loss_from_similarity; one process). `clean`: dataset-level
    weights of the batch's pairs. Multi-process (`dist` a dist.Dist with a group): img, txt and
    clean are this rank's rows of a global batch whose ranks hold `sizes` rows; the loss is the
    global batch's, its gradient d(global loss)/d(local rows)."""
    group = None if dist is None else dist.group
    if (sim is None) == (img is None or txt is None):
        raise ValueError("batch_loss takes embeddings img and txt, or a similarity sim")
    if sim is not None and group is not None:
        raise ValueError("a similarity network's loss runs in one process (srem_kernels.loss_from_similarity has no group)")
    if method.infonce:
        if sim is None and group is not None:
            from srem_kernels.train.dist import gather_rows

            img, txt = gather_rows(img, dist, sizes), gather_rows(txt, dist, sizes)
        return infonce(img @ txt.T if sim is None else sim, tau), None
    opts = dict(method.options)
    if method.warmup and warming_up:
        opts.update(lambda_hard=0.0, select="none")
        clean = None
    elif method.selection == "dataset":
        opts.pop("select", None)
    else:
        clean = None
    if group is not None:
        opts["group"] = group
    if sim is not None:
        out = srem_kernels.loss_from_similarity(sim, tau=tau, margin=margin, clean=clean, backend=backend, **opts)
    else:
        out = srem_kernels.loss(img, txt, tau=tau, margin=margin, clean=clean, backend=backend, **opts)
    return out.loss, out

"""Retrieval evaluation: R@1/5/10 in both directions and rSum, from a dual encoder's embeddings or
from a similarity network's n_img × n_cap similarity (computed as NCR's evaluation.py does: regions
and words encoded once, the network over every pair in shards, with a progress bar). One ranking
routine serves both (`similarity_ranks`)."""

from __future__ import annotations

from typing import Callable

import torch

from srem_kernels.train.data import Split

KS = (1, 5, 10)
CHUNK = 1024
SHARD = 128  # captions per step of a similarity network's evaluation (one progress-bar step)


@torch.no_grad()
def encode(model, split: Split, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of every image and every caption of `split`, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n_img = len(split.images)
    imgs = [model.encode_images(split.image_batch(torch.arange(i, min(i + batch_size, n_img))).to(device))
            for i in range(0, n_img, batch_size)]
    n_cap = len(split.cap_key)
    caps = []
    for i in range(0, n_cap, batch_size):
        c = split.caption_batch(torch.arange(i, min(i + batch_size, n_cap)))
        c = tuple(t.to(device) for t in c) if isinstance(c, tuple) else c.to(device)
        caps.append(model.encode_captions(c))
    model.train(was_training)
    return torch.cat(imgs).float(), torch.cat(caps).float()


def _ranks(sim: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """Per query row: how many items score strictly higher than its best relevant item (on the
    CPU, whichever device the similarity is on)."""
    best = sim.masked_fill(~relevant.to(sim.device), float("-inf")).max(dim=1, keepdim=True).values
    return (sim > best).sum(dim=1).cpu()


def similarity_ranks(i2t_rows: Callable[[slice], torch.Tensor], t2i_rows: Callable[[slice], torch.Tensor],
                     img_key: torch.Tensor, cap_key: torch.Tensor):
    """(i2t ranks per image, t2i ranks per caption), 0 = a relevant item is first, from the
    similarity read in row blocks: i2t_rows(s) = sim[s] (images s against every caption),
    t2i_rows(s) = sim[:, s].T (captions s against every image)."""
    i2t = torch.cat([_ranks(i2t_rows(slice(i, i + CHUNK)), img_key[i : i + CHUNK, None] == cap_key[None])
                     for i in range(0, len(img_key), CHUNK)])
    t2i = torch.cat([_ranks(t2i_rows(slice(i, i + CHUNK)), cap_key[i : i + CHUNK, None] == img_key[None])
                     for i in range(0, len(cap_key), CHUNK)])
    return i2t, t2i


def ranks(img: torch.Tensor, cap: torch.Tensor, img_key: torch.Tensor, cap_key: torch.Tensor):
    """similarity_ranks of embeddings (the dot product), a block at a time: a 5K×25K similarity
    never sits in memory at once."""
    return similarity_ranks(lambda s: img[s] @ cap.T, lambda s: cap[s] @ img.T, img_key, cap_key)


def matrix_ranks(sim: torch.Tensor, img_key: torch.Tensor, cap_key: torch.Tensor):
    """similarity_ranks of a computed n_img × n_cap similarity (a similarity network's)."""
    return similarity_ranks(lambda s: sim[s], lambda s: sim[:, s].T, img_key, cap_key)


def recall(i2t_ranks: torch.Tensor, t2i_ranks: torch.Tensor) -> dict[str, float]:
    """R@K in percent for both directions, and rSum (their sum)."""
    out = {}
    for name, r in (("i2t", i2t_ranks), ("t2i", t2i_ranks)):
        for k in KS:
            out[f"{name}_r{k}"] = 100.0 * (r < k).double().mean().item()
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in KS)
    return out


@torch.no_grad()
def network_similarity(model, split: Split, *, progress: bool = False, batch_size: int = 512) -> torch.Tensor:
    """The n_img × n_cap similarity of a similarity network (sgraf.SimilarityModel) on `split`, in
    eval mode, as NCR's evaluation computes it: every image's regions and every caption's words
    encoded once, then the network over all images against SHARD captions at a time (captions in
    order of length, so a shard pads little; the network blocks each shard by its `chunk` pairs)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n_img, n_cap = len(split.images), len(split.cap_key)
    regions = torch.cat([model.encode_images(split.image_batch(torch.arange(i, min(i + batch_size, n_img))).to(device))
                         for i in range(0, n_img, batch_size)])
    words, lengths = [], []
    for i in range(0, n_cap, batch_size):
        c = split.caption_batch(torch.arange(i, min(i + batch_size, n_cap)))
        w, n = model.encode_captions(tuple(t.to(device) for t in c) if isinstance(c, tuple) else c.to(device))
        words += [w[k, : int(n[k])] for k in range(len(w))]
        lengths.append(n.cpu())
    lengths = torch.cat(lengths)
    sim = torch.empty(n_img, n_cap)
    shards = torch.argsort(lengths, stable=True).split(SHARD)
    for s in _bar(shards, progress, f"similarity {n_img}x{n_cap}"):
        padded = torch.nn.utils.rnn.pad_sequence([words[k] for k in s.tolist()], batch_first=True)
        sim[:, s] = model.similarity(regions, padded, lengths[s]).float().cpu()
    model.train(was_training)
    return sim


def similarity_matrix(model, split: Split, *, progress: bool = False) -> torch.Tensor:
    """Any model's n_img × n_cap similarity on `split` (what an ensemble averages)."""
    if getattr(model, "pairwise", False):
        return network_similarity(model, split, progress=progress)
    img, cap = encode(model, split)
    return (img @ cap.T).cpu()


def _bar(items, progress: bool, desc: str):
    if not progress:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, leave=False, dynamic_ncols=True, disable=None)  # a terminal only


def evaluate(model, split: Split, folds: int = 1, *, progress: bool = False) -> dict[str, float]:
    """Recall on `split`; with folds > 1 also the mean over that many equal image folds (COCO 5-fold
    1K, each fold's captions being those of its images), reported under the prefix `fold_`. A
    similarity network's similarity is computed once over the whole split (the folds are blocks of
    it), with a progress bar if `progress`."""
    if getattr(model, "pairwise", False):
        return evaluate_similarity(network_similarity(model, split, progress=progress), split, folds)
    img, cap = encode(model, split)
    return _recalls(lambda i, c: ranks(img[i], cap[c], split.img_key[i], split.cap_key[c]), split, folds)


def evaluate_similarity(sim: torch.Tensor, split: Split, folds: int = 1) -> dict[str, float]:
    """evaluate() from a computed n_img × n_cap similarity (a network's, or an ensemble's average)."""
    return _recalls(lambda i, c: matrix_ranks(sim[i][:, c], split.img_key[i], split.cap_key[c]), split, folds)


def _recalls(rank, split: Split, folds: int) -> dict[str, float]:
    """recall of rank(images, captions) (selections of the split's) on the whole split and per fold."""
    everything = slice(None)
    out = recall(*rank(everything, everything))
    if folds > 1:
        per = []
        n = len(split.img_key) // folds
        for f in range(folds):
            in_fold = torch.isin(split.cap_key, split.img_key[f * n : (f + 1) * n])
            per.append(recall(*rank(slice(f * n, (f + 1) * n), in_fold)))
        out.update({f"fold_{k}": sum(p[k] for p in per) / folds for k in per[0]})
    return out


def size_label(n: int) -> str:
    """1000 -> "1K", 5000 -> "5K" (the literature's names of its test sets), else the number."""
    return f"{n // 1000}K" if n and n % 1000 == 0 else str(n)


def format_row(m: dict[str, float]) -> str:
    """The table's line: R@1/5/10 both ways and rSum."""
    return (f"i2t R@1 {m['i2t_r1']:.1f} R@5 {m['i2t_r5']:.1f} R@10 {m['i2t_r10']:.1f} | "
            f"t2i R@1 {m['t2i_r1']:.1f} R@5 {m['t2i_r5']:.1f} R@10 {m['t2i_r10']:.1f} | rSum {m['rsum']:.1f}")

"""Retrieval evaluation: R@1/5/10 in both directions and rSum."""

from __future__ import annotations

import torch

from srem_kernels.train.data import Split

KS = (1, 5, 10)
CHUNK = 1024


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
    """Per query row: how many items score strictly higher than its best relevant item."""
    best = sim.masked_fill(~relevant, float("-inf")).max(dim=1, keepdim=True).values
    return (sim > best).sum(dim=1)


def ranks(img: torch.Tensor, cap: torch.Tensor, img_key: torch.Tensor, cap_key: torch.Tensor):
    """(i2t ranks per image, t2i ranks per caption), 0 = a relevant item is first. Chunked so a
    5K×25K similarity never sits in memory at once."""
    i2t = torch.cat([_ranks(img[i : i + CHUNK] @ cap.T, img_key[i : i + CHUNK, None] == cap_key[None])
                     for i in range(0, len(img), CHUNK)])
    t2i = torch.cat([_ranks(cap[i : i + CHUNK] @ img.T, cap_key[i : i + CHUNK, None] == img_key[None])
                     for i in range(0, len(cap), CHUNK)])
    return i2t, t2i


def recall(i2t_ranks: torch.Tensor, t2i_ranks: torch.Tensor) -> dict[str, float]:
    """R@K in percent for both directions, and rSum (their sum)."""
    out = {}
    for name, r in (("i2t", i2t_ranks), ("t2i", t2i_ranks)):
        for k in KS:
            out[f"{name}_r{k}"] = 100.0 * (r < k).double().mean().item()
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in KS)
    return out


def evaluate(model, split: Split, folds: int = 1) -> dict[str, float]:
    """Recall on `split`; with folds > 1 also the mean over that many equal image folds (COCO 5-fold
    1K, each fold's captions being those of its images), reported under the prefix `fold_`."""
    img, cap = encode(model, split)
    out = recall(*ranks(img, cap, split.img_key, split.cap_key))
    if folds > 1:
        per = []
        n = len(img) // folds
        for f in range(folds):
            keys = split.img_key[f * n : (f + 1) * n]
            in_fold = torch.isin(split.cap_key, keys)
            per.append(recall(*ranks(img[f * n : (f + 1) * n], cap[in_fold], keys, split.cap_key[in_fold])))
        out.update({f"fold_{k}": sum(p[k] for p in per) / folds for k in per[0]})
    return out


def size_label(n: int) -> str:
    """1000 -> "1K", 5000 -> "5K" (the literature's names of its test sets), else the number."""
    return f"{n // 1000}K" if n and n % 1000 == 0 else str(n)


def format_row(m: dict[str, float]) -> str:
    """The table's line: R@1/5/10 both ways and rSum."""
    return (f"i2t R@1 {m['i2t_r1']:.1f} R@5 {m['i2t_r5']:.1f} R@10 {m['i2t_r10']:.1f} | "
            f"t2i R@1 {m['t2i_r1']:.1f} R@5 {m['t2i_r5']:.1f} R@10 {m['t2i_r10']:.1f} | rSum {m['rsum']:.1f}")

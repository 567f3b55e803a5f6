"""What every dataset gives the trainer: three splits of image/caption features with the
caption → image assignment, and the dispatcher from a dataset name to its loader."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

DATASETS = ("synthetic", "synthetic-scenes", "digits", "f30k", "coco", "cc152k")


class DataError(ValueError):
    """A dataset that cannot be loaded: names the path and the layout expected there."""


@dataclass
class Split:
    """One split. `images`: N_img×d features or N_img×R×d region features. `captions`: N_cap×d
    features, or a list of N_cap LongTensors of token ids (then `vocab_size` > 0).
    `cap2img[c]`: the image caption c is paired with for training (noisy in train).
    `img_key`, `cap_key`: relevance for evaluation — caption c is a correct match of image i when
    cap_key[c] == img_key[i] (the instance, or the class for digits).
    `noisy`: ground-truth flags of the training pairs (None when unknown); never used to train."""

    images: torch.Tensor | np.ndarray
    captions: torch.Tensor | list[torch.Tensor]
    cap2img: torch.Tensor
    img_key: torch.Tensor
    cap_key: torch.Tensor
    noisy: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.cap2img)

    @property
    def tokenized(self) -> bool:
        return isinstance(self.captions, list)

    def image_batch(self, img_idx: torch.Tensor) -> torch.Tensor:
        """Images by index; memory-mapped numpy features (the precomputed layout) are read here."""
        if isinstance(self.images, torch.Tensor):
            return self.images[img_idx]
        return torch.from_numpy(np.ascontiguousarray(self.images[img_idx.numpy()], dtype=np.float32))

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        """The images and captions of pairs `idx` (tokens padded with 0, with their lengths)."""
        return self.image_batch(self.cap2img[idx]), self.caption_batch(idx)

    def caption_batch(self, idx: torch.Tensor):
        """Captions by index: features, or (token ids padded with 0, lengths)."""
        if not self.tokenized:
            return self.captions[idx]
        caps = [self.captions[i] for i in idx.tolist()]
        return torch.nn.utils.rnn.pad_sequence(caps, batch_first=True), torch.tensor([len(c) for c in caps])


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    vocab_size: int = 0  # > 0: captions are token ids
    eval_folds: int = 1  # COCO: 5-fold 1K besides the full 5K test
    info: dict = field(default_factory=dict)


def load(name: str, *, noise: float, seed: int, data_path: str | None = None, noise_file: str | None = None,
         size: str = "default") -> Dataset:
    """The dataset `name` (one of DATASETS) with NCR noise of rate `noise` on its training split."""
    if name == "synthetic":
        from srem_kernels.train import synthetic

        return synthetic.load(noise=noise, seed=seed, size=size)
    if name == "synthetic-scenes":
        from srem_kernels.train import scenes

        return scenes.load(noise=noise, seed=seed, size=size)
    if name == "digits":
        from srem_kernels.train import digits

        return digits.load(noise=noise, seed=seed)
    if name in ("f30k", "coco", "cc152k"):
        from srem_kernels.train import precomp

        if data_path is None:
            raise DataError(f"--data-path is required for {name}: the folder that holds {name}_precomp/")
        return precomp.load(data_path, name, noise=noise, seed=seed, noise_file=noise_file)
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")

"""What every dataset gives the trainer: three splits of image/caption features with the
caption → image assignment, and the registry of the --dataset choices (name → loader, defaults)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np
import torch

# TrainConfig's per-dataset defaults (None there means "from here"). The NCR family's: lr 2e-4,
# 40 epochs, and SGRAF's dimensions for --model sgr|saf (sim_dim, word_dim, sgr_steps); the small
# generated ones make a run take minutes on a CPU.
SMALL = dict(epochs=12, warmup_epochs=2, lr=1e-3, lr_update=8, embed_dim=256, sim_dim=64, word_dim=64, sgr_steps=3)
PAPER = dict(epochs=40, warmup_epochs=5, lr=2e-4, lr_update=20, embed_dim=1024, sim_dim=256, word_dim=300, sgr_steps=3)


@dataclass(frozen=True)
class Entry:
    module: str  # srem_kernels.train.<module>: its load() returns the Dataset
    defaults: dict  # TrainConfig's defaults for the dataset
    files: bool = False  # read from --data-path: load(data_path, name, *, noise, seed, noise_file)
    sized: bool = False  # generated at --synthetic-size: load(*, noise, seed, size); neither: load(*, noise, seed)


# The --dataset choices, one line each.
REGISTRY = {
    "synthetic": Entry("synthetic", SMALL, sized=True),
    "synthetic-scenes": Entry("scenes", SMALL, sized=True),
    "digits": Entry("digits", SMALL),
    "f30k": Entry("precomp", PAPER, files=True),
    "coco": Entry("precomp", PAPER, files=True),
    "cc152k": Entry("precomp", PAPER, files=True),
}
DATASETS = tuple(REGISTRY)


class DataError(ValueError):
    """A dataset that cannot be loaded: names the path and the layout expected there."""


def load_npy(path, *, expected: str = "", **kw) -> np.ndarray:
    """np.load of one .npy array (no pickles; `kw`: mmap_mode); anything else, an .npz archive
    too (np.load gives it as an NpzFile), is a DataError naming the file, `expected` appended."""
    try:
        arr = np.load(path, allow_pickle=False, **kw)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path}: not a .npy array ({err}){expected}") from None
    if not isinstance(arr, np.ndarray):
        arr.close()
        raise DataError(f"{path}: an .npz archive, not a .npy array{expected}")
    return arr


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
    """The dataset `name` (one of DATASETS) with noise of rate `noise` on its training split."""
    entry = REGISTRY.get(name)
    if entry is None:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if entry.files and data_path is None:
        raise DataError(f"--data-path is required for {name}: the folder that holds {name}_precomp/")
    loader = importlib.import_module(f"srem_kernels.train.{entry.module}").load
    if entry.files:
        return loader(data_path, name, noise=noise, seed=seed, noise_file=noise_file)
    if noise_file is not None:
        raise DataError(f"--noise-file: {name} draws its noise from the seed; noise files are read for "
                        + ", ".join(n for n, e in REGISTRY.items() if e.files))
    return loader(noise=noise, seed=seed, **({"size": size} if entry.sized else {}))

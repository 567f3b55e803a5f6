"""The standard precomputed layout of the noisy-correspondence literature (NCR, RCL, DECL, L2RM)
for Flickr30K, MS-COCO and CC152K:

    {data_path}/{name}_precomp/{split}_ims.npy     image features, (N_img, R, d) regions or (N_img, d)
    {data_path}/{name}_precomp/{split}_caps.txt    one caption a line; captions k*N_img .. of image k:
                                                   caption c belongs to image c // (N_cap / N_img)
                                                   (5 per image for f30k and coco, 1 for cc152k)
    {data_path}/vocab/{name}_precomp_vocab.json    {"word2idx": {word: id}, ...}, <pad> = 0
    {data_path}/noise_index/{name}_precomp_{noise}.npy   optional: the noisy caption → image index
                                                   of the training split (NCR's noise file)

splits: train, dev, test (coco: testall, the 5K test, if present, evaluated as 5-fold 1K and 5K).
Image features are memory-mapped, so Flickr30K's 8 GB of training regions are read per batch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from srem_kernels.train.data import DataError, Dataset, Split
from srem_kernels.train.noise import shuffle_captions

LAYOUT = ("expected the NCR precomputed layout: {root}/{name}_precomp/{{train,dev,test}}_ims.npy and "
          "_caps.txt, {root}/vocab/{name}_precomp_vocab.json")
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def tokenize(caption: str) -> list[str]:
    """Lower-cased words and punctuation (NCR uses nltk's word_tokenize; this is its plain-regex
    approximation, so a vocabulary built with nltk maps a few contractions to <unk>)."""
    return _TOKEN.findall(caption.lower())


def _need(path: Path, root: Path, name: str) -> Path:
    if not path.is_file():
        raise DataError(f"missing {path}: " + LAYOUT.format(root=root, name=name))
    return path


def load_vocab(root: Path, name: str) -> dict[str, int]:
    path = _need(root / "vocab" / f"{name}_precomp_vocab.json", root, name)
    try:
        word2idx = json.loads(path.read_text())["word2idx"]
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a vocabulary JSON with a 'word2idx' mapping ({err})") from None
    for tok in ("<pad>", "<start>", "<end>", "<unk>"):
        if tok not in word2idx:
            raise DataError(f"{path}: the vocabulary lacks {tok!r}")
    if word2idx["<pad>"] != 0:
        raise DataError(f"{path}: '<pad>' must have index 0, has {word2idx['<pad>']}")
    return word2idx


def encode_caption(caption: str, word2idx: dict[str, int]) -> torch.Tensor:
    unk = word2idx["<unk>"]
    ids = [word2idx["<start>"], *(word2idx.get(w, unk) for w in tokenize(caption)), word2idx["<end>"]]
    return torch.tensor(ids, dtype=torch.long)


def load_split(root: Path, name: str, split: str, word2idx: dict[str, int]) -> Split:
    folder = root / f"{name}_precomp"
    ims_path = _need(folder / f"{split}_ims.npy", root, name)
    caps_path = _need(folder / f"{split}_caps.txt", root, name)
    try:
        images = np.load(ims_path, mmap_mode="r")
    except ValueError as err:
        raise DataError(f"{ims_path}: not a .npy array ({err})") from None
    if images.ndim not in (2, 3) or not np.issubdtype(images.dtype, np.floating):
        raise DataError(f"{ims_path}: expected float features of shape (N_img, R, d) or (N_img, d), "
                        f"got {images.dtype} {images.shape}")
    lines = caps_path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    n_img, n_cap = len(images), len(lines)
    if n_img == 0 or n_cap % n_img:
        raise DataError(f"{caps_path}: {n_cap} captions for {n_img} images in {ims_path}; expected a whole number "
                        "of captions per image (5 for f30k and coco, 1 for cc152k)")
    per = n_cap // n_img
    truth = torch.arange(n_cap) // per
    return Split(images=images, captions=[encode_caption(c, word2idx) for c in lines], cap2img=truth.clone(),
                 img_key=torch.arange(n_img), cap_key=truth)


def load(data_path: str, name: str, *, noise: float, seed: int, noise_file: str | None = None) -> Dataset:
    root = Path(data_path)
    if not (root / f"{name}_precomp").is_dir():
        raise DataError(f"missing folder {root / f'{name}_precomp'}: " + LAYOUT.format(root=root, name=name))
    word2idx = load_vocab(root, name)
    train = load_split(root, name, "train", word2idx)
    val = load_split(root, name, "dev", word2idx)
    test_name = "testall" if name == "coco" and (root / f"{name}_precomp" / "testall_ims.npy").exists() else "test"
    test = load_split(root, name, test_name, word2idx)
    if noise > 0:
        train.cap2img = noise_index(root, name, noise, seed, noise_file, train)
    # CC152K's pairs are harvested and noisy already: no ground truth to measure selection with
    train.noisy = None if name == "cc152k" else train.cap2img != train.cap_key
    folds = 5 if test_name == "testall" else 1
    return Dataset(name, train, val, test, vocab_size=max(word2idx.values()) + 1, eval_folds=folds,
                   info={"test_split": test_name})


def noise_index(root: Path, name: str, noise: float, seed: int, noise_file: str | None, train: Split) -> torch.Tensor:
    """The noisy caption → image index: NCR's noise file when there is one (so runs share the
    paper's noise), else NCR's protocol drawn from `seed`."""
    path = Path(noise_file) if noise_file else root / "noise_index" / f"{name}_precomp_{noise:g}.npy"
    if not path.is_file():
        if noise_file:
            raise DataError(f"missing noise file {path}: expected NCR's noise index, a .npy of {len(train)} image indices")
        return shuffle_captions(train.cap2img, noise, torch.Generator().manual_seed(seed))
    idx = np.load(path)
    if idx.shape != (len(train),) or not np.issubdtype(idx.dtype, np.integer):
        raise DataError(f"{path}: expected NCR's noise index, {len(train)} integer image indices (one per training "
                        f"caption), got {idx.dtype} {idx.shape}")
    if idx.min() < 0 or idx.max() >= len(train.images):
        raise DataError(f"{path}: image indices must be in [0, {len(train.images)})")
    return torch.from_numpy(idx.astype(np.int64))

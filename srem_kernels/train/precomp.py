"""The precomputed layout of the noisy-correspondence literature (NCR, RCL, DECL, BiCro, L2RM) for
Flickr30K, MS-COCO and CC152K, read as their loaders read it:

    {data}/{name}_precomp/{split}_ims.npy     image features, (N_img, R, d) regions or (N_img, d), memory-mapped
    {data}/{name}_precomp/{split}_caps.txt    one caption a line (F30K, COCO), or
    {data}/{name}_precomp/{split}_caps.tsv    image_id<TAB>caption a line (CC152K); see captions.py
                                              caption c belongs to image c // per: per = 5 (f30k, coco), 1 (cc152k)
    {data}/vocab/{name}_precomp_vocab.json    {"word2idx": {word: id}, ...}, <pad> = 0
    noise files (noise.py)                    {data}/{name}_precomp/noise_inx_{rate}.npy (RCL, per image),
                                              {data}/noise_index/{name}_precomp_{rate}.npy (NCR, per caption)

Splits as the literature reports them (NCR's run.py and evaluation.py, RCL's data.py): train;
the first 1000 images of dev (5000 captions for F30K and COCO) for model selection; the test
split: F30K's test (1K), COCO's testall (5K) as 5-fold 1K and 5K, CC152K's test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from srem_kernels.train.captions import encode, load_vocab, read_captions
from srem_kernels.train.data import DataError, Dataset, Split, load_npy
from srem_kernels.train.evaluation import size_label
from srem_kernels.train.noise import assignment

CAPTIONS_PER_IMAGE = {"f30k": 5, "coco": 5, "cc152k": 1}
VAL_IMAGES = 1000  # dev images used for model selection (NCR: 1000 * im_div captions; RCL: 5000)
COCO_FOLDS = 5
LAYOUT = ("expected the NCR/RCL precomputed layout: {root}/{name}_precomp/{{train,dev,test}}_ims.npy and "
          "_caps.txt (or _caps.tsv), {root}/vocab/{name}_precomp_vocab.json")


def _need(path: Path, root: Path, name: str) -> Path:
    if not path.is_file():
        raise DataError(f"missing {path}: " + LAYOUT.format(root=root, name=name))
    return path


def caption_file(root: Path, name: str, split: str) -> Path:
    """{split}_caps.txt or .tsv; where both exist, the one the dataset's codebases read (tsv for CC152K)."""
    folder = root / f"{name}_precomp"
    order = (".tsv", ".txt") if name == "cc152k" else (".txt", ".tsv")
    for suffix in order:
        if (folder / f"{split}_caps{suffix}").is_file():
            return folder / f"{split}_caps{suffix}"
    return _need(folder / f"{split}_caps{order[0]}", root, name)


def load_images(path: Path) -> np.ndarray:
    images = load_npy(path, mmap_mode="r")
    if images.ndim not in (2, 3) or not np.issubdtype(images.dtype, np.floating) or len(images) == 0:
        raise DataError(f"{path}: expected float features of shape (N_img, R, d) or (N_img, d), "
                        f"got {images.dtype} {images.shape}")
    return images


def load_split(root: Path, name: str, split: str, word2idx: dict[str, int], first: int | None = None) -> tuple[Split, dict]:
    """One split, or its `first` images and their captions (the rest checked but not tokenised; the
    images stay memory-mapped), and what was read for it (file names, the file's feature shape,
    token and <unk> counts of the captions kept)."""
    ims_path = _need(root / f"{name}_precomp" / f"{split}_ims.npy", root, name)
    caps_path = caption_file(root, name, split)
    images = load_images(ims_path)
    captions = read_captions(caps_path)
    per, n_img, n_cap = CAPTIONS_PER_IMAGE[name], len(images), len(captions)
    if n_cap != per * n_img:
        raise DataError(f"{caps_path}: {n_cap} captions for {n_img} images in {ims_path}; {name} has {per} per "
                        f"image, so {per * n_img} caption lines")
    meta = {"images": str(ims_path), "captions": str(caps_path), "shape": list(images.shape), "dtype": str(images.dtype)}
    if first is not None:
        n_img = min(first, n_img)
        images, captions = images[:n_img], captions[: per * n_img]
    ids, meta["tokens"], meta["unk"] = encode(captions, word2idx)
    truth = torch.arange(len(ids)) // per
    return Split(images=images, captions=ids, cap2img=truth.clone(), img_key=torch.arange(n_img), cap_key=truth), meta


def load(data_path: str, name: str, *, noise: float, seed: int, noise_file: str | None = None) -> Dataset:
    root = Path(data_path)
    if name not in CAPTIONS_PER_IMAGE:
        raise DataError(f"{name!r} is not a precomputed dataset; one of {', '.join(CAPTIONS_PER_IMAGE)}")
    if not (root / f"{name}_precomp").is_dir():
        raise DataError(f"missing folder {root / f'{name}_precomp'}: " + LAYOUT.format(root=root, name=name))
    vocab_path = _need(root / "vocab" / f"{name}_precomp_vocab.json", root, name)
    word2idx = load_vocab(vocab_path)
    train, m_train = load_split(root, name, "train", word2idx)
    val, m_dev = load_split(root, name, "dev", word2idx, first=VAL_IMAGES)
    test_name = "testall" if name == "coco" and (root / f"{name}_precomp" / "testall_ims.npy").exists() else "test"
    test, m_test = load_split(root, name, test_name, word2idx)
    n_test, folds = len(test.images), 1
    if test_name == "testall":
        if n_test % COCO_FOLDS:
            raise DataError(f"{m_test['images']}: {n_test} images do not split into {COCO_FOLDS} equal folds")
        folds = COCO_FOLDS
        test_protocol = f"testall's {n_test} images as {COCO_FOLDS}-fold {size_label(n_test // COCO_FOLDS)} and {size_label(n_test)}"
    else:
        test_protocol = f"test's {n_test} images ({size_label(n_test)})"
        if name == "coco":
            test_protocol += "; COCO's 5-fold 1K and 5K protocol needs testall_ims.npy"

    drawn = assignment(root, name, noise, seed, noise_file, train.cap_key, len(train.images))
    train.cap2img = drawn.cap2img
    # CC152K's pairs are harvested and noisy already: no ground truth to measure selection with
    train.noisy = None if name == "cc152k" else train.cap2img != train.cap_key

    files = {"train": m_train, "dev": m_dev, test_name: m_test}
    unk = ", ".join(f"{s} {m['unk'] / max(m['tokens'], 1):.2%}" for s, m in files.items())
    info = {
        "layout": f"{root}/{name}_precomp (NCR/RCL precomputed layout)",
        "noise": drawn.describe(train.cap_key),
        "noise_file": None if drawn.path is None else str(drawn.path),
        "vocabulary": f"{vocab_path}: {len(word2idx)} words; tokens mapped to <unk>: {unk}",
        "val": f"dev's first {len(val.images)} of {m_dev['shape'][0]} images ({len(val)} captions)",
        "test": test_protocol,
        "test_split": test_name,
        "files": files,
    }
    return Dataset(name, train, val, test, vocab_size=max(word2idx.values()) + 1, eval_folds=folds, info=info)

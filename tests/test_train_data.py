"""Data of the training pipeline: the synthetic benchmark, NCR's noise protocol, and the standard
precomputed layout on a tiny fixture written here in exactly that layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from srem_kernels.train import captions, data, precomp, synthetic
from srem_kernels.train.noise import shuffle_captions

WORDS = "a man dog runs on the grass woman rides bike red ball two kids play in park".split()
EXTRA = ("man's", "doesn't", "\"big\"", ",", "it's", "kids'")  # contractions, quotes, punctuation: nltk's tokens


def captions_for(rng, n: int) -> list[str]:
    """n generated captions from a small vocabulary, some with contractions, quotes and commas."""
    out = []
    for _ in range(n):
        words = list(rng.choice(WORDS, size=rng.integers(3, 9)))
        if rng.random() < 0.5:
            words.insert(int(rng.integers(1, len(words) + 1)), str(rng.choice(EXTRA)))  # not first: csv's quoting
        out.append(" ".join(words).capitalize() + ".")
    return out


def write_npz(path, **arrays):
    """An .npz archive under a .npy name (np.savez would append .npz to the name)."""
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def write_precomp(root: Path, name: str = "f30k", n_img=(12, 4, 4), per: int | None = None, regions: int = 3,
                  dim: int = 16, seed: int = 0, test_split: str = "test", caps: str | None = None) -> Path:
    """A tiny dataset in the NCR/RCL precomputed layout (srem_kernels/train/precomp.py): captions in
    `caps` form ("txt", or "tsv": image_id<TAB>caption; default tsv for cc152k as NCR ships it), and
    the vocabulary built as NCR's vocab.py builds it (nltk tokens of train and dev), three words left out."""
    rng = np.random.default_rng(seed)
    per = per or precomp.CAPTIONS_PER_IMAGE[name]
    caps = caps or ("tsv" if name == "cc152k" else "txt")
    folder = root / f"{name}_precomp"
    folder.mkdir(parents=True)
    tokens = set()
    for split, n in zip(("train", "dev", test_split), n_img):
        np.save(folder / f"{split}_ims.npy", rng.standard_normal((n, regions, dim)).astype(np.float32))
        lines = captions_for(rng, n * per)
        if split in ("train", "dev"):
            tokens.update(t for c in lines for t in captions.tokenize(c))
        if caps == "tsv":
            lines = [f"{k // per}_{k:09d}\t{c}" for k, c in enumerate(lines)]
        (folder / f"{split}_caps.{caps}").write_text("\n".join(lines) + "\n")
    vocab = ["<pad>", "<start>", "<end>", "<unk>", *sorted(tokens - {"kids", "park", "play"})]  # three left out: <unk>
    (root / "vocab").mkdir()
    (root / "vocab" / f"{name}_precomp_vocab.json").write_text(json.dumps(
        {"word2idx": {w: i for i, w in enumerate(vocab)}, "idx2word": {str(i): w for i, w in enumerate(vocab)}, "idx": len(vocab)}))
    return root


# ---------------------------------------------------------------- noise protocol

@pytest.mark.parametrize("noise", [0.2, 0.4, 0.8])
def test_noise_shuffles_that_fraction_among_themselves(noise):
    n = 1000
    truth = torch.arange(n) // 5
    noisy = shuffle_captions(truth, noise, torch.Generator().manual_seed(3))
    changed = noisy != truth
    # a permutation of the drawn captions' images: the multiset of images is kept
    assert torch.equal(torch.sort(noisy).values, torch.sort(truth).values)
    # at most round(noise*n) changed; a few land on their own image again (5 captions share one)
    assert changed.sum() <= round(noise * n)
    assert changed.sum() >= 0.75 * round(noise * n)


def test_noise_zero_is_identity_and_bad_noise_raises():
    truth = torch.arange(50)
    assert torch.equal(shuffle_captions(truth, 0.0, torch.Generator().manual_seed(0)), truth)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="noise must be in"):
            shuffle_captions(truth, bad, torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_per_seed_and_flags_match_the_shuffle():
    a = synthetic.load(noise=0.4, seed=1, size="tiny")
    b = synthetic.load(noise=0.4, seed=1, size="tiny")
    c = synthetic.load(noise=0.4, seed=2, size="tiny")
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.train.cap2img, b.train.cap2img)
    assert not torch.equal(a.train.images, c.train.images)
    n_train, n_val, n_test = synthetic.SIZES["tiny"]
    assert a.train.images.shape == (n_train, synthetic.REGIONS, synthetic.IMG_DIM)
    assert a.train.captions.shape == (n_train, synthetic.TXT_DIM) and len(a.test) == n_test and len(a.val) == n_val
    assert torch.equal(a.train.noisy, a.train.cap2img != a.train.cap_key)
    assert 0.3 < a.train.noisy.double().mean() <= 0.4
    for split in (a.val, a.test):  # evaluation splits are never noisy
        assert split.noisy is None and torch.equal(split.cap2img, split.cap_key)
    imgs, caps = a.train.batch(torch.tensor([0, 5]))
    assert torch.equal(imgs, a.train.images[a.train.cap2img[[0, 5]]]) and torch.equal(caps, a.train.captions[[0, 5]])


def test_synthetic_pairs_are_matched_through_the_latent():
    """Clean pairs must carry signal: a linear least-squares map from caption to pooled image
    features retrieves the right image far above chance."""
    d = synthetic.load(noise=0.0, seed=0, size="small")
    x, y = d.train.captions, d.train.images.mean(1)
    w = torch.linalg.lstsq(x, y).solution
    pred, truth = d.test.captions @ w, d.test.images.mean(1)
    hit = ((pred @ truth.T).argmax(1) == torch.arange(len(truth))).double().mean()
    assert hit > 0.05  # chance is 0.001


# ---------------------------------------------------------------- precomputed layout

def test_precomp_fixture_loads(tmp_path):
    root = write_precomp(tmp_path)
    d = data.load("f30k", noise=0.0, seed=0, data_path=str(root))
    assert len(d.train) == 60 and len(d.train.images) == 12 and d.eval_folds == 1
    assert torch.equal(d.train.cap2img, torch.arange(60) // 5) and not d.train.noisy.any()
    caption = (root / "f30k_precomp" / "train_caps.txt").read_text().splitlines()[7]
    ids = d.train.captions[7]
    vocab = json.loads((root / "vocab" / "f30k_precomp_vocab.json").read_text())["word2idx"]
    assert ids[0] == vocab["<start>"] and ids[-1] == vocab["<end>"]
    expected = [vocab.get(w, vocab["<unk>"]) for w in captions.tokenize(caption)]
    assert ids[1:-1].tolist() == expected
    imgs, (tokens, lengths) = d.train.batch(torch.tensor([7, 0, 59]))
    assert imgs.shape == (3, 3, 16) and imgs.dtype == torch.float32
    assert torch.equal(imgs[0], torch.from_numpy(np.load(root / "f30k_precomp" / "train_ims.npy")[1]))
    assert tokens.shape[0] == 3 and lengths.tolist() == [len(d.train.captions[i]) for i in (7, 0, 59)]


def test_precomp_noise_file_and_generated_noise(tmp_path):
    root = write_precomp(tmp_path)
    idx = np.random.default_rng(1).integers(0, 12, size=60)
    (root / "noise_index").mkdir()
    np.save(root / "noise_index" / "f30k_precomp_0.4.npy", idx)
    d = data.load("f30k", noise=0.4, seed=0, data_path=str(root))
    assert d.train.cap2img.tolist() == idx.tolist()
    assert torch.equal(d.train.noisy, torch.from_numpy(idx) != torch.arange(60) // 5)
    g = data.load("f30k", noise=0.2, seed=0, data_path=str(root))  # no file for 0.2: NCR's protocol
    assert 0 < g.train.noisy.sum() <= 12


def test_coco_testall_gives_five_folds(tmp_path):
    root = write_precomp(tmp_path, name="coco", n_img=(10, 5, 10), test_split="testall")
    d = data.load("coco", noise=0.0, seed=0, data_path=str(root))
    assert d.eval_folds == 5 and len(d.test.images) == 10


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: (r / "f30k_precomp" / "dev_caps.txt").unlink(), r"missing .*f30k_precomp/dev_caps\.txt: expected the NCR/RCL precomputed layout"),
        (lambda r: (r / "vocab" / "f30k_precomp_vocab.json").unlink(), r"missing .*vocab/f30k_precomp_vocab\.json"),
        (lambda r: (r / "vocab" / "f30k_precomp_vocab.json").write_text("[1, 2]"), r"not a vocabulary JSON"),
        (lambda r: (r / "f30k_precomp" / "train_caps.txt").write_text("one\ntwo\nthree\n"), r"3 captions for 12 images"),
        (lambda r: np.save(r / "f30k_precomp" / "test_ims.npy", np.zeros((4, 2, 2, 2), np.float32)), r"test_ims\.npy: expected float features"),
        (lambda r: (r / "f30k_precomp" / "train_ims.npy").write_text("not numpy"), r"train_ims\.npy: not a \.npy"),
        (lambda r: write_npz(r / "f30k_precomp" / "dev_ims.npy", x=np.zeros((5, 2), np.float32)),
         r"dev_ims\.npy: an \.npz archive, not a \.npy array"),
        (lambda r: (r / "noise_index").mkdir() or np.save(r / "noise_index" / "f30k_precomp_0.4.npy", np.zeros(7, np.int64)),
         r"f30k_precomp_0\.4\.npy: int64 of shape \(7,\); expected an integer \.npy of 12 image indices \(RCL, one per training image\) or 60 \(NCR, one per training caption\)"),
    ],
)
def test_precomp_errors_name_the_path_and_the_layout(tmp_path, damage, message):
    root = write_precomp(tmp_path)
    damage(root)
    with pytest.raises(data.DataError, match=message):
        data.load("f30k", noise=0.4, seed=0, data_path=str(root))


def test_precomp_missing_folder_and_data_path(tmp_path):
    with pytest.raises(data.DataError, match=r"missing folder .*coco_precomp: expected the NCR/RCL precomputed layout"):
        data.load("coco", noise=0.0, seed=0, data_path=str(tmp_path))
    with pytest.raises(data.DataError, match="--data-path is required for f30k"):
        data.load("f30k", noise=0.0, seed=0)
    with pytest.raises(data.DataError, match="missing noise file"):
        write_precomp(tmp_path / "x")
        data.load("f30k", noise=0.2, seed=0, data_path=str(tmp_path / "x"), noise_file=str(tmp_path / "nope.npy"))

"""The precomputed datasets as the literature ships them: NCR's and RCL's layouts, CC152K's tsv,
both noise-file conventions, nltk's tokens, the evaluation protocol, --check-data. Every fixture
is generated here (tests/test_train_data.py's write_precomp); no real data."""

from __future__ import annotations

import csv
import json
import re
import sys

import numpy as np
import pytest
import torch

from srem_kernels.train import captions, cli, data, evaluation, noise, precomp
from tests.test_train_data import write_npz, write_precomp

N_TRAIN = 12  # training images of the default fixture: 60 captions for f30k


def _load(root, name="f30k", **kw):
    return data.load(name, noise=kw.pop("noise", 0.0), seed=kw.pop("seed", 0), data_path=str(root), **kw)


def _rcl_file(root, name, rate, idx):
    np.save(root / f"{name}_precomp" / f"noise_inx_{rate:g}.npy", np.asarray(idx, dtype=np.int64))


def _ncr_file(root, name, rate, idx):
    (root / "noise_index").mkdir(exist_ok=True)
    np.save(root / "noise_index" / f"{name}_precomp_{rate:g}.npy", np.asarray(idx, dtype=np.int64))


def _shuffled_images(n: int, k: int, seed: int = 4) -> np.ndarray:
    """An RCL-style image-level index: k images, drawn at random, permuted among themselves with no
    fixed point (a cyclic shift), so exactly those k images' captions are mismatched."""
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    moved = rng.choice(n, size=k, replace=False)
    idx[moved] = np.roll(moved, 1)
    return idx, moved


# ---------------------------------------------------------------- captions and tokens

def test_tokens_are_nltks_word_tokenizer_on_the_lowercased_caption(tmp_path):
    nltk = pytest.importorskip("nltk")
    root = write_precomp(tmp_path)
    d = _load(root)
    w2i = json.loads((root / "vocab" / "f30k_precomp_vocab.json").read_text())["word2idx"]
    lines = (root / "f30k_precomp" / "train_caps.txt").read_text().split("\n")[:-1]
    assert any("'s" in c or "n't" in c for c in lines)  # the fixture has what a regex splits differently
    for c, ids in zip(lines, d.train.captions):
        # word_tokenize without its (data-needing) sentence split is the same tokenizer
        want = [w2i.get(t, w2i["<unk>"]) for t in nltk.word_tokenize(c.strip().lower(), preserve_line=True)]
        assert ids.tolist() == [w2i["<start>"], *want, w2i["<end>"]]
    assert captions.tokenize("A man's dog doesn't \"run\".") == ["a", "man", "'s", "dog", "does", "n't", "``", "run", "''", "."]


def test_tsv_captions_are_field_one_as_ncr_reads_them(tmp_path):
    root = write_precomp(tmp_path, name="cc152k", n_img=(20, 6, 6))
    path = root / "cc152k_precomp" / "train_caps.tsv"
    with open(path, newline="") as f:  # NCR's reading, written out
        want = [row[1].strip() for row in csv.reader(f, delimiter="\t")]
    assert captions.read_captions(path) == want and len(want) == 20
    d = _load(root, "cc152k")
    assert len(d.train) == len(d.train.images) == 20 and torch.equal(d.train.cap2img, torch.arange(20))
    assert d.train.noisy is None and d.eval_folds == 1  # CC152K's pairs: no ground truth


def test_txt_and_tsv_forms_give_the_same_dataset(tmp_path):
    a, b = write_precomp(tmp_path / "a", caps="txt"), write_precomp(tmp_path / "b", caps="tsv")
    da, db = _load(a), _load(b)
    for sa, sb in ((da.train, db.train), (da.val, db.val), (da.test, db.test)):
        assert [c.tolist() for c in sa.captions] == [c.tolist() for c in sb.captions]
        assert np.array_equal(sa.images, sb.images)


def test_both_caption_files_the_datasets_own_form_is_read(tmp_path):
    root = write_precomp(tmp_path, caps="txt")
    folder = root / "f30k_precomp"
    (folder / "train_caps.tsv").write_text("".join(f"{i}\ta b\n" for i in range(60)))  # a decoy
    assert precomp.caption_file(root, "f30k", "train") == folder / "train_caps.txt"
    assert _load(root).info["files"]["train"]["captions"] == str(folder / "train_caps.txt")


# ---------------------------------------------------------------- noise files

def test_rcl_image_level_file_beside_the_features_mismatches_exactly_the_shuffled_images(tmp_path, capsys, monkeypatch):
    root = write_precomp(tmp_path)
    idx, moved = _shuffled_images(N_TRAIN, 4)
    _rcl_file(root, "f30k", 0.4, idx)
    d = _load(root, noise=0.4)
    expected = torch.from_numpy(idx).repeat_interleave(5)  # caption c is paired with image idx[c // 5]
    assert torch.equal(d.train.cap2img, expected)
    flags = [c // 5 in set(moved.tolist()) for c in range(60)]  # the five captions of every shuffled image
    assert d.train.noisy.tolist() == flags
    assert d.info["noise_file"].endswith("f30k_precomp/noise_inx_0.4.npy")
    assert d.info["noise"].startswith("RCL's image-level noise index") and "20 of 60 training captions" in d.info["noise"]

    # a run with it: says which file, and measures its selection against exactly those captions
    from srem_kernels.train import selection

    seen, metrics = [], selection.selection_metrics
    monkeypatch.setattr(selection, "selection_metrics", lambda clean, noisy: seen.append(noisy) or metrics(clean, noisy))
    argv = ["--dataset", "f30k", "--data-path", str(root), "--noise", "0.4", "--epochs", "2", "--warmup-epochs", "1",
            "--batch-size", "8", "--embed-dim", "8", "--no-progress", "--output", str(tmp_path / "run")]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert re.search(r"noise: RCL's image-level noise index \S+noise_inx_0\.4\.npy .*: 20 of 60 training captions mismatched", printed)
    assert "f30k: 60 training pairs (40% noise, 20 mismatched)" in printed
    # the dataset-level selection's calls (the in-batch hinge metrics get the seen pairs' subset)
    whole = [n for n in seen if len(n) == len(flags)]
    assert whole and all(n.tolist() == flags for n in whole)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["protocol"] == {"val": "dev's first 4 of 4 images (20 captions)", "test": "test's 4 images (4)"}
    assert res["data"]["noise_file"] == d.info["noise_file"] and res["data"]["test_split"] == "test"


@pytest.mark.parametrize("name, convention", [("f30k", "ncr"), ("coco", "rcl"), ("cc152k", "ncr"), ("cc152k", "rcl")])
def test_each_dataset_trains_with_its_codebases_noise_file(tmp_path, capsys, name, convention):
    n_img = (10, 5, 10) if name == "coco" else (12, 4, 4)
    root = write_precomp(tmp_path / "data", name=name, n_img=n_img, test_split="testall" if name == "coco" else "test")
    per = precomp.CAPTIONS_PER_IMAGE[name]
    idx, _ = _shuffled_images(n_img[0], 4)
    (_rcl_file if convention == "rcl" else _ncr_file)(root, name, 0.2, idx if convention == "rcl" else np.repeat(idx, per))
    saved = tmp_path / "saved.npy"
    argv = ["--dataset", name, "--data-path", str(root), "--noise", "0.2", "--epochs", "2", "--warmup-epochs", "1",
            "--batch-size", "8", "--embed-dim", "8", "--no-progress", "--output", str(tmp_path / "run"), "--save-noise", str(saved)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "noise: " in printed and f": {4 * per} of {n_img[0] * per} training captions mismatched" in printed
    assert np.load(saved).tolist() == np.repeat(idx, per).tolist()  # written caption-level, NCR's convention
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert ("fold_rsum" in res["test"]) == (name == "coco") and res["data"]["noise_file"].endswith(".npy")


def test_save_noise_to_a_folder_is_refused(tmp_path):
    with pytest.raises(data.DataError, match=r"--save-noise .* is a folder"):
        noise.save_index(tmp_path, torch.arange(4))


def test_ncr_caption_level_file_in_noise_index(tmp_path):
    root = write_precomp(tmp_path)
    idx = np.random.default_rng(1).integers(0, N_TRAIN, size=60)
    _ncr_file(root, "f30k", 0.2, idx)
    d = _load(root, noise=0.2)
    assert d.train.cap2img.tolist() == idx.tolist()
    assert d.info["noise"].startswith("NCR's caption-level noise index") and d.info["noise_file"].endswith("noise_index/f30k_precomp_0.2.npy")


def test_noise_file_flag_takes_either_convention(tmp_path):
    root = write_precomp(tmp_path)
    idx, _ = _shuffled_images(N_TRAIN, 3)
    np.save(tmp_path / "mine.npy", idx)
    np.save(tmp_path / "mine_captions.npy", np.repeat(idx, 5))
    a = _load(root, noise=0.5, noise_file=str(tmp_path / "mine.npy"))
    b = _load(root, noise=0.5, noise_file=str(tmp_path / "mine_captions.npy"))
    assert torch.equal(a.train.cap2img, b.train.cap2img) and torch.equal(a.train.cap2img, torch.from_numpy(idx).repeat_interleave(5))


def test_two_noise_files_agreeing_or_not(tmp_path):
    root = write_precomp(tmp_path)
    idx, _ = _shuffled_images(N_TRAIN, 4)
    _rcl_file(root, "f30k", 0.4, idx)
    _ncr_file(root, "f30k", 0.4, np.repeat(idx, 5))  # the same pairs in NCR's convention
    d = _load(root, noise=0.4)
    assert torch.equal(d.train.cap2img, torch.from_numpy(idx).repeat_interleave(5)) and "the same pairs as" in d.info["noise"]
    _ncr_file(root, "f30k", 0.4, np.arange(60) // 5)
    with pytest.raises(data.DataError, match=r"noise_inx_0\.4\.npy and .*f30k_precomp_0\.4\.npy: two noise files .* choose one with --noise-file"):
        _load(root, noise=0.4)


def test_no_file_draws_as_ncr_and_save_noise_is_found_by_the_next_run(tmp_path, capsys):
    root = write_precomp(tmp_path)
    d = _load(root, noise=0.4, seed=5)
    assert "no noise file" in d.info["noise"] and d.info["noise_file"] is None
    changed = d.train.noisy
    assert 0 < changed.sum() <= 24 and torch.equal(torch.sort(d.train.cap2img).values, torch.arange(60) // 5)
    target = root / "noise_index" / "f30k_precomp_0.4.npy"
    argv = ["--check-data", "--dataset", "f30k", "--data-path", str(root), "--noise", "0.4", "--seed", "5",
            "--save-noise", str(target)]
    assert cli.main(argv) == 0
    assert f"noise index saved to {target}" in capsys.readouterr().out
    saved = np.load(target)
    assert saved.dtype == np.int64 and saved.tolist() == d.train.cap2img.tolist()  # NCR's convention: per caption
    again = _load(root, noise=0.4, seed=99)  # another seed: the saved file wins, as in NCR
    assert torch.equal(again.train.cap2img, d.train.cap2img) and again.info["noise_file"] == str(target)
    assert cli.main(argv) == 0  # the same index again: left alone
    np.save(tmp_path / "x.npy", np.zeros(60, np.int64))
    assert cli.main([*argv[:-1], str(tmp_path / "x.npy")]) == 2
    assert "the file exists and holds another index" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, name, message",
    [
        (np.zeros(7, np.int64), "f30k_precomp_0.4.npy", r"int64 of shape \(7,\); expected an integer \.npy of 12 image indices "
         r"\(RCL, one per training image\) or 60 \(NCR, one per training caption\), each in \[0, 12\)"),
        (np.zeros((12, 5), np.int64), "f30k_precomp_0.4.npy", r"int64 of shape \(12, 5\); expected an integer \.npy of 12"),
        (np.arange(12, dtype=np.float64), "f30k_precomp_0.4.npy", r"float64 values, not integer image indices; expected an integer"),
        (np.arange(12) + 1, "f30k_precomp_0.4.npy", r"image index 12 out of range; expected"),
        (np.arange(60) - 1, "f30k_precomp_0.4.npy", r"image index -1 out of range; expected"),
        (np.arange(12), "f30k_precomp_0.2.npy", r"its name says noise 0\.2, not --noise 0\.4"),
        (np.arange(12), "noise_inx_0.npy", r"its name says noise 0, not --noise 0\.4"),
        ("not numpy", "f30k_precomp_0.4.npy", r"not a \.npy array .*; expected an integer \.npy of 12"),
        ({"idx": np.arange(12)}, "f30k_precomp_0.4.npy", r"an \.npz archive, not a \.npy array; expected an integer \.npy of 12"),
    ],
)
def test_bad_noise_files_one_line_naming_the_file_and_the_shapes(tmp_path, content, name, message):
    root = write_precomp(tmp_path)
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, dict):
        write_npz(path, **content)
    else:
        np.save(path, content)
    with pytest.raises(data.DataError, match=re.escape(str(path)) + ": " + message) as e:
        _load(root, noise=0.4, noise_file=str(path))
    assert "\n" not in str(e.value)


def test_noise_file_arguments(tmp_path):
    root = write_precomp(tmp_path)
    np.save(tmp_path / "n.npy", np.arange(12))
    with pytest.raises(data.DataError, match=r"--noise-file .*n\.npy with --noise 0: give the noise rate"):
        _load(root, noise=0.0, noise_file=str(tmp_path / "n.npy"))
    with pytest.raises(data.DataError, match=r"missing noise file .*nope\.npy: expected an integer \.npy of 12"):
        _load(root, noise=0.2, noise_file=str(tmp_path / "nope.npy"))
    with pytest.raises(data.DataError, match=r"--noise-file: synthetic draws its noise from the seed; noise files are read for f30k, coco, cc152k"):
        data.load("synthetic", noise=0.2, seed=0, size="tiny", noise_file=str(tmp_path / "n.npy"))
    # a rate is read only from RCL's and NCR's names: another codebase's name ending in _0 says a seed
    np.save(tmp_path / "f30k_seed_0.npy", np.arange(12))
    assert "mismatched" in _load(root, noise=0.4, noise_file=str(tmp_path / "f30k_seed_0.npy")).info["noise"]


# ---------------------------------------------------------------- malformed caption files

@pytest.mark.parametrize(
    "name, file, text, message",
    [
        ("cc152k", "train_caps.tsv", "1\ta dog\n2 a cat\n", r"train_caps\.tsv, line 2: no tab; expected image_id<TAB>caption"),
        ("cc152k", "dev_caps.tsv", "1\ta dog\n2\t  \n", r"dev_caps\.tsv, line 2: empty caption"),
        ("cc152k", "test_caps.tsv", "1\ta\n\n3\tb\n", r"test_caps\.tsv, line 2: empty caption"),
        ("f30k", "train_caps.txt", "a dog\n\na cat\n", r"train_caps\.txt, line 2: empty caption"),
        ("f30k", "dev_caps.txt", "a dog\n" * 21, r"dev_caps\.txt: 21 captions for 4 images in .*dev_ims\.npy; f30k has 5 per image, so 20 caption lines"),
        ("cc152k", "train_caps.tsv", "1\ta\n" * 19, r"train_caps\.tsv: 19 captions for 20 images .*cc152k has 1 per image, so 20"),
        ("f30k", "test_caps.txt", b"a dog\n\xff\xfe\n", r"test_caps\.txt, line 2: not UTF-8 text"),
    ],
)
def test_bad_caption_files_name_the_file_and_the_line(tmp_path, name, file, text, message):
    root = write_precomp(tmp_path, name=name, n_img=(20, 6, 6) if name == "cc152k" else (12, 4, 4))
    path = root / f"{name}_precomp" / file
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(data.DataError, match=message) as e:
        _load(root, name)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_trailing_blank_lines_are_no_captions(tmp_path):
    root = write_precomp(tmp_path)
    path = root / "f30k_precomp" / "dev_caps.txt"
    path.write_text(path.read_text() + "\n\n")
    assert len(_load(root).val) == 20


def test_without_nltk_one_line_says_how_to_install(monkeypatch, tmp_path):
    root = write_precomp(tmp_path)
    monkeypatch.setattr(captions, "_tokenizer", None)
    monkeypatch.setitem(sys.modules, "nltk.tokenize", None)  # import fails
    with pytest.raises(data.DataError, match=r"tokenise with nltk, which is not installed: pip install 'srem-kernels\[train\]'"):
        _load(root)


# ---------------------------------------------------------------- protocol

def test_validation_is_the_first_1000_dev_images(tmp_path, monkeypatch):
    root = write_precomp(tmp_path, n_img=(12, 1003, 4), regions=1, dim=4)
    encoded, encode = [], precomp.encode
    monkeypatch.setattr(precomp, "encode", lambda caps, w2i: encoded.append(len(caps)) or encode(caps, w2i))
    d = _load(root)
    assert encoded == [60, 5000, 20]  # train, dev's first 1000 images' captions (its last 15 never tokenised), test
    dev = np.load(root / "f30k_precomp" / "dev_ims.npy")
    assert len(d.val.images) == 1000 and len(d.val) == 5000 and np.array_equal(d.val.images, dev[:1000])
    lines = (root / "f30k_precomp" / "dev_caps.txt").read_text().split("\n")
    w2i = json.loads((root / "vocab" / "f30k_precomp_vocab.json").read_text())["word2idx"]
    assert d.val.captions[4999].tolist() == captions.encode([lines[4999]], w2i)[0][0].tolist()
    assert torch.equal(d.val.cap_key, torch.arange(5000) // 5) and d.info["val"] == "dev's first 1000 of 1003 images (5000 captions)"
    assert d.info["test"] == "test's 4 images (4)"


class _Stub(torch.nn.Module):
    """Fixed embeddings: pooled image features; a caption embeds as its token embeddings' mean."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.words = torch.nn.Parameter(torch.randn(vocab, dim, generator=g))

    def encode_images(self, x):
        return torch.nn.functional.normalize(x.mean(1), dim=-1)

    def encode_captions(self, c):
        tokens, lengths = c
        e = self.words[tokens].sum(1) / lengths[:, None]
        return torch.nn.functional.normalize(e, dim=-1)


def _ncr_recall(sims: np.ndarray, per: int) -> list[float]:
    """NCR's evaluation.py i2t and t2i (R@1, 5, 10), written out."""
    n = sims.shape[0]
    i2t = [min(np.where(np.argsort(sims[i])[::-1] == c)[0][0] for c in range(per * i, per * i + per)) for i in range(n)]
    t2i = [np.where(np.argsort(sims.T[c])[::-1] == c // per)[0][0] for c in range(per * n)]
    return [100.0 * np.mean(np.array(r) < k) for r in (i2t, t2i) for k in (1, 5, 10)]


def test_coco_testall_is_evaluated_five_fold_and_whole_as_ncr_does(tmp_path):
    root = write_precomp(tmp_path, name="coco", n_img=(12, 5, 40), test_split="testall", dim=6)
    d = _load(root, "coco")
    assert d.eval_folds == 5 and d.info["test"] == "testall's 40 images as 5-fold 8 and 40"
    model = _Stub(d.vocab_size, 6)
    out = evaluation.evaluate(model, d.test, folds=5)
    img, cap = evaluation.encode(model, d.test)
    sims = (img @ cap.T).double().numpy()
    folds = [_ncr_recall(sims[8 * f : 8 * (f + 1), 40 * f : 40 * (f + 1)], 5) for f in range(5)]
    mean = np.mean(folds, axis=0)
    names = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
    assert [round(out[f"fold_{k}"], 9) for k in names] == [round(v, 9) for v in mean]
    assert [round(out[k], 9) for k in names] == [round(v, 9) for v in _ncr_recall(sims, 5)]


def test_coco_without_testall_says_so(tmp_path):
    root = write_precomp(tmp_path, name="coco", n_img=(12, 5, 10))
    d = _load(root, "coco")
    assert d.eval_folds == 1 and "5-fold 1K and 5K protocol needs testall_ims.npy" in d.info["test"]
    root2 = write_precomp(tmp_path / "b", name="coco", n_img=(12, 5, 12), test_split="testall")
    with pytest.raises(data.DataError, match=r"testall_ims\.npy: 12 images do not split into 5 equal folds"):
        _load(root2, "coco")


# ---------------------------------------------------------------- --check-data

def test_check_data_prints_sizes_noise_and_coverage_and_trains_nothing(tmp_path, capsys):
    root = write_precomp(tmp_path / "data")
    idx, _ = _shuffled_images(N_TRAIN, 4)
    _rcl_file(root, "f30k", 0.4, idx)
    out = tmp_path / "never"
    assert cli.main(["--check-data", "--dataset", "f30k", "--data-path", str(root), "--noise", "0.4", "--output", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"f30k: {root}/f30k_precomp (NCR/RCL precomputed layout)"
    assert lines[1] == "  train: 12 images (3, 16) float32, 60 token captions (5 per image)"
    assert lines[2] == "  val:   4 images (3, 16) float32, 20 token captions (5 per image)"
    assert re.fullmatch(r"  noise: RCL's image-level noise index \S+noise_inx_0\.4\.npy \(12 images, 5 captions each\): "
                        r"20 of 60 training captions mismatched \(33\.33%\)", lines[4])
    assert re.fullmatch(r"  vocabulary: \S+f30k_precomp_vocab\.json: \d+ words; tokens mapped to <unk>: train \d+\.\d\d%, "
                        r"dev \d+\.\d\d%, test \d+\.\d\d%", lines[5])
    assert lines[-1] == "data OK: nothing trained" and not out.exists()


def test_check_data_coverage_counts_the_unknown_tokens(tmp_path):
    root = write_precomp(tmp_path)
    d = _load(root)
    m = d.info["files"]["train"]
    lines = (root / "f30k_precomp" / "train_caps.txt").read_text().split("\n")[:-1]
    toks = [t for c in lines for t in captions.tokenize(c)]
    assert m["tokens"] == len(toks) and m["unk"] == sum(t in ("kids", "park", "play") for t in toks) > 0


def test_check_data_exits_2_with_the_first_problem(tmp_path, capsys):
    root = write_precomp(tmp_path)
    (root / "f30k_precomp" / "dev_caps.txt").write_text("a\n")
    assert cli.main(["--check-data", "--dataset", "f30k", "--data-path", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("srem-train: error: ") and "dev_caps.txt: 1 captions for 4 images" in err and err.count("\n") == 1


def test_check_data_on_a_generated_dataset(capsys):
    assert cli.main(["--check-data", "--synthetic-size", "tiny", "--noise", "0.2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "synthetic: generated from the seed (no files)" and lines[1].startswith("  train: 256 images (4, 64) float32, 256 captions of (48,) features")


def test_noise_module_reads_a_cc152k_index_as_one_per_pair(tmp_path):
    idx = np.array([1, 0, 2, 3])
    np.save(tmp_path / "cc_0.2.npy", idx)
    got = noise.read_index(tmp_path / "cc_0.2.npy", 4, 1, 0.2)
    assert got.cap2img.tolist() == idx.tolist() and "one image index per pair" in got.source

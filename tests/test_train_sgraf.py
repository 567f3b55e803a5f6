"""SGRAF's similarity networks (srem_kernels/train/sgraf.py) and what srem-train does with them: the
batched network equals a caption-by-caption computation without padding, the chunked similarity
equals the unchunked one, gradients reach every parameter, the parameter counts at the
literature's dimensions are those docs/training.md states, recall from a similarity matrix is a
brute-force count, and --model sgr|saf trains, resumes and ensembles end to end."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F

import srem_kernels
from srem_kernels.train import cli, evaluation, experiment, sgraf, trainer
from srem_kernels.train.data import Split

ROOT = Path(__file__).resolve().parents[1]
# RCL's SGRAF (penghu-cs/RCL, RCL-SGRAF/model.py) at embed 1024, word 300, sim_dim 256, 3 steps,
# 36 regions of 2048 and Flickr30K's 8,481-word vocabulary; docs/training.md states them.
LITERATURE = {"image encoder": 2_098_176, "text encoder": 10_691_244}
SIMILARITY = {"sgr": 5_319_755, "saf": 4_727_886}


def _dataset(vocab=30, regions=5, img_dim=12, captions=None, images=None):
    """What sgraf.build reads of a dataset: its name, vocabulary size and training shapes."""
    train = SimpleNamespace(images=torch.empty(1, regions, img_dim) if images is None else images, captions=captions)
    return SimpleNamespace(name="fixture", vocab_size=vocab, train=train)


def _net(reasoning, dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    dims = dict(embed_dim=16, sim_dim=8, word_dim=8, sgr_steps=2, chunk=4096) | kw
    return sgraf.build(_dataset(), reasoning=reasoning, **dims).to(dtype)


def _inputs(B=9, regions=5, D=16, dtype=torch.float64, seed=1):
    """l2-normalised regions and padded words of random lengths 1..6 (zero past each length)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 7, (B,), generator=g)
    lengths[0] = 6
    words = F.normalize(torch.randn(B, 6, D, generator=g, dtype=dtype), dim=-1) * (torch.arange(6)[None] < lengths[:, None])[..., None]
    return F.normalize(torch.randn(B, regions, D, generator=g, dtype=dtype), dim=-1), words, lengths


def _no_dropout(module):
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()


# ---------------------------------------------------------------- the network


def _one_caption(net, regions, img_glob, w):
    """The alignment nodes of every image with one caption of real words w (L, D), written out
    without padding or masks: SCAN's text-to-image attention, the global and local alignments."""
    nodes = []
    tg = net.text_global(w[None])[0]
    for v, ig in zip(regions, img_glob):
        s = F.leaky_relu(v @ w.T, sgraf.SCAN_SLOPE)  # (R, L)
        s = s / s.norm(dim=1, keepdim=True).clamp_min(1e-12)  # each region's scores over the words
        a = torch.softmax(sgraf.SCAN_SMOOTH * s.T, dim=1)  # each word over the regions
        attended = F.normalize(a @ v, dim=-1)
        local = F.normalize(net.local_map((attended - w) ** 2), dim=-1)
        glob = F.normalize(net.global_map((ig - tg) ** 2), dim=-1)
        nodes.append(torch.cat([glob[None], local]))
    return torch.stack(nodes)  # (images, L + 1, sim_dim)


def _loop_similarity(net, regions, words, lengths):
    """The network caption by caption, as SGRAF's own loop computes it (SAF's statistics per caption)."""
    img_glob = net.image_global(regions)
    cols = []
    for w, n in zip(words, lengths.tolist()):
        nodes = _one_caption(net, regions, img_glob, w[:n])
        if hasattr(net, "reasoning"):
            for step in net.reasoning:
                e = torch.softmax(step.query(nodes) @ step.key(nodes).transpose(1, 2), dim=-1)
                nodes = F.relu(step.update(e @ nodes))
            vec = nodes[:, 0]
        else:
            f = net.filtration
            logits = f.gate(nodes).squeeze(-1)  # (images, L + 1)
            mean, var = (logits.mean(), logits.var(unbiased=False)) if net.training else (f.norm.running_mean, f.norm.running_var)
            g = torch.sigmoid((logits - mean) / torch.sqrt(var + f.norm.eps) * f.norm.weight + f.norm.bias)
            vec = F.normalize(((g / g.sum(1, keepdim=True))[..., None] * nodes).sum(1), dim=-1)
        cols.append(torch.sigmoid(net.score(vec)).squeeze(-1))
    return torch.stack(cols, dim=1)


@pytest.mark.parametrize("reasoning", sgraf.REASONINGS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_the_batched_network_is_the_caption_by_caption_computation(reasoning, training):
    """Padding, masks and blocks change nothing: fp64, captions of random lengths, small chunks."""
    net = _net(reasoning, chunk=7).sim_encoder
    net.train(training)
    _no_dropout(net)
    if not training and reasoning == "saf":  # running statistics away from their initial values
        net.filtration.norm.running_mean.fill_(0.3)
        net.filtration.norm.running_var.fill_(2.0)
    regions, words, lengths = _inputs()
    torch.testing.assert_close(net(regions, words, lengths, 7), _loop_similarity(net, regions, words, lengths),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reasoning", sgraf.REASONINGS)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-14), (torch.float32, 1e-6)], ids=["fp64", "fp32"])
def test_chunked_similarity_equals_unchunked(reasoning, dtype, tol):
    """The B×B similarity (and SAF's running statistics) in blocks of 1, 7 or 40 pairs equals one
    block of all pairs, in training (same dropout draws) and in eval: to rounding (the block's
    shapes change the summation order), max abs difference ≤ 1e-14 in fp64, 1e-6 in fp32."""
    model = _net(reasoning, dtype)
    regions, words, lengths = _inputs(dtype=dtype)
    for training in (True, False):
        model.train(training)
        outs = []
        for chunk in (1, 7, 40, 10**6):
            m = copy.deepcopy(model)
            m.chunk = chunk
            torch.manual_seed(5)
            outs.append((m.similarity(regions, words, lengths), m.state_dict()))
        sim, state = outs[-1]
        for s, st in outs[:-1]:
            assert (s - sim).abs().max() <= tol
            for k in state:
                torch.testing.assert_close(st[k], state[k], rtol=0, atol=tol)


@pytest.mark.parametrize("reasoning", sgraf.REASONINGS)
@pytest.mark.parametrize("captions", ["tokens", "features"])
def test_gradients_reach_every_parameter(reasoning, captions):
    """SREM's loss from the network's similarity: every parameter (encoders, self-attention and
    its BatchNorms, alignment maps, reasoning or filtration, score) gets a non-zero gradient."""
    torch.manual_seed(0)
    B = 8
    if captions == "tokens":
        ds, lengths = _dataset(vocab=30, regions=3, img_dim=10), torch.randint(2, 6, (B,))
        caps = (torch.randint(1, 30, (B, 5)) * (torch.arange(5)[None] < lengths[:, None]), lengths)
    else:
        ds = _dataset(vocab=0, regions=3, img_dim=10, captions=torch.empty(1, 12))
        caps = torch.randn(B, 12)
    model = sgraf.build(ds, reasoning=reasoning, embed_dim=8, sim_dim=6, word_dim=5, sgr_steps=2, chunk=20)
    sim = model(torch.randn(B, 3, 10), caps)
    assert sim.shape == (B, B) and 0 < sim.min() and sim.max() < 1
    srem_kernels.loss_from_similarity(sim, clean=torch.ones(B)).loss.backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, silent


def test_parameter_counts_at_the_literature_dimensions():
    """Constructed at RCL's dimensions, the parts have RCL's parameter counts, and
    docs/training.md states them."""
    doc = (ROOT / "docs" / "training.md").read_text()
    ds = _dataset(vocab=8481, regions=36, img_dim=2048)
    for reasoning in sgraf.REASONINGS:
        model = sgraf.build(ds, reasoning=reasoning, embed_dim=1024, sim_dim=256, word_dim=300, sgr_steps=3, chunk=1)
        counts = model.parameter_counts()
        assert counts == LITERATURE | {"similarity network": SIMILARITY[reasoning]}
        for n in counts.values():
            assert f"{n:,}" in doc, n


def test_a_model_needs_region_features_and_splittable_feature_captions():
    with pytest.raises(ValueError, match=r"model sgr reads region features \(N×R×d images\); fixture's images are N×64: use --model vse"):
        sgraf.build(_dataset(images=torch.empty(1, 64)), reasoning="sgr", embed_dim=8, sim_dim=4, word_dim=4, sgr_steps=1, chunk=8)
    with pytest.raises(ValueError, match="model saf: fixture's captions: a feature caption of 10 features does not split into 4 words"):
        sgraf.build(_dataset(vocab=0, captions=torch.empty(1, 10)), reasoning="saf", embed_dim=8, sim_dim=4, word_dim=4,
                    sgr_steps=0, chunk=8)


# ---------------------------------------------------------------- evaluation


def _brute_force(sim, img_key, cap_key):
    """R@K by sorting each query's row and finding its first relevant item."""
    out = {}
    for name, rows, rel in (("i2t", sim, img_key[:, None] == cap_key[None]), ("t2i", sim.T, cap_key[:, None] == img_key[None])):
        first = [int(rel[q][torch.argsort(row, descending=True)].nonzero()[0]) for q, row in enumerate(rows)]
        for k in evaluation.KS:
            out[f"{name}_r{k}"] = 100.0 * sum(r < k for r in first) / len(first)
    out["rsum"] = sum(v for v in out.values())
    return out


def test_recall_from_a_similarity_matrix_is_a_brute_force_count():
    """Random 12 images × 60 captions (5 each, shuffled): matrix_ranks' recall equals sorting each
    row; the embeddings' path (ranks of img @ cap.T) is the same routine; folds are blocks."""
    g = torch.Generator().manual_seed(3)
    img_key, cap_key = torch.arange(12), torch.randperm(60, generator=g) // 5
    sim = torch.rand(12, 60, generator=g, dtype=torch.float64)
    got = evaluation.recall(*evaluation.matrix_ranks(sim, img_key, cap_key))
    assert got == pytest.approx(_brute_force(sim, img_key, cap_key), abs=1e-9)
    img, cap = torch.randn(12, 6, generator=g, dtype=torch.float64), torch.randn(60, 6, generator=g, dtype=torch.float64)
    assert [t.tolist() for t in evaluation.ranks(img, cap, img_key, cap_key)] == \
        [t.tolist() for t in evaluation.matrix_ranks(img @ cap.T, img_key, cap_key)]
    split = Split(images=torch.zeros(12), captions=torch.zeros(60), cap2img=cap_key, img_key=img_key, cap_key=cap_key)
    out = evaluation.evaluate_similarity(sim, split, folds=3)
    folds = [_brute_force(sim[4 * f : 4 * f + 4][:, (cap_key >= 4 * f) & (cap_key < 4 * f + 4)], img_key[4 * f : 4 * f + 4],
                          cap_key[(cap_key >= 4 * f) & (cap_key < 4 * f + 4)]) for f in range(3)]
    assert out["fold_rsum"] == pytest.approx(sum(f["rsum"] for f in folds) / 3) and out["rsum"] == pytest.approx(got["rsum"])


def test_network_evaluation_is_the_networks_similarity_of_every_pair():
    """network_similarity (captions in shards by length, regions and words encoded once) equals
    the model's similarity of all images and captions at once, in eval mode; the model's mode is kept."""
    torch.manual_seed(0)
    n_img, lengths = 6, torch.randint(2, 7, (18,))
    tokens = [torch.randint(1, 30, (int(n),)) for n in lengths]
    split = Split(images=torch.randn(n_img, 5, 12), captions=tokens, cap2img=torch.arange(18) // 3,
                  img_key=torch.arange(n_img), cap_key=torch.arange(18) // 3)
    for reasoning in sgraf.REASONINGS:
        model = sgraf.build(_dataset(), reasoning=reasoning, embed_dim=8, sim_dim=6, word_dim=5, sgr_steps=2, chunk=10)
        model.train()
        got = evaluation.network_similarity(model, split, progress=True)
        assert model.training
        model.eval()
        with torch.no_grad():
            want = model(split.images, split.caption_batch(torch.arange(18)))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- srem-train --model sgr|saf

BASE = ["--dataset", "synthetic", "--synthetic-size", "tiny", "--noise", "0.4", "--method", "srem", "--epochs", "2",
        "--warmup-epochs", "1", "--batch-size", "64", "--embed-dim", "8", "--no-progress", "--quiet"]
NET = ["--sim-dim", "6", "--word-dim", "6"]  # a similarity network's dimensions


def _train(out, model, *extra, capsys=None):
    rc = cli.main([*BASE, *NET, "--model", model, "--output", str(out), *extra])
    return rc, capsys.readouterr().err if capsys else ""


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A finished SGR run and a finished SAF run of the tiny synthetic benchmark."""
    root = tmp_path_factory.mktemp("sgraf")
    for model in sgraf.REASONINGS:
        assert _train(root / model, model)[0] == 0
    return root


def test_sgr_and_saf_train_end_to_end_and_results_name_the_model(two_runs):
    for model in sgraf.REASONINGS:
        res = json.loads((two_runs / model / trainer.RESULTS).read_text())
        assert res["config"]["model"] == res["model"]["name"] == model and res["config"]["sim_dim"] == 6
        assert res["model"]["parameters"] == sum(res["model"]["parts"].values())
        assert 0 <= res["test"]["rsum"] <= 600
        log = [json.loads(line) for line in (two_runs / model / trainer.LOG).read_text().splitlines()]
        assert [e["epoch"] for e in log] == [0, 1] and "sel_precision" in log[1]  # dataset-level selection ran


@pytest.mark.parametrize("model", sgraf.REASONINGS)
def test_an_interrupted_network_run_resumes_bitwise(tmp_path, monkeypatch, model):
    """Dropout's random draws, SAF's running statistics and the clean flags resume exactly."""
    def cfg(out, **kw):
        return dataclasses.replace(cli.config([*BASE, *NET, "--model", model, "--epochs", "3", "--output", str(out)]), **kw)

    trainer.train(cfg(tmp_path / "a"))
    save = trainer.save_checkpoint

    def interrupted(state, output):
        save(state, output)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg(tmp_path / "b"))
    monkeypatch.setattr(trainer, "save_checkpoint", save)
    trainer.train(cfg(tmp_path / "b", resume=True))
    a, b = (torch.load(tmp_path / r / trainer.CHECKPOINT, weights_only=False) for r in "ab")
    assert a["epoch"] == b["epoch"] == 2 and a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "saf", *NET], "was written with model='sgr', sgr_steps=3, not model='saf', sgr_steps=None"),
        (["--model", "sgr", "--sim-dim", "4", "--word-dim", "6"], "was written with sim_dim=6, not sim_dim=4"),
        (["--model", "vse"], "was written with model='sgr', sim_dim=6, word_dim=6, sgr_steps=3, not model='vse', "
                             "sim_dim=None, word_dim=None, sgr_steps=None"),
    ],
)
def test_a_resume_with_another_model_is_refused_naming_the_flags(two_runs, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    out.mkdir()
    (out / trainer.CHECKPOINT).write_bytes((two_runs / "sgr" / trainer.CHECKPOINT).read_bytes())
    rc = cli.main([*BASE, "--output", str(out), "--resume", *extra])
    assert (rc, capsys.readouterr().err) == (2, f"srem-train: error: --resume: {out / trainer.CHECKPOINT} {message}\n")


def test_a_checkpoint_from_before_model_existed_resumes_as_the_dual_encoder(tmp_path):
    out = tmp_path / "run"
    argv = [*BASE, "--output", str(out)]
    assert cli.main([*argv, "--epochs", "1"]) == 0
    ck = torch.load(out / trainer.CHECKPOINT, weights_only=False)
    for k in ("model", *trainer.NETWORK_FLAGS, "sim_chunk"):
        del ck["config"][k]
    torch.save(ck, out / trainer.CHECKPOINT)
    assert cli.main([*argv, "--resume"]) == 0


def test_the_ensemble_of_an_sgr_and_an_saf_run_is_sgraf(two_runs, tmp_path, capsys):
    out = tmp_path / "ens"
    assert cli.main(["--eval-ensemble", str(two_runs / "sgr"), str(two_runs / "saf"), "--output", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    res = json.loads((out / trainer.RESULTS).read_text())
    assert res["ensemble"] == "SGRAF" and printed[0].startswith("SGRAF of ")
    for run, model in zip(res["runs"], sgraf.REASONINGS):  # each alone: its own run's test recall
        assert run["model"] == model and run["test"] == json.loads((two_runs / model / trainer.RESULTS).read_text())["test"]
    assert re.fullmatch(r"test: i2t R@1 [\d.]+ .* rSum [\d.]+", printed[-1]) and f"{res['test']['rsum']:.1f}" in printed[-1]
    assert cli.main(["--eval-ensemble", str(two_runs / "sgr"), str(two_runs / "saf"), "--output", str(out), "--quiet"]) == 2
    assert "already holds a results.json: --overwrite replaces it" in capsys.readouterr().err


def test_the_ensemble_refuses_runs_of_other_data_and_folders_without_a_checkpoint(two_runs, tmp_path, capsys):
    other = tmp_path / "seed1"
    assert _train(other, "saf", "--seed", "1", "--epochs", "1")[0] == 0
    assert cli.main(["--eval-ensemble", str(two_runs / "sgr"), str(other), "--quiet"]) == 2
    assert capsys.readouterr().err == (f"srem-train: error: --eval-ensemble: {two_runs / 'sgr'} and {other} are not on one "
                                       "test split: seed=0 vs 1\n")
    assert cli.main(["--eval-ensemble", str(two_runs / "sgr"), str(tmp_path / "none"), "--quiet"]) == 2
    assert f"{tmp_path / 'none' / trainer.CHECKPOINT} not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "sgrf"], "--model must be one of vse, sgr, saf; got 'sgrf'"),
        (["--model", "vse"], "--sim-dim applies to --model sgr or saf, not vse"),  # with NET's flags
        (["--model", "saf", "--sgr-steps", "2"], "--sgr-steps applies to --model sgr, not saf"),
        (["--model", "sgr", "--sim-chunk", "0"], "--sim-chunk must be at least 1; got 0"),
    ],
)
def test_bad_model_arguments_are_one_line(tmp_path, capsys, extra, message):
    rc, err = _train(tmp_path / "run", *extra[1:2], *extra[2:], capsys=capsys)
    assert (rc, err) == (2, f"srem-train: error: {message}\n")
    assert not (tmp_path / "run").exists()


def test_a_coco_shaped_folder_trains_sgr_on_tokens_and_reports_both_test_protocols(tmp_path):
    from tests.test_train_data import write_precomp

    root = write_precomp(tmp_path / "data", name="coco", n_img=(12, 5, 10), test_split="testall")
    res = trainer.train(trainer.TrainConfig(dataset="coco", data_path=str(root), noise=0.2, method="srem", model="sgr",
                                            batch_size=8, epochs=2, warmup_epochs=1, embed_dim=8, sim_dim=6, word_dim=6,
                                            sim_chunk=16, output=str(tmp_path / "run"), progress=False, quiet=True))
    assert "fold_rsum" in res["test"] and 0 <= res["test"]["rsum"] <= 600 and res["model"]["name"] == "sgr"


# ---------------------------------------------------------------- the SGR grid's report


def _finished(runs, method, noise, seed, rsum, **config):
    """A finished run's results.json, as the trainer writes it (the fields the report reads)."""
    out = experiment.run_dir(runs, method, noise, seed)
    out.mkdir(parents=True)
    cfg = dict(method=method, noise=noise, seed=seed, synthetic_size="small", epochs=12, batch_size=128, lr=0.004, tau=0.05,
               margin=0.2, warmup_epochs=2) | config
    (out / trainer.RESULTS).write_text(json.dumps({"config": cfg, "test": {"rsum": rsum, "i2t_r1": rsum / 10, "t2i_r1": rsum / 10}}))


def test_the_sgr_grid_report_is_todo_until_its_runs_exist_then_fills_its_tables(tmp_path):
    results, report = tmp_path / "results", tmp_path / "docs" / "training_results.md"
    report.parent.mkdir()
    _finished(results / "runs", "srem", 0.4, 0, 300.0, synthetic_size="default")  # the dual encoder's section needs a run
    grid = experiment.GRIDS["sgr"]
    cells = [(m, n) for m in grid.methods for n in grid.noises]
    runs = [(m, n, s, 10.0 * cells.index((m, n)) + s) for m, n in cells for s in grid.seeds]
    for m, n, s, v in runs[:-1]:
        _finished(results / grid.folder, m, n, s, v)
    experiment.report(results, report, "the command")
    text = report.read_text().split("## The same with SGRAF's SGR network")[1]
    assert "**TODO — not yet run (17 of 18 runs finished).**" in text and "--grid sgr" in text
    _finished(results / grid.folder, *runs[-1])
    experiment.report(results, report, "the command")
    text = report.read_text().split("## The same with SGRAF's SGR network")[1]
    assert "TODO" not in text and "/sgr_runs/](../results/sgr_runs)" in text
    assert "| rcl | 21.0 ± 1.0 | 31.0 ± 1.0 |" in text and "| srem | 41.0 ± 1.0 | 51.0 ± 1.0 |" in text  # rSum
    assert "| srem | 4.1 ± 0.1 | 5.1 ± 0.1 |" in text  # R@1
    assert "| rcl | 20.0 ± 0.0 | 20.0 ± 0.0 |" in text and "| vsepp | 40.0 ± 0.0 | 40.0 ± 0.0 |" in text  # paired by seed

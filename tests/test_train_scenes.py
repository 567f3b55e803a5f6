"""The synthetic benchmark with hard negatives (srem_kernels/train/scenes.py): determinism by seed,
the scene structure, the noise protocol, the rate of in-batch scene-mates, and a run end to end."""

from __future__ import annotations

import json

import pytest
import torch

from srem_kernels.train import data, scenes, synthetic, trainer


def _tensors(d, scene):
    return [d.train.images, d.train.captions, d.train.cap2img, d.val.captions, d.test.images, *scene.values()]


def test_same_seed_same_data_other_seed_other_data():
    (a, sa), (b, sb), (c, sc) = (scenes.load_with_scenes(noise=0.4, seed=s, size="tiny") for s in (3, 3, 4))
    assert all(torch.equal(x, y) for x, y in zip(_tensors(a, sa), _tensors(b, sb)))
    assert not torch.equal(a.train.images, c.train.images) and not torch.equal(sa["train"], sc["train"])
    assert torch.equal(data.load("synthetic-scenes", noise=0.4, seed=3, size="tiny").train.images, a.train.images)
    # and not the plain synthetic benchmark's data under another name
    assert not torch.equal(a.train.images, synthetic.load(noise=0.4, seed=3, size="tiny").train.images)


@pytest.mark.parametrize("size", ["tiny", "default"])
def test_scene_structure(size):
    d, scene = scenes.load_with_scenes(noise=0.0, seed=0, size=size)
    n_scenes = synthetic.SIZES[size][0] // scenes.PAIRS_PER_SCENE
    assert d.info["scenes"] == scenes.scene_count(size) == n_scenes
    for name, split in (("train", d.train), ("val", d.val), ("test", d.test)):
        s = scene[name]
        assert s.shape == (len(split),) and 0 <= s.min() and s.max() < n_scenes
        assert torch.equal(split.img_key, torch.arange(len(split)))  # relevance stays instance-level
    # the test split holds new instances of the training split's scenes
    assert set(scene["test"].tolist()) <= set(scene["train"].tolist())
    # scene-mates are near-duplicates: their captions (and images) are much closer than other pairs'
    for feats in (d.test.captions, d.test.images.mean(dim=1)):
        x = torch.nn.functional.normalize(feats - feats.mean(0), dim=1)
        sim = x @ x.T
        s = scene["test"]
        mate = (s[:, None] == s[None, :]) & ~torch.eye(len(s), dtype=torch.bool)
        other = s[:, None] != s[None, :]
        assert sim[mate].mean() > sim[other].mean() + 0.25
        assert sim[mate].mean() < 0.95  # but not identical: the own factors and modality noise differ


def test_latents_share_the_scene_factors():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, scenes.SHARED_FACTORS, generator=g)
    z = scenes.latents(centres, torch.tensor([0, 0, 2]), g)
    assert z.shape == (3, synthetic.LATENT)
    shared = z[:, : scenes.SHARED_FACTORS]
    assert (shared[0] - centres[0]).abs().max() < 6 * scenes.JITTER and (shared[1] - centres[0]).abs().max() < 6 * scenes.JITTER
    assert (shared[2] - centres[2]).abs().max() < 6 * scenes.JITTER
    assert (z[0, scenes.SHARED_FACTORS :] - z[1, scenes.SHARED_FACTORS :]).abs().max() > 6 * scenes.JITTER  # own factors


def test_noise_protocol_is_the_synthetic_benchmarks():
    d = scenes.load(noise=0.4, seed=1, size="small")
    assert torch.equal(d.train.noisy, d.train.cap2img != d.train.cap_key)
    assert 0.38 <= d.train.noisy.double().mean() <= 0.4
    assert torch.equal(torch.sort(d.train.cap2img).values, torch.arange(len(d.train)))
    assert d.val.noisy is None and torch.equal(d.val.cap2img, torch.arange(len(d.val)))


def test_scene_mate_rate_by_hand_and_at_the_default_size():
    r = scenes.scene_mate_rate(torch.tensor([0, 0, 1, 2]), batch_size=4, seed=0, epochs=2)
    assert r == {"pair": 0.5, "batch": 1.0, "mates": 0.5}
    d, scene = scenes.load_with_scenes(noise=0.0, seed=0)
    S, B = d.info["scenes"], 128
    r = scenes.scene_mate_rate(scene["train"], B, seed=0)
    expected = 1 - (1 - 1 / S) ** (B - 1)  # uniform scenes: P(another pair of mine among the B - 1 others)
    assert abs(r["pair"] - expected) < 0.02 and 0.3 < r["pair"] < 0.4
    assert r["batch"] == 1.0


def test_scene_mate_rate_counts_the_trainers_batches():
    scene = torch.arange(200) // 2  # pairs 2i and 2i + 1 are scene-mates
    batches = [b for e in range(3) for b in trainer.epoch_batches(200, 16, trainer.epoch_seed(7, e, 0))]
    hit = sum(int((torch.bincount(scene[b])[scene[b]] > 1).sum()) for b in batches)
    assert scenes.scene_mate_rate(scene, 16, seed=7, epochs=3)["pair"] == hit / (16 * len(batches))


def test_trains_end_to_end(tmp_path):
    cfg = trainer.TrainConfig(dataset="synthetic-scenes", synthetic_size="tiny", noise=0.4, method="srem", seed=0,
                              output=str(tmp_path), epochs=2, warmup_epochs=1, batch_size=64, embed_dim=16,
                              progress=False, quiet=True)  # fmt: skip
    res = trainer.train(cfg)
    assert 0 <= res["test"]["rsum"] <= 600 and res["config"]["dataset"] == "synthetic-scenes"
    # results.json describes the data: the generator's numbers, no per-pair scene ids (not even emptied)
    assert json.loads((tmp_path / trainer.RESULTS).read_text())["data"] == {
        "layout": synthetic.GENERATED, "size": "tiny", "latent": synthetic.LATENT, "regions": synthetic.REGIONS, "scenes": scenes.scene_count("tiny"),
        "shared_factors": scenes.SHARED_FACTORS, "jitter": scenes.JITTER}


def test_bad_size_is_named():
    with pytest.raises(ValueError, match="synthetic size must be one of"):
        scenes.load(noise=0.0, seed=0, size="huge")

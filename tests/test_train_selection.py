"""Dataset-level selection: the energy scoring pass, the GMM over the whole training set, and the
selection metrics against ground-truth flags; evaluation recall on hand-made similarities."""

from __future__ import annotations

import pytest
import torch

import srem_kernels
from srem_kernels.train import evaluation, model as model_mod, selection, synthetic


def test_selection_metrics_by_hand():
    clean = torch.tensor([1, 1, 1, 0, 0, 1], dtype=torch.float32)
    noisy = torch.tensor([0, 0, 1, 1, 0, 0], dtype=torch.bool)
    m = selection.selection_metrics(clean, noisy)
    assert m["selected"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(3 / 4)  # pairs 0, 1, 5 of the selected 0, 1, 2, 5
    assert m["recall"] == pytest.approx(3 / 4)  # clean pairs 0, 1, 4, 5; 4 missed
    assert set(selection.selection_metrics(clean, None)) == {"selected"}


def test_separation_auc_by_hand():
    e = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert selection.separation_auc(e, torch.tensor([0, 0, 1, 1])) == 1.0
    assert selection.separation_auc(e, torch.tensor([1, 1, 0, 0])) == 0.0
    assert selection.separation_auc(e, torch.tensor([0, 1, 0, 1])) == pytest.approx(0.75)
    assert selection.separation_auc(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([0, 1, 0])) == pytest.approx(0.25)


def test_gmm_over_the_training_set_picks_the_low_energy_mode():
    g = torch.Generator().manual_seed(0)
    clean_e = -1.0 + 0.05 * torch.randn(600, generator=g, dtype=torch.float64)
    noisy_e = -0.6 + 0.05 * torch.randn(400, generator=g, dtype=torch.float64)
    energy = torch.cat([clean_e, noisy_e])[torch.randperm(1000, generator=g)]
    flags = selection.select_clean(energy)
    assert torch.equal(flags.bool(), energy < -0.8)


def test_scoring_batches_partition_every_pair_with_no_singleton():
    for n, b in ((10, 3), (9, 4), (8, 4), (5, 8)):
        chunks = selection.scoring_batches(n, b, torch.Generator().manual_seed(1))
        assert sorted(torch.cat(chunks).tolist()) == list(range(n))
        assert min(len(c) for c in chunks) >= 2


def test_pair_energies_are_the_losss_statistics_of_each_scoring_batch():
    d = synthetic.load(noise=0.4, seed=0, size="tiny")
    torch.manual_seed(0)
    model = model_mod.build(d, 16)
    model.train()  # pair_energies must switch to eval mode and back
    energy = selection.pair_energies(model, d.train, batch_size=50, tau=0.05, backend="auto", seed=7)
    assert model.training
    model.eval()
    for idx in selection.scoring_batches(len(d.train), 50, torch.Generator().manual_seed(7)):
        with torch.no_grad():
            img, txt = model(*d.train.batch(idx))
            expected = srem_kernels.loss(img, txt, select="none").stats.energy
        torch.testing.assert_close(energy[idx], expected.double())


# ---------------------------------------------------------------- evaluation

SIM = torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.5, 0.1], [0.3, 0.6, 0.4]])


def test_recall_on_a_hand_made_similarity():
    keys = torch.arange(3)
    i2t, t2i = evaluation.ranks(SIM, torch.eye(3), keys, keys)  # SIM @ I.T = SIM
    assert i2t.tolist() == [0, 1, 1] and t2i.tolist() == [0, 1, 0]
    m = evaluation.recall(i2t, t2i)
    assert m["i2t_r1"] == pytest.approx(100 / 3) and m["i2t_r5"] == 100.0 and m["t2i_r1"] == pytest.approx(200 / 3)
    assert m["rsum"] == pytest.approx(100 / 3 + 200 / 3 + 4 * 100)


def test_recall_with_several_captions_per_image():
    # image 0 has captions 0, 1; image 1 has captions 2, 3
    sim = torch.tensor([[0.1, 0.7, 0.9, 0.2], [0.3, 0.0, 0.2, 0.1]])
    i2t, t2i = evaluation.ranks(sim, torch.eye(4), torch.tensor([0, 1]), torch.tensor([0, 0, 1, 1]))
    assert i2t.tolist() == [1, 1]  # image 0: its best caption (0.7) is behind 0.9; image 1: 0.2 behind 0.3
    assert t2i.tolist() == [1, 0, 1, 1]  # captions 0, 2, 3 each prefer the other image


class _Fixed(torch.nn.Module):
    """A 'model' whose embeddings are given, to test evaluate() and its folds."""

    def __init__(self, img, cap):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.img, self.cap = img, cap

    def encode_images(self, x):
        return self.img[x.long()]

    def encode_captions(self, x):
        return self.cap[x.long()]


def test_evaluate_five_folds_counts_each_fold_alone():
    from srem_kernels.train.data import Split

    n = 10
    img = torch.nn.functional.normalize(torch.randn(n, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    cap = img.clone()
    cap[[1, 3]] = cap[[0, 2]]  # captions 1 and 3 collide with 0 and 2 (same fold pairs)
    split = Split(images=torch.arange(n), captions=torch.arange(n), cap2img=torch.arange(n),
                  img_key=torch.arange(n), cap_key=torch.arange(n))
    out = evaluation.evaluate(_Fixed(img, cap), split, folds=5)
    i2t, t2i = evaluation.ranks(img, cap, split.img_key, split.cap_key)
    assert out["rsum"] == evaluation.recall(i2t, t2i)["rsum"]
    folds = [evaluation.recall(*evaluation.ranks(img[f * 2:(f + 1) * 2], cap[f * 2:(f + 1) * 2], torch.arange(f * 2, f * 2 + 2),
                                                  torch.arange(f * 2, f * 2 + 2))) for f in range(5)]
    assert out["fold_rsum"] == pytest.approx(sum(f["rsum"] for f in folds) / 5)


def test_hinge_metrics_by_hand():
    clean = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0])
    weight = torch.tensor([0.5, 1.0, 0.0, 0.25, 0.0])  # c·w
    noisy = torch.tensor([False, True, False, False, True])
    m = selection.hinge_metrics(clean, weight, noisy)
    assert m["selected"] == pytest.approx(0.6) and m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["weight_mean"] == pytest.approx(0.35) and m["weight_precision"] == pytest.approx(0.75 / 1.75)
    assert set(selection.hinge_metrics(clean, weight, None)) == {"selected", "weight_mean"}

"""The trainer: each method's loss is what its name says, every method runs end to end, the
checkpoint is atomic, and an interrupted run resumed gives bitwise the same weights."""

from __future__ import annotations

import json

import pytest
import torch

import srem_kernels
from srem_kernels.train import trainer
from srem_kernels.train.methods import METHODS, batch_loss

TAU, MARGIN = 0.05, 0.2


def _pairs(B=12, D=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=1)
    txt = torch.nn.functional.normalize(img + 0.7 * torch.randn(B, D, generator=g, dtype=torch.float64), dim=1)
    return img, txt


def _loss(name, img, txt, clean=None, warming_up=False):
    return batch_loss(METHODS[name], img, txt, tau=TAU, margin=MARGIN, clean=clean, warming_up=warming_up, backend="auto")


def test_vsepp_is_the_max_violation_hinge():
    img, txt = _pairs()
    S = img @ txt.T
    pos = S.diag()
    off = S - 1e9 * torch.eye(len(S), dtype=S.dtype)
    expected = ((MARGIN - pos + off.max(1).values).clamp_min(0) + (MARGIN - pos + off.max(0).values).clamp_min(0)).mean()
    torch.testing.assert_close(_loss("vsepp", img, txt)[0], expected)


def test_rcl_is_the_unbiased_complementary_loss():
    img, txt = _pairs()
    Z = img @ txt.T / TAU
    pr, pc = Z.softmax(1), Z.softmax(0)
    off = ~torch.eye(len(Z), dtype=torch.bool)
    expected = (-(torch.log(1 - pr + 1e-10) * off).sum(1) - (torch.log(1 - pc.T + 1e-10) * off).sum(1)).mean()
    torch.testing.assert_close(_loss("rcl", img, txt)[0], expected)


def test_infonce_is_the_symmetric_cross_entropy():
    img, txt = _pairs()
    Z = img @ txt.T / TAU
    expected = (-(Z.log_softmax(1).diag()).mean() - (Z.log_softmax(0).diag()).mean()) / 2
    torch.testing.assert_close(_loss("infonce", img, txt)[0], expected)


def test_srem_schedule_warmup_dataset_and_inbatch_selection():
    img, txt = _pairs()
    clean = torch.tensor([1.0, 0.0] * 6, dtype=torch.float64)
    warm, _ = _loss("srem", img, txt, clean=clean, warming_up=True)
    torch.testing.assert_close(warm, srem_kernels.loss(img, txt, lambda_hard=0.0, select="none").loss)
    loss, out = _loss("srem", img, txt, clean=clean)
    torch.testing.assert_close(loss, srem_kernels.loss(img, txt, clean=clean).loss)
    assert torch.equal(out.stats.clean, clean)
    for name, opts in (("srem-nobias", {"bias": False}), ("srem-nosce", {"sce_weight": False}),
                       ("srem-sce-margin", {"sensitivity": "margin"}), ("srem-sce-clean", {"sensitivity": "clean"}),
                       ("srem-sce-rank", {"sensitivity": "rank"}),
                       ("srem-nosce-lh0.5", {"sce_weight": False, "lambda_hard": 0.5}),
                       ("srem-nosce-lh2", {"sce_weight": False, "lambda_hard": 2.0})):
        torch.testing.assert_close(_loss(name, img, txt, clean=clean)[0], srem_kernels.loss(img, txt, clean=clean, **opts).loss)
    # no hinge: the complementary term alone, the dataset weights unused
    torch.testing.assert_close(_loss("srem-nohinge", img, txt, clean=clean)[0], warm)
    loss, out = _loss("srem-inbatch", img, txt, clean=clean)  # dataset weights ignored: SPEC's in-batch GMM
    torch.testing.assert_close(loss, srem_kernels.loss(img, txt, select="gmm").loss)


def _cfg(tmp_path, **kw):
    base = dict(dataset="synthetic", synthetic_size="tiny", noise=0.4, method="srem", seed=3, output=str(tmp_path / "run"),
                epochs=3, warmup_epochs=1, batch_size=64, embed_dim=16, progress=False, quiet=True)
    base.update(kw)
    return trainer.TrainConfig(**base)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_and_logs(tmp_path, method):
    res = trainer.train(_cfg(tmp_path, method=method, epochs=2))
    out = tmp_path / "run"
    log = [json.loads(line) for line in (out / trainer.LOG).read_text().splitlines()]
    assert [e["epoch"] for e in log] == [0, 1] and all(e["loss"] > 0 for e in log)
    assert 0 <= res["test"]["rsum"] <= 600 and json.loads((out / trainer.RESULTS).read_text())["test"] == res["test"]
    assert not list(out.glob("*.tmp"))
    if METHODS[method].selection != "none":  # epoch 1 is past the warm-up: selection measured
        assert {"sel_selected", "sel_precision", "sel_recall"} <= set(log[1]) and "sel_precision" not in log[0]
        # and what the hinge used: its clean flags and the share of its weight on clean pairs
        assert {"hinge_precision", "hinge_recall", "hinge_weight_mean", "hinge_weight_precision"} <= set(log[1])
        assert "hinge_precision" not in log[0] and 0 <= log[1]["hinge_weight_precision"] <= 1


@pytest.mark.parametrize("method", ["vsepp", "srem", "srem-inbatch"])
def test_host_reads_do_not_grow_with_the_steps(tmp_path, monkeypatch, method):
    """The loss's sum and what the hinge used stay on the device through an epoch and are read
    once: a run's host reads (device syncs on a GPU) are the same at 8 steps an epoch as at 4.
    Adam's reads of its step counters (CPU tensors, no sync) are left out; a progress bar that is
    not shown (not a terminal) reads nothing."""
    from torch.utils._python_dispatch import _disable_current_modes

    from bench import opcount

    adam_step = torch.optim.Adam.step

    def uncounted(self, *args, **kwargs):
        with _disable_current_modes():
            return adam_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", uncounted)
    reads = []
    for batch in (32, 64):  # 256 tiny training pairs: 8 and 4 steps an epoch
        cfg = _cfg(tmp_path / str(batch), method=method, epochs=2, batch_size=batch, progress=True, quiet=False)
        reads.append(opcount.count(lambda: trainer.train(cfg)).reads)
    assert reads[0] == reads[1], reads


def test_resume_after_interrupt_gives_bitwise_the_same_weights(tmp_path, monkeypatch):
    full = trainer.train(_cfg(tmp_path / "a"))
    a = torch.load(tmp_path / "a" / "run" / trainer.CHECKPOINT, weights_only=False)

    save = trainer.save_checkpoint

    def interrupted(state, output):
        save(state, output)
        if state["epoch"] == 1:
            # as if killed after epoch 2 was logged but before its checkpoint was written
            with open(output / trainer.LOG, "a") as f:
                f.write(json.dumps({"epoch": 2, "loss": -1.0}) + "\n")
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(_cfg(tmp_path / "b"))
    monkeypatch.setattr(trainer, "save_checkpoint", save)
    assert torch.load(tmp_path / "b" / "run" / trainer.CHECKPOINT, weights_only=False)["epoch"] == 1
    resumed = trainer.train(_cfg(tmp_path / "b", resume=True))
    b = torch.load(tmp_path / "b" / "run" / trainer.CHECKPOINT, weights_only=False)
    assert b["epoch"] == a["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["clean"], b["clean"])
    assert resumed["test"] == full["test"]
    strip = lambda p: [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in p.read_text().splitlines()]
    assert strip(tmp_path / "a" / "run" / trainer.LOG) == strip(tmp_path / "b" / "run" / trainer.LOG)


def test_resume_refuses_another_configuration(tmp_path):
    trainer.train(_cfg(tmp_path, epochs=1, warmup_epochs=0))
    with pytest.raises(ValueError, match="written with noise=0.4, not noise=0.2"):
        trainer.train(_cfg(tmp_path, epochs=2, warmup_epochs=0, noise=0.2, resume=True))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "ck"
    out.mkdir()
    trainer.save_checkpoint({"epoch": 0}, out)

    def torn(obj, path):
        with open(path, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(trainer.torch, "save", torn)
    with pytest.raises(OSError):
        trainer.save_checkpoint({"epoch": 1}, out)
    monkeypatch.undo()
    assert torch.load(out / trainer.CHECKPOINT)["epoch"] == 0


def test_precomputed_layout_trains_end_to_end(tmp_path):
    from tests.test_train_data import write_precomp

    root = write_precomp(tmp_path / "data", name="coco", n_img=(12, 5, 10), test_split="testall")
    res = trainer.train(_cfg(tmp_path, dataset="coco", data_path=str(root), noise=0.2, batch_size=8, epochs=2))
    assert "fold_rsum" in res["test"] and 0 <= res["test"]["rsum"] <= 600


def test_progress_bars_only_on_a_terminal(tmp_path, capfd):
    """A log or CI output (stderr not a terminal) gets no tqdm carriage-return updates, only one line per epoch."""
    trainer.train(_cfg(tmp_path, epochs=2, progress=True, quiet=False))
    out, err = capfd.readouterr()
    assert "\r" not in out and "\r" not in err
    assert [line.split()[:2] for line in out.splitlines() if line.startswith("epoch")] == [["epoch", "0"], ["epoch", "1"]]

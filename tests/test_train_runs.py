"""Runs are never lost: a folder that holds a run is refused unless --resume or --overwrite says
what to do with it, and a checkpoint that is not one (or another run's) is one line naming the file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from srem_kernels.train import cli, trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--synthetic-size", "tiny", "--noise", "0.4", "--epochs", "1", "--warmup-epochs", "1", "--batch-size", "64",
        "--embed-dim", "8", "--no-progress", "--quiet"]


def _run(out, *extra, capsys=None):
    rc = cli.main([*TINY, "--output", str(out), *extra])
    err = capsys.readouterr().err if capsys else ""
    return rc, err


def _snapshot(out: Path) -> dict:
    return {f: (out / f).read_bytes() for f in trainer.RUN_FILES if (out / f).exists()}


def test_a_second_run_without_resume_is_refused_and_the_first_kept(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(out, capsys=capsys)[0] == 0
    first = _snapshot(out)
    assert set(first) == set(trainer.RUN_FILES)
    rc, err = _run(out, "--seed", "1", capsys=capsys)
    assert rc == 2 and err == (f"srem-train: error: --output {out} already holds a run (checkpoint.pt, log.jsonl, "
                               "results.json): pass --resume to continue it or --overwrite to replace it\n")
    assert _snapshot(out) == first


def test_overwrite_replaces_and_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(out, capsys=capsys)[0] == 0
    old = json.loads((out / trainer.RESULTS).read_text())
    res = trainer.train(trainer.TrainConfig(dataset="synthetic", synthetic_size="tiny", noise=0.4, seed=1, epochs=1,
                                            warmup_epochs=1, batch_size=64, embed_dim=8, progress=False,
                                            output=str(out), overwrite=True))
    assert f"--overwrite: replacing the run in {out} (checkpoint.pt, log.jsonl, results.json)" in capsys.readouterr().out
    new = json.loads((out / trainer.RESULTS).read_text())
    assert new["config"]["seed"] == 1 and old["config"]["seed"] == 0 and new["test"] == res["test"]
    assert [json.loads(line)["epoch"] for line in (out / trainer.LOG).read_text().splitlines()] == [0]


def test_overwrite_removes_the_old_run_before_training(tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert _run(out)[0] == 0
    monkeypatch.setattr(trainer, "evaluation", None)  # the new run dies in its first epoch
    with pytest.raises(AttributeError):
        _run(out, "--overwrite")
    assert not (out / trainer.RESULTS).exists() and not (out / trainer.CHECKPOINT).exists()  # no old results beside it


@pytest.mark.parametrize(
    "setup, extra, message",
    [
        (None, ["--resume", "--overwrite"], "--resume and --overwrite exclude each other: continue the run in OUTPUT or replace it"),
        ("results_only", ["--resume"], "--resume: {out} holds a finished run (results.json) without the checkpoint.pt to continue from; --overwrite replaces it"),
        ("file", [], "--output {out} is a file, not a folder"),
    ],
)
def test_run_folder_arguments_one_line(tmp_path, capsys, setup, extra, message):
    out = tmp_path / "run"
    if setup == "results_only":
        out.mkdir()
        (out / trainer.RESULTS).write_text("{}")
    elif setup == "file":
        out.write_text("x")
    rc, err = _run(out, *extra, capsys=capsys)
    assert rc == 2 and err == f"srem-train: error: {message.format(out=out)}\n"


def test_resume_in_an_empty_or_log_only_folder_starts_afresh(tmp_path, capsys):
    assert _run(tmp_path / "new", "--resume", capsys=capsys)[0] == 0
    out = tmp_path / "cut"
    out.mkdir()
    (out / trainer.LOG).write_text(json.dumps({"epoch": 0, "loss": 1.0}) + "\n")
    rc = cli.main([*TINY[:-1], "--output", str(out), "--resume"])  # not quiet: it says so
    assert rc == 0 and f"--resume: no checkpoint.pt in {out} (its first epoch was interrupted): starting the run afresh" in capsys.readouterr().out


def _corrupt(kind: str, path: Path) -> str:
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return r"is not a readable checkpoint \(\w+: .+\)"
    if kind == "text":
        path.write_text("hello")
        return r"is not a readable checkpoint \(\w+: .+\)"
    if kind == "other_program":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
        return r"is not a srem-train checkpoint \(a dict without epoch, config, model, optimizer, scheduler, best, clean, rng\)"
    if kind == "list":
        torch.save([1, 2], path)
        return r"is not a srem-train checkpoint \(a list without epoch, config, .*\)"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated", "text", "other_program", "list"])
def test_a_checkpoint_that_is_not_one_is_one_line_naming_the_file(tmp_path, capsys, kind):
    out = tmp_path / "run"
    assert _run(out, "--epochs", "2")[0] == 0
    pattern = _corrupt(kind, out / trainer.CHECKPOINT)
    rc, err = _run(out, "--epochs", "2", "--resume", capsys=capsys)
    assert rc == 2 and err.count("\n") == 1
    assert re.fullmatch(r"srem-train: error: --resume: " + re.escape(str(out / trainer.CHECKPOINT)) + " " + pattern + "\n", err), err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "rcl"], "was written with method='srem', not method='rcl'"),
        (["--embed-dim", "12"], "was written with embed_dim=8, not embed_dim=12"),
        (["--batch-size", "32"], "was written with batch_size=64, not batch_size=32"),
        # every flag that changes training, not only the run's identity: the optimizer and scheduler would keep the old
        (["--tau", "0.1", "--margin", "0.3"], "was written with margin=0.2, tau=0.05, not margin=0.3, tau=0.1"),
        (["--lr", "0.01", "--lr-update", "3"], "was written with lr=0.001, lr_update=8, not lr=0.01, lr_update=3"),
        (["--warmup-epochs", "0", "--grad-clip", "1"], "was written with warmup_epochs=1, grad_clip=2.0, not warmup_epochs=0, grad_clip=1.0"),
    ],
)
def test_a_checkpoint_of_another_run_names_what_differs(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert _run(out, "--epochs", "2")[0] == 0
    rc, err = _run(out, "--epochs", "2", "--resume", *extra, capsys=capsys)
    assert rc == 2 and err == f"srem-train: error: --resume: {out / trainer.CHECKPOINT} {message}\n"


def test_a_resume_may_extend_the_run_and_change_what_does_not_train(tmp_path):
    out = tmp_path / "run"
    assert _run(out, "--epochs", "2")[0] == 0
    assert _run(out, "--epochs", "3", "--resume", "--device", "cpu", "--loss-backend", "cpu", "--dist-timeout", "60")[0] == 0
    res = json.loads((out / trainer.RESULTS).read_text())
    assert res["config"]["epochs"] == 3 and res["config"]["loss_backend"] == "cpu"
    assert [json.loads(line)["epoch"] for line in (out / trainer.LOG).read_text().splitlines()] == [0, 1, 2]


def test_a_checkpoint_of_other_training_pairs_is_refused(tmp_path, capsys):
    from tests.test_train_data import write_precomp

    root = write_precomp(tmp_path / "data")
    noise_file = root / "noise_index" / "f30k_precomp_0.4.npy"
    noise_file.parent.mkdir()
    np.save(noise_file, np.roll(np.arange(60) // 5, 5))
    out = tmp_path / "run"
    argv = ["--dataset", "f30k", "--data-path", str(root), "--noise", "0.4", "--epochs", "2", "--warmup-epochs", "1",
            "--batch-size", "8", "--embed-dim", "8", "--no-progress", "--quiet", "--output", str(out)]
    assert cli.main(argv) == 0
    np.save(noise_file, np.roll(np.arange(60) // 5, 10))  # the noise file changed under the run
    assert cli.main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"srem-train: error: --resume: {out / trainer.CHECKPOINT} was trained on other training pairs "
                          "than this run's noise (NCR's caption-level noise index") and err.count("\n") == 1


def test_make_demo_replaces_its_own_run():
    demo = re.search(r"^demo:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), flags=re.M).group(1)
    assert "--output runs/demo" in demo and "--overwrite" in demo.split()

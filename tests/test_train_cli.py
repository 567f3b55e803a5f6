"""srem-train: bad arguments give one clear line (no traceback), a run ends with the test line."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from srem_kernels.train import cli


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--noise", "1.0"], "srem-train: error: --noise must be in [0, 1); got 1.0"),
        (["--noise", "-0.1"], "srem-train: error: --noise must be in [0, 1); got -0.1"),
        (["--method", "sgr"], "srem-train: error: --method must be one of srem, vsepp, infonce, rcl, srem-nobias, srem-nosce, srem-inbatch, "
                               "srem-sce-margin, srem-sce-clean, srem-sce-rank, srem-nosce-lh0.5, srem-nosce-lh2, srem-nohinge; got 'sgr'"),
        (["--dataset", "imagenet"], "srem-train: error: --dataset must be one of synthetic, synthetic-scenes, digits, f30k, coco, cc152k; got 'imagenet'"),
        (["--batch-size", "1"], "srem-train: error: --batch-size must be at least 2 (the loss needs B >= 2); got 1"),
        (["--epochs", "2", "--warmup-epochs", "3"], "srem-train: error: --warmup-epochs (3) must not exceed epochs (2)"),
        (["--loss-backend", "tpu"], "srem-train: error: --loss-backend must be 'auto' or one of triton, cuda, cpu, reference; got 'tpu'"),
        (["--dataset", "f30k"], "srem-train: error: --data-path is required for f30k: the folder that holds f30k_precomp/"),
    ],
)
def test_bad_arguments_one_line(argv, message, capsys, tmp_path):
    assert cli.main([*argv, "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == message + "\n"


def test_an_unavailable_backend_one_line(capsys, tmp_path):
    import srem_kernels

    missing = [s for s in srem_kernels.backends().values() if not s.available]
    if not missing:
        pytest.skip("every backend runs here")
    assert cli.main(["--loss-backend", missing[0].name, "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"srem-train: error: --loss-backend {missing[0].name} is not available here: {missing[0].reason}\n"


@pytest.mark.parametrize("argv, message", [(["--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
                                           (["--bogus"], "unrecognized arguments: --bogus")])
def test_parse_errors_one_line(argv, message):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == f"srem-train: error: {message}"


def test_console_entry_prints_one_line_and_exit_code_2():
    p = subprocess.run([sys.executable, "-m", "srem_kernels.train", "--noise", "2"], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == ["srem-train: error: --noise must be in [0, 1); got 2.0"]


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_run_ends_with_the_test_line(tmp_path, capsys, backend):
    argv = ["--loss-backend", backend, "--synthetic-size", "tiny", "--noise", "0.4", "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "32",
            "--embed-dim", "16", "--no-progress", "--output", str(tmp_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"test: i2t R@1 [\d.]+ R@5 [\d.]+ R@10 [\d.]+ \| t2i R@1 [\d.]+ R@5 [\d.]+ R@10 [\d.]+ \| rSum [\d.]+", out[-1])
    assert any("selection precision" in line for line in out)

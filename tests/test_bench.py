"""The benchmark runs end to end (tiny sizes) and writes its log, table and plots; the
micro-benchmarks of the CPU paths run once each (timed only with --benchmark-enable)."""

from __future__ import annotations

import csv

import pytest
import torch

import srem_kernels
from bench import report, run


def test_bench_writes_log_table_and_plots(tmp_path):
    log = run.main(["--quick", "--batch", "32", "64", "--repeats", "2", "--only", "srem:reference", "--out", str(tmp_path)])
    rows = list(csv.DictReader(log.open()))
    names = {r["contender"] for r in rows}
    assert names == {"floor:matmuls", "srem:reference"}
    assert {r["phase"] for r in rows} == {"fwd", "bwd", "fwd+bwd"}
    for r in rows:
        assert r["status"] == "ok" and float(r["median_ms"]) > 0, r
        assert r["device"] and r["commit"] and r["date"] and r["command"].startswith("python -m bench")
    md = (tmp_path / "RESULTS.md").read_text()
    assert "| `srem:reference` |" in md and "B=64" in md
    assert list((tmp_path / "plots").glob("*.png"))


def test_report_marks_missing_gpu_run(tmp_path):
    out = report.main(["--results", str(tmp_path), "--output", str(tmp_path / "R.md")])
    assert "Awaits a run on a GPU machine" in out.read_text()


CPU_BACKENDS = [n for n, s in srem_kernels.backends().items() if s.available and "cpu" in s.devices]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_micro_forward_backward(benchmark, backend):
    img, txt = run.inputs(512, 128, torch.float32, torch.device("cpu"))

    def step():
        srem_kernels.loss(img, txt, backend=backend, check_finite=False).loss.backward()

    benchmark.pedantic(step, rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_micro_statistics(benchmark, backend):
    img, txt = run.inputs(512, 128, torch.float32, torch.device("cpu"))
    img, txt = img.detach(), txt.detach()
    benchmark.pedantic(lambda: srem_kernels.loss(img, txt, backend=backend, check_finite=False), rounds=5, warmup_rounds=1)


def test_distributed_bench_writes_per_rank_rows(tmp_path):
    from bench import distributed

    rows = distributed.main(["--batch", "64", "--dim", "8", "--ranks", "2", "--repeats", "1", "--out", str(tmp_path / "d.csv")])
    assert [r["rank"] for r in rows] == [0, 1]
    # each rank receives the other's embeddings (32 × 2 × 8 fp32) and its per-sample vectors
    assert all(r["received_mib"] * 2**20 >= 32 * 2 * 8 * 4 and r["fwd_bwd_ms"] > 0 for r in rows)
    assert len(list(csv.DictReader((tmp_path / "d.csv").open()))) == 2

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


def test_fixed_cost_bench_counts_times_and_reports(tmp_path):
    from bench import fixed_cost

    run.main(["--quick", "--batch", "16", "--repeats", "1", "--only", "srem:reference", "--out", str(tmp_path),
              "--no-report"])  # fmt: skip
    log = fixed_cost.main(["--batch", "16", "--dim", "8", "--repeats", "2", "--out", str(tmp_path)])
    rows = list(csv.DictReader(log.open()))
    cpu = [r for r in rows if r["backend"] == "cpu"]
    assert {r["config"] for r in cpu} == set(fixed_cost.CONFIGS)
    timed = [r for r in cpu if r["median_ms"]]
    assert len(timed) == 1 and float(timed[0]["ratio_to_floor"]) > 0
    assert all(int(r["aten_ops"]) > 0 for r in rows)
    md = report.main(["--results", str(tmp_path), "--output", str(tmp_path / "R.md")]).read_text()
    assert "### Fixed cost per call" in md and "| `cpu` | 16 | 8 | defaults |" in md


def test_opcount_sees_operators_reads_copies_and_custom_ops():
    from bench import opcount

    x = torch.randn(4)
    c = opcount.count(lambda: (x + 1).sum().item())
    assert (c.aten, c.reads) == (3, 1) and c.by_op["add"] == 1  # add, sum, _local_scalar_dense
    assert opcount.count(lambda: x.view(2, 2).t()).aten == 0  # views launch nothing
    assert opcount.count(lambda: torch.tensor([1.0, 2.0])).h2d == 1
    v = {k: torch.rand(6) for k in ("lse_r", "lse_c", "pos", "hard_i2t", "hard_t2i", "sce", "loss_cbcl")}
    from srem_kernels.backends import glue

    inside = opcount.count(lambda: glue.glue_forward_op(*v.values(), None, None, None, None, 0.2, 0.05, None, 1.0, 1.0, True,
                                                        2, 0, "torch"))  # fmt: skip (tau_t None: a float tau)
    assert inside.aten > 5  # the custom op's torch form, counted from inside


def test_report_keeps_hand_kept_sections(tmp_path):
    (tmp_path / "triton.section.md").write_text("## Triton\n\nCounted, not timed.\n")
    md = report.main(["--results", str(tmp_path), "--output", str(tmp_path / "R.md")]).read_text()
    assert md.rstrip().endswith("## Triton\n\nCounted, not timed.")


def test_breakdown_bench_times_every_phase_and_reports(tmp_path):
    from bench import breakdown

    log = breakdown.main(["--batch", "16", "--dim", "8", "--repeats", "2", "--threads", "1", "--out", str(tmp_path)])
    rows = list(csv.DictReader(log.open()))
    phases = {r["phase"] for r in rows}
    assert set(breakdown.IN_CALL) | set(breakdown.LAYERS) | {"whole call", "rest (Python, autograd, arguments)"} <= phases
    assert all(r["ns_per_element"] for r in rows if r["phase"] in breakdown.ELEMENTWISE)
    run.main(["--quick", "--batch", "16", "--repeats", "1", "--only", "srem:reference", "--out", str(tmp_path),
              "--no-report"])  # fmt: skip
    md = report.main(["--results", str(tmp_path), "--output", str(tmp_path / "R.md")]).read_text()
    assert "### Where the time goes" in md and "| pass 2 |" in md

"""The GPU check (scripts/gpu_check.sh, bench/gpu_check/) before any device time is spent: its
dry run on this CPU (every tier at tiny sizes, Triton's interpreter), the budget's skips, a
failing or hanging tier that does not stop the next, and the parsers of what a device prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.gpu_check import backends, correctness, driver
from bench.gpu_check.budget import Deadline, Results, Row, table

ROOT = Path(__file__).resolve().parents[1]


def _check(out: Path, *args: str, timeout: float = 900):
    env = dict(os.environ, PY=sys.executable, OUT=str(out))
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check-out")
    res = _check(out, "--dry-run", "--budget", "600")
    return res, out, {(r.tier, r.check): r for r in Results(out).rows()}


def test_dry_run_passes_every_tier(dry_run):
    res, out, rows = dry_run
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for tier in driver.TIERS:
        assert rows[(tier, "tier")].status in ("PASS", "INFO"), (tier, rows[(tier, "tier")])


def test_dry_run_checks_each_variant_against_the_reference(dry_run):
    _, _, rows = dry_run
    for backend in ("triton", "cpu"):
        for name, _ in backends.VARIANTS[backend]:
            for B, D in correctness.SHAPES["dry"]:
                for dt in correctness.DTYPE_NAMES:
                    r = rows[("correctness", f"{name} {dt} B={B} D={D}")]
                    assert r.status == "PASS" and r.detail == "bitwise reproducible", r
                    assert re.search(r"rel err loss \S+, d_img \S+, d_txt \S+", r.value), r


def test_dry_run_measures_and_tests(dry_run):
    _, out, rows = dry_run
    speed = [r for (tier, _), r in rows.items() if tier == "speed" and r.check.startswith("fwd+bwd")]
    assert {r.check.split()[-1] for r in speed} >= {"floor:matmuls", "srem:triton:streaming", "srem:triton:materialised"}
    assert all("ms" in r.value for r in speed), speed
    assert (out / "speed.csv").read_text().startswith("run,date,commit")  # bench/results' format
    assert rows[("sanitizer", "tiny triton (no compute-sanitizer)")].status == "PASS"
    ran = rows[("pytest", "pytest " + " ".join(driver.PYTEST["dry"]))]
    assert ran.status == "PASS" and re.fullmatch(r"\d+ passed", ran.value), ran
    assert re.match(r"\d+ GPU tests collected", rows[("pytest", "pytest -m gpu --collect-only")].value)


def test_dry_run_output_fits_what_a_device_returns(dry_run):
    """At most 8 plain-named files, no folders; the table closes the output."""
    res, out, _ = dry_run
    files = list(out.iterdir())
    assert len(files) <= 8 and all(f.is_file() and re.fullmatch(r"[A-Za-z0-9._-]+", f.name) for f in files), files
    table_text = (out / "table.txt").read_text()
    assert res.stdout.rstrip().endswith(table_text.rstrip())
    assert len(table_text) < 12000


def test_a_budget_too_small_skips_every_tier(tmp_path):
    res = _check(tmp_path, "--dry-run", "--budget", "1", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = Results(tmp_path).rows()
    assert [(r.tier, r.status) for r in rows] == [(t, "SKIP") for t in driver.TIERS]
    assert all(r.detail.startswith("skipped (budget)") for r in rows)
    assert "skipped (budget)" in res.stdout


def _ctx(tmp_path):
    return driver.Context(tmp_path, sys.executable, True, Results(tmp_path), dict(os.environ))


def test_a_failing_tier_does_not_stop_the_next(tmp_path):
    ctx = _ctx(tmp_path)
    seen = {}

    def boom(ctx, deadline):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def fine(ctx, deadline):
        seen["left"] = deadline.left()
        ctx.results.add(Row("second", "x", "PASS"))

    tiers = [driver.Tier("first", 0.0, 5.0, boom), driver.Tier("second", 0.0, 3.0, fine),
             driver.Tier("third", 1e6, None, fine)]  # fmt: skip
    driver.run_tiers(tiers, ctx, Deadline(time.time() + 100))
    got = [(r.tier, r.check, r.status) for r in ctx.results.rows()]
    assert got == [("first", "driver", "ERROR"), ("first", "tier", "ERROR"), ("second", "x", "PASS"),
                   ("second", "tier", "PASS"), ("third", "tier", "SKIP")]  # fmt: skip
    assert 0 < seen["left"] <= 3.0  # the tier's cap, not the whole budget
    text = table(ctx.results.rows(), "t")
    assert "illegal memory access" in text and "skipped (budget)" in text


def test_a_process_past_its_deadline_is_killed_and_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(driver, "GRACE_S", 0.5)
    ctx = _ctx(tmp_path)
    t0 = time.time()
    rc, _ = driver.call(ctx, [sys.executable, "-c", "import time; time.sleep(60)"], Deadline(time.time()))
    assert rc is None and time.time() - t0 < 30
    driver.worker(ctx, Deadline(time.time()), "t", "no_such_module")
    (row,) = ctx.results.rows()
    assert row.status == "ERROR" and row.check == "process:no_such_module" and "exited 1" in row.detail


def test_a_worker_skips_its_cases_past_the_deadline(tmp_path):
    correctness.main(["--backend", "cpu", "--out", str(tmp_path), "--deadline", str(time.time()), "--dry-run"])
    rows = Results(tmp_path).rows()
    assert len(rows) == len(correctness.SHAPES["dry"]) * len(correctness.DTYPE_NAMES)
    assert all(r.status == "SKIP" and r.detail.startswith("skipped (budget)") for r in rows)


def test_pytest_outcomes_from_a_verbose_log():
    log = ("tests/test_gpu_cuda.py::test_a[own-gemm-fp32] PASSED     [  1%]\n"
           "tests/test_gpu_cuda.py::test_a[torch-gemm-bf16] FAILED    [  2%]\n"
           "tests/test_gpu_triton.py::test_b SKIPPED (why)               [  3%]\n"
           "FAILED tests/test_gpu_cuda.py::test_a[torch-gemm-bf16] - AssertionError\n")  # fmt: skip
    got = driver.pytest_outcomes(log)
    assert {k: len(v) for k, v in got.items()} == {"PASSED": 1, "FAILED": 1, "SKIPPED": 1}


def test_cuda_resources_from_cuobjdump():
    dump = """ Function _ZN45_GLOBAL__N__46c61379_12_srem_cuda_cu_6bc95a849gemm_simtIfEEvPKfllPKT_llPflllli:
  REG:40 STACK:0 SHARED:8704 LOCAL:0 CONSTANT[0]:444 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _Z3fooPf:
  REG:255 STACK:16 SHARED:0 LOCAL:16 CONSTANT[0]:360 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
    got = driver.cuda_resources(dump, driver._demangle)
    assert [g[1:] for g in got] == [(40, 0, 0), (255, 16, 16)]
    assert got[1][0] == "foo" or got[1][0] == "_Z3fooPf"  # demangled where c++filt is installed

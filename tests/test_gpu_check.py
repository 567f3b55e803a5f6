"""The GPU check (scripts/gpu_check.sh, bench/gpu_check/) before any device time is spent: its
dry run on this CPU (every tier at tiny sizes, Triton's interpreter), the budget's skips, a
failing or hanging tier that does not stop the next, the device's test selections, the lookup of
the CUDA module, and the parsers of what a device prints (pytest, pip -v, cuobjdump)."""

from __future__ import annotations

import csv
import importlib.machinery
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import srem_kernels
from bench.gpu_check import driver, speed
from bench.gpu_check.budget import Deadline, Results, Row, table
from bench.run import COLUMNS

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
    """Tier 5's tests need a GPU: on a CPU each of its runs collects them and skips them all."""
    res, out, rows = dry_run
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for tier in driver.TIERS:
        want = ("SKIP",) if tier == "pytest" else ("PASS", "INFO")
        assert rows[(tier, "tier")].status in want, (tier, rows[(tier, "tier")])


def test_dry_run_self_checks_first_and_records_the_reports(dry_run):
    """Tier 1 checks triton before anything else runs; tier 3 the built backend (cpu standing in
    for cuda); each report lands in env.txt, each part a row, and the first-use part's cost."""
    _, out, rows = dry_run
    assert list(driver.TIERS)[0] == "selfcheck" and driver.SELFCHECK["device"] == ("triton", "cuda")
    first = rows[("selfcheck", "triton fp32 aligned")]
    assert first.status == "PASS" and first.value.startswith("5/5 cases passed"), first
    assert rows[("selfcheck", "triton first-use part fp32 aligned embeddings")].status == "INFO"
    env = (out / "env.txt").read_text()
    assert env.index("## self-check triton fp32 aligned") < env.index("## date")  # before tier 2's sections
    assert "PASS: 5 of 5 cases passed" in env
    if srem_kernels.backends()["cpu"].available:
        assert rows[("selfcheck", "cpu fp32 aligned")].status == "PASS"
        assert "## self-check cpu fp32 aligned" in env


def _ran_in_order(log: str) -> list[str]:
    return re.findall(r"^(\S+::\S+) (?:PASSED|FAILED|ERROR|SKIPPED)", log, flags=re.M)


def test_dry_run_tier_2_is_a_pytest_selection_per_backend(dry_run):
    """Each selection in a process of its own, its tests in the order given (most telling first);
    cpu, the stand-in for cuda, skips where its compiled module is not built."""
    _, out, rows = dry_run
    ran = _ran_in_order((out / "pytest.log").read_text())
    for name, _, ids in driver.CORRECTNESS["dry"]:
        r = rows[("correctness", f"{name} pytest {ids[0].split('::')[0]}")]
        if name == "cpu" and not srem_kernels.backends()["cpu"].available:
            assert r.status == "SKIP" and r.value == f"{len(ids)} skipped" and "unavailable" in r.detail, r
        else:
            assert r.status == "PASS" and r.value == f"{len(ids)} passed", r
        assert [t for t in ran if t in ids] == ids


def test_dry_run_tier_5_runs_a_process_per_file_without_tier_2s_tests(dry_run):
    _, out, rows = dry_run
    log = (out / "pytest.log").read_text()
    commands = [ln for ln in log.splitlines() if ln.startswith("$ ") and " -m gpu " in ln]
    assert len(commands) == len(driver.PYTEST)
    tier2 = [t for _, _, ids in driver.CORRECTNESS["dry"] for t in ids]
    assert all(f"--deselect {t}" in c for c in commands for t in tier2)
    for name, _, args in driver.PYTEST:
        (r,) = [r for (tier, check), r in rows.items() if tier == "pytest" and check.startswith(f"{name} pytest")]
        assert r.status == "SKIP" and re.fullmatch(r"\d+ skipped", r.value) and "needs a CUDA device" in r.detail, r
    assert "tests/test_gpu_triton.py::" in log and "tests/test_gpu_cuda.py::" in log


def test_dry_run_measures_each_backend_in_its_own_process(dry_run):
    _, out, rows = dry_run
    speed = [r for (tier, check), r in rows.items() if tier == "speed" and " fwd+bwd " in check]
    raced = {(r.check.split()[0], r.check.split()[-1]) for r in speed}
    assert raced >= {("triton", "floor:matmuls"), ("triton", "srem:triton:streaming"), ("triton", "srem:triton:materialised"),
                     ("reference", "floor:matmuls"), ("reference", "srem:reference")}  # fmt: skip
    assert all("ms" in r.value for r in speed), speed
    cpu = "cpu" if srem_kernels.backends()["cpu"].available else None
    assert (("cpu", "srem:cpu") in raced) == bool(cpu) and (cpu or rows[("speed", "cpu available")].status == "SKIP")
    with (out / "speed.csv").open() as f:
        logged = list(csv.DictReader(f))  # bench/results' format, one run id for the tier
    assert list(logged[0]) == list(COLUMNS) and len({r["run"] for r in logged}) == 1
    assert rows[("sanitizer", "tiny triton (no compute-sanitizer)")].status == "PASS"


def test_dry_run_output_fits_what_a_device_returns(dry_run):
    """At most 8 plain-named files, no folders; the table closes the output."""
    res, out, _ = dry_run
    files = list(out.iterdir())
    assert len(files) <= 8 and all(f.is_file() and re.fullmatch(r"[A-Za-z0-9._-]+", f.name) for f in files), files
    table_text = (out / "table.txt").read_text()
    assert res.stdout.rstrip().endswith(table_text.rstrip())
    assert len(table_text) < 12000


def test_the_device_selections_name_tests_that_exist():
    """Tier 2's node ids (a missing one costs the device run its pytest process)."""
    ids = [t for _, _, ts in driver.CORRECTNESS["device"] for t in ts]
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", *ids],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    collected = {ln.split("[")[0] for ln in res.stdout.splitlines() if "::" in ln}
    assert collected == set(ids)
    assert {b for b, _ in driver.SPEED["device"] + driver.SPEED["dry"]} <= set(speed.PLANS)


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
    monkeypatch.setattr(driver, "call", lambda *a, **k: (None, "first race: 80.0 s"))
    driver.worker(ctx, Deadline(time.time()), "t", "speed", "--backend", "cuda")
    crashed, killed = ctx.results.rows()
    assert crashed.status == "ERROR" and crashed.check == "process:no_such_module" and "exited 1" in crashed.detail
    assert killed.status == "SKIP" and killed.check == "process:speed --backend cuda", killed
    assert killed.detail.startswith("skipped (budget): killed at its deadline") and "first race" in killed.detail


def test_a_speed_worker_skips_its_race_past_the_deadline(tmp_path):
    speed.main(["--backend", "reference", "--out", str(tmp_path), "--deadline", str(time.time()), "--dry-run"])
    (row,) = Results(tmp_path).rows()
    assert row.status == "SKIP" and row.check.startswith("reference fwd+bwd") and row.detail.startswith("skipped (budget)")


def test_shares_of_a_deadline_follow_their_weights():
    d = Deadline(time.time() + 100)
    assert 74 < d.share([3, 1]).left() <= 75 and 49 < d.share(2).left() <= 50


def test_pytest_outcomes_from_a_verbose_log():
    log = ("tests/test_gpu_cuda.py::test_a[own-gemm-fp32] PASSED     [  1%]\n"
           "tests/test_gpu_cuda.py::test_a[torch-gemm-bf16] FAILED    [  2%]\n"
           "tests/test_gpu_triton.py::test_b SKIPPED (why)               [  3%]\n"
           "FAILED tests/test_gpu_cuda.py::test_a[torch-gemm-bf16] - AssertionError\n")  # fmt: skip
    got = driver.pytest_outcomes(log)
    assert {k: len(v) for k, v in got.items()} == {"PASSED": 1, "FAILED": 1, "SKIPPED": 1}


# a pytest -v -rfEs log: two of five tests, then the budget's kill (no summary)
CUT_OFF = """collecting ... collected 9 items / 4 deselected / 5 selected

tests/test_gpu_triton.py::test_tf32_follows_matmul_precision PASSED      [ 20%]
tests/test_gpu_triton.py::test_matches_reference_at_size[fp32-4096-256-default-streaming] PASSED [ 40%]
tests/test_gpu_triton.py::test_matches_reference_at_size[fp32-4096-256-default-materialised] """
FAILING = """collecting ... collected 3 items

tests/test_gpu_cuda.py::test_a[own-gemm] PASSED                          [ 33%]
tests/test_gpu_cuda.py::test_a[torch-gemm] FAILED                        [ 66%]
tests/test_gpu_cuda.py::test_b SKIPPED (needs 2 GPUs)                    [100%]
=========================== short test summary info ============================
SKIPPED [1] tests/test_gpu_cuda.py:40: needs 2 GPUs
FAILED tests/test_gpu_cuda.py::test_a[torch-gemm] - AssertionError: loss: rel err 3.1e-04 > 1e-05
==================== 1 failed, 1 passed, 1 skipped in 9.12s ====================
"""
SKIPPED_ALL = """collecting ... collected 2 items

tests/test_gpu_cuda.py::test_a SKIPPED (needs a CUDA device)             [ 50%]
tests/test_gpu_cuda.py::test_b SKIPPED (needs a CUDA device)             [100%]
=========================== short test summary info ============================
SKIPPED [2] tests/test_gpu_cuda.py: needs a CUDA device
"""


def test_pytest_rows_of_a_run_the_budget_cut_off_a_failing_run_and_a_skipped_one():
    (cut,) = driver.pytest_rows("correctness", "triton", None, CUT_OFF, 90.0)
    assert (cut.status, cut.value, cut.detail) == ("INFO", "2 passed", "partial 2/5: stopped at the budget")
    assert cut.check == "triton pytest tests/test_gpu_triton.py"
    head, failed = driver.pytest_rows("pytest", "cuda", 1, FAILING, 9.0)
    assert (head.status, head.value) == ("FAIL", "1 passed, 1 failed, 1 skipped")
    assert (failed.status, failed.check) == ("FAIL", "cuda tests/test_gpu_cuda.py::test_a[torch-gemm]")
    assert failed.detail == "AssertionError: loss: rel err 3.1e-04 > 1e-05"
    (cut_failing, _) = driver.pytest_rows("pytest", "cuda", None, FAILING.split("=====")[0], 9.0)
    assert cut_failing.status == "FAIL" and cut_failing.detail.startswith("partial 3/3")
    (skip,) = driver.pytest_rows("pytest", "cuda", 0, SKIPPED_ALL, 1.0)
    assert (skip.status, skip.value, skip.detail) == ("SKIP", "2 skipped", "needs a CUDA device")
    (passed,) = driver.pytest_rows("pytest", "cuda", 0, FAILING.replace("FAILED", "PASSED").split("=====")[0], 9.0)
    assert passed.status == "PASS"
    (broken,) = driver.pytest_rows("pytest", "x", 4, "ERROR: not found: tests/test_x.py::nope\n", 1.0)
    assert broken.status == "ERROR" and "not found" in broken.detail


def test_cuda_resources_from_cuobjdump():
    dump = """ Function _ZN45_GLOBAL__N__46c61379_12_srem_cuda_cu_6bc95a849gemm_simtIfEEvPKfllPKT_llPflllli:
  REG:40 STACK:0 SHARED:8704 LOCAL:0 CONSTANT[0]:444 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _Z3fooPf:
  REG:255 STACK:16 SHARED:0 LOCAL:16 CONSTANT[0]:360 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
    got = driver.cuda_resources(dump, driver._demangle)
    assert [g[1:] for g in got] == [(40, 0, 0), (255, 16, 16)]
    assert got[1][0] == "foo" or got[1][0] == "_Z3fooPf"  # demangled where c++filt is installed


def test_the_cuda_module_is_looked_up_where_setup_py_builds_it(tmp_path, monkeypatch):
    """The module setup.py names, found on the package's path (a stand-in file here: no GPU build)."""
    import srem_kernels.backends as pkg

    assert f'"{driver.CUDA_MODULE}"' in (ROOT / "setup.py").read_text()
    monkeypatch.delitem(sys.modules, driver.CUDA_MODULE, raising=False)  # find_spec would answer from it
    monkeypatch.setattr(pkg, "__path__", [str(tmp_path)])
    assert driver.module_file(driver.CUDA_MODULE) is None
    built = tmp_path / ("_srem_cuda" + importlib.machinery.EXTENSION_SUFFIXES[0])
    built.write_bytes(b"")
    importlib.invalidate_caches()
    assert driver.module_file(driver.CUDA_MODULE) == built


# `pip wheel -v` of setup.py with a broken srem_cuda.cu (captured 2026-12-01, pip 23.2 on this
# CPU, paths shortened): setup.py's notice and the nvcc error, both hidden without -v
PIP_V_LOG = """  running build_ext
  building 'srem_kernels.backends._srem_cpu' extension
  copying srem_kernels/errors.py -> build/lib.linux-x86_64-cpython-311/srem_kernels
  g++ -Wsign-compare -DNDEBUG -g -fwrapv -O3 -Wall -fPIC -c csrc/cpu/stats.cpp -o build/temp/csrc/cpu/stats.o -std=c++17 -O3
  ninja: Entering directory `/x/build/temp.linux-x86_64-cpython-311/cuda'
  [1/1] nvcc /x/csrc/cuda/srem_cuda.cu
  FAILED: /x/build/temp.linux-x86_64-cpython-311/cuda/srem_cuda.o
  /usr/local/bin/nvcc -O3 -std=c++17 --expt-relaxed-constexpr -Xcompiler -fPIC -lineinfo -gencode=arch=compute_90,code=sm_90 -c /x/csrc/cuda/srem_cuda.cu
  /x/csrc/cuda/srem_cuda.cu(15): error: identifier "undefined_name" is undefined
    int broken_here = undefined_name;
                      ^

  1 error detected in the compilation of "/x/csrc/cuda/srem_cuda.cu".
  ninja: build stopped: subcommand failed.
  srem-kernels: skipping optional module srem_kernels.backends._srem_cuda: Command '['/usr/bin/ninja', '-C', '/x/build/temp.linux-x86_64-cpython-311/cuda']' returned non-zero exit status 1.
  installing to build/bdist.linux-x86_64/wheel
"""


def test_a_skipped_module_in_a_verbose_install_log_is_found_with_its_error():
    (problem,) = driver.install_problems(PIP_V_LOG)
    assert problem.startswith("srem-kernels: skipping optional module srem_kernels.backends._srem_cuda")
    assert problem.endswith('[/x/csrc/cuda/srem_cuda.cu(15): error: identifier "undefined_name" is undefined]')
    fatal = PIP_V_LOG.replace('/x/csrc/cuda/srem_cuda.cu(15): error: identifier "undefined_name" is undefined',
                              "nvcc fatal   : Unsupported gpu architecture 'compute_12'")  # fmt: skip
    assert driver.install_problems(fatal)[0].endswith("[nvcc fatal   : Unsupported gpu architecture 'compute_12']")
    assert driver.install_problems(PIP_V_LOG.split("  ninja:")[0]) == []  # a clean build: nothing to report


def test_sanitizer_rows_a_kill_before_any_report_is_a_skip():
    clean = "========= COMPUTE-SANITIZER\ncuda:own fp32 B=2 D=1: loss 1.2\ntiny run ok\n========= ERROR SUMMARY: 0 errors\n"
    cut = "========= COMPUTE-SANITIZER\ncuda:own fp32 B=2 D=1: loss 1.2\n"
    found = cut + "========= Invalid __global__ read of size 4 bytes\n=========     at stats_panel+0x1a0\n"
    assert driver.sanitizer_row("memcheck cuda", 0, clean, 9.0).status == "PASS"
    skip = driver.sanitizer_row("memcheck cuda", None, cut, 30.0)
    assert skip.status == "SKIP" and skip.detail.startswith("skipped (budget): killed at its deadline")
    fail = driver.sanitizer_row("memcheck cuda", None, found, 30.0)
    assert fail.status == "FAIL" and "Invalid __global__ read" in fail.detail
    assert driver.sanitizer_row("memcheck cuda", 99, found + "========= ERROR SUMMARY: 1 error\n", 9.0).status == "FAIL"

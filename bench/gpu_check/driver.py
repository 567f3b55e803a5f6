"""The GPU check's driver: the tiers in order under one wall-clock budget, each in processes of
its own (a crash or a poisoned CUDA context ends that process, not the check), each skipped when
the budget left is under its estimate and stopped at its cap, the whole ending with the table.

    python -m bench.gpu_check [--dry-run] [--budget 360] [--out DIR] [--only TIER ...] [--cap TIER=S ...]

See bench/gpu_check/__init__.py for the tiers and what lands under --out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bench.gpu_check.budget import Deadline, Results, Row, skipped, table, worst

ROOT = Path(__file__).resolve().parents[2]
OUT_FILES = ("results.csv", "log.txt", "env.txt", "install.log", "sanitizer.txt", "speed.csv", "pytest.log", "table.txt")
GRACE_S = 10.0  # a process still running this long after its deadline is killed
SANITIZER_RUNS = (("memcheck", "cuda"), ("racecheck", "cuda"), ("memcheck", "triton"))
CUDA_MODULE = "srem_kernels.backends._srem_cuda"  # setup.py's name for the compiled CUDA module
# A pytest run: (name, weight in its tier's time, arguments), one process each, in order. Tier 3:
# the GPU tests that tell most, most telling first, Triton (first compiles ~100 s) weighted up;
# its dry run, the same checks' CPU variants (Triton's interpreter; cpu standing in for cuda).
CORRECTNESS = {
    "device": [("triton", 3, ["tests/test_gpu_triton.py::test_tf32_follows_matmul_precision",
                              "tests/test_gpu_triton.py::test_matches_reference_at_size",
                              "tests/test_gpu_triton.py::test_strategies_agree_and_are_deterministic_at_32768"]),
               ("cuda", 1, ["tests/test_gpu_cuda.py::test_cuda_matches_reference",
                            "tests/test_gpu_cuda.py::test_cuda_column_panel_is_the_transposed_row_panel",
                            "tests/test_gpu_cuda.py::test_cuda_is_deterministic"])],
    "dry": [("triton", 3, ["tests/test_triton.py::test_matches_reference[streaming-fp32-2-33-default]",
                           "tests/test_triton.py::test_matches_reference[materialised-bf16-37-1-clean-given]",
                           "tests/test_triton.py::test_deterministic[materialised]"]),
            ("cpu", 1, ["tests/test_cpu.py::test_cpu_matches_reference[37-33-fp32-streaming]",
                        "tests/test_cpu.py::test_cpu_matches_reference[2-1-bf16-materialised]",
                        "tests/test_cpu.py::test_cpu_is_deterministic[2-streaming]"])],
}  # fmt: skip
# Tier 6: every other GPU test (tier 3's deselected), one file per process; the dry run runs the
# same commands, which skip every test without a GPU (the plumbing).
# (test_open_clip_train.py has no GPU test and skips whole where open_clip is not installed, as on the device)
_OTHERS = ["-m", "gpu", "tests", "--ignore=tests/test_gpu_triton.py", "--ignore=tests/test_gpu_cuda.py",
           "--ignore=tests/test_open_clip_train.py"]  # fmt: skip
PYTEST = [("triton", 2, ["-m", "gpu", "tests/test_gpu_triton.py"]), ("cuda", 1, ["-m", "gpu", "tests/test_gpu_cuda.py"]),
          ("others", 1, _OTHERS)]  # fmt: skip
# Tier 5: a worker process per backend, (backend, weight); cpu stands in for cuda in the dry run
SPEED = {"device": [("triton", 3), ("cuda", 2), ("reference", 1)], "dry": [("triton", 3), ("cpu", 2), ("reference", 1)]}


@dataclass
class Context:
    out: Path
    py: str
    dry_run: bool
    results: Results
    env: dict  # the environment of every process the check starts
    run: str = ""  # the run id of this check's rows in speed.csv
    ran: list[str] = field(default_factory=list)  # test ids pytest ran (tier 3's, deselected in tier 6)

    @property
    def log(self) -> Path:
        return self.out / "log.txt"


@dataclass
class Tier:
    name: str
    estimate_s: float  # the least time worth starting it with
    cap_s: float | None  # the most it may take (None: all that is left)
    run: Callable[[Context, Deadline], None]


def call(ctx: Context, argv: list[str], deadline: Deadline, *, log: Path | None = None, env: dict | None = None):
    """argv in a process group of its own, its output appended to `log` (log.txt); killed with
    its children GRACE_S after the deadline. Returns (exit status or None if killed, output)."""
    log = log or ctx.log
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(map(str, argv))}\n")
        f.flush()
        start = f.tell()
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env or ctx.env,
                                start_new_session=True)  # fmt: skip
        try:
            rc = proc.wait(timeout=max(deadline.left(), 0.0) + GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    with log.open("rb") as f:
        f.seek(start)
        return rc, f.read().decode(errors="replace")


def _last_lines(text: str, n: int = 2) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[:300]


def worker(ctx: Context, deadline: Deadline, tier: str, module: str, *args: str) -> None:
    """python -m bench.gpu_check.<module> (which writes its own rows); a crash is an ERROR row, a
    kill at the deadline a SKIP (budget) row after the rows it wrote."""
    argv = [ctx.py, "-m", f"bench.gpu_check.{module}", "--out", str(ctx.out), "--deadline", f"{deadline.at:.3f}", *args]
    rc, text = call(ctx, argv + (["--dry-run"] if ctx.dry_run else []), deadline)
    if rc != 0:
        status, what = ("SKIP", "skipped (budget): killed at its deadline") if rc is None else ("ERROR", f"exited {rc}")
        ctx.results.add(Row(tier, " ".join((f"process:{module}", *args)), status, detail=f"{what}: {_last_lines(text)}"))


# ---------------------------------------------------------------- tier 1: the self-check

# the backend each self-check step checks: tier 1 the one that needs no build, tier 3 the built one
# (cpu stands in for cuda in the dry run)
SELFCHECK = {"device": ("triton", "cuda"), "dry": ("triton", "cpu")}


def tier_selfcheck(ctx: Context, deadline: Deadline) -> None:
    """srem_kernels.selfcheck of the backend that runs before any build (triton), first: what a
    user's first training step would check, its report into env.txt (bench/gpu_check/selfcheck.py)."""
    worker(ctx, deadline, "selfcheck", "selfcheck", "--backend", SELFCHECK["dry" if ctx.dry_run else "device"][0])


# ---------------------------------------------------------------- tier 2: environment and install


def _capture(argv: list[str], env: dict, timeout: float = 60.0) -> str:
    if shutil.which(argv[0]) is None:
        return f"{argv[0]}: not found"
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return f"{argv[0]}: no answer in {timeout:.0f} s"
    return (res.stdout + res.stderr).strip()


def cuda_resources(dump: str, demangle: Callable[[list[str]], list[str]]) -> list[tuple[str, int, int, int]]:
    """(kernel, registers, stack bytes, local bytes) per function of `cuobjdump --dump-resource-usage`."""
    found = re.findall(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", dump)
    names = demangle([f[0] for f in found])
    short = [re.sub(r"\(anonymous namespace\)::|\(.*\)$", "", n) for n in names]
    return [(s, int(r), int(st), int(lo)) for s, (_, r, st, lo) in zip(short, found)]


def _demangle(names: list[str]) -> list[str]:
    if not names or shutil.which("c++filt") is None:
        return names
    res = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    out = res.stdout.splitlines()
    return out if len(out) == len(names) else names


def install_problems(log: str) -> list[str]:
    """Each optional module setup.py skipped (its notice shows in `pip install -v` only), with
    the first compiler error printed before the notice."""
    lines = [ln.strip() for ln in log.splitlines()]
    out, since = [], 0
    for i, ln in enumerate(lines):
        if "skipping optional module" in ln:
            errors = [x for x in lines[since:i] if re.search(r"\berror:|nvcc fatal", x)]
            out.append(ln + (f" [{errors[0][:200]}]" if errors else ""))
            since = i + 1
    return out


def module_file(name: str) -> Path | None:
    """The file the module `name` would be imported from, or None where it is not built."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin else None


def tier_env(ctx: Context, deadline: Deadline) -> None:
    T = "env"
    sections = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": _capture(["git", "rev-parse", "HEAD"], ctx.env) if (ROOT / ".git").exists() else "",
        "uname": _capture(["uname", "-a"], ctx.env),
        "nvidia-smi": _capture(["nvidia-smi"], ctx.env),
        "gpu": _capture(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"], ctx.env),
        "nvcc": _capture(["nvcc", "--version"], ctx.env),
        "compute-sanitizer": _capture(["compute-sanitizer", "--version"], ctx.env),
        "python": _capture([ctx.py, "-c", "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', "
                            "torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"], ctx.env),  # fmt: skip
    }
    if not sections["commit"] or "fatal" in sections["commit"]:
        sections["commit"] = os.environ.get("SREM_COMMIT", "unknown (no .git here: set SREM_COMMIT)")
    with (ctx.out / "env.txt").open("a") as f:
        f.writelines(f"## {k}\n{v}\n\n" for k, v in sections.items())
    nvcc = re.search(r"release ([\d.]+)", sections["nvcc"])
    gpu, python = (sections["gpu"].splitlines() or [""])[0], (sections["python"].splitlines() or [""])[-1]
    ctx.results.add(Row(T, "versions", "INFO", show=True,
                        value=f"GPU, driver, memory: {gpu[:120]}; nvcc {nvcc.group(1) if nvcc else 'not found'}; {python[:120]}",
                        detail=f"commit {sections['commit'][:12]}"))  # fmt: skip
    if ctx.dry_run:
        ctx.results.add(Row(T, "install", "SKIP", detail="dry run: the checkout as installed here"))
    else:
        t0 = time.time()
        argv = [ctx.py, "-m", "pip", "install", "-v", "--no-deps", "--no-build-isolation", "-e", "."]  # -v: setup.py's output
        rc, text = call(ctx, argv, deadline, log=ctx.out / "install.log")
        skips = install_problems(text)
        ok = rc == 0 and not skips
        ctx.results.add(Row(T, "install", "PASS" if ok else "FAIL", time.time() - t0, show=True,
                            value=f"{time.time() - t0:.0f} s, SREM_CUDA_ARCHS={ctx.env.get('SREM_CUDA_ARCHS', '')}",
                            detail="; ".join(skips) or ("" if ok else f"rc={rc}: {_last_lines(text)}")))  # fmt: skip
    rc, text = call(ctx, [ctx.py, "-c", "import srem_kernels\nfor s in srem_kernels.backends().values(): print('backend', s)"], deadline)
    for line in text.splitlines():
        m = re.match(r"backend (\S+)\s+(yes|no)\s+\S+\s+(.*)", line)
        if m:
            name, ok, why = m.groups()
            needed = not ctx.dry_run or name in ("triton", "reference")  # on the device every backend must load
            status = "PASS" if ok == "yes" else ("FAIL" if needed else "INFO")
            ctx.results.add(Row(T, f"backend {name}", status, detail="" if ok == "yes" else why))
    if rc != 0:
        ctx.results.add(Row(T, "backend import", "ERROR", detail=_last_lines(text)))
    if not ctx.dry_run:  # the module's static cudart against the driver (the review's setup risk)
        rc, text = call(ctx, [ctx.py, "-c", "from srem_kernels.backends import cuda; cuda.synchronize(); print('cuda module runs')"],
                        deadline)  # fmt: skip
        ok = rc == 0 and "cuda module runs" in text
        ctx.results.add(Row(T, "backend cuda call", "PASS" if ok else "FAIL", detail="" if ok else _last_lines(text)))
    if not ctx.dry_run:
        ctx.results.add(cuda_registers(ctx))


def cuda_registers(ctx: Context) -> Row:
    """Registers, stack and local memory per kernel of the built CUDA module (cuobjdump), into
    env.txt; the row names the largest and any kernel with stack or local memory."""
    so = module_file(CUDA_MODULE)
    if so is None or shutil.which("cuobjdump") is None:
        why = f"{CUDA_MODULE} not built" if so is None else "no cuobjdump on PATH"
        return Row("env", "cuda kernels", "INFO", detail=f"no register dump: {why}")
    res = cuda_resources(_capture(["cuobjdump", "--dump-resource-usage", str(so)], ctx.env), _demangle)
    with (ctx.out / "env.txt").open("a") as f:
        f.write(f"## cuda kernels of {so} (registers, stack, local bytes)\n")
        f.writelines(f"{k} REG {r} STACK {s} LOCAL {lo}\n" for k, r, s, lo in res)
    if not res:
        return Row("env", "cuda kernels", "INFO", detail=f"cuobjdump listed no function in {so.name}")
    top = max(res, key=lambda x: x[1])
    spill = [k for k, _, s, lo in res if s or lo]
    return Row("env", "cuda kernels", "INFO", show=True,
               value=f"{len(res)} functions, most registers {top[1]} ({top[0]}); stack/local in: {', '.join(spill) or 'none'}")  # fmt: skip


# ---------------------------------------------------------------- tier 5: a worker per backend


def tier_speed(ctx: Context, deadline: Deadline) -> None:
    plan = SPEED["dry" if ctx.dry_run else "device"]
    for i, (backend, _) in enumerate(plan):
        worker(ctx, deadline.share([w for _, w in plan[i:]]), "speed", "speed", "--backend", backend, "--run", ctx.run)


# ---------------------------------------------------------------- tier 4: compute-sanitizer


def tier_sanitizer(ctx: Context, deadline: Deadline) -> None:
    T, log = "sanitizer", ctx.out / "sanitizer.txt"
    tool = shutil.which("compute-sanitizer")
    tiny = [ctx.py, "-m", "bench.gpu_check.tiny", "--backend"]
    if ctx.dry_run or tool is None:
        if not ctx.dry_run:
            ctx.results.add(Row(T, "compute-sanitizer", "FAIL", detail="not found on PATH"))
        names = ("triton",) if ctx.dry_run else ("triton", "cuda")
        for i, backend in enumerate(names):  # at least the program it would check
            t0 = time.time()
            rc, text = call(ctx, tiny + [backend], deadline.share(len(names) - i), log=log)
            ok = rc == 0 and "tiny run ok" in text
            ctx.results.add(Row(T, f"tiny {backend} (no compute-sanitizer)", "PASS" if ok else "FAIL", time.time() - t0,
                                detail="" if ok else f"rc={rc}: {_last_lines(text)}"))  # fmt: skip
        return
    for i, (check, backend) in enumerate(SANITIZER_RUNS):
        d = deadline.share(len(SANITIZER_RUNS) - i)
        if not d.allows(10):
            ctx.results.add(skipped(T, f"{check} {backend}", 10, d.left()))
            continue
        t0 = time.time()
        argv = [tool, "--tool", check, "--error-exitcode", "99", "--print-limit", "20", *tiny, backend]
        # no caching allocator: memcheck sees each buffer's own bounds
        rc, text = call(ctx, argv, d, log=log, env=ctx.env | {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})
        ctx.results.add(sanitizer_row(f"{check} {backend}", rc, text, time.time() - t0))


def sanitizer_row(check: str, rc: int | None, text: str, seconds: float) -> Row:
    """PASS on a clean summary; FAIL on a report (one the deadline cut off included); SKIP when
    the deadline cut it off before it reported anything."""
    summary = (re.findall(r"(?:ERROR|RACECHECK) SUMMARY:.*", text) or ["no summary line"])[-1].strip()
    reported = [ln.strip() for ln in text.splitlines() if ln.startswith("========= ") and "COMPUTE-SANITIZER" not in ln]
    if rc is None and not reported:
        return Row("sanitizer", check, "SKIP", seconds,
                   detail=f"skipped (budget): killed at its deadline: {_last_lines(text)}")  # fmt: skip
    ok = rc == 0 and "tiny run ok" in text and re.search(r"\b0 errors", summary) is not None
    detail = "" if ok else f"rc={rc}: {reported[0] if reported else _last_lines(text)} (sanitizer.txt)"
    return Row("sanitizer", check, "PASS" if ok else "FAIL", seconds, value=summary, show=True, detail=detail[:300])


# ---------------------------------------------------------------- tiers 3 and 6: pytest


def pytest_outcomes(text: str) -> dict[str, list[str]]:
    """Test ids by outcome, from `pytest -v` lines (a killed run's log included)."""
    out: dict[str, list[str]] = {}
    for test, outcome in re.findall(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", text, flags=re.M):
        out.setdefault(outcome, []).append(test)
    return out


def pytest_rows(tier: str, name: str, rc: int | None, text: str, seconds: float) -> list[Row]:
    """One run's summary row (FAIL when a test failed; INFO "partial n/N" when the budget cut
    it off; PASS when tests passed; SKIP when every test skipped; else ERROR), then a row per
    failing test with pytest's one-line reason (-rfE)."""
    got = pytest_outcomes(text)
    bad = got.get("FAILED", []) + got.get("ERROR", [])
    ran = sum(map(len, got.values()))
    found = re.search(r"collected (\d+) items?(?: / \d+ deselected / (\d+) selected)?", text)
    total = (found.group(2) or found.group(1)) if found else "?"
    counts = ", ".join(f"{len(v)} {k.lower()}" for k, v in got.items()) or "no test ran"
    skips = re.findall(r"^SKIPPED \[\d+\] \S+: (.*)$", text, flags=re.M)
    if bad:
        status, detail = "FAIL", f"{len(bad)} failing"
    elif rc is None:
        status, detail = "INFO", ""
    elif rc == 0 and got.get("PASSED"):
        status, detail = "PASS", ""
    elif rc in (0, 5):  # 5: no test selected
        status, detail = "SKIP", (skips[0] if skips else "no test ran")
    else:
        status, detail = "ERROR", f"rc={rc}: {_last_lines(text)}"
    if rc is None:
        detail = f"partial {ran}/{total}: stopped at the budget" + (f"; {detail}" if detail else "")
    files = sorted({t.split("::")[0] for ts in got.values() for t in ts})
    rows = [Row(tier, f"{name} pytest {' '.join(files)}".strip(), status, seconds, value=counts, detail=detail, show=True)]
    reasons = dict(re.findall(r"^(?:FAILED|ERROR) (\S+::\S+) - (.*)$", text, flags=re.M))
    for outcome in ("FAILED", "ERROR"):
        rows += [Row(tier, f"{name} {t}", "FAIL" if outcome == "FAILED" else "ERROR", detail=reasons.get(t, "")[:250])
                 for t in got.get(outcome, [])]  # fmt: skip
    return rows


def pytest_runs(ctx: Context, deadline: Deadline, tier: str, runs, deselect: list[str]) -> None:
    """Each run in a process of its own, in order, its share of the deadline by weight; output to
    pytest.log, rows as pytest_rows. The ids each ran join ctx.ran."""
    base = [ctx.py, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-rfEs", "--durations=10"]
    for i, (name, _, args) in enumerate(runs):
        t0 = time.time()
        argv = base + [*args, *(a for t in deselect for a in ("--deselect", t))]
        rc, text = call(ctx, argv, deadline.share([w for _, w, _ in runs[i:]]), log=ctx.out / "pytest.log")
        for row in pytest_rows(tier, name, rc, text, time.time() - t0):
            ctx.results.add(row)
        ctx.ran += [t for ts in pytest_outcomes(text).values() for t in ts]


def tier_correctness(ctx: Context, deadline: Deadline) -> None:
    """The self-check of the backend tier 2 built (cuda: no JIT, seconds), a tenth of the tier, then
    the pytest selections."""
    mode = "dry" if ctx.dry_run else "device"
    worker(ctx, deadline.share([1, 9]), "correctness", "selfcheck", "--backend", SELFCHECK[mode][1])
    pytest_runs(ctx, deadline, "correctness", CORRECTNESS[mode], [])


def tier_pytest(ctx: Context, deadline: Deadline) -> None:
    pytest_runs(ctx, deadline, "pytest", PYTEST, list(ctx.ran))


# ---------------------------------------------------------------- the run

# name: (estimate_s, cap_s) on the device, the caps of tiers 1-5 summing to the default budget;
# the dry run's estimates are DRY_ESTIMATE_S
TIERS = {
    "selfcheck": (20.0, 50.0),
    "env": (60.0, 90.0),
    "correctness": (60.0, 80.0),
    "sanitizer": (30.0, 60.0),
    "speed": (30.0, 80.0),
    "pytest": (20.0, None),
}
DRY_ESTIMATE_S = 2.0
RUNS = {"selfcheck": tier_selfcheck, "env": tier_env, "correctness": tier_correctness, "sanitizer": tier_sanitizer,
        "speed": tier_speed, "pytest": tier_pytest}  # fmt: skip


def run_tiers(tiers: list[Tier], ctx: Context, deadline: Deadline) -> None:
    """Each tier in order: skipped (budget) when less than its estimate is left, else run until
    min(its cap, what is left); an exception is its ERROR row, and the next tier still runs. Its
    status row ('tier') follows its own rows."""
    for tier in tiers:
        left = deadline.left()
        if left < tier.estimate_s:
            ctx.results.add(skipped(tier.name, "tier", tier.estimate_s, left))
            continue
        t0, before = time.time(), len(ctx.results.rows())
        print(f"== {tier.name}: {left:.0f} s of the budget left, cap {tier.cap_s or left:.0f} s", flush=True)
        try:
            tier.run(ctx, Deadline(t0 + (min(tier.cap_s, left) if tier.cap_s else left)))
        except Exception as err:  # noqa: BLE001 - one tier's failure must not stop the others
            ctx.results.add(Row(tier.name, "driver", "ERROR", detail=f"{type(err).__name__}: {err}"[:300]))
        mine = ctx.results.rows()[before:]
        ctx.results.add(Row(tier.name, "tier", worst(r.status for r in mine), time.time() - t0))


def _caps(pairs: list[str]) -> dict[str, float]:
    caps = {}
    for p in pairs:
        name, _, seconds = p.partition("=")
        if name not in TIERS or not seconds:
            raise SystemExit(f"--cap takes TIER=SECONDS with TIER one of {', '.join(TIERS)}; got {p!r}")
        caps[name] = float(seconds)
    return caps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiers at tiny sizes on this CPU (Triton's interpreter)")
    ap.add_argument("--budget", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET", 360)), help="seconds, all tiers")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check-out")))
    ap.add_argument("--python", default=sys.executable, help="the interpreter of the tiers' processes")
    ap.add_argument("--only", nargs="+", choices=list(TIERS), help="run these tiers only (in the usual order)")
    ap.add_argument("--cap", nargs="+", default=[], metavar="TIER=S", help="override a tier's cap in seconds")
    args = ap.parse_args(argv)
    start = time.time()
    deadline = Deadline(start + args.budget)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in OUT_FILES:  # this run's files only (a device's $OUT starts empty)
        (args.out / name).unlink(missing_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("SREM_CUDA_ARCHS", "90")
    if args.dry_run:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    run = dt.datetime.fromtimestamp(start, dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")  # bench/run.py's run ids
    ctx = Context(args.out.resolve(), args.python, args.dry_run, Results(args.out), env, run)
    caps = _caps(args.cap)
    tiers = [Tier(n, DRY_ESTIMATE_S if args.dry_run else est, caps.get(n, cap), RUNS[n])
             for n, (est, cap) in TIERS.items() if not args.only or n in args.only]  # fmt: skip
    run_tiers(tiers, ctx, deadline)
    rows = ctx.results.rows()
    header = (f"GPU check{' (dry run)' if args.dry_run else ''}: budget {args.budget:.0f} s, used {time.time() - start:.0f} s, "
              f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, files in {args.out}")  # fmt: skip
    text = table(rows, header)
    (args.out / "table.txt").write_text(text + "\n")
    print("\n" + text)
    return 1 if any(r.status in ("ERROR", "FAIL") for r in rows) else 0

"""One command that races every backend of srem-kernels against the alternatives on this device.

    python -m bench --quick          # CPU smoke sweep, under two minutes on a 2-core machine
    python -m bench                  # the full sweep for this device (GPU: B up to 256k)
    python -m bench --batch 4096 --dim 256 --dtype fp32 --only srem:cpu floor:matmuls

Rows are appended to bench/results/<device>.csv (one per contender, size, dtype and phase, with
device, versions, commit and date); bench/report.py then rewrites bench/RESULTS.md and the plots.
Contenders run interleaved, round by round, so that drift hits all alike.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

from bench import report
from bench.contenders import Contender, contenders
from bench.measure import is_oom, peak_memory_mb, summarise, time_once

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PHASES = ("fwd", "bwd", "fwd+bwd")
FLOOR = "floor:matmuls"
COLUMNS = (
    "run", "date", "commit", "command", "device", "threads", "torch", "triton", "contender", "family", "dtype", "B", "D",
    "phase", "median_ms", "p20_ms", "p80_ms", "ratio_to_floor", "tflops", "peak_mb", "status",
)  # fmt: skip

SWEEPS = {
    # (batch sizes, dims, dtypes, repeats)
    "quick": ([256, 1024, 2048], [256], ["fp32"], 5),
    "cpu": ([1024, 2048, 4096, 8192], [256], ["fp32"], 5),
    "cuda": ([2**k for k in range(10, 19)], [256, 1024], ["fp32", "bf16"], 10),
}


def environment(device: torch.device) -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=RESULTS.parent, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    # its own output does not count (pathspecs from the repository's top: git runs in bench/, where
    # ":!bench/results" named bench/bench/results and every run after a first made the tree "dirty")
    if git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(top,exclude)bench/results",
           ":(top,exclude)bench/RESULTS.md"):  # fmt: skip
        commit += "-dirty"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo)
        name = f"CPU {found.group(1).strip() if found else platform.processor()}"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    now = dt.datetime.now(dt.timezone.utc)
    return {
        "run": now.strftime("%Y%m%dT%H%M%SZ"),
        "date": now.strftime("%Y-%m-%d"),
        "commit": commit,
        "device": name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
    }


def device_log(out: Path, env: dict, suffix: str = ".csv") -> Path:
    """The CSV log of this device under `out` (bench/results/<device>.csv, or <device><suffix>)."""
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{re.sub(r'[^A-Za-z0-9]+', '-', env['device']).strip('-').lower()}{suffix}"


def command(prog: str, argv: list[str] | None) -> str:
    """The command line a log row names: `prog` and its arguments."""
    return " ".join([prog, *(sys.argv[1:] if argv is None else argv)])


@contextlib.contextmanager
def csv_log(out: Path, env: dict, suffix: str, columns):
    """(path, csv.DictWriter) appending to this device's log `suffix` under `out`, the header
    written when the file is new; missing columns are left empty. Line-buffered: every row is on
    disk as soon as it is written (a long sweep that is cut off keeps what it measured)."""
    log = device_log(out, env, suffix)
    new = not log.exists()
    with log.open("a", newline="", buffering=1) as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        if new:
            writer.writeheader()
        yield log, writer


def flops(phase: str, B: int, D: int) -> float:
    """The matmul floor's floating-point operations: 2·B²·D per matmul, one forward, two backward."""
    return {"fwd": 1, "bwd": 2, "fwd+bwd": 3}[phase] * 2.0 * B * B * D


def inputs(B: int, D: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    latent = torch.randn(B, D, generator=g)
    img = torch.nn.functional.normalize(latent + 0.5 * torch.randn(B, D, generator=g), dim=1)
    txt = torch.nn.functional.normalize(latent + 0.5 * torch.randn(B, D, generator=g), dim=1)
    return (img.to(device, dtype).requires_grad_(), txt.to(device, dtype).requires_grad_())


def dense_fits(B: int, device: torch.device, budget_gb: float) -> bool:
    """On CPU, whether a contender that materialises B×B fits: the eager loss keeps about
    sixteen fp32 B×B matrices alive. On GPU it is simply tried, and an OOM recorded."""
    return device.type != "cpu" or 16 * 4 * B * B / 2**30 <= budget_gb


def race(cs: list[Contender], B: int, D: int, dtype: torch.dtype, device, repeats: int, budget_gb: float, dead: set):
    """Rows of measurements for one size: every live contender, interleaved, repeats rounds."""
    img, txt = inputs(B, D, dtype, device)
    status, phases = {}, {}
    for c in cs:
        if c.name in dead:
            status[c.name] = "OOM at a smaller B"
        elif c.dense and not dense_fits(B, device, budget_gb):
            status[c.name] = f"skipped: B×B needs ~{16 * 4 * B * B / 2**30:.0f} GB"
        else:
            try:
                phases[c.name] = c.build(img, txt)
                for phase in PHASES:  # warm-up (and compile)
                    phases[c.name][phase]()()
                status[c.name] = "ok"
            except Exception as err:  # noqa: BLE001 - recorded, not fatal
                phases.pop(c.name, None)
                status[c.name] = "OOM" if is_oom(err) else f"error: {type(err).__name__}: {str(err)[:120]}"
                if is_oom(err):
                    dead.add(c.name)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    samples = {(n, p): [] for n in phases for p in PHASES}
    for _ in range(repeats):
        for n, ph in phases.items():
            for p in PHASES:
                samples[(n, p)].append(time_once(ph[p](), device))
    peak = {n: peak_memory_mb(ph["fwd+bwd"](), device) for n, ph in phases.items()}
    timings = {k: summarise(v) for k, v in samples.items()}
    rows = []
    for c in cs:
        for p in PHASES:
            row = {"contender": c.name, "family": c.family, "B": B, "D": D, "phase": p, "status": status[c.name]}
            t = timings.get((c.name, p))
            if t is not None:
                floor = timings.get((FLOOR, p))
                row.update(
                    median_ms=f"{t.median_ms:.4g}", p20_ms=f"{t.p20_ms:.4g}", p80_ms=f"{t.p80_ms:.4g}",
                    ratio_to_floor=f"{t.median_ms / floor.median_ms:.3g}" if floor else "",
                    tflops=f"{flops(p, B, D) / t.median_ms / 1e9:.4g}",
                    peak_mb=f"{peak[c.name]:.1f}" if p == "fwd+bwd" else "",
                )  # fmt: skip
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small CPU sweep, under two minutes")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, nargs="+", help="batch sizes B (default: the device's sweep)")
    ap.add_argument("--dim", type=int, nargs="+", help="embedding sizes D")
    ap.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), help="input dtypes")
    ap.add_argument("--repeats", type=int, help="timed rounds per size (after one warm-up)")
    ap.add_argument("--only", nargs="+", help="contender names to run (floor:matmuls is always run)")
    ap.add_argument("--budget-gb", type=float, default=8.0, help="CPU memory a dense contender may take")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder of the CSV logs")
    ap.add_argument("--no-report", action="store_true", help="do not rewrite RESULTS.md and the plots")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches, dims, dtypes, repeats = SWEEPS["quick" if args.quick else device.type]
    batches, dims, dtypes = args.batch or batches, args.dim or dims, args.dtype or dtypes
    repeats = args.repeats or repeats
    env = environment(device)
    env["command"] = command("python -m bench", argv)
    cs, skipped = contenders(device)
    if args.only:
        cs = [c for c in cs if c.name in args.only or c.name == FLOOR]
    print(f"{env['device']}, {env['threads']} threads, torch {env['torch']}, triton {env['triton']}, commit {env['commit']}")
    for line in skipped:
        print(f"  not racing {line}")

    with csv_log(args.out, env, ".csv", COLUMNS) as (log, writer):
        for dname in dtypes:
            for D in dims:
                dead: set[str] = set()
                for B in batches:
                    for row in race(cs, B, D, DTYPES[dname], device, repeats, args.budget_gb, dead):
                        row.update(env, dtype=dname)
                        writer.writerow(row)
                        if row["phase"] == "fwd+bwd":
                            ok = row["status"] == "ok"
                            cell = f"{row['median_ms']} ms ({row['ratio_to_floor']}× floor, {row['peak_mb']} MB)" if ok else row["status"]
                            print(f"  {dname} D={D} B={B:<7} {row['contender']:<26} {cell}")
    print(f"log: {os.path.relpath(log)}")
    if not args.no_report:
        md = report.RESULTS_MD if args.out.resolve() == RESULTS else args.out / "RESULTS.md"
        report.main(["--results", str(args.out), "--output", str(md)])
    return log


if __name__ == "__main__":
    main()

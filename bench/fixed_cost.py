"""The fixed cost of a call at the batch sizes SREM trains with: launching operators, host reads
and Triton launches per forward+backward (bench/opcount.py), and the call's time against the
three bare matmuls (S = I·Tᵀ, G·T, Gᵀ·I) in the same run, interleaved, medians, with the
1-minute load average before and after the timed rounds of each batch size.

    python -m bench.fixed_cost [--batch 128 1024] [--dim 256] [--repeats 50]

Appends to bench/results/<device>.fixed-cost.csv; `python -m bench.report` renders the latest
run in RESULTS.md. On a CPU-only machine the triton backend runs under the interpreter: it is
counted (what a GPU would launch) but not timed.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import torch

from bench import opcount
from bench.contenders import matmul_floor
from bench.measure import interleaved
from bench.opcount import CONFIGS
from bench.run import RESULTS, command, csv_log, device_log, environment, inputs

COLUMNS = ["run", "date", "commit", "device", "threads", "torch", "triton", "command", "backend", "B", "D", "config",
           "aten_ops", "host_reads", "h2d_copies", "triton_launches", "median_ms", "floor_ms", "ratio_to_floor",
           "load_before", "load_after"]  # fmt: skip


def _backends(device: torch.device) -> list[tuple[str, bool]]:
    """(backend, timed) pairs that run here."""
    import srem_kernels

    ok = {n for n, s in srem_kernels.backends().items() if s.available}
    if device.type == "cuda":
        return [(b, True) for b in ("triton", "cuda", "reference") if b in ok]
    out = [(b, True) for b in ("cpu", "reference") if b in ok]
    if "triton" in ok and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        out.append(("triton", False))
    return out


def measure(B: int, D: int, device: torch.device, repeats: int) -> list[dict]:
    rows, timed = [], {}
    for backend, timing in _backends(device):
        for config, kw in CONFIGS.items():
            step = opcount.loss_step(backend, B, D, device=device.type, **kw)
            step()
            c = opcount.count(step)
            rows.append(dict(backend=backend, B=B, D=D, config=config, **c.row()))
            if timing and config == "defaults":
                timed[backend] = (step, rows[-1])
    floor = matmul_floor(*inputs(B, D, torch.float32, device))["fwd+bwd"]()
    t, load = interleaved({"floor": floor, **{name: step for name, (step, _) in timed.items()}}, device, repeats)
    f_ms = t["floor"].median_ms
    for name, (_, row) in timed.items():
        ms = t[name].median_ms
        row.update(median_ms=f"{ms:.4g}", floor_ms=f"{f_ms:.4g}", ratio_to_floor=f"{ms / f_ms:.3g}")
    return [dict(row, **load) for row in rows]


def _log_in_columns(log: Path) -> None:
    """A log written before COLUMNS grew: rewritten under the current header (new columns empty)."""
    if not log.exists():
        return
    with log.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames == COLUMNS:
            return
        old = list(reader)
    with log.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
        w.writeheader()
        w.writerows(old)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m bench.fixed_cost", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=[128, 1024])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    env = environment(device)
    env["command"] = command("python -m bench.fixed_cost", argv)
    _log_in_columns(device_log(args.out, env, ".fixed-cost.csv"))
    with csv_log(args.out, env, ".fixed-cost.csv", COLUMNS) as (log, w):
        for B in args.batch:
            for row in measure(B, args.dim, device, args.repeats):
                w.writerow(dict(env, **row))
                t = f"  {row['median_ms']} ms = {row['ratio_to_floor']}× floor" if row.get("median_ms") else ""
                print(f"{row['backend']:>9} B={B:<5} {row['config']:<19} ops {row['aten_ops']:>4}  reads "
                      f"{row['host_reads']}  h2d {row['h2d_copies']}  triton {row['triton_launches']}{t}  "
                      f"(load {row['load_before']} -> {row['load_after']})")  # fmt: skip
    print(f"log: {os.path.relpath(log)}")
    return log


if __name__ == "__main__":
    main()

"""What a tensor tau (a learnable temperature) costs over a float tau: one forward+backward of
`srem_kernels.loss` with tau=0.05, with tau=torch.tensor(0.05) (no grad) and with a tau that
requires grad (dL/dtau reduced in the dS pass), interleaved in one run, medians, with the three
bare matmuls of the same size as the yardstick and the 1-minute load average around the rounds.

    python -m bench.tau_overhead [--backend cpu] [--batch 4096] [--dim 256] [--repeats 20]

Appends to bench/results/<device>.tau-overhead.csv; `python -m bench.report` renders the latest
run in RESULTS.md ("Tensor tau").
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

import srem_kernels
from bench.contenders import matmul_floor
from bench.measure import interleaved
from bench.run import RESULTS, command, csv_log, environment, inputs

COLUMNS = ["run", "date", "commit", "device", "threads", "torch", "triton", "command", "backend", "B", "D", "tau",
           "median_ms", "p20_ms", "p80_ms", "ratio_to_float", "floor_ms", "load_before", "load_after"]  # fmt: skip
TAUS = ("float", "tensor", "tensor, requires grad")


def _step(backend: str, img, txt, which: str):
    if which == "float":
        tau = 0.05
    else:
        tau = torch.tensor(0.05, device=img.device, requires_grad=which != "tensor")

    def step():
        srem_kernels.loss(img, txt, tau=tau, backend=backend).loss.backward()

    return step


def measure(backend: str, B: int, D: int, device: torch.device, repeats: int) -> list[dict]:
    img, txt = inputs(B, D, torch.float32, device)
    fns = {"floor": matmul_floor(img, txt)["fwd+bwd"](), **{which: _step(backend, img, txt, which) for which in TAUS}}
    t, load = interleaved(fns, device, repeats)
    f_ms, base = t["floor"].median_ms, t["float"].median_ms
    rows = []
    for name in TAUS:
        rows.append(dict(backend=backend, B=B, D=D, tau=name, median_ms=f"{t[name].median_ms:.4g}",
                         p20_ms=f"{t[name].p20_ms:.4g}", p80_ms=f"{t[name].p80_ms:.4g}",
                         ratio_to_float=f"{t[name].median_ms / base:.4f}", floor_ms=f"{f_ms:.4g}", **load))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m bench.tau_overhead", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=[4096])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    env = environment(device)
    env["command"] = command("python -m bench.tau_overhead", argv)
    with csv_log(args.out, env, ".tau-overhead.csv", COLUMNS) as (log, w):
        for B in args.batch:
            for row in measure(args.backend, B, args.dim, device, args.repeats):
                w.writerow(dict(env, **row))
                print(f"{row['backend']:>6} B={B:<6} tau {row['tau']:<22} {row['median_ms']:>8} ms "
                      f"(×{row['ratio_to_float']} of a float tau; floor {row['floor_ms']} ms; "
                      f"load {row['load_before']} -> {row['load_after']})")  # fmt: skip
    print(f"log: {os.path.relpath(log)}")
    return log


if __name__ == "__main__":
    main()

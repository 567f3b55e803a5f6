"""End to end: one training step of a small embedding model at a large batch, eager loss vs this
package's fastest backend — time per step and peak memory.

    python -m bench.train_step [--batch 4096] [--dim 256] [--steps 5]

Appends to bench/results/<device>.train-step.csv (read by bench/report.py).
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

import torch
from torch import nn

import python_ref
import srem_kernels
from bench.measure import is_oom, peak_memory_mb, summarise, time_once
from bench.run import RESULTS, environment

COLUMNS = ("run", "date", "commit", "command", "device", "threads", "torch", "triton", "contender", "B", "D",
           "median_ms", "p20_ms", "p80_ms", "peak_mb", "status")  # fmt: skip


class DualEncoder(nn.Module):
    """Two MLP towers from pre-extracted features to L2-normalised D-dim embeddings."""

    def __init__(self, img_in: int, txt_in: int, D: int, hidden: int = 1024):
        super().__init__()
        self.img = nn.Sequential(nn.Linear(img_in, hidden), nn.GELU(), nn.Linear(hidden, D))
        self.txt = nn.Sequential(nn.Linear(txt_in, hidden), nn.GELU(), nn.Linear(hidden, D))

    def forward(self, x, y):
        return nn.functional.normalize(self.img(x), dim=1), nn.functional.normalize(self.txt(y), dim=1)


LOSSES = {
    "eager-reference": lambda i, t: python_ref.srem(i, t)[0],
    "srem_kernels(auto)": lambda i, t: srem_kernels.loss(i, t, check_finite=False).loss,
}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=None)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    batches = args.batch or ([16384, 65536] if device.type == "cuda" else [2048])
    env = environment(device)
    env["command"] = " ".join(["python -m bench.train_step", *(sys.argv[1:] if argv is None else argv)])
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / f"{re.sub(r'[^A-Za-z0-9]+', '-', env['device']).strip('-').lower()}.train-step.csv"
    new = not log.exists()
    torch.manual_seed(0)
    model = DualEncoder(512, 384, args.dim).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    with log.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        for B in batches:
            x, y = torch.randn(B, 512, device=device), torch.randn(B, 384, device=device)
            for name, loss_fn in LOSSES.items():

                def step():
                    opt.zero_grad(set_to_none=True)
                    loss_fn(*model(x, y)).backward()
                    opt.step()

                row = dict(env, contender=name, B=B, D=args.dim, status="ok")
                try:
                    step()  # warm-up
                    t = summarise([time_once(step, device) for _ in range(args.steps)])
                    row.update(median_ms=f"{t.median_ms:.4g}", p20_ms=f"{t.p20_ms:.4g}", p80_ms=f"{t.p80_ms:.4g}",
                               peak_mb=f"{peak_memory_mb(step, device):.1f}")  # fmt: skip
                except Exception as err:  # noqa: BLE001 - recorded
                    if not is_oom(err):
                        raise
                    row["status"] = "OOM"
                writer.writerow(row)
                print(f"  step B={B} D={args.dim} {name:<20} {row.get('median_ms', row['status'])} ms, {row.get('peak_mb', '')} MB")
    return log


if __name__ == "__main__":
    main()

"""The distributed loss per rank: time, peak memory and bytes received, on gloo processes here.

    python -m bench.distributed --batch 4096 --dim 256 --ranks 1 2 [--backend cpu] [--dtype fp32]

Each rank holds B/R pairs of one global batch and runs srem_kernels.loss(..., group=WORLD)
forward and backward (medians over --repeats, after a warm-up). R=1 is a group of one (the
exchange without peers); the plain single-process call is printed beside it. Bytes received
count every all-gather's output minus the rank's own share. Appends to bench/results/distributed.csv.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.measure import peak_memory_mb
from tests.distributed_worker import run_ranks, values

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OUT = Path(__file__).resolve().parent / "results" / "distributed.csv"


def _rank(rank, world, B, D, dtype, backend, repeats, threads):
    import torch.distributed as dist

    import srem_kernels
    from srem_kernels import distributed

    torch.set_num_threads(threads)
    received = [0]
    inner = distributed._all_gather

    def counting(out, inp, group=None):
        received[0] += out.numel() * out.element_size() - inp.numel() * inp.element_size()
        return inner(out, inp, group=group)

    distributed._all_gather = counting
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1).to(DTYPES[dtype])
    txt = torch.nn.functional.normalize(img.float() + 0.5 * torch.randn(B, D, generator=g), dim=1).to(DTYPES[dtype])
    n = B // world
    a0, b0 = img[rank * n : (rank + 1) * n].contiguous(), txt[rank * n : (rank + 1) * n].contiguous()

    def step():
        a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
        out = srem_kernels.loss(a, b, backend=backend, group=dist.group.WORLD)
        out.loss.backward()

    step()
    received[0] = 0
    times = []
    for _ in range(repeats):
        dist.barrier()
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    per_step = received[0] / repeats / 2**20
    dist.barrier()
    return statistics.median(times) * 1e3, peak_memory_mb(step, torch.device("cpu")), per_step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--dtype", default="fp32", choices=DTYPES)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT, help=f"the CSV appended to (default {OUT})")
    args = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows = []
    for R in args.ranks:
        threads = max(1, cores // R)
        per_rank = values(run_ranks(_rank, R, args.batch, args.dim, args.dtype, args.backend, args.repeats, threads,
                                    timeout=3600, group_timeout=1800))  # fmt: skip
        for rank, (ms, mb, recv) in enumerate(per_rank):
            rows.append(dict(date=datetime.date.today().isoformat(), commit=commit, command="python -m bench.distributed "
                             + " ".join(sys.argv[1:] if argv is None else argv), device=f"cpu x{cores}", ranks=R,
                             rank=rank, threads=threads, batch=args.batch, dim=args.dim, dtype=args.dtype,
                             backend=args.backend, fwd_bwd_ms=round(ms, 1), peak_rss_growth_mb=round(mb, 1),
                             received_mib=round(recv, 4)))  # fmt: skip
            print(f"R={R} rank {rank} ({threads} threads): fwd+bwd {ms:8.1f} ms  peak RSS +{mb:7.1f} MB  received {recv:7.2f} MiB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    new = not args.out.exists()
    with open(args.out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)
    return rows


if __name__ == "__main__":
    main()

"""SREM's dataset-level energy scoring (srem_kernels.train.selection.pair_energies: the training
set in batches, one forward-only `srem_kernels.loss(..., stats_only=True)` call each), timed and
stated per 100k captions (COCO's training split has 566,435).

    python -m bench.dataset_scoring [--captions 100000] [--full-captions 5000] [--batch 128] [--dim 1024]

Two parts, on generated data (no real data needed):
- `stats`: the statistics calls alone, on fixed L2-normalised D-dim embeddings (the encoders
  replaced by the identity): what the scoring pass adds to the encoders' forward;
- `full`: the whole pass of srem-train's model at COCO's precomputed shapes (36 regions x 2048
  features, token captions of 8-20 words, vocabulary 10k): region MLP and bi-GRU forward plus the
  statistics, over `--full-captions` captions, scaled to 100k.

Appends to bench/results/<device>.scoring.csv with the machine's load average.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import torch

from bench.run import RESULTS, device_log, environment
from srem_kernels.train import model as model_mod, selection
from srem_kernels.train.data import Dataset, Split

COLUMNS = ("run", "date", "commit", "command", "device", "threads", "torch", "part", "captions", "B", "D",
           "seconds", "per_100k_s", "load_1min")  # fmt: skip


class Identity(torch.nn.Module):
    """The encoders replaced by fixed embeddings: forward returns its inputs."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # pair_energies reads the device from a parameter

    def forward(self, images, captions):
        return images, captions


def _stats_split(n: int, dim: int) -> Split:
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    txt = torch.nn.functional.normalize(img + 0.5 * torch.randn(n, dim, generator=g), dim=1)
    ids = torch.arange(n)
    return Split(images=img, captions=txt, cap2img=ids, img_key=ids, cap_key=ids.clone())


def _coco_split(n_cap: int, regions: int = 36, feat: int = 2048, vocab: int = 10_000, n_img: int = 1000) -> Split:
    """n_cap token captions paired with n_img region-feature images (each caption reads its image
    as from the memory-mapped file, so the cost per caption is that of COCO's 113k images)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n_img, regions, feat, generator=g)
    caps = [torch.randint(4, vocab, (int(n),), generator=g) for n in torch.randint(10, 23, (n_cap,), generator=g)]
    cap2img = torch.randint(n_img, (n_cap,), generator=g)
    return Split(images=images, captions=caps, cap2img=cap2img, img_key=torch.arange(n_img), cap_key=cap2img.clone())


def _time(model, split: Split, batch: int) -> float:
    t0 = time.perf_counter()
    energy = selection.pair_energies(model, split, batch_size=batch, tau=0.05, backend="auto", seed=0)
    seconds = time.perf_counter() - t0
    assert torch.isfinite(energy).all()
    return seconds


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--captions", type=int, default=100_000, help="captions scored in the stats part")
    ap.add_argument("--full-captions", type=int, default=5_000, help="captions scored in the full part (0: skip it)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3, help="stats part: the median of this many passes")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    env = environment(torch.device("cpu"))
    env["command"] = " ".join(["python -m bench.dataset_scoring", *(sys.argv[1:] if argv is None else argv)])
    log = device_log(args.out, env, ".scoring.csv")
    new = not log.exists()

    rows = []
    split = _stats_split(args.captions, args.dim)
    _time(Identity(), _stats_split(4 * args.batch, args.dim), args.batch)  # warm-up (backend choice, allocator)
    times = sorted(_time(Identity(), split, args.batch) for _ in range(args.repeats))
    rows.append(("stats", args.captions, times[len(times) // 2]))
    if args.full_captions:
        split = _coco_split(args.full_captions)
        torch.manual_seed(0)
        model = model_mod.build(Dataset("coco-shaped", split, split, split, vocab_size=10_000), args.dim)
        rows.append(("full", args.full_captions, _time(model, split, args.batch)))

    with log.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        for part, n, seconds in rows:
            row = dict({k: env[k] for k in COLUMNS if k in env}, part=part, captions=n, B=args.batch, D=args.dim,
                       seconds=f"{seconds:.4g}", per_100k_s=f"{seconds * 100_000 / n:.4g}",
                       load_1min=f"{os.getloadavg()[0]:.2f}")
            writer.writerow(row)
            print(f"  {part:<5} {n} captions, batch {args.batch}, D {args.dim}: {seconds:.2f} s, "
                  f"{seconds * 100_000 / n:.1f} s per 100k captions (load {row['load_1min']})")
    return log


if __name__ == "__main__":
    main()

"""The cpu backend against the bare matmuls, the eager reference and torch.compile of it.

    python bench/cpu_backend.py [--batch 4096] [--dim 256] [--threads 2] [--reps 7] [--no-compile]
                                [--big 32768] [--out bench/results/cpu_backend.csv]

Forward + backward of each, fp32, interleaved in one run (rep by rep, so a noisy neighbour hits
every candidate alike): the three bare matmuls of the loss (S = I·Tᵀ, G·T, Gᵀ·I), python_ref.srem
with autograd (eager), torch.compile of it, and srem_kernels.loss(backend="cpu"). Median, min and
max per candidate; peak RSS of each measured in a fresh process (VmHWM reset just before the
call, so imports do not count; also shown minus the RSS before the call); then one B=--big run of the cpu backend in a fresh process, its peak RSS
against 1 GB. Appends rows to --out (CSV) with device, date, commit and command.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import python_ref  # noqa: E402
import srem_kernels  # noqa: E402


def inputs(B, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(B, D, generator=g)
    img = torch.nn.functional.normalize(latent + 0.5 * torch.randn(B, D, generator=g), dim=1)
    txt = torch.nn.functional.normalize(latent + 0.5 * torch.randn(B, D, generator=g), dim=1)
    return img, txt


def candidates(img, txt, compile_ok=True, only=None):
    G = torch.randn(img.shape[0], img.shape[0]) if only in (None, "matmuls") else None  # the B×B upstream

    def matmuls():
        S = img @ txt.T
        return S, G @ txt, G.T @ img

    def eager():
        a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
        python_ref.srem(a, b)[0].backward()

    def cpu():
        a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
        srem_kernels.loss(a, b, backend="cpu").loss.backward()

    out = {"matmuls": matmuls, "eager": eager, "cpu": cpu}
    if compile_ok:
        compiled = torch.compile(python_ref.srem)

        def compiled_fn():
            a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
            compiled(a, b)[0].backward()

        out["compile"] = compiled_fn
    return out


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss():
    """Linux: restart VmHWM (the peak RSS) from the current RSS, so that imports do not count."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(name, B, D, threads):
    """Run one candidate once in this (fresh) process; print its peak memory as JSON."""
    torch.set_num_threads(threads)
    img, txt = inputs(B, D)
    fns = candidates(img, txt, compile_ok=name == "compile", only=name)
    if name == "compile":
        fns[name]()  # compile first: its memory is not the loss's
    before = rss_mb()
    reset_peak_rss()
    t = time.perf_counter()
    fns[name]()
    seconds = time.perf_counter() - t
    peak = peak_rss_mb()
    print(json.dumps({"before_mb": before, "peak_mb": peak, "seconds": seconds}))


def in_child(name, B, D, threads):
    cmd = [sys.executable, __file__, "--child", name, "--batch", str(B), "--dim", str(D), "--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def git_commit():
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()  # fmt: skip
        return sha.strip() + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def device():
    name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores visible, load {os.getloadavg()[0]:.1f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--big", type=int, default=32768, help="B of the memory run of the cpu backend (0: skip)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu_backend.csv"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child, args.batch, args.dim, args.threads)

    torch.set_num_threads(args.threads)
    B, D = args.batch, args.dim
    img, txt = inputs(B, D)
    fns = candidates(img, txt, compile_ok=not args.no_compile)
    print(f"B={B} D={D} fp32, {args.threads} threads, {args.reps} interleaved reps; device: {device()}")
    if "compile" in fns:
        t = time.perf_counter()
        fns["compile"]()
        print(f"torch.compile: first call (compiling) {time.perf_counter() - t:.1f} s")
    for f in fns.values():  # warm-up
        f()
    times = {k: [] for k in fns}
    for _ in range(args.reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(1e3 * (time.perf_counter() - t))
    mem = {k: in_child(k, B, D, args.threads) for k in fns}
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    common = dict(device=device(), date=date, commit=git_commit(), command="python " + " ".join(sys.argv),
                  threads=args.threads, dtype="fp32", reps=args.reps)  # fmt: skip
    rows = []
    base = statistics.median(times["matmuls"])
    print(f"{'candidate':<10}{'median ms':>11}{'min':>9}{'max':>9}{'x matmuls':>11}{'peak RSS MB':>13}{'(+ call)':>10}")
    for k, ts in times.items():
        med = statistics.median(ts)
        m = mem[k]
        print(f"{k:<10}{med:>11.0f}{min(ts):>9.0f}{max(ts):>9.0f}{med / base:>11.2f}{m['peak_mb']:>13.0f}"
              f"{m['peak_mb'] - m['before_mb']:>10.0f}")  # fmt: skip
        rows.append(dict(common, candidate=k, B=B, D=D, median_ms=round(med, 1), min_ms=round(min(ts), 1),
                         max_ms=round(max(ts), 1), x_matmuls=round(med / base, 2), peak_rss_mb=round(m["peak_mb"]),
                         call_rss_mb=round(m["peak_mb"] - m["before_mb"]), all_ms=" ".join(f"{t:.0f}" for t in ts)))  # fmt: skip
    for k in ("eager", "compile"):
        if k in times:
            print(f"cpu backend vs {k}: {statistics.median(times[k]) / statistics.median(times['cpu']):.2f}x faster")
    if args.big:
        m = in_child("cpu", args.big, D, args.threads)
        ok = m["peak_mb"] < 1024
        print(f"cpu backend B={args.big}: {m['seconds']:.1f} s, peak RSS {m['peak_mb']:.0f} MB "
              f"({'under' if ok else 'OVER'} 1 GB; {m['before_mb']:.0f} MB before the call)")  # fmt: skip
        rows.append(dict(common, candidate="cpu", B=args.big, D=D, median_ms=round(1e3 * m["seconds"], 1), min_ms="",
                         max_ms="", x_matmuls="", peak_rss_mb=round(m["peak_mb"]),
                         call_rss_mb=round(m["peak_mb"] - m["before_mb"]), all_ms="single run"))  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    with out.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)
    print(f"appended {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()

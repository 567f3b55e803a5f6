"""What the first-use self-check costs a process: in fresh processes, the first call of the loss
on a fused backend with the check on (SREM_SELFCHECK=1) against the same first call with it off,
one dtype after another (fp32, then bf16, then fp16: each its own first use), at a training-like
shape (B=256, D=128: the "aligned" class). Medians over the launches; nothing is asserted.

    python -m bench.selfcheck_cost [--backend cpu] [--launches 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DTYPES = ("fp32", "bf16", "fp16")

# one launch: the first call per dtype, timed, as JSON {dtype: seconds}
_CHILD = """
import json, sys, time, torch, srem_kernels
from bench.run import DTYPES, inputs
backend = sys.argv[1]
srem_kernels.backends()  # the backends' own loading is not the check's
dev = torch.device("cuda" if backend in ("triton", "cuda") and torch.cuda.is_available() else "cpu")
out = {}
for name in sys.argv[2:]:
    img, txt = inputs(256, 128, DTYPES[name], dev)
    t0 = time.perf_counter()
    srem_kernels.loss(img, txt, backend=backend).loss.backward()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    out[name] = time.perf_counter() - t0
print(json.dumps(out))
"""


def launch(backend: str, check: bool) -> dict[str, float]:
    env = dict(os.environ, SREM_SELFCHECK="1" if check else "0")
    res = subprocess.run([sys.executable, "-c", _CHILD, backend, *DTYPES], capture_output=True, text=True, cwd=ROOT,
                         env=env, check=True)  # fmt: skip
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.selfcheck_cost", description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--launches", type=int, default=5)
    args = ap.parse_args(argv)
    runs = {True: [], False: []}
    for _ in range(args.launches):  # alternated, so that drift hits both alike
        for check in (True, False):
            runs[check].append(launch(args.backend, check))
    print(f"first call of srem_kernels.loss(backend={args.backend!r}) + backward, B=256, D=128, median of "
          f"{args.launches} launches (ms)")  # fmt: skip
    print(f"{'dtype':<6} {'check on':>9} {'(slowest)':>10} {'check off':>10} {'the check':>10}")
    for d in DTYPES:
        on, off = (statistics.median(r[d] for r in runs[c]) * 1e3 for c in (True, False))
        slowest = max(r[d] for r in runs[True]) * 1e3  # the check costs less than this in every launch
        print(f"{d:<6} {on:>9.1f} {slowest:>10.1f} {off:>10.1f} {on - off:>10.1f}")


if __name__ == "__main__":
    main()

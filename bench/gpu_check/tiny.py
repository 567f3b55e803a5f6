"""The program tier 4 of the GPU check runs under compute-sanitizer: a loss and its backward of
every variant of one backend at tiny sizes that cross tile and panel edges (B=2, D=1; B=37, D=64
with 16-row cuda panels), fp32 and bf16. Prints "tiny run ok" when every result is finite.

    compute-sanitizer --tool memcheck python -m bench.gpu_check.tiny --backend cuda
"""

from __future__ import annotations

import argparse
import os
import sys
from unittest import mock

import torch

import srem_kernels
from bench.gpu_check import backends
from tests.backend_checks import DTYPES
from tests.helpers import embeddings

SIZES = ((2, 1), (37, 64))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backend", required=True, choices=sorted(backends.VARIANTS))
    args = ap.parse_args(argv)
    why = backends.unavailable(args.backend)
    if why is not None:
        print(f"{args.backend} is not available: {why}")
        return 2
    os.environ.setdefault("SREM_CUDA_PANEL_ROWS", "16")  # several panels at B=37
    dev = backends.device()
    for name, env in backends.VARIANTS[args.backend]:
        for B, D in SIZES:
            for dt in ("fp32", "bf16"):
                img, txt = embeddings(B, D, seed=B + D, noise=0.7, normalize=D > 1, dtype=DTYPES[dt], device=dev)
                a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
                with mock.patch.dict(os.environ, env):
                    out = srem_kernels.loss(a, b, backend=args.backend)
                    out.loss.backward()
                backends.synchronize(dev)
                finite = all(bool(torch.isfinite(t).all()) for t in (out.loss, out.per_sample, a.grad, b.grad))
                print(f"{name} {dt} B={B} D={D}: loss {float(out.loss.detach()):.6g}{'' if finite else ' NOT FINITE'}", flush=True)
                if not finite:
                    return 1
    print("tiny run ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())

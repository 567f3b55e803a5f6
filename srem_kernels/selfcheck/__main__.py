"""python -m srem_kernels.selfcheck [--device cuda] [--backend triton ...] [--dtype bf16 ...] [--shape odd]

Prints the self-check's report (docs/selfcheck.md). Exit status 0 when every case passed, 1 on
a failure, 2 when no backend could be checked on the device.
"""

from __future__ import annotations

import argparse
import sys

from srem_kernels import selfcheck


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m srem_kernels.selfcheck", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="default: cuda if there is a GPU, else cpu")
    ap.add_argument("--backend", nargs="+", default=None, help="fused backends to check (default: all)")
    ap.add_argument("--dtype", nargs="+", default=None, help="fp32, bf16, fp16 (default: all)")
    ap.add_argument("--shape", nargs="+", default=None, help="aligned, odd (default: both)")
    args = ap.parse_args(argv)
    report = selfcheck.run(args.device, args.backend, args.dtype, shapes=args.shape)
    print(report)
    return 0 if report.ok and report.checked else (1 if not report.ok else 2)


if __name__ == "__main__":
    sys.exit(main())

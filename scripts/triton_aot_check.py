"""Compile every Triton kernel of srem_kernels/triton_srem.py for an NVIDIA target without a GPU
(Triton's bundled ptxas): catches what the interpreter accepts and a GPU rejects (dot shapes,
libdevice, layouts). Run without TRITON_INTERPRET:

    python scripts/triton_aot_check.py [--arch 90] [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("unset TRITON_INTERPRET: the interpreter does not compile")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from srem_kernels import triton_srem as T  # noqa: E402

INT64_PTRS = ("hidx_r", "hidx_c", "at_r", "at_c")


def compile_one(fn, target, dtype: str, acc: str, ds: str, constexprs: dict) -> str:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ("img", "txt"):
            sig[name] = "*" + dtype
        elif name == "sim":
            sig[name] = "*" + (acc if constexprs["FROM_SIM"] else dtype)
        elif name == "ds":
            sig[name] = "*" + ds
        elif name in INT64_PTRS:
            sig[name] = "*i64"
        elif name in ("B", "D", "r0", "r1", "ld_ds") or name.startswith("s_"):
            sig[name] = "i32"
        else:
            sig[name] = "*" + acc
    t = time.time()
    is_ds = fn is T._dsim_kernel
    constexprs = dict(constexprs, BLOCK=T._DS_BLOCK if is_ds else T._BLOCK)
    k = triton.compile(triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=constexprs), target=target,
                       options={"num_warps": T._DS_NUM_WARPS if is_ds else T._NUM_WARPS, **T._COMPILE_OPTIONS})  # fmt: skip
    usage = ""
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if cuobjdump.exists():  # registers and spill stack of the cubin
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(k.asm["cubin"])
            f.flush()
            res = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True).stdout
        usage = " ".join(w for w in res.split() if w.startswith(("REG:", "STACK:")))
    return f"{time.time() - t:.1f}s {usage}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--quick", action="store_true", help="bf16 streaming and fp32 from a matrix only")
    args = ap.parse_args()
    target = GPUTarget("cuda", args.arch, 32)
    variants = [("bf16", "fp32", "bf16", "tf32", False), ("fp32", "fp32", "fp32", "ieee", True)]
    if not args.quick:
        variants += [("bf16", "fp32", "bf16", "tf32", True), ("fp16", "fp32", "fp32", "tf32", False),
                     ("fp32", "fp32", "fp32", "ieee", False), ("fp32", "fp32", "fp32", "tf32", False),
                     ("fp64", "fp64", "fp64", "ieee", False), ("fp64", "fp64", "fp64", "ieee", True)]  # fmt: skip
    for dtype, acc, ds, prec, from_sim in variants:
        cx = dict(FROM_SIM=from_sim, ACC=tl.float64 if acc == "fp64" else tl.float32, DOT_PREC=prec, UPCAST=False,
                  BLOCK=T._BLOCK, BK=T._BK)  # fmt: skip
        for fn, extra in ((T._stats_kernel, {}), (T._coupled_kernel, {"BIAS": True, "WITH_A": True}),
                          (T._coupled_kernel, {"BIAS": False, "WITH_A": False}), (T._dsim_kernel, {"BIAS": True})):  # fmt: skip
            s = compile_one(fn, target, dtype, acc, ds, {**cx, **extra})
            print(f"sm_{args.arch} {fn.__name__:<16} {dtype} {prec:<4} from_sim={from_sim!s:<5} {extra} ok ({s})", flush=True)


if __name__ == "__main__":
    main()

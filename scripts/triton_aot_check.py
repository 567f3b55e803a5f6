"""Compile every Triton kernel launch of backend="triton" for an NVIDIA target without a GPU
(Triton's bundled ptxas), with the specialisation a real launch gets, and report its resources.

The Python side runs on CPU tensors with each launch intercepted: instead of launching, the
launch's own arguments go through the JIT's binder for the target (ints equal to 1 become
constants, pointers and ints divisible by 16 get the divisibility hint), are compiled once per
distinct specialisation, and ptxas's -v report (registers, spill bytes, shared memory) is kept.
So what is compiled is what srem_kernels/backends/triton/ launches, not a hand-written signature.
Catches what the interpreter accepts and a GPU rejects (dot shapes, libdevice, layouts). Uses the
installed Triton's JIT internals (3.9 here); the device's JIT compiles the same launches itself.

    python scripts/triton_aot_check.py [--arch 90] [--quick] [--batch 1024] [--dim 256]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import time
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("unset TRITON_INTERPRET: the interpreter does not compile")
# the kernels of the tree this script is in, not an installed copy elsewhere (sys.path[0] is scripts/)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime import jit  # noqa: E402

from srem_kernels.backends.triton import kernels as T  # noqa: E402

# (label, dtype, strategy, float32 matmul precision, from a similarity matrix)
VARIANTS = [
    ("bf16 streaming", torch.bfloat16, "streaming", "highest", False),
    ("fp32 ieee materialised", torch.float32, "materialised", "highest", False),
    ("bf16 materialised", torch.bfloat16, "materialised", "highest", False),
    ("fp32 ieee streaming", torch.float32, "streaming", "highest", False),
    ("fp32 tf32 streaming", torch.float32, "streaming", "high", False),
    ("fp16 streaming", torch.float16, "streaming", "highest", False),
    ("fp32 from sim", torch.float32, None, "highest", True),
    ("fp64 streaming", torch.float64, "streaming", "highest", False),
    ("fp64 materialised", torch.float64, "materialised", "highest", False),
    ("bf16 row ranges", torch.bfloat16, "rows", "highest", False),
    ("fp32 ieee row ranges", torch.float32, "rows", "highest", False),
    ("fp32 glue", torch.float32, "glue", "highest", False),  # srem_kernels/backends/triton/glue.py
    ("fp64 glue", torch.float64, "glue", "highest", False),
    # a tensor tau (a learnable temperature): TAU_PTR loads it on the device, TAU_GRAD reduces dL/dtau
    ("bf16 streaming, tensor tau", torch.bfloat16, "streaming", "highest", False),
    ("fp32 ieee materialised, tensor tau", torch.float32, "materialised", "highest", False),
    ("fp32 ieee row ranges, tensor tau", torch.float32, "rows", "highest", False),
    ("fp32 glue, tensor tau", torch.float32, "glue", "highest", False),
]
QUICK = ("bf16 streaming", "fp32 ieee streaming", "fp32 ieee materialised", "fp32 glue", "bf16 streaming, tensor tau",
         "fp32 glue, tensor tau")


class Compiler:
    """Stands in for JITFunction.run: compiles a launch for `target` instead of running it."""

    def __init__(self, target: GPUTarget, only: str | None = None):
        self.target = target
        self.only = only
        self.backend = make_backend(target)
        self.binders: dict = {}
        self.done: dict = {}  # specialisation key -> report line
        self.order: list = []
        self.labels: list = []  # (variant, key) in order of first compilation

    def run(self, fn, *args, grid, warmup, **kwargs):
        if self.only and self.only not in fn.__name__:
            return None
        kwargs.setdefault("debug", False)
        if fn not in self.binders:
            self.binders[fn] = jit.create_function_from_signature(fn.signature, fn.params, self.backend)
        bound, specialization, options = self.binders[fn](*args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(self.backend, kwargs, bound, specialization, options)
        key = (fn.__name__, str(signature), str(sorted(constexprs.items())), str(sorted(attrs.items())),
               str(sorted(options.__dict__.items())))  # fmt: skip
        if key not in self.done:
            t = time.time()
            log = io.StringIO()
            with contextlib.redirect_stdout(log):
                knobs.nvidia.dump_ptxas_log = True
                knobs.compilation.always_compile = True  # ptxas runs (and reports) also when cached
                try:
                    k = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=self.target,
                                       options=options.__dict__)  # fmt: skip
                finally:
                    knobs.nvidia.dump_ptxas_log = False
                    knobs.compilation.always_compile = False
            named = {fn.arg_names[p[0]]: v for p, v in constexprs.items() if len(p) == 1}
            shown = {n: v for n, v in named.items() if n.isupper() or n.startswith("s_")}
            shown = {n: (v.name if hasattr(v, "name") else v) for n, v in shown.items()}
            self.done[key] = dict(kernel=fn.__name__, warps=options.num_warps, **usage(log.getvalue()),
                                  smem=k.metadata.shared, wgmma="wgmma" in k.asm["ptx"], seconds=time.time() - t,
                                  constexprs=shown)  # fmt: skip
            self.order.append(key)
        return None


def usage(ptxas_log: str) -> dict:
    regs = re.findall(r"Used (\d+) registers", ptxas_log)
    stores = re.findall(r"(\d+) bytes spill stores", ptxas_log)
    loads = re.findall(r"(\d+) bytes spill loads", ptxas_log)
    stack = re.findall(r"(\d+) bytes stack frame", ptxas_log)
    return dict(regs=int(regs[-1]) if regs else -1, spill_stores=int(stores[-1]) if stores else -1,
                spill_loads=int(loads[-1]) if loads else -1, stack=int(stack[-1]) if stack else -1)  # fmt: skip


def drive(label, dtype, strategy, precision, from_sim, B, D, **tiles):
    """One forward (full and stats-only) and backward of the kernels (or the row-range methods of
    the distributed loss), on CPU tensors; a label ending "tensor tau" passes tau as a 0-d tensor
    and asks the backward for its gradient."""
    g = torch.Generator().manual_seed(0)
    img = torch.randn(B, D, generator=g).to(dtype)
    txt = torch.randn(B, D, generator=g).to(dtype)
    tensor_tau = label.endswith("tensor tau")
    tau = torch.tensor(0.05, dtype=torch.float64) if tensor_tau else 0.05
    grad = {"tau_grad": True} if tensor_tau else {}
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        if strategy == "glue":
            return drive_glue(dtype, B, D, tau)
        k = T.TritonKernels("streaming" if strategy in (None, "rows") else strategy, **tiles)
        acc = T._acc_dtype(dtype)
        v = torch.ones(B, dtype=acc)
        if strategy == "rows":
            lo, hi = B // 3, B // 3 + B // 4
            first = k.pass1_rows(img, txt, lo, hi, tau=tau)
            full = {key: torch.zeros(B, dtype=t.dtype) for key, t in first.items()}
            full |= {key: torch.zeros(B, dtype=acc) for key in ("A_r", "A_c", "A_r_rest", "A_c_rest")}
            k.pass2_rows(img, txt, lo, hi, full, tau=tau, eps=1e-10, bias=True)
            k.backward_rows(img, txt, lo, hi, full, tau=tau, eps=1e-10, bias=True, g_cbcl=v, k_r=v, k_c=v, **grad)
            return
        sim = (img.float() @ txt.float().T).to(dtype) if from_sim else None
        a, b = (None, None) if from_sim else (img, txt)
        kw = dict(tau=tau, eps=1e-10, bias=True)
        k.forward(a, b, sim, stats_only=True, **kw)
        k.forward(a, b, sim, bias=False, tau=tau, eps=1e-10)
        saved = k.forward(a, b, sim, **kw)
        k.backward(a, b, sim, saved, g_cbcl=v, k_r=v, k_c=v, **kw, **grad)
    finally:
        torch.set_float32_matmul_precision(old)


def drive_glue(dtype, B, D, tau=0.05):
    """The glue's Triton routines (srem_kernels/backends/glue.py with impl="triton"): value checks of every
    input dtype, the forward in each select/sensitivity form, the upstream vectors, the GMM; with
    a tensor tau its value check and the forward reading it on the device."""
    from srem_kernels.backends import glue
    from srem_kernels._validate import SREMParams

    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, D, generator=g)
    if isinstance(tau, torch.Tensor):
        from srem_kernels.backends.triton import glue as triton_glue

        # a CUDA tensor tau's check (check_values reads a CPU one on the host, as these all are)
        triton_glue.nonfinite(tau.float(), torch.zeros(1, dtype=torch.int32), 1, bound="positive")
        v = {k: torch.rand(B, generator=g).to(dtype) for k in ("lse_r", "lse_c", "pos", "hard_i2t", "hard_t2i", "sce", "loss_cbcl")}
        glue.forward(v, SREMParams(tau=tau), 0.2, None, impl="triton")
        return
    for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        glue.check_values(img=x.to(dt), txt=x.to(dt).T, impl="triton")
    glue.check_values(img=x, txt=x, margin=torch.rand(B, generator=g), clean=torch.rand(B, generator=g), impl="triton")
    v = {k: torch.rand(B, generator=g).to(dtype) for k in ("lse_r", "lse_c", "pos", "hard_i2t", "hard_t2i", "sce", "loss_cbcl")}
    margin = torch.rand(B, generator=g)
    for params, m, c in ((SREMParams(), 0.2, None), (SREMParams(reduction="none", sce_weight=False), margin, None),
                         (SREMParams(reduction="sum", sensitivity="clean"), 0.2, torch.rand(B, generator=g)),
                         (SREMParams(select="none", sensitivity="rank"), margin, None)):  # fmt: skip
        out = glue.forward(v, params, m, c, impl="triton")
        glue.upstream(out["loss"] if params.reduction != "none" else out["per_sample"], out["hinge_r"],
                      out["hinge_c"], reduction=params.reduction, lambda_cbcl=1.0, impl="triton")  # fmt: skip
    glue.gmm_filtration(v["lse_r"], impl="triton", posterior=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--quick", action="store_true", help=f"only {' and '.join(QUICK)}")
    ap.add_argument("--batch", type=int, default=1024, help="B of the driving call (a multiple of 16, as in training)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--only", help="compile only the kernels whose name contains this")
    ap.add_argument("--variant", action="append", help="only these variants (labels above)")
    ap.add_argument("--tiles", default="", help="TritonKernels keyword arguments, e.g. block=64,block_n=32,bk=32")
    ap.add_argument("--markdown", action="store_true", help="also print the table in markdown (bench/RESULTS.md)")
    args = ap.parse_args(argv)
    comp = Compiler(GPUTarget("cuda", args.arch, 32), args.only)
    orig = jit.JITFunction.run
    jit.JITFunction.run = lambda self, *a, **kw: comp.run(self, *a, **kw)
    print(f"triton {triton.__version__}, sm_{args.arch}, launches of B={args.batch} D={args.dim} "
          f"({Path(T.__file__).parents[3]})")
    print(f"{'variant':<24} {'kernel':<18} warps regs spill(st/ld) stack smem wgmma  constexprs")
    spills = 0
    try:
        for label, dtype, strategy, precision, from_sim in VARIANTS:
            if (args.quick and label not in QUICK) or (args.variant and label not in args.variant):
                continue
            n = len(comp.order)
            tiles = {k: int(v) for k, v in (kv.split("=") for kv in args.tiles.split(",") if kv)}
            drive(label, dtype, strategy, precision, from_sim, args.batch, args.dim, **tiles)
            for key in comp.order[n:]:
                comp.labels.append((label, key))
                r = comp.done[key]
                spills += r["spill_stores"] > 0
                print(f"{label:<24} {r['kernel']:<18} {r['warps']:>5} {r['regs']:>4} {r['spill_stores']:>5}/{r['spill_loads']:<5} "
                      f"{r['stack']:>5} {r['smem']:>5} {'yes' if r['wgmma'] else 'no':<5}  {r['constexprs']} ok ({r['seconds']:.1f}s)",
                      flush=True)  # fmt: skip
    finally:
        jit.JITFunction.run = orig
    print(f"{len(comp.order)} specialisations compiled, {spills} with spills")
    if args.markdown:
        print("\n| variant | kernel | specialisation | tile | warps | registers | spill stores/loads (B) | shared (B) | wgmma |")
        print("|---|---|---|---|---|---|---|---|---|")
        for label, key in comp.labels:
            r = comp.done[key]
            c = r["constexprs"]
            flags = " ".join(f"{n}={int(c[n])}" for n in ("PAIRS", "BIAS", "WITH_A") if n in c)
            tile = (f"{c['BM']}×{c['BN'] * c['SPLIT']}/{c['BN']}" if "BM" in c else f"{c['T']}×{c['T']}") if (
                "BM" in c or "T" in c) else f"{c.get('TM', c.get('BLOCK', ''))}"  # fmt: skip
            print(f"| {label} | `{r['kernel']}` | {flags} | {tile} | {r['warps']} | {r['regs']} | "
                  f"{r['spill_stores']}/{r['spill_loads']} | {r['smem']} | {'yes' if r['wgmma'] else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where the time of one `cpu` backend call goes: each phase of srem_kernels.loss (forward +
backward, fp32) timed on its own, at several batch sizes, interleaved, medians.

    python -m bench.breakdown [--batch 128 1024 4096] [--dim 256] [--threads 2] [--repeats 15]

Phases, as CPUKernels and the glue run them (the materialised strategy, `auto`'s choice at these
sizes): the forward GEMM S = I·Tᵀ; pass 1 (row and column max, log-sum-exp, hardest negatives);
pass 2 (everything that needs both softmaxes); the glue forward (energies, the GMM, the hinge,
L_i; the GMM also alone); the glue's upstream vectors; the backward's dS; its GEMMs dS·T and
dSᵀ·I; an OpenMP region's start (a kernel on a 2×2 matrix on the call's threads minus on one);
the output allocations; the first touch of a fresh B×B fp32 buffer (torch.empty + fill, minus the
fill of a warm one: the page faults that S costs where the allocator hands out new pages); the
value check of check_finite=True. "rest" is the whole call (check_finite=False) minus its phases:
Python, autograd and argument handling, split by two more timings of the same work with layers
taken away: the kernels and glue called in turn from Python (no autograd), and the call through
the backend's run and its autograd Function (no functional.py; the cpu backend's short eager
path, backends/cpu_eager.py, where it applies). Each B×B phase also as ns per element of S
(wall time / B²).

Appends to bench/results/<device>.breakdown.csv; `python -m bench.report` renders the latest run
in RESULTS.md ("Where the time goes"), with the 1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

import srem_kernels
from bench.measure import interleaved
from bench.run import RESULTS, command, csv_log, environment, inputs
from srem_kernels._validate import SREMParams
from srem_kernels.backends import cpu as cpu_backend, glue

COLUMNS = ["run", "date", "commit", "device", "threads", "torch", "triton", "command", "B", "D", "phase", "median_ms",
           "p20_ms", "p80_ms", "ns_per_element", "share", "load_before", "load_after"]  # fmt: skip
# phases that are part of one call (their sum and the whole call give "rest"); the others are
# shown for scale (the GMM is inside the glue forward, a region's start inside every kernel)
IN_CALL = ("gemm S", "pass 1", "pass 2", "glue forward", "glue upstream", "dS", "gemm dS·T, dSᵀ·I")
ELEMENTWISE = ("pass 1", "pass 2", "dS")
# the whole call with layers taken away (for scale): what is left is the kernels and glue called
# in turn from Python, then that through the backend's run and its autograd Function (no
# functional.py: cpu_eager's short path where it applies, as here)
LAYERS = ("kernels and glue called in turn (no autograd)", "through the backend's run (no functional.py)")


def phases(B: int, D: int) -> dict:
    """name -> zero-argument callable, each one phase of a call on the same inputs."""
    img, txt = inputs(B, D, torch.float32, torch.device("cpu"))
    x, y = img.detach(), txt.detach()
    K = cpu_backend.CPUKernels("materialised")
    K_run = cpu_backend.run.kernels  # the public call's kernels (auto strategy: materialised here)
    C = cpu_backend._C
    threads = torch.get_num_threads()
    saved = K.forward(x, y, None, tau=0.05, eps=1e-10, bias=True)
    S = saved["S"]
    o = cpu_backend._outputs(B)
    params = SREMParams()
    out = glue.forward(saved, params, 0.2, None, impl="cpu")
    g = torch.tensor(1.0)
    up = glue.upstream(g, out["hinge_r"], out["hinge_c"], reduction="mean", lambda_cbcl=1.0, impl="cpu")
    rows = cpu_backend._panel_rows(B)
    buf = torch.empty(rows * B)
    names = ("m_r", "logl_r", "m_c", "logl_c", "at_r", "at_c", "A_r", "A_c", "A_r_rest", "A_c_rest")
    vectors = [*(saved[k].data_ptr() for k in names), *(up[k].data_ptr() for k in ("g_cbcl", "k_r", "k_c")),
               saved["hard_i2t_index"].data_ptr(), saved["hard_t2i_index"].data_ptr()]  # fmt: skip
    d_img, d_txt = torch.empty(B, D), torch.empty(B, D)
    tiny = torch.randn(2, 2)
    buf2 = torch.empty(B, B)
    t2 = cpu_backend._outputs(2)

    def pass1():
        K._pass1(S, 0, o, 20.0, True, threads)
        K._finish_pass1(o)

    def pass2():
        C.pass2_full(S.data_ptr(), S.stride(0), B, 20.0, 1e-10, True, *K._split(o),
                     *o.ptrs(("pos",) + cpu_backend._PASS2_KEYS), threads)  # fmt: skip

    def dS():
        for r0 in range(0, B, rows):
            r1 = min(B, r0 + rows)
            C.backward_panel(S[r0].data_ptr(), B, buf.data_ptr(), B, r1 - r0, B, r0, 20.0, 1e-10, True, *vectors,
                             threads, 0)  # fmt: skip

    def gemms():
        for r0 in range(0, B, rows):
            r1 = min(B, r0 + rows)
            d = buf[: (r1 - r0) * B].view(r1 - r0, B)
            torch.mm(d, y, out=d_img[r0:r1])
            if r0 == 0:
                torch.mm(d.T, x[r0:r1], out=d_txt)
            else:
                d_txt.addmm_(d.T, x[r0:r1])

    def region(t):
        return lambda: K._pass1(tiny, 0, t2, 20.0, True, t)

    def whole():
        srem_kernels.loss(img, txt, backend="cpu", check_finite=False).loss.backward()

    def through_fused():  # the call without functional.py's layer: the backend's run (cpu_eager here) and backward
        cpu_backend.run(img, txt, None, params)[0].backward()

    def direct():  # the same kernels and glue called in turn: no autograd, no argument handling
        v = K_run.forward(x, y, None, tau=0.05, eps=1e-10, bias=True)
        o2 = glue.forward(v, params, 0.2, None, impl="cpu")
        u = glue.upstream(g, o2["hinge_r"], o2["hinge_c"], reduction="mean", lambda_cbcl=1.0, impl="cpu")
        K_run.backward(x, y, None, v, tau=0.05, eps=1e-10, bias=True, **u)

    return {
        "gemm S": lambda: torch.mm(x, y.T, out=S),
        "pass 1": pass1,
        "pass 2": pass2,
        "glue forward": lambda: glue.forward(saved, params, 0.2, None, impl="cpu"),
        "GMM alone": lambda: glue.gmm_filtration(out["energy"], impl="cpu"),
        "glue upstream": lambda: glue.upstream(g, out["hinge_r"], out["hinge_c"], reduction="mean", lambda_cbcl=1.0, impl="cpu"),
        "dS": dS,
        "gemm dS·T, dSᵀ·I": gemms,
        "OpenMP region start": (region(threads), region(1)),
        "output allocation": lambda: cpu_backend._outputs(B),
        "fresh B×B buffer (page faults)": (lambda: torch.empty(B, B).fill_(0.0), lambda: buf2.fill_(0.0)),
        "value check (check_finite=True)": lambda: glue.check_values(img=x, txt=y, impl="cpu"),
        LAYERS[0]: direct,
        LAYERS[1]: through_fused,
        "whole call": whole,
    }  # fmt: skip


def measure(B: int, D: int, repeats: int) -> list[dict]:
    fns = phases(B, D)
    flat = {}
    for name, f in fns.items():
        if isinstance(f, tuple):  # (the thing, its baseline): the difference is reported
            flat[name], flat[name + " (baseline)"] = f
        else:
            flat[name] = f
    med, load = interleaved(flat, torch.device("cpu"), repeats, shuffle=True)
    whole = med["whole call"].median_ms
    rows = []
    for name, f in fns.items():
        t = med[name]
        ms, p20, p80 = t.median_ms, t.p20_ms, t.p80_ms
        if isinstance(f, tuple):
            ms, p20, p80 = ms - med[name + " (baseline)"].median_ms, "", ""
        rows.append({"B": B, "D": D, "phase": name, "median_ms": f"{ms:.4g}", "p20_ms": f"{p20:.4g}" if p20 != "" else "",
                     "p80_ms": f"{p80:.4g}" if p80 != "" else "",
                     "ns_per_element": f"{1e6 * ms / B**2:.3g}" if name in ELEMENTWISE else "",
                     "share": f"{ms / whole:.3f}" if name in IN_CALL or name == "whole call" else ""})  # fmt: skip
    rest = whole - sum(med[k].median_ms for k in IN_CALL)
    rows.insert(-1, {"B": B, "D": D, "phase": "rest (Python, autograd, arguments)", "median_ms": f"{rest:.4g}",
                     "share": f"{rest / whole:.3f}"})  # fmt: skip
    return [dict(r, **load) for r in rows]


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m bench.breakdown", description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[128, 1024, 4096])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment(torch.device("cpu"))
    env["command"] = command("python -m bench.breakdown", argv)
    with csv_log(args.out, env, ".breakdown.csv", COLUMNS) as (log, w):
        for B in args.batch:
            rows = measure(B, args.dim, args.repeats)
            print(f"B={B} (load {rows[0]['load_before']} -> {rows[0]['load_after']})")
            for r in rows:
                w.writerow(dict(env, **r))
                ns = f"{r['ns_per_element']:>7} ns/el" if r.get("ns_per_element") else ""
                share = f"{100 * float(r['share']):5.1f} %" if r.get("share") else ""
                print(f"  {r['phase']:<36}{r['median_ms']:>10} ms  {share:>8}  {ns}")
    print(f"log: {os.path.relpath(log)}")
    return log


if __name__ == "__main__":
    main()

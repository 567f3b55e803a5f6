"""The `cpu` backend: fused multi-threaded C++ kernels (csrc/cpu/srem_cpu.cpp) behind fused.py's
`Kernels` contract.

S is streamed in row panels of `_panel_rows(B)` rows, never held whole: each panel P = S[I, :]
(and in the second forward pass Q = S[:, I]ᵀ, the columns of the same samples, which sce couples
with the rows) comes from torch's GEMM — fp32 IEEE dot products, fp16/bf16 inputs converted to
fp32 once (O(B·D)) — and the C++ kernels do everything else over the panel in one sweep:
pass 1 the row and column max / log l / hardest negatives, pass 2 the statistics that need both
softmaxes, backward dS panel by panel, followed by the GEMMs dS·T and dSᵀ·I. Extra memory is
O(B·(D + panel rows)). The kernels run on torch.get_num_threads() OpenMP threads — torch's own
pool, so they do not spin against its GEMMs — each owning the rows (columns) it writes, and the
panels run in a fixed order, so results are bitwise reproducible.
"""

from __future__ import annotations

import os

import torch

from srem_kernels import _alloc, fused
from srem_kernels.panels import PanelRows
from srem_kernels.registry import BackendUnavailable

try:
    from srem_kernels import _srem_cpu as _C
except ImportError as err:  # built by setup.py; skipped there when no C++ compiler works
    raise BackendUnavailable(f"compiled module srem_kernels._srem_cpu is missing ({err}); reinstall with a C++17 compiler") from err

_F32 = torch.float32


def _panel_rows(B: int) -> int:
    """Rows per panel: 16 MiB of fp32 per panel (B=4096: 1024 rows), between 64 and 1024 rows —
    thin panels make torch's GEMM several times slower per flop. SREM_CPU_PANEL_ROWS overrides it."""
    rows = int(os.environ.get("SREM_CPU_PANEL_ROWS", "0")) or max(64, min(1024, (1 << 22) // B))
    return min(rows, B)


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _vec(B, dtype=_F32):
    return _alloc.empty((B,), dtype=dtype, device="cpu")


def _row_panel(x, y, sim, r0, r1, buf):
    """S[r0:r1, :] as an fp32 row-major panel (unit column stride) and its leading dimension."""
    if sim is None:
        return torch.mm(x[r0:r1], y.T, out=buf[: r1 - r0])
    p = sim[r0:r1]
    if p.dtype != _F32 or p.stride(1) != 1:
        p = buf[: r1 - r0].copy_(p)
    return p


def _col_panel(x, y, sim, r0, r1, buf):
    """S[:, r0:r1]ᵀ: row a holds column r0 + a of S."""
    if sim is None:
        return torch.mm(y[r0:r1], x.T, out=buf[: r1 - r0])
    return buf[: r1 - r0].copy_(sim[:, r0:r1].T)


def _as_f32(t):
    return None if t is None else t.to(_F32)


class CPUKernels(PanelRows):
    # the row ranges of the distributed loss (panels.py)
    _C = _C
    _panel_rows = staticmethod(_panel_rows)

    def _tail(self, ref):
        return (torch.get_num_threads(),)

    def _operands(self, img, txt):
        return _as_f32(img), _as_f32(txt)

    def _panel(self, X, Y, r0, r1, buf):
        return _row_panel(X, Y, None, r0, r1, buf)

    def _times(self, d, Y, out):
        torch.mm(d, Y, out=out)

    def forward(self, img, txt, sim, *, tau, eps, bias):
        B = (sim if sim is not None else img).shape[0]
        threads = torch.get_num_threads()
        x, y = _as_f32(img), _as_f32(txt)
        rows = _panel_rows(B)
        buf, qbuf = torch.empty(rows, B, dtype=_F32), torch.empty(rows, B, dtype=_F32)
        names = ("m_r", "logl_r", "m_c", "pos", "hard_i2t", "hard_t2i", "ce_i2t", "ce_t2i", "entropy_i2t",
                 "entropy_t2i", "sce", "loss_cbcl", "A_r", "A_c", "A_r_rest", "A_c_rest")  # fmt: skip
        o = {k: _vec(B) for k in names}
        for k in ("hard_i2t_index", "hard_t2i_index", "at_r", "at_c"):
            o[k] = _vec(B, torch.int64)
        rest_c = _vec(B)  # running state of pass 1, started by its first panel
        inv_tau = 1.0 / tau
        for r0 in range(0, B, rows):
            r1 = min(B, r0 + rows)
            p = _row_panel(x, y, sim, r0, r1, buf)
            _C.stats_panel(
                _ptr(p), p.stride(0), r1 - r0, B, r0, inv_tau, _ptr(o["m_r"]), _ptr(o["logl_r"]), _ptr(o["at_r"]),
                _ptr(o["pos"]), _ptr(o["hard_i2t"]), _ptr(o["hard_i2t_index"]), _ptr(o["m_c"]), _ptr(rest_c),
                _ptr(o["at_c"]), _ptr(o["hard_t2i"]), _ptr(o["hard_t2i_index"]), r0 == 0, threads,
            )  # fmt: skip
        o["logl_c"] = torch.log1p(rest_c)
        for r0 in range(0, B, rows):
            r1 = min(B, r0 + rows)
            p = _row_panel(x, y, sim, r0, r1, buf)
            q = _col_panel(x, y, sim, r0, r1, qbuf)
            _C.forward_panel(
                _ptr(p), p.stride(0), _ptr(q), q.stride(0), r1 - r0, B, r0, inv_tau, eps, bias, _ptr(o["m_r"]),
                _ptr(o["logl_r"]), _ptr(o["m_c"]), _ptr(o["logl_c"]), _ptr(o["at_r"]), _ptr(o["at_c"]),
                _ptr(o["ce_i2t"]), _ptr(o["ce_t2i"]), _ptr(o["entropy_i2t"]), _ptr(o["entropy_t2i"]), _ptr(o["sce"]),
                _ptr(o["loss_cbcl"]), _ptr(o["A_r"]), _ptr(o["A_c"]), _ptr(o["A_r_rest"]), _ptr(o["A_c_rest"]), threads,
            )  # fmt: skip
        o["lse_r"] = o["m_r"] + o["logl_r"]
        o["lse_c"] = o["m_c"] + o["logl_c"]
        return o

    def backward(self, img, txt, sim, saved, *, tau, eps, bias, g_cbcl, k_r, k_c):
        B = (sim if sim is not None else img).shape[0]
        threads = torch.get_num_threads()
        x, y = _as_f32(img), _as_f32(txt)
        rows = _panel_rows(B)
        buf = torch.empty(rows, B, dtype=_F32)
        g, k_r, k_c = (t.to(_F32).contiguous() for t in (g_cbcl, k_r, k_c))
        s = saved
        if sim is None:
            D = img.shape[1]
            d_img, d_txt = _alloc.empty((B, D), dtype=_F32, device="cpu"), _alloc.empty((B, D), dtype=_F32, device="cpu")
        else:
            d_sim = _alloc.empty((B, B), dtype=sim.dtype, device="cpu")
        for r0 in range(0, B, rows):
            r1 = min(B, r0 + rows)
            p = _row_panel(x, y, sim, r0, r1, buf)
            d = buf[: r1 - r0]  # dS overwrites the panel it is formed from
            _C.backward_panel(
                _ptr(p), p.stride(0), _ptr(d), d.stride(0), r1 - r0, B, r0, 1.0 / tau, eps, bias, _ptr(s["m_r"]),
                _ptr(s["logl_r"]), _ptr(s["m_c"]), _ptr(s["logl_c"]), _ptr(s["at_r"]), _ptr(s["at_c"]), _ptr(s["A_r"]),
                _ptr(s["A_c"]), _ptr(s["A_r_rest"]), _ptr(s["A_c_rest"]), _ptr(g),
                _ptr(k_r), _ptr(k_c), _ptr(s["hard_i2t_index"]), _ptr(s["hard_t2i_index"]), threads,
            )  # fmt: skip
            if sim is not None:
                d_sim[r0:r1].copy_(d)
                continue
            torch.mm(d, y, out=d_img[r0:r1])
            if r0 == 0:
                torch.mm(d.T, x[r0:r1], out=d_txt)
            else:
                d_txt.addmm_(d.T, x[r0:r1])
        if sim is not None:
            return d_sim
        return d_img.to(img.dtype), d_txt.to(txt.dtype)


run = fused.FusedRun(CPUKernels())

"""The `cuda` backend: CUDA C++ kernels (csrc/cuda/srem_cuda.cu) behind fused.py's `Kernels`
contract.

The same streaming as the cpu backend (srem_kernels/backends/cpu.py): S is walked in row panels of
`_panel_rows(B)` rows, never held whole. Every panel is formed, reduced by the panel kernels, and
in backward turned into dS, then multiplied into dS·T and dSᵀ·I. The module links the CUDA
runtime only: all pointers, strides and the current stream cross its C ABI as integers. Extra
memory: two R×B fp32 panels plus O(B·D) (with the torch GEMMs and 16-bit inputs, an fp32
temporary per product). No atomics: results are bitwise reproducible.

Who forms the panels P, Q and the products (CUDAKernels(gemm=...), else SREM_CUDA_GEMM, read at
each call; default "own"):
  own    the module's tiled similarity and GEMM kernels: tensor cores via WMMA for fp16/bf16, IEEE
         fp32 FMAs for fp32; inputs read in their dtype and strides, no copies; dS·T, dSᵀ·I in fp32.
  torch  torch.mm (cuBLAS), as the cpu backend does: 16-bit panels on the tensor cores with fp32
         output; the products take dS in bf16 for bf16 inputs (the tensor-core path, as the triton
         backend), in fp32 otherwise (fp16 would underflow dS). fp32 operands follow torch's
         float32 matmul precision (TF32 where allowed), as torch.matmul does.
  The fused reductions and dS stay the module's kernels in both.
"""

from __future__ import annotations

import os

import torch

from srem_kernels import _alloc, _tau

from srem_kernels.backends import fused
from srem_kernels.backends.panels import PanelRows
from srem_kernels.errors import BackendUnavailable

try:
    from srem_kernels.backends import _srem_cuda as _C
except ImportError as err:  # built by setup.py only where nvcc is found
    raise BackendUnavailable(f"compiled module srem_kernels.backends._srem_cuda is missing ({err}); install with nvcc on PATH") from err
if not torch.cuda.is_available():
    raise BackendUnavailable("no CUDA device (torch.cuda.is_available() is False)")

_F32 = torch.float32
_CODES = {torch.float32: _C.F32, torch.float16: _C.F16, torch.bfloat16: _C.BF16}
GEMMS = ("own", "torch")


def _panel_rows(B: int) -> int:
    """Rows per panel: 128 MiB of fp32 per panel (B=16384: 2048 rows), between 64 and 4096 rows.
    SREM_CUDA_PANEL_ROWS overrides it."""
    rows = int(os.environ.get("SREM_CUDA_PANEL_ROWS", "0")) or max(64, min(4096, (1 << 25) // B))
    return min(rows, B)


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _mm32(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None, accumulate: bool = False) -> torch.Tensor:
    """a·b by torch.mm (cuBLAS) with an fp32 result, written into (accumulate: added to) `out`
    when given; 16-bit operands on the tensor cores. fp32 operands write into `out` directly;
    16-bit ones go through an fp32 temporary (mm's dtype_out overload is not used: untested here)."""
    if a.dtype == _F32 and out is not None:
        return out.addmm_(a, b) if accumulate else torch.mm(a, b, out=out)
    p = torch.mm(a, b) if a.dtype == _F32 else torch.mm(a, b, out_dtype=_F32)
    if out is None:
        return p
    return out.add_(p) if accumulate else out.copy_(p)


def _grad_dtype(dtype: torch.dtype) -> torch.dtype:
    """Operand dtype of the torch products dS·T, dSᵀ·I: bf16 keeps the tensor cores (its range
    is fp32's); fp16 would underflow dS (g/B/tau), so fp16 and fp32 inputs go through fp32."""
    return torch.bfloat16 if dtype == torch.bfloat16 else _F32


class _Launch:
    """Device, stream and the panel forming of one call."""

    def __init__(self, kernels, ref: torch.Tensor, img, txt, sim):
        self.dev = ref.device.index if ref.device.index is not None else torch.cuda.current_device()
        self.stream = torch.cuda.current_stream(ref.device).cuda_stream
        self.kernels, self.img, self.txt, self.sim = kernels, img, txt, sim
        self.B = ref.shape[0]

    def rows(self, r0, r1, buf):
        """S[r0:r1, :] as an fp32 panel with unit column stride."""
        if self.sim is None:
            return self.kernels._panel(self.img, self.txt, r0, r1, buf)
        p = self.sim[r0:r1]
        if p.dtype != _F32 or p.stride(1) != 1:
            p = buf[: r1 - r0].copy_(p)
        return p

    def cols(self, r0, r1, buf):
        """S[:, r0:r1]ᵀ: row a holds column r0 + a of S."""
        if self.sim is None:
            return self.kernels._panel(self.txt, self.img, r0, r1, buf)
        return buf[: r1 - r0].copy_(self.sim[:, r0:r1].T)


class CUDAKernels(PanelRows):
    """gemm: "own" or "torch" (module docstring), or None: SREM_CUDA_GEMM, else "own"."""

    # the row ranges of the distributed loss (panels.py)
    _C = _C
    _panel_rows = staticmethod(_panel_rows)

    def __init__(self, gemm: str | None = None):
        if gemm not in (None, *GEMMS):
            raise ValueError(f"gemm must be one of {', '.join(map(repr, GEMMS))} or None; got {gemm!r}")
        self.gemm = gemm

    def gemm_for_call(self) -> str:
        """"own" or "torch": the constructor's choice, else SREM_CUDA_GEMM, else "own"."""
        choice = self.gemm or os.environ.get("SREM_CUDA_GEMM") or "own"
        if choice not in GEMMS:
            raise ValueError(f"SREM_CUDA_GEMM must be one of {', '.join(map(repr, GEMMS))}; got {choice!r}")
        return choice

    def _tail(self, ref):
        dev = ref.device.index if ref.device.index is not None else torch.cuda.current_device()
        return dev, torch.cuda.current_stream(ref.device).cuda_stream

    def _operands(self, img, txt):
        return img, txt  # read in their dtype and strides

    def _kernel_tau(self, tau, ref):
        """A float, or a tensor tau's fp64 value on the device: the caller holds it while the
        kernels that read it are queued (its memory must not go back to the allocator first)."""
        t = _tau.kernel_form(tau, ref.device)
        return _tau.f64(t) if isinstance(t, torch.Tensor) else t

    def _tau_args(self, t):
        """(inv_tau, tau_dev) of the C ABI: 1/tau, or a pointer to tau read on the device."""
        return (0.0, _ptr(t)) if isinstance(t, torch.Tensor) else (1.0 / t, 0)

    def _tau_sink(self, ranges, B, ref):
        """One float per block of each backward_panel launch, summed once (fixed order)."""
        blocks = (B + 255) // 256
        sizes = [blocks * (r1 - r0) for r0, r1 in ranges]
        buf = _alloc.empty((sum(sizes),), dtype=_F32, device=ref.device)
        ptrs, at = [], 0
        for n in sizes:
            ptrs.append(_ptr(buf) + 4 * at)
            at += n
        return buf, ptrs, lambda b: b.sum()

    def _panel(self, X, Y, r0, r1, buf):
        """X[r0:r1]·Yᵀ in fp32, in buf."""
        x = X[r0:r1]
        p = buf[: r1 - r0]
        if self.gemm_for_call() == "torch":
            return _mm32(x, Y.T, out=p)
        _C.similarity(_ptr(x), x.stride(0), x.stride(1), _ptr(Y), Y.stride(0), Y.stride(1), _CODES[X.dtype], r1 - r0,
                      Y.shape[0], X.shape[1], _ptr(p), p.stride(0), *self._tail(X))  # fmt: skip
        return p

    def _times(self, d, Y, out):
        """out = d·Y, d an fp32 panel (torch: cast to _grad_dtype first)."""
        if self.gemm_for_call() == "torch":
            g = _grad_dtype(Y.dtype)
            _mm32(d.to(g), Y.to(g), out=out)
            return
        _C.gemm(_ptr(d), d.stride(0), 1, _ptr(Y), Y.stride(0), Y.stride(1), _CODES[Y.dtype], _ptr(out), out.stride(0),
                d.shape[0], Y.shape[1], d.shape[1], False, *self._tail(Y))  # fmt: skip

    def _times_t(self, d, X, out, accumulate: bool):
        """out = dᵀ·X, or out += dᵀ·X with accumulate (d an R×B panel, X the R matching rows)."""
        if self.gemm_for_call() == "torch":
            g = _grad_dtype(X.dtype)
            _mm32(d.T.to(g), X.to(g), out=out, accumulate=accumulate)
            return
        _C.gemm(_ptr(d), 1, d.stride(0), _ptr(X), X.stride(0), X.stride(1), _CODES[X.dtype], _ptr(out), out.stride(0),
                d.shape[1], X.shape[1], d.shape[0], accumulate, *self._tail(X))  # fmt: skip

    def forward(self, img, txt, sim, *, tau, eps, bias):
        ref = sim if sim is not None else img
        L = _Launch(self, ref, img, txt, sim)
        B = L.B
        rows = _panel_rows(B)
        buf = torch.empty(rows, B, dtype=_F32, device=ref.device)
        qbuf = torch.empty(rows, B, dtype=_F32, device=ref.device)
        names = ("m_r", "logl_r", "m_c", "pos", "hard_i2t", "hard_t2i", "ce_i2t", "ce_t2i", "entropy_i2t",
                 "entropy_t2i", "sce", "loss_cbcl", "A_r", "A_c", "A_r_rest", "A_c_rest")  # fmt: skip
        layout = {k: ((B,), _F32) for k in (*names, "rest_c")}
        layout |= {k: ((B,), torch.int64) for k in ("hard_i2t_index", "hard_t2i_index", "at_r", "at_c")}
        o = _alloc.workspace(layout, device=ref.device)  # one buffer per dtype
        rest_c = o.pop("rest_c")  # running state of pass 1, started by its first panel
        t = self._kernel_tau(tau, ref)  # held until the kernels are queued
        tau_args = self._tau_args(t)
        for r0 in range(0, B, rows):
            r1 = min(B, r0 + rows)
            p = L.rows(r0, r1, buf)
            _C.stats_panel(
                _ptr(p), p.stride(0), r1 - r0, B, r0, *tau_args, _ptr(o["m_r"]), _ptr(o["logl_r"]), _ptr(o["at_r"]),
                _ptr(o["pos"]), _ptr(o["hard_i2t"]), _ptr(o["hard_i2t_index"]), _ptr(o["m_c"]), _ptr(rest_c),
                _ptr(o["at_c"]), _ptr(o["hard_t2i"]), _ptr(o["hard_t2i_index"]), r0 == 0, L.dev, L.stream,
            )  # fmt: skip
        o["logl_c"] = torch.log1p(rest_c)
        for r0 in range(0, B, rows):
            r1 = min(B, r0 + rows)
            p = L.rows(r0, r1, buf)
            q = L.cols(r0, r1, qbuf)
            _C.forward_panel(
                _ptr(p), p.stride(0), _ptr(q), q.stride(0), r1 - r0, B, r0, *tau_args, eps, bias, _ptr(o["m_r"]),
                _ptr(o["logl_r"]), _ptr(o["m_c"]), _ptr(o["logl_c"]), _ptr(o["at_r"]), _ptr(o["at_c"]),
                _ptr(o["ce_i2t"]), _ptr(o["ce_t2i"]), _ptr(o["entropy_i2t"]), _ptr(o["entropy_t2i"]), _ptr(o["sce"]),
                _ptr(o["loss_cbcl"]), _ptr(o["A_r"]), _ptr(o["A_c"]), _ptr(o["A_r_rest"]), _ptr(o["A_c_rest"]),
                L.dev, L.stream,
            )  # fmt: skip
        o["lse_r"] = o["m_r"] + o["logl_r"]
        o["lse_c"] = o["m_c"] + o["logl_c"]
        return o

    def backward(self, img, txt, sim, saved, *, tau, eps, bias, g_cbcl, k_r, k_c, tau_grad=False):
        ref = sim if sim is not None else img
        L = _Launch(self, ref, img, txt, sim)
        B = L.B
        rows = _panel_rows(B)
        t = self._kernel_tau(tau, ref)  # held until the kernels are queued
        tau_args = self._tau_args(t)
        ranges = [(r0, min(B, r0 + rows)) for r0 in range(0, B, rows)]
        sink, sinks, total = self._tau_sink(ranges, B, ref) if tau_grad else (None, [0] * len(ranges), None)
        buf = torch.empty(rows, B, dtype=_F32, device=ref.device)
        g, k_r, k_c = (t.to(_F32).contiguous() for t in (g_cbcl, k_r, k_c))
        s = saved
        if sim is None:
            D = img.shape[1]
            d_img = _alloc.empty((B, D), dtype=_F32, device=ref.device)
            d_txt = _alloc.empty((B, D), dtype=_F32, device=ref.device)
            with_torch = self.gemm_for_call() == "torch"
            gd = _grad_dtype(img.dtype)
            x, y = (img.to(gd), txt.to(gd)) if with_torch else (img, txt)  # torch: converted once, not per panel
        else:
            d_sim = _alloc.empty((B, B), dtype=sim.dtype, device=ref.device)
        for (r0, r1), to in zip(ranges, sinks):
            p = L.rows(r0, r1, buf)
            d = buf[: r1 - r0]  # dS overwrites the panel it is formed from
            _C.backward_panel(
                _ptr(p), p.stride(0), _ptr(d), d.stride(0), r1 - r0, B, r0, *tau_args, eps, bias, _ptr(s["m_r"]),
                _ptr(s["logl_r"]), _ptr(s["m_c"]), _ptr(s["logl_c"]), _ptr(s["at_r"]), _ptr(s["at_c"]), _ptr(s["A_r"]),
                _ptr(s["A_c"]), _ptr(s["A_r_rest"]), _ptr(s["A_c_rest"]), _ptr(g), _ptr(k_r), _ptr(k_c),
                _ptr(s["hard_i2t_index"]), _ptr(s["hard_t2i_index"]), L.dev, L.stream, to,
            )  # fmt: skip
            if sim is not None:
                d_sim[r0:r1].copy_(d)
                continue
            if with_torch:
                d = d.to(gd)  # once for both products
            self._times(d, y, d_img[r0:r1])  # dS[I, :] · T
            self._times_t(d, x[r0:r1], d_txt, accumulate=r0 > 0)  # d_txt += dS[I, :]ᵀ · I[I]
        grads = d_sim if sim is not None else (d_img.to(img.dtype), d_txt.to(txt.dtype))
        return (grads, total(sink)) if tau_grad else grads


def synchronize(device: torch.device | None = None) -> None:
    """Wait for the current stream and raise any CUDA error of the work queued on it."""
    device = device or torch.device("cuda", torch.cuda.current_device())
    _C.sync(device.index if device.index is not None else torch.cuda.current_device(),
            torch.cuda.current_stream(device).cuda_stream)  # fmt: skip


run = fused.FusedRun(CUDAKernels())

"""Row ranges (fused.py) for the backends whose kernels sweep fp32 panels of S: cpu and cuda.

A rank's samples lo..hi-1 are walked in panels of rows. Their i2t rows come from panels
P = img[I]·txtᵀ = S[I, :], their t2i problems from Q = txt[I]·imgᵀ = S[:, I]ᵀ, the rows of the
swapped problem; the panel kernels run on both unchanged: pass 1 takes the rows' statistics of P
(lse_r, hardest i2t) and of Q (lse_c, hardest t2i), pass 2 reads P and Q together as it does for a
whole batch, and the backward forms dS[I, :] from P and dS[:, I]ᵀ from Q with the two sides'
vectors exchanged (fused.swap_sides), each times the other modality's embeddings.
"""

from __future__ import annotations

import torch

from srem_kernels import _alloc
from srem_kernels.backends.fused import swap_sides

_F32 = torch.float32


def _p(t: torch.Tensor) -> int:
    return t.data_ptr()


class PanelRows:
    """Mixin of CPUKernels / CUDAKernels. They provide `_C` (stats_panel, forward_panel,
    backward_panel), `_tail(ref)` (the arguments after a kernel's own: threads, or device and
    stream), `_operands(img, txt)` (what panels are formed from), `_panel(X, Y, r0, r1, buf)`
    (X[r0:r1]·Yᵀ in fp32), `_times(d, Y)` (d·Y in fp32), `_panel_rows(B)`, and for tau:
    `_kernel_tau(tau, ref)` (tau as the kernels read it: a float, or a device tensor the caller
    holds until the kernels are queued), `_tau_args(t)` (the kernels' arguments for it) and
    `_tau_sink(ranges, B, ref)` -> (buffer, one pointer per row range, a function of the buffer
    giving d_tau): where backward_panel puts d_tau, its last argument."""

    supports_rows = True

    def _vecs(self, names, n, device, dtype=_F32):
        return _alloc.workspace({k: ((n,), dtype) for k in names}, device=device)  # one buffer

    def _ranges(self, lo, hi, B):
        rows = self._panel_rows(B)
        return [(r0, min(hi, r0 + rows)) for r0 in range(lo, hi, rows)]

    def pass1_rows(self, img, txt, lo, hi, *, tau):
        B, dev = img.shape[0], img.device
        X, Y = self._operands(img, txt)
        tail = self._tail(img)
        # outputs are indexed by sample (row0 + a): whole-batch buffers, of which lo..hi-1 are written
        o = self._vecs(("m_r", "logl_r", "pos", "hard_i2t", "m_c", "logl_c", "hard_t2i", "unused_pos"), B, dev)
        o |= self._vecs(("at_r", "hard_i2t_index", "at_c", "hard_t2i_index"), B, dev, torch.int64)
        buf = torch.empty(self._panel_rows(B), B, dtype=_F32, device=dev)
        t = self._kernel_tau(tau, img)
        for a, b, side in ((X, Y, ("m_r", "logl_r", "at_r", "pos", "hard_i2t", "hard_i2t_index")),
                           (Y, X, ("m_c", "logl_c", "at_c", "unused_pos", "hard_t2i", "hard_t2i_index"))):  # fmt: skip
            for r0, r1 in self._ranges(lo, hi, B):
                p = self._panel(a, b, r0, r1, buf)
                self._C.stats_panel(_p(p), p.stride(0), r1 - r0, B, r0, *self._tau_args(t),
                                    *(_p(o[k]) for k in side), 0, 0, 0, 0, 0, True, *tail)  # fmt: skip
        # logl_* hold log l already: a row panel spans every column
        out = {k: v[lo:hi] for k, v in o.items() if k != "unused_pos"}
        out["lse_r"] = out["m_r"] + out["logl_r"]
        out["lse_c"] = out["m_c"] + out["logl_c"]
        return out

    def pass2_rows(self, img, txt, lo, hi, first, *, tau, eps, bias, stats_only=False):
        B, dev = img.shape[0], img.device
        X, Y = self._operands(img, txt)
        tail = self._tail(img)
        names = ("ce_i2t", "ce_t2i", "entropy_i2t", "entropy_t2i", "sce", "loss_cbcl", "A_r", "A_c", "A_r_rest", "A_c_rest")
        o = self._vecs(names, B, dev)
        f = {k: first[k].contiguous() for k in ("m_r", "logl_r", "m_c", "logl_c", "at_r", "at_c")}
        rows = self._panel_rows(B)
        buf = torch.empty(rows, B, dtype=_F32, device=dev)
        qbuf = torch.empty(rows, B, dtype=_F32, device=dev)
        t = self._kernel_tau(tau, img)
        for r0, r1 in self._ranges(lo, hi, B):
            p = self._panel(X, Y, r0, r1, buf)
            q = self._panel(Y, X, r0, r1, qbuf)
            self._C.forward_panel(
                _p(p), p.stride(0), _p(q), q.stride(0), r1 - r0, B, r0, *self._tau_args(t), eps, bias,
                *(_p(f[k]) for k in ("m_r", "logl_r", "m_c", "logl_c", "at_r", "at_c")), *(_p(o[k]) for k in names),
                *tail,
            )  # fmt: skip
        return {k: v[lo:hi] for k, v in o.items()}

    def backward_rows(self, img, txt, lo, hi, saved, *, tau, eps, bias, g_cbcl, k_r, k_c, tau_grad=False):
        B, D, dev = img.shape[0], img.shape[1], img.device
        X, Y = self._operands(img, txt)
        tail = self._tail(img)
        vecs = dict(saved, g=g_cbcl, k_r=k_r, k_c=k_c)
        vecs = {k: v.to(torch.int64 if v.dtype == torch.int64 else _F32).contiguous() for k, v in vecs.items()}
        buf = torch.empty(self._panel_rows(B), B, dtype=_F32, device=dev)
        ranges = self._ranges(lo, hi, B)
        t = self._kernel_tau(tau, img)
        tau_args = self._tau_args(t)
        # d_tau: the rows lo..hi-1 of dS (the first side) hold this rank's share, once
        sink, sinks, total = self._tau_sink(ranges, B, img) if tau_grad else (None, [0] * len(ranges), None)
        grads = []
        # d_img[I] = dS[I, :]·txt; d_txt[I] = dS[:, I]ᵀ·img, the swapped problem's rows
        for side, (a, b, s) in enumerate(((X, Y, vecs), (Y, X, swap_sides(vecs)))):
            out = _alloc.empty((hi - lo, D), dtype=_F32, device=dev)
            for (r0, r1), to in zip(ranges, sinks):
                p = self._panel(a, b, r0, r1, buf)
                d = buf[: r1 - r0]  # dS overwrites the panel it is formed from
                self._C.backward_panel(
                    _p(p), p.stride(0), _p(d), d.stride(0), r1 - r0, B, r0, *tau_args, eps, bias,
                    *(_p(s[k]) for k in ("m_r", "logl_r", "m_c", "logl_c", "at_r", "at_c", "A_r", "A_c", "A_r_rest",
                                          "A_c_rest", "g", "k_r", "k_c", "hard_i2t_index", "hard_t2i_index")),
                    *tail, to if side == 0 else 0,
                )  # fmt: skip
                self._times(d, b, out[r0 - lo : r1 - lo])
            grads.append(out)
        grads = grads[0].to(img.dtype), grads[1].to(txt.dtype)
        return (grads, total(sink)) if tau_grad else grads

"""The `cpu` backend: fused multi-threaded C++ kernels (csrc/cpu/) behind fused.py's `Kernels`
contract.

torch's GEMM forms S (fp32 IEEE dot products; fp16/bf16 inputs converted to fp32 once, O(B·D));
the C++ kernels do everything elementwise over it: pass 1 the row and column max / log l /
hardest negatives, pass 2 the statistics that need both softmaxes, the backward dS; torch's GEMM
then forms dS·T and dSᵀ·I. Two strategies (CPUKernels(strategy=...), SREM_CPU_STRATEGY, or chosen
by memory):

  materialised  S = I·Tᵀ once (B×B fp32), both passes read it, the forward saves it, and the
                backward forms dS from it a panel of rows at a time: three GEMMs in all, the
                floor's count. Chosen when B²·4 bytes plus one panel fit the memory budget.
  streaming     S in row panels of `_panel_rows(B)` rows, never whole: pass 1 P = S[I, :], pass 2
                P = S[I, i0:] beside Q = S[i0:, I]ᵀ (the columns of the same samples from i0 on,
                which sce couples with the rows; each element pair formed once), backward P again.
                Extra memory O(B·(D + panel rows)); five GEMM-sized products.

Pass 2 evaluates each element pair (i, j), (j, i) once for both samples (csrc/cpu/coupled.cpp).
The kernels run on torch.get_num_threads() OpenMP threads — torch's own pool, so they do not spin
against its GEMMs — each owning what it writes, every sum in a fixed order: results are bitwise
reproducible and the same for any thread count.
"""

from __future__ import annotations

import os
import re
import sys
import threading

import numpy as np
import torch

from srem_kernels import _alloc, _tau

from srem_kernels.backends import cpu_eager, fused
from srem_kernels.backends.panels import PanelRows
from srem_kernels.errors import BackendUnavailable

try:
    from srem_kernels.backends import _srem_cpu as _C
except ImportError as err:  # built by setup.py; skipped there when no C++ compiler works
    raise BackendUnavailable(f"compiled module srem_kernels.backends._srem_cpu is missing ({err}); reinstall with a C++17 compiler") from err

_F32 = torch.float32
STRATEGIES = ("streaming", "materialised")
MEMORY_FRACTION = 0.25  # default budget of the materialised strategy: this share of available memory

# The forward's B-vectors: the contract's and the split forms the backward reads (fused.py).
_FLOAT_KEYS = ("m_r", "logl_r", "m_c", "logl_c", "lse_r", "lse_c", "pos", "hard_i2t", "hard_t2i", "ce_i2t", "ce_t2i",
               "entropy_i2t", "entropy_t2i", "sce", "loss_cbcl", "A_r", "A_c", "A_r_rest", "A_c_rest", "rest_c")  # fmt: skip
_INDEX_KEYS = ("hard_i2t_index", "hard_t2i_index", "at_r", "at_c")
_PASS1_KEYS = ("m_r", "logl_r", "at_r", "pos", "hard_i2t", "hard_i2t_index", "m_c", "at_c", "hard_t2i", "hard_t2i_index")
_SPLIT_KEYS = ("m_r", "logl_r", "m_c", "logl_c", "at_r", "at_c")  # the split forms pass 2 and dS read
# what dS reads of the forward's vectors, in srem_cpu_backward_panel's order (g, k_r, k_c go after A_c_rest)
_BACKWARD_KEYS = _SPLIT_KEYS + ("A_r", "A_c", "A_r_rest", "A_c_rest", "hard_i2t_index", "hard_t2i_index")
_PASS2_KEYS = ("ce_i2t", "ce_t2i", "entropy_i2t", "entropy_t2i", "sce", "loss_cbcl", "A_r", "A_c", "A_r_rest", "A_c_rest")


def _panel_rows(B: int) -> int:
    """Rows per panel: 16 MiB of fp32 per panel (B=4096: 1024 rows), between 64 and 1024 rows —
    thin panels make torch's GEMM several times slower per flop. SREM_CPU_PANEL_ROWS overrides it."""
    rows = int(os.environ.get("SREM_CPU_PANEL_ROWS", "0")) or max(64, min(1024, (1 << 22) // B))
    return min(rows, B)


def _threads() -> int:
    """The kernels' OpenMP threads: torch's (tests vary it apart from torch's GEMMs)."""
    return torch.get_num_threads()


_ptr = torch.Tensor.data_ptr  # _ptr(t): a tensor's address, without a Python frame per call


# Where each output sits: rows of one fp32 and one int64 buffer (rest_c, pass 1's running state,
# is a row of the fp32 buffer but no output), and a materialised S as a third buffer.
_ROW = {k: r for r, k in enumerate(_FLOAT_KEYS)}
_WHERE = {k: (0, r) for k, r in _ROW.items() if k != "rest_c"} | {k: (1, r) for r, k in enumerate(_INDEX_KEYS)}
_WHERE_S = _WHERE | {"S": (2, None)}


def _outputs(B: int, S: torch.Tensor | None = None) -> _alloc.Rows:
    """The forward's output vectors (the one place they are allocated): rows of one buffer per
    dtype, read by the kernels through pointers (no tensor per name: _alloc.Rows), then S."""
    f = _alloc.empty((len(_FLOAT_KEYS), B), dtype=_F32, device="cpu")
    i = _alloc.empty((len(_INDEX_KEYS), B), dtype=torch.int64, device="cpu")
    return _alloc.Rows(_WHERE, (f, i)) if S is None else _alloc.Rows(_WHERE_S, (f, i, S))


def _rest_c(o: _alloc.Rows) -> int:
    """The address of rest_c, pass 1's running column sums (a row of the outputs' fp32 buffer)."""
    return o.buffers[0].data_ptr() + 4 * o.buffers[0].shape[1] * _ROW["rest_c"]


def _vector_ptrs(saved, names) -> list[int]:
    """The addresses of saved vectors: from _alloc.Rows without a tensor each, or from a plain
    dict's tensors (the custom op's path under torch.compile)."""
    return saved.ptrs(names) if isinstance(saved, _alloc.Rows) else [saved[k].data_ptr() for k in names]


def _host_tau(tau) -> float:
    """tau as the kernels' float: a CPU tensor's value read from its memory (no op, no sync)."""
    return _tau.host_value(tau) if isinstance(tau, torch.Tensor) else tau


def _as(t, dtype):
    return t if t.dtype == dtype else t.to(dtype)


def _as_f32(t):
    return t if t is None else _as(t, _F32)


def _sim_f32(sim):
    """sim as fp32 with unit column stride (read in place when it already is)."""
    if sim.dtype == _F32 and sim.stride(1) == 1:
        return sim
    return torch.empty(sim.shape, dtype=_F32).copy_(sim)


class _KeptMatrices:
    """Large fp32 buffers (S, the backward's dS panel, the streaming panels) kept from one call to
    the next. Freed between calls, such buffers go back to the OS and the next call's first touch
    faults every page in again: glibc maps allocations of 32 MiB and more afresh each time (a fresh
    64 MiB S costs ~35 ms of page faults at B=4096, a sixth of the three GEMMs), and smaller ones
    come and go with the heap's top as it is trimmed — measured on this project's machine, 140-2000
    minor faults a call (0.5-8 MiB) at B=512-3000 with S and the dS panel from torch.empty. A buffer
    is a numpy array that torch.from_numpy wraps: every tensor on it (the forward's saved S
    included) holds one reference to the array, so it is handed out again once its reference count
    says no tensor is left on it. At most `keep` buffers (the latest used) are held; `clear()`
    drops them."""

    MIN_BYTES = 1 << 20  # below, torch.empty is cheaper (lock, refcount, from_numpy ~5 µs)

    def __init__(self, keep: int = 4):  # two S (two forwards before their backwards) and two panels
        self.keep = keep
        self._arrays: list[np.ndarray] = []
        self._lock = threading.Lock()  # a free buffer is found and wrapped by one caller at a time

    def matrix(self, rows: int, cols: int | None = None) -> torch.Tensor:
        """A rows × cols (default rows × rows) fp32 tensor: a kept buffer when no tensor holds it."""
        cols = rows if cols is None else cols
        if 4 * rows * cols < self.MIN_BYTES:
            return torch.empty(rows, cols, dtype=_F32)
        with self._lock:
            return self._matrix(rows, cols)

    def _matrix(self, rows: int, cols: int) -> torch.Tensor:
        for k in range(len(self._arrays)):
            # references: the list's and getrefcount's argument; a tensor on the array adds one
            if self._arrays[k].shape == (rows, cols) and sys.getrefcount(self._arrays[k]) == 2:
                self._arrays.append(self._arrays.pop(k))  # most recently used last
                return torch.from_numpy(self._arrays[-1])
        a = self._aligned(rows, cols)
        self._arrays = (self._arrays + [a])[-self.keep :]
        return torch.from_numpy(a)

    @staticmethod
    def _aligned(rows: int, cols: int) -> np.ndarray:
        """A rows × cols fp32 array at a 64-byte boundary (the GEMM's preference; numpy aligns to 16)."""
        raw = np.empty(rows * cols + 16, dtype=np.float32)
        start = (-raw.ctypes.data % 64) // 4
        return raw[start : start + rows * cols].reshape(rows, cols)

    def clear(self) -> None:
        with self._lock:
            self._arrays = []


KEPT = _KeptMatrices()


@torch._dynamo.assume_constant_result  # torch.compile reads it when it traces a call (no file I/O in a graph)
def _available_memory() -> int:
    """Bytes of memory available to new allocations (Linux: MemAvailable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _pass2_workspace(B: int) -> int:
    """Bytes of pass 2's per-panel sums in srem_cpu_pass2_full (coupled.cpp's Panel sizes, its
    srem_cpu_pass2_workspace; tests/test_cpu.py holds the two equal). In Python so that torch.compile
    can trace a strategy choice without calling into the C++ module."""
    R = max(32, min(256, B // 32 // 16 * 16))  # srem_cpu_pass2_rows
    floats = 0
    for row0 in range(0, B, R):
        rows, n = min(R, B - row0), B - row0
        npair = (n - rows + _PAIR_COLUMNS - 1) // _PAIR_COLUMNS
        floats += ((1 + npair) * rows + (n - rows)) * _C.PASS2_SUMS
    return 4 * floats


_PAIR_COLUMNS = 256  # coupled.cpp's kPairColumns


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(value, name: str) -> int:
    """A byte count: an int, or a string such as "8G", "512M", "1073741824" (K/M/G/T = 2^10..2^40)."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(value), re.IGNORECASE)
        if m is None:
            raise ValueError(f"{name} must be a byte count such as 8G, 512M or 1073741824; got {value!r}")
        n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n < 0:
        raise ValueError(f"{name} must be a byte count >= 0; got {value!r}")
    return n


class CPUKernels(PanelRows):
    """The Kernels contract of srem_kernels/backends/fused.py in C++ (see the module docstring).

    strategy: "streaming", "materialised", or None/"auto" (then SREM_CPU_STRATEGY, else chosen by
    memory). memory: the materialised strategy's budget in bytes (or "8G"-style), else
    SREM_CPU_MEMORY, else MEMORY_FRACTION of the memory available when a shape is first seen.
    """

    eager = cpu_eager  # the common eager call in few steps (fused.FusedRun takes it where it applies)
    # the row ranges of the distributed loss (panels.py)
    _C = _C
    _panel_rows = staticmethod(_panel_rows)

    def __init__(self, strategy: str | None = None, *, memory=None):
        if strategy not in (None, "auto", *STRATEGIES):
            raise ValueError(f"strategy must be one of 'auto', {', '.join(map(repr, STRATEGIES))}; got {strategy!r}")
        self.strategy = strategy
        self.memory = None if memory is None else parse_bytes(memory, "memory")
        self._chosen: dict[tuple, str] = {}
        fused.register_kernels(self)  # behind the custom ops under torch.compile (saved_layout)

    def node_call(self, B: int):
        """For cpu_eager's C++ node, a call `cpu_eager.takes` accepted: (the forward's buffers with S
        as forward allocates them, each of the node's vectors' row in them, the kernels' threads);
        None where the node leaves the call to the Python path — forward or backward is not this
        class's own (a subclass's, or a fault the self-check's tests inject: that path calls it),
        or S is as large as the kept matrices (the backward's dS panel is one then, which the node
        would allocate afresh)."""
        if _NODE_ROWS is None or (type(self).forward, type(self).backward) != _OWN_PASSES:
            return None
        if 4 * B * B >= KEPT.MIN_BYTES:
            return None
        return _outputs(B, KEPT.matrix(B)), _NODE_ROWS, _threads()

    def saved_layout(self, img, txt, sim, *, stats_only: bool = False) -> dict[str, tuple[tuple, torch.dtype]]:
        """name -> (shape, dtype) of what forward returns, in order (fused.py's custom ops use it
        for their fake implementation): the workspace's vectors, then S where materialised."""
        B = (sim if sim is not None else img).shape[0]
        out = {k: ((B,), _F32) for k in _FLOAT_KEYS if k != "rest_c"} | {k: ((B,), torch.int64) for k in _INDEX_KEYS}
        if sim is None and self.strategy_for(B, img.shape[1], img.dtype, img.device) == "materialised":
            out["S"] = ((B, B), _F32)
        return out

    # ------------------------------------------------------------------ planning

    @staticmethod
    def materialised_bytes(B: int) -> int:
        """Extra memory of the materialised strategy: S (fp32, kept for the backward), one dS panel,
        and pass 2's sums per panel and sample (about B²·16/R bytes, R = 32..256 rows a panel)."""
        return 4 * B * (B + _panel_rows(B)) + _pass2_workspace(B)

    def memory_budget(self) -> int:
        if self.memory is not None:
            return self.memory
        env = os.environ.get("SREM_CPU_MEMORY")
        if env:
            return parse_bytes(env, "SREM_CPU_MEMORY")
        return int(MEMORY_FRACTION * _available_memory())

    def strategy_for(self, B: int, D: int, dtype: torch.dtype, device: torch.device) -> str:
        """The strategy of an (img, txt) call (the similarity path always reads the given matrix);
        fixed per shape and budget once chosen."""
        forced = self.strategy or os.environ.get("SREM_CPU_STRATEGY") or "auto"
        if forced != "auto":
            if forced not in STRATEGIES:
                raise ValueError(f"SREM_CPU_STRATEGY must be 'auto' or one of {STRATEGIES}; got {forced!r}")
            return forced
        B = fused.concrete_size(B)
        if torch.compiler.is_compiling():
            # dynamo's trace reads and writes no cache (a guard on it would fail once the compiled
            # code wrote it); the custom op's fake and real runs take the cached path below, so the
            # graph's layout and the kernels' run agree (fused.fused_forward checks that they do)
            return self._choose(B)
        explicit = self.memory if self.memory is not None else os.environ.get("SREM_CPU_MEMORY")
        key = (B, explicit)  # materialised_bytes depends on B alone
        if key not in self._chosen:
            self._chosen[key] = self._choose(B)
        return self._chosen[key]

    def _choose(self, B: int) -> str:
        return "materialised" if self.materialised_bytes(B) <= self.memory_budget() else "streaming"

    # ------------------------------------------------------------------ row ranges (panels.py)

    def _tail(self, ref):
        return (_threads(),)

    def _kernel_tau(self, tau, ref):
        return _host_tau(tau)

    def _tau_args(self, t):
        return (1.0 / t,)

    def _tau_sink(self, ranges, B, ref):
        """One fp64 accumulator that every panel adds its share to, in order (the backward's and
        the row ranges')."""
        acc = torch.zeros(1, dtype=torch.float64)
        return acc, [_ptr(acc)] * len(ranges), lambda a: a.view(())

    def _operands(self, img, txt):
        return _as_f32(img), _as_f32(txt)

    def _panel(self, X, Y, r0, r1, buf):
        return torch.mm(X[r0:r1], Y.T, out=buf[: r1 - r0])

    def _times(self, d, Y, out):
        torch.mm(d, Y, out=out)

    # ------------------------------------------------------------------ forward

    def forward(self, img, txt, sim, *, tau, eps, bias):
        tau = _host_tau(tau)
        B = (sim if sim is not None else img).shape[0]
        if sim is not None:
            o = _outputs(B)
            self._forward_whole(_sim_f32(sim), o, tau, eps, bias)
        elif self.strategy_for(B, img.shape[1], img.dtype, img.device) == "materialised":
            x, y = _as_f32(img), _as_f32(txt)
            S = torch.mm(x, y.T, out=KEPT.matrix(B))
            o = _outputs(B, S)
            self._forward_whole(S, o, tau, eps, bias)
        else:
            o = _outputs(B)
            self._forward_streaming(_as_f32(img), _as_f32(txt), o, tau, eps, bias)
        return o

    def _pass1(self, p, r0, o, inv_tau, first, threads):
        """Pass 1 over the panel p = S[r0 : r0 + len(p), :]."""
        m_r, logl_r, at_r, pos, hard_r, hard_r_idx, m_c, at_c, hard_c, hard_c_idx = o.ptrs(_PASS1_KEYS)
        _C.stats_panel(_ptr(p), p.stride(0), p.shape[0], p.shape[1], r0, inv_tau, m_r, logl_r, at_r, pos, hard_r,
                       hard_r_idx, m_c, _rest_c(o), at_c, hard_c, hard_c_idx, first, threads)  # fmt: skip

    def _finish_pass1(self, o):
        """logl_c from the column sums, and both log-sum-exps (one call)."""
        m_r, logl_r, m_c, logl_c, lse_r, lse_c = o.ptrs(("m_r", "logl_r", "m_c", "logl_c", "lse_r", "lse_c"))
        _C.finish_pass1(o.buffers[0].shape[1], m_r, logl_r, m_c, _rest_c(o), logl_c, lse_r, lse_c)

    def _split(self, o):
        return o.ptrs(_SPLIT_KEYS)

    def _forward_whole(self, S, o, tau, eps, bias):
        B, threads, inv_tau = S.shape[0], _threads(), 1.0 / tau
        self._pass1(S, 0, o, inv_tau, True, threads)
        self._finish_pass1(o)
        _C.pass2_full(_ptr(S), S.stride(0), B, inv_tau, eps, bias, *o.ptrs(_SPLIT_KEYS + ("pos",) + _PASS2_KEYS),
                      threads)  # fmt: skip

    def _forward_streaming(self, x, y, o, tau, eps, bias):
        B, threads, inv_tau = x.shape[0], _threads(), 1.0 / tau
        rows = _panel_rows(B)
        pbuf, qbuf = KEPT.matrix(rows, B).view(-1), KEPT.matrix(rows, B).view(-1)
        for r0 in range(0, B, rows):  # rest_c: pass 1's running state, started by its first panel
            r1 = min(B, r0 + rows)
            p = torch.mm(x[r0:r1], y.T, out=pbuf[: (r1 - r0) * B].view(r1 - r0, B))
            self._pass1(p, r0, o, inv_tau, r0 == 0, threads)
        self._finish_pass1(o)
        acc = torch.zeros(B, _C.PASS2_SUMS, dtype=_F32)  # every sample's pass-2 sums, panel after panel
        split = self._split(o)
        for r0 in range(0, B, rows):
            r1 = min(B, r0 + rows)
            shape = (r1 - r0, B - r0)
            p = torch.mm(x[r0:r1], y[r0:].T, out=pbuf[: shape[0] * shape[1]].view(shape))  # S[I, r0:]
            q = torch.mm(y[r0:r1], x[r0:].T, out=qbuf[: shape[0] * shape[1]].view(shape))  # S[r0:, I]ᵀ
            _C.pass2_panel(_ptr(p), p.stride(0), _ptr(q), q.stride(0), r1 - r0, B, r0, inv_tau, eps, bias, *split,
                           _ptr(acc), threads)  # fmt: skip
        _C.pass2_finish(_ptr(acc), B, inv_tau, *split[:4], *o.ptrs(("pos",) + _PASS2_KEYS))

    # ------------------------------------------------------------------ backward

    def backward(self, img, txt, sim, saved, *, tau, eps, bias, g_cbcl, k_r, k_c, tau_grad=False):
        B = (sim if sim is not None else img).shape[0]
        threads = _threads()
        rows = _panel_rows(B)
        inv_tau = 1.0 / _host_tau(tau)
        acc, (sink,), total = self._tau_sink([(0, B)], B, None) if tau_grad else (None, (0,), None)  # 0: not asked
        up = [_as_f32(t).contiguous() for t in (g_cbcl, k_r, k_c)]  # held here until the kernels have run
        vectors = _vector_ptrs(saved, _BACKWARD_KEYS)
        vectors[10:10] = map(_ptr, up)  # g, k_r, k_c after A_c_rest

        def dS(p, d, r0):  # dS[r0 : r0 + len(p), :] from p = S[r0 : ..., :] into d (may be p)
            _C.backward_panel(_ptr(p), p.stride(0), _ptr(d), d.stride(0), p.shape[0], B, r0, inv_tau, eps, bias,
                              *vectors, threads, sink)  # fmt: skip

        grads = self._backward(img, txt, sim, saved.get("S"), B, rows, dS)
        return (grads, total(acc)) if tau_grad else grads

    def _backward(self, img, txt, sim, S, B, rows, dS):
        buf = KEPT.matrix(rows, B)
        if sim is not None:  # a panel at a time: no fp32 copy of the whole of sim beside d_sim
            d_sim = _alloc.empty((B, B), dtype=sim.dtype, device="cpu")
            in_place = sim.dtype == _F32 and sim.stride(1) == 1
            for r0 in range(0, B, rows):
                r1 = min(B, r0 + rows)
                p = sim[r0:r1] if in_place else buf[: r1 - r0].copy_(sim[r0:r1])
                d = d_sim[r0:r1] if in_place else p  # dS may overwrite the panel it is formed from
                dS(p, d, r0)
                if not in_place:
                    d_sim[r0:r1].copy_(d)
            return d_sim
        x, y = _as_f32(img), _as_f32(txt)
        D = x.shape[1]
        d_img, d_txt = _alloc.empty((B, D), dtype=_F32, device="cpu"), _alloc.empty((B, D), dtype=_F32, device="cpu")
        if rows >= B:  # one panel (small B): no slices, each a tensor built for nothing
            p = S if S is not None else torch.mm(x, y.T, out=buf)
            dS(p, buf, 0)
            torch.mm(buf, y, out=d_img)
            torch.mm(buf.T, x, out=d_txt)
        else:
            for r0 in range(0, B, rows):
                r1 = min(B, r0 + rows)
                d = buf[: r1 - r0]  # dS overwrites the panel it is formed from (streaming)
                p = S[r0:r1] if S is not None else torch.mm(x[r0:r1], y.T, out=d)
                dS(p, d, r0)
                torch.mm(d, y, out=d_img[r0:r1])
                if r0 == 0:
                    torch.mm(d.T, x[r0:r1], out=d_txt)
                else:
                    d_txt.addmm_(d.T, x[r0:r1])
        return _as(d_img, img.dtype), _as(d_txt, txt.dtype)


_OWN_PASSES = (CPUKernels.forward, CPUKernels.backward)  # what the C++ node computes (node_call)
# the node's vectors' rows in _outputs' fp32 and int64 buffers, in its order
_NODE_ROWS = None if cpu_eager.NODE is None else (
    [_ROW[k] for k in cpu_eager.NODE.FLOAT_KEYS] + [_INDEX_KEYS.index(k) for k in cpu_eager.NODE.INDEX_KEYS]
)  # fmt: skip

run = fused.FusedRun(CPUKernels())

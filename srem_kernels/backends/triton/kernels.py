"""backend="triton": the `Kernels` contract of fused.py (SPEC.md's B×B work) as Triton kernels.

The kernels (passes.py, merge.py; tile helpers in tiles.py):

  pass 1   _pass1_kernel + _merge1_kernel: split log-sum-exps (m, log l, at) of every row and
           column of Z = S/tau, hardest negatives, S_ii, ce.
  pass 2   _pass2_kernel + _merge2_kernel: entropies, sce (which pairs (i, j) with (j, i)), the
           CBCL term and the A vectors of the backward.
  dS       _dsim_kernel: one tile per program; dS·txt and dSᵀ·img are torch.matmul.
  TF32     _round_tf32_kernel: fp32 operands of tf32 dots rounded to nearest, once per call.

A pass kernel's program owns a pair of super-blocks of tiles and forms each tile pair
{S[a, b], S[b, a]} of it once (a block's own block of S as plain tiles), so every element of S is
formed once per pass and its probabilities are evaluated once in pass 2; each sample's
statistics come out as K partials (one per super-block) in a partials buffer, combined in a
fixed order by the merge kernel. Grid: K·(K//2 + 1) programs (K(K+1)/2 live), K from the SM
count (TritonKernels.plan). The partials buffer holds 8 ACC + 4 int32 words per sample and
super-block, 48·K·B bytes in fp32, plus pass 2's staging of diagonal blocks (K·2·BM² words): on
a 132-SM H100/H200, K = 32 from B = 65536 on: 96 MiB at B = 65536 (0.59 % of one B×B fp32
matrix), 384 MiB at 262144 (0.15 %); below, K = 16 (136 programs, one per SM): 12 MiB at
16384 (1.2 %), 3 MiB at 4096 (4.7 %; auto takes the materialised strategy there, S is 64 MiB).

Strategies (TritonKernels(strategy=...) or SREM_TRITON_STRATEGY, else chosen by size/memory):
  materialised  S = img·txtᵀ once (torch.matmul, fp32 out), both passes read it, backward forms dS
                from it and uses torch.matmul for dS·txt and dSᵀ·img. Holds S (and dS) in memory.
  streaming     never a B×B buffer: the passes form tiles of S from img/txt with tl.dot; the
                backward forms dS a panel of rows at a time (panel_rows × B) and accumulates the
                two products panel by panel in a fixed order. Extra memory O(B·D + panel·B).
Per forward+backward, streaming forms S three times (pass 1, pass 2, dS) plus the two gradient
GEMMs: 5 GEMM-equivalents against the floor's 3 (bench/triton_tiles.py counts them).

Row ranges (fused.py, the distributed loss): a rank's rows and columns of S, always streamed
from the gathered img/txt; a program owns a row block of the range and a column super-block.

Deterministic: every output element is written by one program in a fixed loop order; no atomics.
Accumulation in fp32 (fp64 for fp64 inputs, the ACC constexpr); fp32 dot precision follows
torch.get_float32_matmul_precision() (TF32 operands rounded to nearest first). No host read and
no host-to-device copy: tau and eps are kernel arguments (tiles.bits), a tensor tau a pointer to
its value in device memory (tiles.tau_argument; 1/tau formed in the kernels in fp64 either way).
With tau_grad the dS kernel also writes each tile's share of d_tau, summed in a fixed order.
Plain pointer arithmetic only
(Triton 3.6 – 3.9 and the interpreter).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
import triton

from srem_kernels import _alloc

from srem_kernels.backends import fused
from srem_kernels.backends.triton.merge import _merge1_kernel, _merge2_kernel
from srem_kernels.backends.triton.passes import _dsim_kernel, _pass1_kernel, _pass2_kernel, _round_tf32_kernel
from srem_kernels.backends.triton.tiles import _COMPILE_OPTIONS, INTERPRET, _acc_tl, _on, bits, tau_argument

STRATEGIES = ("streaming", "materialised")

# Tiles of the pass kernels by the kind of tile source, (BM, BN, SPLIT, BK, warps): a dot forms
# BM × SPLIT·BN, the elementwise epilogue runs on BM × BN at a time. Chosen from the compiled
# register/spill report (scripts/triton_aot_check.py, sm_90; bench/RESULTS.md, "Triton"): the
# largest tiles without spills, wgmma for the tensor-core dots; not yet from timings (a device run).
#   mma   bf16/fp16 operands, fp32 under TF32: 64×32 wgmma tiles, epilogue in 64×16 halves
#   fma   fp32 IEEE dots (no tensor cores; the operand fragments live in registers) and S read
#         from memory (materialised, similarity): 64×16
#   fp64  fp64 (gradcheck): 32×16
_PASS_TILES = {"mma": (64, 16, 2, 32, 8), "fma": (64, 16, 1, 16, 8), "fp64": (32, 16, 1, 16, 8)}
_DS_TILES = {torch.float32: (64, 32, 8), torch.float64: (32, 32, 8)}  # dS by ACC: (square tile, BK, warps)
_MERGE_BLOCK = 128
_ROUND_BLOCK = 1024  # elements per program of the operand rounding
_SPLITS_INTERPRET = 3  # super-blocks under the interpreter (tests pass their own)
_WAVES = 4  # programs per SM a pass aims at (one fits at a time: ~245 registers × 256 threads)
_PARTIALS_SHARE = 0.01  # the partials buffer's bound, as a share of one B×B fp32 matrix
_MATERIALISE_MAX_B = 32768  # S alone is 4 GiB there; beyond it streaming wins on memory anyway
_CPU_MEMORY = 8 << 30  # what the interpreter pretends is free
_PANEL_BYTES = 64 << 20  # streaming backward: the dS panel (< 1 % of a 65536² fp32 matrix)
PARTIAL_FLOATS, PARTIAL_INTS = 8, 4  # words per sample and super-block in the partials buffer

# The forward's entries besides the Kernels contract, for the backward (names as in
# srem_kernels/backends/dense.py): the split log-sum-exp; each row's (column's) maximal element `at`, the
# one log l leaves out; A without it. REST_KEYS only where the backward will run (not stats_only).
SPLIT_KEYS = ("m_r", "logl_r", "at_r", "m_c", "logl_c", "at_c")
REST_KEYS = ("A_r_rest", "A_c_rest")
CONTRACT_KEYS = fused.CONTRACT_KEYS
PASS1_KEYS = (*SPLIT_KEYS, "lse_r", "lse_c", "pos", "ce_i2t", "ce_t2i", "hard_i2t", "hard_i2t_index", "hard_t2i",
              "hard_t2i_index")  # fmt: skip


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _grad_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of dS for the two gradient matmuls: bf16 keeps the tensor-core path (its range is
    fp32's); fp16 would underflow dS (g/B/tau), so it goes through fp32."""
    return dtype if dtype in (torch.bfloat16, torch.float32, torch.float64) else torch.float32


@torch._dynamo.assume_constant_result  # torch.compile: the setting when it traces (no str op in a graph)
def _float32_matmul_precision() -> str:
    return torch.get_float32_matmul_precision()


@torch._dynamo.assume_constant_result  # torch.compile: what is free when it traces
def _free_memory(index: int | None) -> int:
    return torch.cuda.mem_get_info(index)[0]  # None: the current device


def _dot_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float64:
        return "ieee"
    if dtype == torch.float32:
        return "ieee" if _float32_matmul_precision() == "highest" else "tf32"
    return "tf32"  # 16-bit operands: the tensor-core default; precision is not a choice there


def _tf32(dtype: torch.dtype) -> bool:
    """Whether the tile dots on `dtype` operands are tf32 MMAs (fp32 at matmul precision < highest)."""
    return dtype == torch.float32 and _dot_precision(dtype) == "tf32"


def _dot_operands(img, txt):
    """img, txt as the tile dots read them. For a tf32 dot, row-major copies rounded to the
    nearest TF32 (as cuBLAS rounds; the MMA would truncate), once per call: O(B·D) work and
    memory, where rounding every tile's chunks in the B×B loops costs each operand element
    O(B/BM) times and the registers of those loops. Otherwise (and without img/txt) as given."""
    if img is None or not _tf32(img.dtype):
        return img, txt
    return _round_tf32(img), _round_tf32(txt)


def _round_tf32(x: torch.Tensor) -> torch.Tensor:
    y = _alloc.empty(x.shape, dtype=x.dtype, device=x.device)
    n = x.numel()
    if n:
        with _on(x):
            _round_tf32_kernel[(triton.cdiv(n, _ROUND_BLOCK),)](x, y, n, x.shape[1], x.stride(0), x.stride(1),
                                                              BLOCK=_ROUND_BLOCK, **_COMPILE_OPTIONS)  # fmt: skip
    return y


def _matmul_acc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with a result in the accumulation dtype (fp32 for 16-bit inputs)."""
    acc = _acc_dtype(a.dtype)
    if a.dtype != acc and a.is_cuda:
        try:
            return torch.mm(a, b, out_dtype=acc)  # tensor cores, fp32 out (torch ≥ 2.8)
        except (TypeError, RuntimeError):
            pass
    return a.to(acc) @ b.to(acc)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _tile_size(name: str, value: int, least: int) -> int:
    if value < least or value & (value - 1):
        raise ValueError(f"{name} must be a power of two ≥ {least} (tl.dot on a GPU needs 16); got {value}")
    return value


def _triangle_root(n: int) -> int:
    """The smallest K with K(K+1)/2 ≥ n."""
    k = int(np.ceil((np.sqrt(8 * n + 1) - 1) / 2))
    return k if k * (k + 1) // 2 >= n else k + 1


def partials_bytes(B: int, K: int, dtype: torch.dtype = torch.float32) -> int:
    """Size of the partials buffer of a pass over B samples with K super-blocks."""
    return B * K * (PARTIAL_FLOATS * _acc_dtype(dtype).itemsize + PARTIAL_INTS * 4)


class TritonKernels:
    """The Kernels contract of srem_kernels/backends/fused.py in Triton (see the module docstring).

    strategy: "streaming", "materialised" or None/"auto" (then SREM_TRITON_STRATEGY, else chosen
    from B, D and free memory; the similarity path always reads the given matrix). block × block_n
    (the passes' tiles: rows × columns, block a multiple of block_n), ds_block (the dS kernel's
    square tiles), bk (D-chunk of tl.dot), panel_rows (streaming backward), splits (super-blocks
    per pass, K; default: enough programs for the device): tile sizes and work split; tests use
    small ones to cross tile, super-block and panel edges.
    """

    supports_stats_only = True  # forward(..., stats_only=True) skips A_r, A_c and the saved S
    glue = "triton"  # glue.py's Triton routines, also for CPU tensors under the interpreter

    def __init__(self, strategy: str | None = None, *, block: int | None = None, block_n: int | None = None,
                 ds_block: int | None = None, bk: int | None = None, panel_rows: int | None = None,
                 splits: int | None = None, num_warps: int | None = None, split: int | None = None):  # fmt: skip
        if strategy not in (None, "auto", *STRATEGIES):
            raise ValueError(f"strategy must be one of 'auto', {', '.join(map(repr, STRATEGIES))}; got {strategy!r}")
        if splits is not None and splits < 1:
            raise ValueError(f"splits must be ≥ 1; got {splits}")
        self.strategy = strategy
        # tile overrides (None: _PASS_TILES / _DS_TILES by the kind of dot), checked here and per call
        self._override = dict(BM=block, BN=block_n, SPLIT=split, BK=bk, num_warps=num_warps)
        self.ds_block = ds_block
        for name, v in (("block", block), ("block_n", block_n), ("bk", bk), ("ds_block", ds_block)):
            if v is not None:
                _tile_size(name, v, 16)
        if split not in (None, 1, 2):
            raise ValueError(f"split must be 1 or 2; got {split}")
        self.tiles(torch.float32, False)
        self.tiles(torch.bfloat16, False)
        self.panel_rows = panel_rows
        self.splits = splits
        self._chosen: dict[tuple, str] = {}
        fused.register_kernels(self)

    # ------------------------------------------------------------------ planning

    def strategy_for(self, B: int, D: int, dtype: torch.dtype, device: torch.device) -> str:
        """The strategy of an (img, txt) call; fixed per shape once chosen, so that a traced
        (fake) call and the real one agree."""
        forced = self.strategy or os.environ.get("SREM_TRITON_STRATEGY") or "auto"
        if forced != "auto":
            if forced not in STRATEGIES:
                raise ValueError(f"SREM_TRITON_STRATEGY must be 'auto' or one of {STRATEGIES}; got {forced!r}")
            return forced
        B = fused.concrete_size(B)
        if torch.compiler.is_compiling():
            # dynamo's trace reads and writes no cache (a guard on it would fail once the compiled
            # code wrote it); the custom op's fake and real runs take the cached path below, so the
            # graph's layout and the kernels' run agree (fused.fused_forward checks that they do)
            return self._choose(B, dtype, device)
        key = (B, D, dtype, device)
        if key not in self._chosen:
            self._chosen[key] = self._choose(B, dtype, device)
        return self._chosen[key]

    @staticmethod
    def _choose(B: int, dtype: torch.dtype, device: torch.device) -> str:
        need = B * B * (_acc_dtype(dtype).itemsize + _grad_dtype(dtype).itemsize)
        free = _free_memory(device.index) if device.type == "cuda" else _CPU_MEMORY
        return "materialised" if B <= _MATERIALISE_MAX_B and need <= free // 2 else "streaming"

    def tiles(self, dtype: torch.dtype, from_sim: bool) -> dict:
        """The pass kernels' tile constexprs and warps for tiles of S in `dtype` formed from
        img/txt (or read from a matrix)."""
        kind = "fp64" if dtype == torch.float64 else "fma" if from_sim or _dot_precision(dtype) == "ieee" else "mma"
        t = dict(zip(("BM", "BN", "SPLIT", "BK", "num_warps"), _PASS_TILES[kind]))
        t.update({k: v for k, v in self._override.items() if v is not None})
        if t["BN"] * t["SPLIT"] > t["BM"]:
            raise ValueError(f"block_n · split must be ≤ block; got {t['BN']} · {t['SPLIT']} > {t['BM']}")
        return t

    def _ds_tiles(self, dtype: torch.dtype) -> tuple[int, int, int]:
        """The dS kernel's (square tile, BK, warps) for operands in `dtype`."""
        block, bk, warps = _DS_TILES[_acc_dtype(dtype)]
        return self.ds_block or self._override["BM"] or block, self._override["BK"] or bk, warps

    def plan(self, B: int, R: int, device: torch.device, tiles: dict, *, pairs: bool) -> tuple[int, int, tuple]:
        """(G, K, grid) of a pass over a range of R samples (R = B with pairs). pairs: the row
        blocks grouped into K super-blocks of G, K(K+1)/2 programs; row ranges: the column
        blocks, (row blocks of the range)·K programs. On a GPU K aims at _WAVES programs per
        SM (the diagonal super-pairs hold half the work: several waves even it out), but
        keeps the partials buffer within _PARTIALS_SHARE of one B×B fp32 matrix unless that
        would leave SMs idle (small B, where the buffer is a few MiB)."""
        nb = triton.cdiv(B, tiles["BM"] if pairs else tiles["BN"] * tiles["SPLIT"])
        if self.splits is not None:
            k = self.splits
        elif device.type != "cuda":
            k = _SPLITS_INTERPRET
        else:
            sms = _sm_count(device)
            slot = PARTIAL_FLOATS * 8 + PARTIAL_INTS * 4  # bytes per sample and super-block (fp64 bound)
            k_mem = int(_PARTIALS_SHARE * 4 * B * B // (R * slot))
            if pairs:
                k_fill, k_target = _triangle_root(sms), _triangle_root(_WAVES * sms)
            else:
                k_fill = triton.cdiv(sms, triton.cdiv(R, tiles["BM"]))
                k_target = _WAVES * k_fill
            k = max(k_fill, min(k_target, k_mem))
        G = triton.cdiv(nb, max(1, min(k, nb)))
        K = triton.cdiv(nb, G)
        grid = (K, K // 2 + 1) if pairs else (triton.cdiv(R, tiles["BM"]), K)
        return G, K, grid

    def saved_layout(self, img, txt, sim, *, stats_only: bool = False) -> dict[str, tuple[tuple, torch.dtype]]:
        """name -> (shape, dtype) of what forward returns, in order (fused.py's custom op uses it
        for its fake implementation)."""
        x = sim if sim is not None else img
        B, acc = x.shape[0], _acc_dtype(x.dtype)
        keys = list(CONTRACT_KEYS) + list(SPLIT_KEYS) + list(REST_KEYS)
        if stats_only:
            keys = [k for k in keys if k not in ("A_r", "A_c", *REST_KEYS)]
        out = {k: ((B,), _vector_dtype(k, acc)) for k in keys}
        if sim is None and not stats_only and self.strategy_for(B, img.shape[1], img.dtype, img.device) == "materialised":
            out["S"] = ((B, B), acc)
        return out

    def _launch_args(self, img, txt, sim, **tiles):
        """(B, source pointers and strides, constexprs) for FROM_SIM or tiles from img/txt."""
        if sim is not None:
            B, dtype = sim.shape[0], sim.dtype
            ptrs = (sim, sim, sim, 1, 0, 0, 0, 0, sim.stride(0), sim.stride(1))
        else:
            B, dtype = img.shape[0], img.dtype
            ptrs = (img, txt, img, img.shape[1], img.stride(0), img.stride(1), txt.stride(0), txt.stride(1), 0, 0)
        meta = dict(
            FROM_SIM=sim is not None,
            ACC=_acc_tl(dtype),
            DOT_PREC=_dot_precision(dtype),
            UPCAST=INTERPRET and dtype in (torch.float16, torch.bfloat16),
            TF32=_tf32(dtype),  # the interpreter emulates the MMA's truncation (tiles._mma_tf32)
            **tiles,
            **_COMPILE_OPTIONS,
        )
        return B, ptrs, meta

    # ------------------------------------------------------------------ forward

    def forward(self, img, txt, sim, *, tau, eps, bias, stats_only: bool = False):
        layout = self.saved_layout(img, txt, sim, stats_only=stats_only)
        dev = (sim if sim is not None else img).device
        tau = tau_argument(tau, dev)  # once for every launch of the call
        out = _alloc.workspace({k: v for k, v in layout.items() if k != "S"}, device=dev)  # one buffer per dtype
        if "S" in layout:  # materialised: S once, then the passes read it
            out["S"] = _matmul_acc(img, txt.T)
            src = (None, None, out["S"])
        elif sim is None and self.strategy_for(img.shape[0], img.shape[1], img.dtype, dev) == "materialised":
            src = (None, None, _matmul_acc(img, txt.T))  # stats only: S lives for the call
        else:
            src = (*_dot_operands(img, txt), sim)
        B = (src[2] if src[2] is not None else src[0]).shape[0]
        parts = self._partials(src, B, dev, pairs=True)
        self._pass1(src, 0, B, out, tau, parts, pairs=True)
        self._pass2(src, 0, B, out, out, tau, eps, bias, stats_only, parts, pairs=True)
        return {k: out[k] for k in layout}

    def _partials(self, src, R, dev, *, pairs):
        """The tiles of a pass over src = (img, txt, sim), its partials buffer (pf, pi), pass 2's
        staging of diagonal blocks and the work split."""
        x = src[2] if src[2] is not None else src[0]
        B, acc = x.shape[0], _acc_dtype(x.dtype)
        tiles = self.tiles(x.dtype, src[2] is not None)
        G, K, grid = self.plan(B, R, dev, tiles, pairs=pairs)
        pf = _alloc.empty((PARTIAL_FLOATS, K, R), dtype=acc, device=dev)
        pi = _alloc.empty((PARTIAL_INTS, K, R), dtype=torch.int32, device=dev)
        stage = _alloc.empty((K, 2, tiles["BM"], tiles["BM"]), dtype=acc, device=dev) if pairs else pf
        blocks = (triton.cdiv(B, tiles["BM"]), triton.cdiv(B, tiles["BN"] * tiles["SPLIT"]))  # the dots' tiles
        return dict(pf=pf, pi=pi, stage=stage, G=G, K=K, grid=grid, blocks=blocks, tiles=tiles)

    def _pass1(self, src, lo, hi, out, tau, parts, *, pairs):
        """Pass 1 on samples lo..hi-1 of src = (img, txt, sim) into out's vectors (hi - lo long);
        tau: tiles.tau_argument's pair."""
        B, ptrs, meta = self._launch_args(*src, **parts["tiles"])
        pf, pi, K = parts["pf"], parts["pi"], parts["K"]
        R = hi - lo
        tau_arg, tau_ptr = tau
        with _on(out["pos"]):
            _pass1_kernel[parts["grid"]](ptrs[0], ptrs[1], ptrs[2], tau_arg, B, *ptrs[3:], lo, R, *parts["blocks"],
                                         parts["G"], K, pf, pi, out["pos"], PAIRS=pairs, TAU_PTR=tau_ptr,
                                         **meta)  # fmt: skip
            _merge1_kernel[(triton.cdiv(R, _MERGE_BLOCK),)](
                pf, pi, out["pos"], lo, R, K, tau_arg, *(out[k] for k in (
                    "m_r", "logl_r", "at_r", "m_c", "logl_c", "at_c", "lse_r", "lse_c", "ce_i2t", "ce_t2i", "hard_i2t",
                    "hard_i2t_index", "hard_t2i", "hard_t2i_index")),
                ACC=meta["ACC"], TAU_PTR=tau_ptr, TM=_MERGE_BLOCK, num_warps=4,
            )  # fmt: skip

    def _pass2(self, src, lo, hi, first, out, tau, eps, bias, stats_only, parts, *, pairs):
        """Pass 2 on samples lo..hi-1, reading pass 1's whole-batch vectors `first`."""
        B, ptrs, meta = self._launch_args(*src, **parts["tiles"])
        pf, K = parts["pf"], parts["K"]
        R = hi - lo
        a = [out.get(k, out["sce"]) for k in ("A_r", "A_c", *REST_KEYS)]  # placeholders without WITH_A: never written
        tau_arg, tau_ptr = tau
        with _on(out["sce"]):
            _pass2_kernel[parts["grid"]](
                ptrs[0], ptrs[1], ptrs[2], tau_arg, bits(eps), B, *ptrs[3:], lo, R, *parts["blocks"],
                parts["G"], K, *(first[k].contiguous() for k in SPLIT_KEYS), pf, parts["stage"],
                PAIRS=pairs, BIAS=bool(bias), WITH_A=not stats_only, TAU_PTR=tau_ptr, **meta,
            )  # fmt: skip
            _merge2_kernel[(triton.cdiv(R, _MERGE_BLOCK),)](
                pf, R, K, out["entropy_i2t"], out["entropy_t2i"], out["sce"], out["loss_cbcl"], *a,
                WITH_A=not stats_only, TM=_MERGE_BLOCK, num_warps=4,
            )  # fmt: skip

    # ------------------------------------------------------------------ row ranges (fused.py)
    # Tiles are always recomputed from the gathered img/txt (streaming): a rank never holds B×B.

    supports_rows = True

    def _vectors(self, keys, n, img):
        acc = _acc_dtype(img.dtype)
        return _alloc.workspace({k: ((n,), _vector_dtype(k, acc)) for k in keys}, device=img.device)

    def pass1_rows(self, img, txt, lo, hi, *, tau):
        out = self._vectors(PASS1_KEYS, hi - lo, img)
        src = (*_dot_operands(img, txt), None)
        parts = self._partials(src, hi - lo, img.device, pairs=False)
        self._pass1(src, lo, hi, out, tau_argument(tau, img.device), parts, pairs=False)
        return out

    def pass2_rows(self, img, txt, lo, hi, first, *, tau, eps, bias, stats_only=False):
        keys = ("entropy_i2t", "entropy_t2i", "sce", "loss_cbcl") + (() if stats_only else ("A_r", "A_c", *REST_KEYS))
        out = self._vectors(keys, hi - lo, img)
        src = (*_dot_operands(img, txt), None)
        parts = self._partials(src, hi - lo, img.device, pairs=False)
        self._pass2(src, lo, hi, first, out, tau_argument(tau, img.device), eps, bias, stats_only, parts, pairs=False)
        return out

    def backward_rows(self, img, txt, lo, hi, saved, *, tau, eps, bias, g_cbcl, k_r, k_c, tau_grad=False):
        B, D = img.shape
        gd = _grad_dtype(img.dtype)
        rows = min(self._panel_rows_for(B, img.dtype), hi - lo)
        ds = _alloc.empty((rows, B), dtype=gd, device=img.device)
        tau = tau_argument(tau, img.device)
        # d_tau: the rows lo..hi-1 of dS (the first side) hold this rank's share, once
        ranges = [(r0, min(r0 + rows, hi)) for r0 in range(lo, hi, rows)]
        buf, parts = self._tau_parts(ranges, B, img) if tau_grad else (None, None)
        grads = []
        img_d, txt_d = _dot_operands(img, txt)  # what dS's tiles are formed from; the products take img, txt
        # d_img[I] = dS[I, :]·txt; d_txt[I] = dS[:, I]ᵀ·img, the rows of the swapped problem
        for side, (x, y, y_g, s, kr, kc) in enumerate(((img_d, txt_d, txt, saved, k_r, k_c),
                                                       (txt_d, img_d, img, fused.swap_sides(saved), k_c, k_r))):  # fmt: skip
            out = _alloc.empty((hi - lo, D), dtype=img.dtype, device=img.device)
            y_g = y_g.to(gd)
            for n, (r0, r1) in enumerate(ranges):
                p = ds[: r1 - r0]
                part = parts[n] if parts is not None and side == 0 else None
                self._dsim(x, y, None, s, tau, eps, bias, g_cbcl, kr, kc, p, r0, r1, part)
                out[r0 - lo : r1 - lo] = p @ y_g
            grads.append(out)
        return ((grads[0], grads[1]), buf.sum()) if tau_grad else (grads[0], grads[1])

    def _tau_parts(self, ranges, B, x):
        """d_tau's partials of the dS launches over row ranges, one per program: one buffer
        (summed once, in order: deterministic) and its view per range."""
        block = self._ds_tiles(x.dtype)[0]
        sizes = [triton.cdiv(r1 - r0, block) * triton.cdiv(B, block) for r0, r1 in ranges]
        buf = _alloc.empty((sum(sizes),), dtype=_acc_dtype(x.dtype), device=x.device)
        return buf, list(buf.split(sizes))

    def _panel_rows_for(self, B, dtype):
        """Rows of a streaming backward's dS panel."""
        t = self._ds_tiles(dtype)[0]
        return self.panel_rows or max(t, (_PANEL_BYTES // (B * _grad_dtype(dtype).itemsize)) // t * t)

    # ------------------------------------------------------------------ backward

    def backward(self, img, txt, sim, saved, *, tau, eps, bias, g_cbcl, k_r, k_c, tau_grad=False):
        x = sim if sim is not None else img
        B = x.shape[0]
        tau = tau_argument(tau, x.device)
        if sim is not None or "S" in saved:  # from sim, or materialised: one dS launch over all rows
            buf, parts = self._tau_parts([(0, B)], B, x) if tau_grad else (None, [None])
            if sim is not None:
                d_sim = _alloc.empty(sim.shape, dtype=sim.dtype, device=sim.device)
                self._dsim(None, None, sim, saved, tau, eps, bias, g_cbcl, k_r, k_c, d_sim, 0, B, parts[0])
                return (d_sim, buf.sum()) if tau_grad else d_sim
            gd = _grad_dtype(img.dtype)
            ds = _alloc.empty((B, B), dtype=gd, device=img.device)
            self._dsim(None, None, saved["S"], saved, tau, eps, bias, g_cbcl, k_r, k_c, ds, 0, B, parts[0])
            grads = (ds @ txt.to(gd)).to(img.dtype), (ds.T @ img.to(gd)).to(txt.dtype)
            return (grads, buf.sum()) if tau_grad else grads
        # streaming: dS a panel of rows at a time; the products accumulate in a fixed order
        D = img.shape[1]
        gd = _grad_dtype(img.dtype)
        txt_g, img_g = txt.to(gd), img.to(gd)
        rows = min(self._panel_rows_for(B, img.dtype), B)
        ranges = [(r0, min(r0 + rows, B)) for r0 in range(0, B, rows)]
        buf, parts = self._tau_parts(ranges, B, img) if tau_grad else (None, [None] * len(ranges))
        ds = _alloc.empty((rows, B), dtype=gd, device=img.device)
        d_img = _alloc.empty((B, D), dtype=img.dtype, device=img.device)
        d_txt = torch.zeros((B, D), dtype=_acc_dtype(img.dtype), device=img.device)
        img_d, txt_d = _dot_operands(img, txt)  # what dS's tiles are formed from
        for (r0, r1), part in zip(ranges, parts):
            p = ds[: r1 - r0]
            self._dsim(img_d, txt_d, None, saved, tau, eps, bias, g_cbcl, k_r, k_c, p, r0, r1, part)
            d_img[r0:r1] = p @ txt_g
            d_txt += _matmul_acc(p.T, img_g[r0:r1])  # each panel's product in ACC, not rounded to 16 bits
        grads = d_img, d_txt.to(txt.dtype)
        return (grads, buf.sum()) if tau_grad else grads

    def _dsim(self, img, txt, sim, saved, tau, eps, bias, g_cbcl, k_r, k_c, out, r0, r1, tau_part=None):
        """dS[r0:r1, :] into out; tau: tiles.tau_argument's pair; tau_part: where each program
        writes its share of d_tau (None: not asked)."""
        x = sim if sim is not None else img
        block, bk, warps = self._ds_tiles(x.dtype)
        B, ptrs, meta = self._launch_args(img, txt, sim, T=block, BK=bk, num_warps=warps)
        acc = _acc_dtype(x.dtype)
        vec = [saved[k].contiguous() for k in ("m_r", "logl_r", "m_c", "logl_c", "A_r", "A_c", "A_r_rest", "A_c_rest",
                                                  "at_r", "at_c", "hard_i2t_index", "hard_t2i_index")]  # fmt: skip
        gk = [v.to(acc).contiguous() for v in (g_cbcl, k_r, k_c)]
        grid = (triton.cdiv(r1 - r0, block), triton.cdiv(B, block))
        tau_arg, tau_ptr = tau
        with _on(out):
            _dsim_kernel[grid](
                ptrs[0], ptrs[1], ptrs[2], tau_arg, bits(eps), B, *ptrs[3:], *vec, *gk, out,
                out.stride(0), r0, r1, tau_part if tau_part is not None else out, BIAS=bool(bias), TAU_PTR=tau_ptr,
                TAU_GRAD=tau_part is not None, **meta,
            )  # fmt: skip


def _vector_dtype(name: str, acc: torch.dtype) -> torch.dtype:
    return torch.int64 if name.endswith("_index") or name.startswith("at_") else acc

"""backend="triton": Triton kernels behind fused.py's contract (kernels.py, the Python side).

    tiles.py    the tile helpers (dot over D or a load from S, the split log-sum-exp, -log P)
    passes.py   pass 1, pass 2 and dS over pair-owned tiles
    merge.py    the fixed-order merge of the per-block partials
    kernels.py  TritonKernels: strategies, launches, row ranges
    glue.py     the glue's Triton routines (srem_kernels/backends/glue.py) for CUDA tensors
    default.py  the registry's instance (made at import)
"""

from srem_kernels.backends.triton.kernels import STRATEGIES, TritonKernels

__all__ = ["STRATEGIES", "TritonKernels"]

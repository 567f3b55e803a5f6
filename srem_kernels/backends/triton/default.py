"""The registry's `triton` backend: one TritonKernels, made when this module is imported.

Made here, not in the registry's loader, because a run compiled from its first call loads the
backend while torch.compile traces: an import runs for real there, while an object built inside
the trace would be a traced stand-in (its registration for the custom ops, fused.register_kernels,
cannot be traced at all).
"""

from srem_kernels.backends.fused import FusedRun
from srem_kernels.backends.triton.kernels import TritonKernels

run = FusedRun(TritonKernels())

"""srem-kernels: the SREM noisy-correspondence loss (Dang et al., AAAI 2024), fused.

    import srem_kernels
    out = srem_kernels.loss(img, txt)        # img, txt: B×D, L2-normalised
    out.loss.backward(); out.stats.energy    # every SPEC.md statistic as a B-vector
"""

from srem_kernels import backends  # the package of backends; calling it lists them (registry.backends)
from srem_kernels.errors import BackendUnavailable
from srem_kernels.registry import BackendStatus
from srem_kernels.functional import loss, loss_from_similarity
from srem_kernels.module import SREMLoss
from srem_kernels.result import SREMResult, SREMStats

__version__ = "0.1.0"

__all__ = [
    "loss",
    "loss_from_similarity",
    "SREMLoss",
    "SREMResult",
    "SREMStats",
    "backends",
    "BackendStatus",
    "BackendUnavailable",
    "__version__",
]

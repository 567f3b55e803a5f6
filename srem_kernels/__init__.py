"""srem-kernels: the SREM noisy-correspondence loss (Dang et al., AAAI 2024), fused.

    import srem_kernels
    out = srem_kernels.loss(img, txt)        # img, txt: B×D, L2-normalised
    out.loss.backward(); out.stats.energy    # every SPEC.md statistic as a B-vector
"""

import types

from srem_kernels import backends, registry, selfcheck
from srem_kernels.errors import BackendUnavailable, SelfCheckError
from srem_kernels.registry import BackendStatus
from srem_kernels.functional import loss, loss_from_similarity
from srem_kernels.module import SREMLoss
from srem_kernels.result import SREMResult, SREMStats

__version__ = "0.1.0"


class _Listing(types.ModuleType):
    """srem_kernels.backends is the package of backends and, called, the registry's listing: the
    API makes it callable here so that nothing in the package imports the registry above it."""

    def __call__(self) -> dict[str, BackendStatus]:
        return registry.backends()


backends.__class__ = _Listing

__all__ = [
    "loss",
    "loss_from_similarity",
    "SREMLoss",
    "SREMResult",
    "SREMStats",
    "backends",
    "BackendStatus",
    "BackendUnavailable",
    "selfcheck",
    "SelfCheckError",
    "__version__",
]

"""What a call of the SREM loss returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class SREMStats:
    """Every per-sample statistic of SPEC.md, each a detached B-vector (see SPEC.md for the math)."""

    pos: torch.Tensor  # S_ii
    energy_i2t: torch.Tensor  # -tau * lse_r[i]
    energy_t2i: torch.Tensor  # -tau * lse_c[i]
    energy: torch.Tensor  # mean of the two; lower = more certain
    ce_i2t: torch.Tensor  # lse_r[i] - Z_ii
    ce_t2i: torch.Tensor  # lse_c[i] - Z_ii
    entropy_i2t: torch.Tensor
    entropy_t2i: torch.Tensor
    hard_i2t: torch.Tensor  # max_{j≠i} S_ij
    hard_i2t_index: torch.Tensor  # its j (int64; ties: lowest index)
    hard_t2i: torch.Tensor  # max_{j≠i} S_ji
    hard_t2i_index: torch.Tensor  # its j (int64)
    sce: torch.Tensor  # swapped classification entropy (D)
    weight: torch.Tensor  # w_i = exp(-sce_i) (sensitivity="weight"; see srem_kernels/sensitivity.py), 1 with sce_weight=False
    clean: torch.Tensor  # the clean weight c_i actually used
    loss_hard: torch.Tensor  # L_hard_i, unweighted
    loss_cbcl: torch.Tensor  # L_cbcl_i, unweighted

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return _NAMES

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.names()}

    @classmethod
    def of(cls, source: Mapping) -> "SREMStats":
        """The statistics of `source` (name -> tensor), each taken from it when first read: a
        fused backend's statistics are rows of its buffers, and a call whose statistics nobody
        reads then makes no tensor for them (~17 views, ~30 µs of a ~1 ms call at B=128 on this
        project's CPU). The same object as SREMStats(**source) to every reader."""
        stats = object.__new__(cls)
        object.__setattr__(stats, "_source", source)
        return stats

    def __getattr__(self, name: str):  # only for an attribute not set yet: a field `of` left to its source
        source = self.__dict__.get("_source")
        if source is None or name not in _NAMES:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        value = source[name]
        object.__setattr__(self, name, value)
        return value

    def __getstate__(self) -> dict:  # pickle, copy: the fields themselves, not the source
        return self.as_dict()


_NAMES = tuple(f.name for f in fields(SREMStats))


@dataclass(frozen=True)
class SREMResult:
    """loss: reduced as asked, differentiable with respect to the inputs.
    per_sample: the B-vector L_i (detached). stats: SREMStats. backend: the backend that ran.
    strategy: how it held S ("materialised" or "streaming") for backends that choose (cpu,
    triton), on (img, txt) calls; None otherwise."""

    loss: torch.Tensor
    per_sample: torch.Tensor
    stats: SREMStats
    backend: str
    strategy: str | None = None

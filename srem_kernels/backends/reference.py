"""The `reference` backend: python_ref, the plain-PyTorch oracle, behind the registry's interface.
In the distributed loss it computes a rank's rows with dense's kernels (Br×B, not B×B)."""

from __future__ import annotations

import torch

import python_ref

from srem_kernels._validate import SREMParams
from srem_kernels.backends.dense import DenseKernels


class _Reference:
    kernels = DenseKernels()  # the row-range kernels of the distributed loss (fused.py)

    def __call__(self, img, txt, sim, params: SREMParams, *, stats_only: bool = False):
        if stats_only:  # the reference has no gradient-free path of its own: autograd off is all it takes
            with torch.no_grad():
                return python_ref.srem(img, txt, sim=sim, **params.as_kwargs())
        return python_ref.srem(img, txt, sim=sim, **params.as_kwargs())


run = _Reference()

"""The `reference` backend: python_ref, the plain-PyTorch oracle, behind the registry's interface."""

from __future__ import annotations

import torch

import python_ref

from srem_kernels._validate import SREMParams


def run(img, txt, sim, params: SREMParams, *, stats_only: bool = False):
    if stats_only:  # the reference has no gradient-free path of its own: autograd off is all it takes
        with torch.no_grad():
            return python_ref.srem(img, txt, sim=sim, **params.as_kwargs())
    return python_ref.srem(img, txt, sim=sim, **params.as_kwargs())

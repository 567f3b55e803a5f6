"""The `reference` backend: python_ref, the plain-PyTorch oracle, behind the registry's interface."""

from __future__ import annotations

import python_ref

from srem_kernels._validate import SREMParams


def run(img, txt, sim, params: SREMParams):
    return python_ref.srem(img, txt, sim=sim, **params.as_kwargs())

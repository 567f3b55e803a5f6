"""The plain-PyTorch reference of the SREM loss (SPEC.md): the oracle for every backend."""

from python_ref.filtration import clean_weights, gmm_filtration, gmm_posterior
from python_ref.srem import *  # noqa: F401,F403  (one function per SPEC quantity)
from python_ref.srem import STATISTICS, srem

__all__ = ["srem", "STATISTICS", "clean_weights", "gmm_filtration", "gmm_posterior"]

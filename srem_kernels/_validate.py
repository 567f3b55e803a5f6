"""Input checks shared by every entry point: all run before any backend does.

Each error names the offending argument. Nothing is broadcast or moved between devices. These
checks read only shapes, dtypes, devices and Python values; the tensors' values (NaN/Inf, clean's
range) are checked by one routine per call, backends/glue.check_values (at most one host read).
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass, fields

import torch

from srem_kernels import _tau
from srem_kernels.sensitivity import MODES as SENSITIVITIES

FLOAT_DTYPES = _tau.FLOAT_DTYPES
REDUCTIONS = ("mean", "sum", "none")
SELECTS = ("gmm", "none")


@dataclass(frozen=True)
class SREMParams:
    """The validated SPEC.md parameters of one call (tensors already checked against B)."""

    tau: float | torch.Tensor = 0.05  # a 0-d tensor: a learnable temperature (srem_kernels/_tau.py)
    margin: float | torch.Tensor = 0.2
    lambda_hard: float = 1.0
    lambda_cbcl: float = 1.0
    bias: bool = True
    sce_weight: bool = True
    sensitivity: str = "weight"  # how sce enters (srem_kernels/sensitivity.py); off with sce_weight=False
    clean: torch.Tensor | None = None
    select: str = "gmm"
    eps: float = 1e-10
    reduction: str = "mean"

    def as_kwargs(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def sce_mode(self) -> str | None:
        """The sensitivity mode in force: None when sce_weight=False turns the term off."""
        return self.sensitivity if self.sce_weight else None


def _tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    # the kernels read dense memory: sparse, nested or mkldnn layouts and data-less meta tensors
    # would otherwise fail deep inside torch (or a kernel) with an error that names neither
    if x.layout != torch.strided or x.is_nested:
        layout = "nested" if x.is_nested else str(x.layout)
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {layout}; call .to_dense() first")
    return x


def _has_data(x: torch.Tensor, name: str) -> None:
    # after the device checks, so a meta tensor beside a real one reads as a device mismatch
    if x.is_meta:
        raise TypeError(f"{name} is a meta tensor (a shape without data); the loss needs its values")


def _float_tensor(x: torch.Tensor, name: str) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have a floating dtype (float32, float16, bfloat16 or float64), got {x.dtype}"
        )


def _matrix(x, name: str, has_data: bool = True) -> torch.Tensor:
    x = _tensor(x, name)
    if x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor, got shape {tuple(x.shape)}")
    _float_tensor(x, name)
    if has_data:
        _has_data(x, name)
    return x


def check_embeddings(img, txt, min_batch: int = 2) -> tuple[int, int]:
    """img and txt: B×D, same B, D, dtype and device, B ≥ min_batch (2; a rank's share of a
    distributed batch: 1), D ≥ 1. Returns (B, D)."""
    img = _matrix(img, "img", has_data=False)
    txt = _matrix(txt, "txt", has_data=False)
    if img.device != txt.device:
        raise ValueError(f"img and txt must be on the same device, got img on {img.device} and txt on {txt.device}")
    _has_data(img, "img")
    _has_data(txt, "txt")
    if img.dtype != txt.dtype:
        raise TypeError(f"img and txt must have the same dtype, got img {img.dtype} and txt {txt.dtype}")
    if img.shape[0] != txt.shape[0]:
        raise ValueError(
            f"img and txt must have the same batch size B, got img {tuple(img.shape)} and txt {tuple(txt.shape)}"
        )
    if img.shape[1] != txt.shape[1]:
        raise ValueError(
            f"img and txt must have the same embedding size D, got img {tuple(img.shape)} and txt {tuple(txt.shape)}"
        )
    B, D = img.shape
    if B < min_batch:
        what = "a batch of B ≥ 2 pairs" if min_batch == 2 else f"at least {min_batch} pair(s) on every rank"
        raise ValueError(f"img and txt need {what}, got B={B}")
    if D < 1:
        raise ValueError(f"img and txt need an embedding size D ≥ 1, got D={D}")
    return B, D


def check_similarity(sim) -> int:
    """sim: a square B×B matrix with B ≥ 2. Returns B."""
    sim = _matrix(sim, "sim")
    if sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim must be a square B×B matrix, got shape {tuple(sim.shape)}")
    if sim.shape[0] < 2:
        raise ValueError(f"sim needs a batch of B ≥ 2 pairs, got B={sim.shape[0]}")
    return sim.shape[0]


def _real(x, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    return x


def _nonnegative(x, name: str) -> float:
    x = _real(x, name)
    if x < 0:
        raise ValueError(f"{name} must be ≥ 0, got {x}")
    return x


def _flag(x, name: str) -> bool:
    if not isinstance(x, bool):
        raise TypeError(f"{name} must be True or False, got {x!r}")
    return x


def _choice(x, name: str, choices: tuple[str, ...]) -> str:
    if x not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {x!r}")
    return x


def _vector(x, name: str, B: int, device: torch.device) -> torch.Tensor:
    """A per-sample tensor: exactly shape (B,), floating, on the inputs' device."""
    x = _tensor(x, name)
    if tuple(x.shape) != (B,):
        raise ValueError(f"{name} must have shape (B,) = ({B},), got {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name} must be on the inputs' device {device}, got {x.device}")
    _has_data(x, name)
    _float_tensor(x, name)
    return x


def check_tau(tau, device: torch.device | None = None):
    """A real number > 0, or a 0-d floating tensor on the inputs' device or the CPU (its value is
    a value check, glue.check_values). device=None defers the device check."""
    if isinstance(tau, torch.Tensor):
        return _tau.check_tensor(tau, device)
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
        raise TypeError(f"tau must be a real number or a 0-d tensor, got {type(tau).__name__}")
    tau = _real(tau, "tau")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return tau


def check_options(*, tau, lambda_hard, lambda_cbcl, bias, sce_weight, select, eps, reduction,
                  sensitivity="weight") -> dict:
    """The scalar options, which do not depend on the batch (SREMLoss checks them at construction)."""
    args = (tau, lambda_hard, lambda_cbcl, bias, sce_weight, select, eps, reduction, sensitivity)
    if all(type(a) in _PLAIN for a in args):  # a training loop's repeated options: checked once
        return dict(_checked_options(*args))
    return _check_options(*args)


_PLAIN = (float, int, bool, str)  # exact types: hashable, immutable, compared by value


@functools.lru_cache(maxsize=256, typed=True)  # typed: True and 1 are not the same option
def _checked_options(*args) -> tuple:
    return tuple(_check_options(*args).items())  # an exception is raised again each call, not cached


def _check_options(tau, lambda_hard, lambda_cbcl, bias, sce_weight, select, eps, reduction, sensitivity) -> dict:
    tau = check_tau(tau)
    sce_weight = _flag(sce_weight, "sce_weight")
    sensitivity = _choice(sensitivity, "sensitivity", SENSITIVITIES)
    if not sce_weight and sensitivity != "weight":
        raise ValueError(f"sensitivity={sensitivity!r} needs sce_weight=True (sce_weight=False turns the "
                         "sensitivity term off in every mode)")
    return dict(
        tau=tau,
        lambda_hard=_nonnegative(lambda_hard, "lambda_hard"),
        lambda_cbcl=_nonnegative(lambda_cbcl, "lambda_cbcl"),
        bias=_flag(bias, "bias"),
        sce_weight=sce_weight,
        sensitivity=sensitivity,
        select=_choice(select, "select", SELECTS),
        eps=_nonnegative(eps, "eps"),
        reduction=_choice(reduction, "reduction", REDUCTIONS),
    )


def check_margin(margin, B: int | None = None, device: torch.device | None = None):
    """A real number, or a tensor of shape (B,) (NCR's soft margin); B=None defers the tensor check."""
    if isinstance(margin, torch.Tensor):
        return margin if B is None else _vector(margin, "margin", B, device)
    return _real(margin, "margin")


def check_clean(clean, B: int, device: torch.device) -> torch.Tensor | None:
    """None, or weights of shape (B,); a bool mask counts as 0/1 weights. Their range [0, 1] is a
    value check (glue.check_values)."""
    if clean is None:
        return None
    if isinstance(clean, torch.Tensor) and clean.dtype == torch.bool:
        clean = clean.float()
    return _vector(clean, "clean", B, device)


def check_params(B: int, device: torch.device, *, margin, clean, tau, **options) -> SREMParams:
    """Everything but the input tensors, checked against the batch size B and the inputs' device."""
    values = (margin, tau, *options.values())
    if clean is None and all(type(v) in _PLAIN for v in values):  # a training loop's repeated call: checked once
        return _checked_params(tuple(options), *values)
    return SREMParams(
        margin=check_margin(margin, B, device),
        clean=check_clean(clean, B, device),
        **check_options(tau=check_tau(tau, device), **options),
    )


@functools.lru_cache(maxsize=256, typed=True)  # typed: 1 and True differ; SREMParams is frozen: one serves all
def _checked_params(names: tuple, margin, tau, *values) -> SREMParams:
    return SREMParams(margin=check_margin(margin), clean=None,
                      **check_options(tau=check_tau(tau), **dict(zip(names, values))))  # fmt: skip

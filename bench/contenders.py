"""Everything the benchmark races, on the same inputs.

A contender turns leaf embeddings (img, txt: B×D, requires_grad) into three phases, "fwd", "bwd"
and "fwd+bwd". Each phase is a preparation: calling it does the untimed set-up (for "bwd", the
forward that builds the graph) and returns the zero-argument callable that is timed.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import python_ref
import srem_kernels

Phases = dict[str, Callable[[], Callable[[], object]]]


@dataclass(frozen=True)
class Contender:
    name: str
    build: Callable[[torch.Tensor, torch.Tensor], Phases]
    family: str  # "srem" (the whole loss), "infonce" (the contrastive core only) or "floor"
    dense: bool  # materialises B×B matrices: skipped on CPU where they would not fit
    note: str = ""


def loss_phases(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], img, txt) -> Phases:
    def backward():
        loss = loss_fn(img, txt)
        return loss.backward

    return {
        "fwd": lambda: lambda: loss_fn(img, txt),
        "bwd": backward,
        "fwd+bwd": lambda: lambda: loss_fn(img, txt).backward(),
    }


def matmul_floor(img, txt) -> Phases:
    """The three bare matmuls the math needs: S = I·Tᵀ forward, G·T and Gᵀ·I backward."""
    i, t = img.detach(), txt.detach()
    G = torch.randn(i.shape[0], i.shape[0], dtype=i.dtype, device=i.device)
    return {
        "fwd": lambda: lambda: i @ t.T,
        "bwd": lambda: lambda: (G @ t, G.T @ i),
        "fwd+bwd": lambda: lambda: (i @ t.T, G @ t, G.T @ i),
    }


def clip_loss(img, txt, tau: float = 0.05):
    """open_clip's ClipLoss formulation: symmetric cross-entropy over I·Tᵀ / tau."""
    logits = (img @ txt.T) / tau
    labels = torch.arange(img.shape[0], device=img.device)
    return (F.cross_entropy(logits.float(), labels) + F.cross_entropy(logits.T.float(), labels)) / 2


def _inf_cl() -> Contender | str:
    """inf-cl's memory-efficient contrastive loss (GPU only), or why it is not here."""
    try:
        from inf_cl import cal_inf_loss
    except ImportError as err:
        return f"inf-cl not installed ({err.name}); pip install inf-cl where the network allows"

    def loss(img, txt):
        scale = torch.tensor(1 / 0.05, device=img.device)  # 1 / tau, as the other contenders
        return (cal_inf_loss(img, txt, scale=scale) + cal_inf_loss(txt, img, scale=scale)) / 2

    return Contender("infonce:inf-cl", lambda i, t: loss_phases(loss, i, t), "infonce", False, "tiled InfoNCE")


_compiled = {}


def fresh_compile(fn):
    """torch.compile(fn, dynamic=False) of a copy of fn with a code object of its own, so its own
    compile cache: a static graph for the shape it first sees, as torch.compile's defaults give a
    training run at one batch size (one function compiled at several sizes would switch to a
    dynamic-shape graph at the second and stop recompiling at the cache's limit)."""
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return torch.compile(copy, dynamic=False)


def _compiled_clip_loss(img, txt):
    return loss_phases(fresh_compile(clip_loss), img, txt)  # compiled in the race's warm-up, per size


def _compiled_reference(img, txt):
    fn = _compiled.get("srem")
    if fn is None:  # one dynamic-shape compile serves every batch size
        fn = _compiled["srem"] = torch.compile(lambda a, b: python_ref.srem(a, b)[0], dynamic=True)
    return loss_phases(fn, img, txt)


def _variants(name: str) -> dict:
    """A backend's kernels with each choice forced: triton's strategies, cuda's panel GEMMs."""
    if name == "triton":
        from srem_kernels.backends.triton.kernels import STRATEGIES, TritonKernels

        return {strategy: TritonKernels(strategy=strategy) for strategy in STRATEGIES}
    if name == "cuda":
        from srem_kernels.backends.cuda import GEMMS, CUDAKernels

        return {gemm: CUDAKernels(gemm=gemm) for gemm in GEMMS}
    return {}


def _backend(name: str) -> list[Contender]:
    """The backend through the public API, and each of its _variants forced."""
    from srem_kernels.backends import fused
    from srem_kernels._validate import SREMParams

    fn = lambda a, b: srem_kernels.loss(a, b, backend=name, check_finite=False).loss  # noqa: E731
    out = [Contender(f"srem:{name}", lambda i, t: loss_phases(fn, i, t), "srem", name == "reference")]
    for variant, kernels in _variants(name).items():
        run = lambda a, b, k=kernels: fused.run(k, a, b, None, SREMParams())[0]  # noqa: E731
        out.append(Contender(f"srem:{name}:{variant}", lambda i, t, r=run: loss_phases(r, i, t), "srem", variant == "materialised"))
    return out


def contenders(device: torch.device) -> tuple[list[Contender], list[str]]:
    """(what runs on this device, one line per contender left out and why)."""
    out = [Contender("floor:matmuls", matmul_floor, "floor", True, "S = I·Tᵀ, G·T, Gᵀ·I")]
    skipped = []
    for status in srem_kernels.backends().values():
        if not status.available:
            skipped.append(f"srem:{status.name}: {status.reason}")
        elif device.type not in status.devices:
            skipped.append(f"srem:{status.name}: runs on {'/'.join(status.devices)}, not {device.type}")
        else:
            out += _backend(status.name)
    out.append(Contender("srem:compiled-reference", _compiled_reference, "srem", True, "torch.compile(python_ref.srem)"))
    out.append(Contender("infonce:clip-loss", lambda i, t: loss_phases(clip_loss, i, t), "infonce", True, "open_clip formulation"))
    out.append(Contender("infonce:clip-loss-compiled", _compiled_clip_loss, "infonce", True,
                         "torch.compile, static shapes per size"))  # fmt: skip
    if device.type == "cuda":
        inf_cl = _inf_cl()
        (out.append if isinstance(inf_cl, Contender) else skipped.append)(inf_cl)
    else:
        skipped.append("infonce:inf-cl: GPU only")
    return out, skipped

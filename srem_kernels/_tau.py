"""The temperature tau: a float, or a 0-d tensor that may require grad (a learnable temperature,
CLIP's 1 / logit_scale; SPEC.md "Inputs", "Gradient").

How a tensor tau reaches the kernels without a device synchronisation:
  - on the inputs' CUDA device: as a device scalar. The Triton and CUDA kernels load it from
    device memory (and form 1/tau there, in fp64: the bits a host float's 1.0 / tau has);
  - on the CPU: its value is read from host memory (`host_value`), which synchronises nothing —
    for the `cpu` backend, and for CUDA inputs whose tau lives on the CPU.
Its gradient comes from one more reduction inside each backend's dS pass (fused.py).
"""

from __future__ import annotations

import ctypes
import struct

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def is_tensor(tau) -> bool:
    return isinstance(tau, torch.Tensor)


def check_tensor(tau: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """A tensor tau's type, shape, dtype and device (its value, finite and > 0, is one of the
    call's value checks: backends/glue.check_values, as the inputs' NaN checks are)."""
    if tau.layout != torch.strided or tau.is_nested:
        raise TypeError("tau must be a dense (strided) tensor when it is a tensor")
    if tau.dim() != 0:
        raise ValueError(f"tau must be a float or a 0-d tensor, got a tensor of shape {tuple(tau.shape)}"
                         " (tau.reshape(()) if it holds one value)")  # fmt: skip
    if tau.dtype not in FLOAT_DTYPES:
        raise TypeError(f"tau must have a floating dtype (float32, float16, bfloat16 or float64), got {tau.dtype}")
    if tau.is_meta:
        raise TypeError("tau is a meta tensor (a shape without data); the loss needs its value")
    if device is not None and tau.device != device and tau.device.type != "cpu":
        raise ValueError(f"tau must be on the inputs' device {device} or on the CPU, got {tau.device}")
    return tau


_READERS = {torch.float64: ("<d", 8), torch.float32: ("<f", 4), torch.float16: ("<e", 2)}


def host_value(tau: torch.Tensor) -> float:
    """The value of a CPU tensor tau read from its memory: no operator, no device, no sync
    (float(tau) would be an aten._local_scalar_dense, which op counts take for a device read)."""
    assert tau.device.type == "cpu" and tau.dim() == 0, "host_value reads 0-d CPU tensors only"
    addr = tau.data_ptr()
    if tau.dtype == torch.bfloat16:  # the top half of an fp32
        raw = ctypes.string_at(addr, 2)
        return struct.unpack("<f", b"\x00\x00" + raw)[0]
    fmt, size = _READERS[tau.dtype]
    return struct.unpack(fmt, ctypes.string_at(addr, size))[0]


def kernel_form(tau, device: torch.device):
    """What the kernels and the glue take (fused.py): a float, or a detached 0-d tensor on
    `device` (any float dtype). A tensor on the CPU while the inputs are elsewhere is read on
    the host (no device sync); anything else stays on its device."""
    if not is_tensor(tau):
        return tau
    if tau.device.type == "cpu" and device.type != "cpu":
        return host_value(tau)
    return tau.detach()


def scalar(tau, dtype: torch.dtype) -> float | torch.Tensor:
    """tau to compute with in torch ops on vectors of `dtype`: the float, or the tensor cast to
    `dtype` (a 0-d tensor does not promote a vector's dtype, so this only makes it explicit)."""
    return tau.to(dtype) if is_tensor(tau) else tau


def f64(tau) -> torch.Tensor:
    """A device tensor tau as the fp64 scalar the Triton and CUDA kernels load (no op if fp64)."""
    return tau.to(torch.float64).contiguous()

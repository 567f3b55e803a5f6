"""The vectorised fp32 functions of the cpu kernels (csrc/cpu/vecmath.h) against libm in fp64:
the error in ulps of the correctly rounded result, over the ranges the kernels use, bounded as
vecmath.h states. They run through the module's `vecmath` entry: the same inlined code in the
same vectorised loops (and flush-to-zero mode) as the kernels."""

from __future__ import annotations

import math

import pytest
import torch

import srem_kernels

status = srem_kernels.backends()["cpu"]
pytestmark = pytest.mark.skipif(not status.available, reason=f"cpu backend unavailable: {status.reason}")

if status.available:
    from srem_kernels.backends import _srem_cpu

# name: (function code in srem_cpu_vecmath, fp64 reference, argument sampler, stated bound in ulps)
_N = 1 << 20


def _uniform(lo, hi, n=_N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _log_uniform(lo, hi, n=_N, seed=1):
    """Magnitudes spread over every binade from lo to hi."""
    return torch.exp(_uniform(torch.log(torch.tensor(lo)).item(), torch.log(torch.tensor(hi)).item(), n, seed))


def _args(*parts):
    x = torch.cat([p.to(torch.float64) for p in parts]).float()
    return x[torch.isfinite(x)]


CASES = {
    # pass 1: exp(Z - m), Z <= m; pass 2 / backward: P = exp(-nl)
    "exp_neg": (0, torch.exp, lambda: _args(_uniform(-87.3, 0), -_log_uniform(1e-30, 87.3), torch.tensor([0.0, -87.3])), 1.5),
    "exp_pq.p": (1, lambda nl: torch.exp(-nl), lambda: _args(_uniform(0, 87.3), _log_uniform(1e-30, 87.3)), 1.5),
    # 1 - P = -expm1(-nl), down to P -> 1 (nl -> 0: a confident pair)
    "exp_pq.q": (2, lambda nl: -torch.expm1(-nl), lambda: _args(_uniform(0, 87.3), _log_uniform(1e-30, 87.3)), 1.5),
    # log(1 - P + eps) for P >= 1/2: u in (eps, 1/2 + eps]; tested on every binade around
    "log_pos": (3, torch.log, lambda: _args(_log_uniform(1e-37, 1e30), _uniform(0.5, 2.0), torch.tensor([1.0])), 1.5),
    # log1p(eps - P) for P < 1/2
    "log1p_neg": (4, torch.log1p, lambda: _args(-_log_uniform(1e-30, 0.5), _uniform(-0.5, 9.5e-7), torch.tensor([0.0])), 3.0),
}


def ulp_errors(fn: int, x: torch.Tensor, ref) -> torch.Tensor:
    out = torch.empty_like(x)
    _srem_cpu.vecmath(fn, x.data_ptr(), out.data_ptr(), x.numel())
    exact = ref(x.double())
    ulp = torch.ldexp(torch.ones_like(exact), torch.frexp(exact.float()).exponent.double().clamp_min(-125) - 24)
    return (out.double() - exact).abs() / ulp


@pytest.mark.parametrize("name", CASES)
def test_vecmath_ulp_error(name):
    fn, ref, sample, bound = CASES[name]
    x = sample()
    err = ulp_errors(fn, x, ref)
    worst = err.argmax()
    assert err.max().item() <= bound, f"{name}: {err.max().item():.3f} ulp at x={x[worst].item()!r} (bound {bound})"
    assert err.mean().item() < 0.5, f"{name}: mean error {err.mean().item():.3f} ulp"


def test_vecmath_special_values():
    nan, inf = float("nan"), float("inf")

    def call(fn, vals):
        x = torch.tensor(vals, dtype=torch.float32)
        out = torch.empty_like(x)
        _srem_cpu.vecmath(fn, x.data_ptr(), out.data_ptr(), x.numel())
        return out.tolist()

    tiny = 1.0001 * math.exp(-87.3)  # below -87.3, exp_neg and p stay there (the bottom of fp32 normal numbers)
    assert call(0, [0.0])[0] == 1.0 and all(0 <= v <= tiny for v in call(0, [-100.0, -inf]))
    assert call(1, [0.0]) == [1.0] and 0 < call(1, [100.0])[0] <= tiny
    assert call(2, [100.0, 0.0]) == [1.0, 0.0]
    for fn in range(5):  # NaN propagates through each
        assert torch.isnan(torch.tensor(call(fn, [nan]))).all(), fn
    assert call(3, [1.0]) == [0.0]
    assert call(4, [0.0, -1e-30]) == [0.0, pytest.approx(-1e-30, rel=1e-7)]
    with pytest.raises(ValueError, match="unknown function"):
        call(9, [1.0])


def test_exp_neg_d_ulp_error():
    """The GMM's fp64 exp (exp_neg_d, vecmath.h: the E-step's posteriors) against numpy's exp in
    long double, over its range [-708, 0] on every binade: within the 2 ulp it states."""
    np = pytest.importorskip("numpy")
    x = torch.cat([_uniform(-708.0, 0.0, seed=2), -_log_uniform(1e-30, 708.0, seed=3),
                   torch.tensor([0.0, -708.0, -1e-320])])  # fmt: skip
    out = torch.empty_like(x)
    _srem_cpu.vecmath_d(0, x.data_ptr(), out.data_ptr(), x.numel())
    exact = np.exp(x.numpy().astype(np.longdouble))
    err = np.abs(out.numpy().astype(np.longdouble) - exact) / np.spacing(exact.astype(np.float64))
    worst = int(err.argmax())
    assert float(err.max()) <= 2.0, f"{float(err.max()):.3f} ulp at x={x[worst].item()!r}"
    special = torch.tensor([-800.0, float("-inf"), float("nan")], dtype=torch.float64)
    got = torch.empty_like(special)
    _srem_cpu.vecmath_d(0, special.data_ptr(), got.data_ptr(), 3)
    assert got[0] == got[1] == out[-2] and torch.isnan(got[2])  # below -708: exp(-708); NaN propagates
    with pytest.raises(ValueError, match="unknown function"):
        _srem_cpu.vecmath_d(1, x.data_ptr(), out.data_ptr(), 1)

"""srem_kernels.selfcheck: every fused backend that runs on a device, checked on a small fixed
problem set against the fp64 reference with SPEC.md's tolerances (docs/selfcheck.md).

    report = srem_kernels.selfcheck()            # the package is callable: run(device, backends, dtypes)
    print(report); assert report.ok
    python -m srem_kernels.selfcheck             # the same, printed (exit status 1 on a failure)

The same cases run automatically on a backend's first use in a process (auto.py). Modules:
cases.py (the problems), judge.py (the reference and SPEC's tolerances), report.py (results,
the printed report, the error message), auto.py (the first-use hook, its switch and cache).
"""

from __future__ import annotations

import sys
import time
import types

import torch

from srem_kernels import registry
from srem_kernels.errors import SelfCheckError
from srem_kernels.selfcheck import auto, cases
from srem_kernels.selfcheck.auto import reset, set_auto
from srem_kernels.selfcheck.report import CaseResult, Report, versions

__all__ = ["run", "Report", "CaseResult", "SelfCheckError", "set_auto", "reset"]

_DTYPE_NAMES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
                "fp16": torch.float16, "float16": torch.float16}  # fmt: skip


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be a torch.device or a name such as 'cuda' or 'cpu', got {device!r}") from err


def _names(backends) -> list[str]:
    if backends is None:
        return list(auto.FUSED)
    names = [backends] if isinstance(backends, str) else list(backends)
    bad = [n for n in names if n not in auto.FUSED]
    if bad:
        raise ValueError(f"backends must name fused backends ({', '.join(map(repr, auto.FUSED))}); got {bad!r}")
    return names


def _dtypes(dtypes) -> list[torch.dtype]:
    if dtypes is None:
        return list(cases.DTYPES)
    out = []
    for d in [dtypes] if isinstance(dtypes, (str, torch.dtype)) else dtypes:
        dt = _DTYPE_NAMES.get(d) if isinstance(d, str) else d
        if dt not in cases.DTYPES:
            raise ValueError(f"dtypes must be among float32, bfloat16, float16 (or 'fp32', 'bf16', 'fp16'); got {d!r}")
        out.append(dt)
    return out


def _shapes(shapes) -> list[str]:
    names = list(cases.SHAPES) if shapes is None else [shapes] if isinstance(shapes, str) else list(shapes)
    bad = [n for n in names if n not in cases.SHAPES]
    if bad:
        raise ValueError(f"shapes must be among {', '.join(map(repr, cases.SHAPES))}; got {bad!r}")
    return names


def run(device=None, backends=None, dtypes=None, *, shapes=None) -> Report:
    """Check each fused backend that runs on `device` (default: the GPU if there is one, else the
    CPU) at each dtype it takes (fp32, bf16, fp16), both shape classes ("aligned": sizes that are
    multiples of 16, "odd"; `shapes` picks), every path and case (cases.py). Returns the Report
    (report.ok: all passed); raises nothing on a mismatch. Its verdicts also stand for the
    first-use check of the parts it covered."""
    dev, names, dts, classes = _device(device), _names(backends), _dtypes(dtypes), _shapes(shapes)
    report = Report(str(dev), versions(dev))
    t0 = time.perf_counter()
    for name in names:
        why = {}
        for dtype in dts:
            try:
                _, backend_run = registry.resolve(name, dev, dtype)
            except (ValueError, RuntimeError) as err:
                why[cases.DTYPES[dtype]] = str(err)
                continue
            for shape in classes:
                for path in cases.PATHS:
                    with auto.checking():
                        results = cases.run_part(name, backend_run, dev, dtype, shape, path, fail_fast=False)
                    report.cases += results
                    auto.record(auto.key_of(name, dev, dtype, shape, path), auto.verdict(results, dev, dtype))
        if len(set(why.values())) == 1 and len(why) == len(dts):  # the backend does not run here at all
            report.skipped[name] = next(iter(why.values()))
        else:
            report.skipped |= {f"{name} {d}": w for d, w in why.items()}
    report.seconds = time.perf_counter() - t0
    return report


class _Callable(types.ModuleType):
    """srem_kernels.selfcheck(...) is run(...): the package is callable, as srem_kernels.backends is."""

    def __call__(self, device=None, backends=None, dtypes=None, *, shapes=None) -> Report:
        return run(device, backends, dtypes, shapes=shapes)


sys.modules[__name__].__class__ = _Callable

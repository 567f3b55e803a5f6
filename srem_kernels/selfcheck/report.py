"""What the self-check reports: a result per case, the report of a whole check (printable for a
bug report: what passed, the worst errors, the time, the versions) and the message of the error
that stops a call on a failing backend."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import sys
from dataclasses import dataclass, field

import torch

from srem_kernels.selfcheck.judge import Quantity

ENV = "SREM_SELFCHECK"


@dataclass(frozen=True)
class CaseResult:
    backend: str
    device: str  # the device type the backend ran on ("cuda", "cpu")
    dtype: str  # "fp32", "bf16", "fp16" (the tolerance's key may be "tf32")
    tol_key: str
    case: str  # what ran, e.g. "img/txt, streaming (fresh kernels)"
    B: int
    D: int | None  # None: from a similarity matrix
    quantities: tuple[Quantity, ...] = ()
    seconds: float = 0.0
    error: str = ""  # the exception the run raised, if it raised

    @property
    def passed(self) -> bool:
        return not self.error and bool(self.quantities) and all(q.ok for q in self.quantities)

    @property
    def worst(self) -> Quantity | None:
        return max(self.quantities, key=lambda q: q.ratio, default=None)

    @property
    def shape(self) -> str:
        return f"B={self.B}" + (f", D={self.D}" if self.D is not None else "")

    def what_failed(self) -> str:
        """The exception, or every failing quantity, worst first."""
        if self.error:
            return f"raised {self.error}"
        bad = sorted((q for q in self.quantities if not q.ok), key=lambda q: -q.ratio)
        return "; ".join(map(str, bad)) if bad else "no output was compared"


@dataclass
class Report:
    """The results of one check, with the versions and the device they ran on. str() is the
    report to print or attach to a bug report."""

    device: str
    versions: dict[str, str]
    cases: list[CaseResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # what was not checked -> why
    seconds: float = 0.0
    started: str = field(default_factory=lambda: f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")

    @property
    def ok(self) -> bool:
        """Every case ran and passed (True when nothing was checked: see `checked`)."""
        return all(c.passed for c in self.cases)

    @property
    def checked(self) -> bool:
        return bool(self.cases)

    @property
    def failures(self) -> list[CaseResult]:
        return [c for c in self.cases if not c.passed]

    def __str__(self) -> str:
        lines = [f"srem_kernels self-check on {self.device}, {self.started}, {self.seconds:.2f} s"]
        lines += [f"  {k}: {v}" for k, v in self.versions.items()]
        if self.cases:
            lines.append(f"{'backend':<9} {'dtype':<5} {'case':<40} {'shape':<13} {'worst':<17} {'error':>8} "
                         f"{'tol':>6} {'s':>6}  result")  # fmt: skip
        for c in self.cases:
            w = c.worst
            err = "" if w is None else (f"{int(w.err)}≠" if w.exact else f"{w.err:.1e}")
            tol = "" if w is None else ("0" if w.exact else f"{w.tol:.0e}")
            lines.append(f"{c.backend:<9} {c.tol_key:<5} {c.case:<40} {c.shape:<13} {(w.name if w else '-'):<17} "
                         f"{err:>8} {tol:>6} {c.seconds:>6.3f}  {'PASS' if c.passed else 'FAIL'}")  # fmt: skip
        lines += [f"not checked: {k}: {v}" for k, v in self.skipped.items()]
        lines += [f"FAIL {c.backend} {c.tol_key} {c.case} ({c.shape}): {c.what_failed()}" for c in self.failures]
        passed = sum(c.passed for c in self.cases)
        verdict = "PASS" if self.ok and self.checked else ("FAIL" if not self.ok else "NOTHING CHECKED")
        lines.append(f"{verdict}: {passed} of {len(self.cases)} cases passed")
        return "\n".join(lines)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _package() -> str:
    """The version and folder of the srem_kernels that runs (a checkout may not be installed)."""
    pkg = sys.modules.get("srem_kernels")
    where = os.path.dirname(os.path.dirname(getattr(pkg, "__file__", "") or "")) or "?"
    return f"srem_kernels {getattr(pkg, '__version__', '?')} ({where})"


def versions(device: torch.device) -> dict[str, str]:
    """What a bug report needs to know about this machine (no import of Triton)."""
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        name = f"{p.name} (sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB)"
    else:
        name = f"{_cpu_name()} ({torch.get_num_threads()} threads)"
    return {
        "device": name,
        "versions": (f"{_package()}, torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}), "
                     f"Triton {_version('triton')}, Python {platform.python_version()}, "
                     f"{platform.system()} {platform.machine()}"),
        "settings": (f"float32 matmul precision {torch.get_float32_matmul_precision()}, "
                     f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')!r}, {ENV}={os.environ.get(ENV, '')!r}"),
    }  # fmt: skip


def failure_message(result: CaseResult, alternatives: list[str]) -> str:
    """The error of a call stopped by a failing backend: the backend, the case, the error, and
    how to choose another backend."""
    others = " or ".join(f"backend={n!r}" for n in alternatives) or "backend='reference'"
    return (
        f"srem_kernels self-check: backend {result.backend!r} computes a wrong result on this {result.device} device "
        f"({result.tol_key} inputs), so the call was stopped before it ran. Case {result.case!r} ({result.shape}): "
        f"{result.what_failed()}. Choose another backend: srem_kernels.loss(..., {others}) (or SREMLoss(backend=...)); "
        f"or, at your own risk, turn the check off with {ENV}=0. `python -m srem_kernels.selfcheck` prints the full "
        f"report for a bug report."
    )

"""Timing and peak memory of one callable, on CPU or GPU."""

from __future__ import annotations

import ctypes
import os
import random
import re
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float


def _quantile(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=10, method="inclusive")[int(q * 10) - 1] if len(xs) > 1 else xs[0]


def summarise(samples_ms: list[float]) -> Timing:
    return Timing(statistics.median(samples_ms), _quantile(samples_ms, 0.2), _quantile(samples_ms, 0.8))


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call: CUDA events on GPU, the wall clock on CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, *,
                shuffle: bool = False) -> tuple[dict[str, Timing], dict[str, str]]:
    """Each callable once as warm-up, then `repeats` rounds that time every one once (a new seeded
    order each round with shuffle: what the previous call leaves in the caches hits all alike).
    Their timings, and the 1-minute load average before and after the rounds (load_before,
    load_after, as the logs' columns hold it)."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    load_before = os.getloadavg()[0]
    for rnd in range(repeats):
        order = list(fns)
        if shuffle:
            random.Random(rnd).shuffle(order)
        for k in order:
            samples[k].append(time_once(fns[k], device))
    load = {"load_before": f"{load_before:.2f}", "load_after": f"{os.getloadavg()[0]:.2f}"}
    return {k: summarise(v) for k, v in samples.items()}, load


# ---------------------------------------------------------------- peak memory above the inputs


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+) kB", f.read()).group(1)) / 1024


def _release_free_heap() -> None:
    """Hand the allocator's free pages back to the system (glibc malloc_trim), so that memory a
    call reuses from earlier frees shows as RSS growth instead of hiding in the heap; the cpu
    backend's kept B×B buffers (srem_kernels/backends/cpu.py, KEPT) are dropped for the same reason."""
    cpu = sys.modules.get("srem_kernels.backends.cpu")
    if cpu is not None:
        cpu.KEPT.clear()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory that one call adds above what is allocated before it: the CUDA caching
    allocator's peak on GPU; on CPU the growth of the process's peak RSS (VmHWM, reset through
    clear_refs) after the heap's free pages are released: sub-MB figures mean little."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    _release_free_heap()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    base = _status_mb("VmRSS")
    fn()
    return max(_status_mb("VmHWM") - base, 0.0)


def is_oom(err: BaseException) -> bool:
    return isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(err).lower()

"""The CUDA sources compile with nvcc where nvcc is present (one architecture, to stay quick), and
what of the build runs on any machine: the C ABI is exported, the architectures come from
SREM_CUDA_ARCHS, the module (where built) reports CUDA errors as Python exceptions."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA = ROOT / "csrc" / "cuda"
ABI = ("srem_cuda_similarity", "srem_cuda_stats_panel", "srem_cuda_forward_panel", "srem_cuda_backward_panel",
       "srem_cuda_gemm", "srem_cuda_sync")  # fmt: skip


@pytest.fixture(scope="module")
def build():
    """setup.py's helpers (everything before its setup() call)."""
    src = (ROOT / "setup.py").read_text().split("\nsetup(")[0]
    ns: dict = {"__file__": str(ROOT / "setup.py")}
    exec(compile(src, str(ROOT / "setup.py"), "exec"), ns)
    return ns


@pytest.fixture(scope="module")
def nvcc(build):
    path = build["find_nvcc"]()
    if path is None:
        pytest.skip("nvcc not found")
    return path


def test_cuda_sources_compile_with_nvcc(build, nvcc, tmp_path):
    obj = tmp_path / "srem_cuda.o"
    flags = build["NVCC_FLAGS"] + ["-gencode=arch=compute_90,code=sm_90", f"-I{CUDA}"]
    res = subprocess.run([nvcc, *flags, "-c", str(CUDA / "srem_cuda.cu"), "-o", str(obj)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    nm = shutil.which("nm")
    if nm:
        symbols = subprocess.run([nm, "-g", "--defined-only", str(obj)], capture_output=True, text=True).stdout
        for name in ABI:
            assert re.search(rf"\bT {name}\b", symbols), f"{name} is not exported"


def test_cuda_archs_come_from_the_environment(build, monkeypatch):
    monkeypatch.delenv("SREM_CUDA_ARCHS", raising=False)
    assert build["cuda_archs"]() == ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
    monkeypatch.setenv("SREM_CUDA_ARCHS", "90a")
    assert build["cuda_archs"]() == ["-gencode=arch=compute_90a,code=sm_90a"]


def test_cuda_module_reports_errors_as_exceptions(nvcc):
    try:
        from srem_kernels.backends import _srem_cuda as C
    except ImportError:
        pytest.fail("nvcc is here but srem_kernels.backends._srem_cuda was not built (see the install log)")
    # An unknown dtype code on a GPU machine; here, without a CUDA driver, the runtime's message.
    with pytest.raises(RuntimeError, match="srem_kernels CUDA backend: similarity: "):
        C.similarity(0, 1, 1, 0, 1, 1, 99, 1, 1, 1, 0, 1, 0, 0)


def test_cpu_module_was_built_where_a_compiler_exists():
    """tests/test_cpu.py skips without the module; on a machine with a C++ compiler a missing
    module is a broken build, not a reason to skip."""
    import shutil

    import srem_kernels

    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler on this machine")
    status = srem_kernels.backends()["cpu"]
    assert status.available, status.reason


def test_sources_compile_one_process_each_and_objects_keep_their_order(build):
    """compile_in_parallel: one compile call per source (run side by side), the same arguments to
    each, the objects in the sources' order whatever finishes first; wrapping twice changes nothing."""
    import threading
    import time

    calls = []

    class Compiler:
        def compile(self, sources, output_dir=None, **kwargs):
            time.sleep(0.05 if sources[0] == "a.cpp" else 0.0)  # the first source finishes last
            calls.append((tuple(sources), output_dir, kwargs, threading.get_ident()))
            return [s.replace(".cpp", ".o") for s in sources]

    c = Compiler()
    build["compile_in_parallel"](c)
    build["compile_in_parallel"](c)
    assert c.compile(["a.cpp", "b.cpp", "c.cpp"], "out", depends=["h"]) == ["a.o", "b.o", "c.o"]
    assert sorted(s for s, *_ in calls) == [("a.cpp",), ("b.cpp",), ("c.cpp",)]
    assert all(d == "out" and kw == {"depends": ["h"]} for _, d, kw, _ in calls)
    if (os.cpu_count() or 1) > 1:  # side by side: the slow first source finished last
        assert calls[-1][0] == ("a.cpp",)
    assert c.compile(["x.cpp"]) == ["x.o"]

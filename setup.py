"""Build script. Package metadata lives in pyproject.toml; this file adds the compiled modules.

Compiled modules (csrc/) are optional: one that cannot build on this machine is skipped with a
one-line notice, and its backend reports itself unavailable in srem_kernels.backends().

- srem_kernels.backends._srem_cpu  (csrc/cpu/): C++17 with OpenMP (at run time it shares the libgomp that
  torch loads), built everywhere. SREM_CPU_ARCH sets -march (default "native": the kernels are
  built for the machine that installs them).
- srem_kernels.backends._srem_cpu_node (csrc/cpu/node.cpp and the same kernels): the cpu backend's
  short eager call as one C++ autograd node, against the installed torch's C++ API (rebuilt with
  torch; skipped with a notice where its headers are missing — the backend then runs that call
  from Python).
- srem_kernels.backends._srem_cuda (csrc/cuda/): built wherever nvcc is found (on PATH, or CUDA_HOME/bin).
  The .cu files are compiled by nvcc through ninja (in parallel) for the architectures in
  SREM_CUDA_ARCHS (default "80;90"), then linked with the pybind11 binding against the CUDA
  runtime only (static cudart): no torch CUDA libraries, so it builds with a CPU-only torch too.
"""

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _pybind11_include():
    try:
        import pybind11
    except ImportError:
        return None
    return pybind11.get_include()


def find_nvcc():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def cuda_archs():
    """SREM_CUDA_ARCHS, e.g. "80;90" or "90a": one -gencode per architecture, SASS for each."""
    archs = [a for a in re.split(r"[;, ]+", os.environ.get("SREM_CUDA_ARCHS", "80;90")) if a]
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]


def nvcc_library_dirs(nvcc):
    """The -L directories nvcc itself links with (it knows its toolkit layout)."""
    out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                         capture_output=True, text=True).stderr  # fmt: skip
    dirs = []
    for line in out.splitlines():
        if "LIBRARIES=" in line:
            dirs += [d for d in re.findall(r'-L"?([^"\s]+)"?', line) if not d.rstrip("/").endswith("stubs")]
    return dirs


NVCC_FLAGS = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC", "-lineinfo"]


def compile_cuda(nvcc, sources, include_dirs, build_dir):
    """nvcc each .cu to an object, through ninja when it is there (parallel), else one by one."""
    build_dir = Path(build_dir).resolve()  # ninja runs in build_dir: absolute paths throughout
    build_dir.mkdir(parents=True, exist_ok=True)
    flags = NVCC_FLAGS + cuda_archs() + [f"-I{d}" for d in include_dirs]
    objects = [str(build_dir / (Path(s).stem + ".o")) for s in sources]
    ninja = shutil.which("ninja")
    try:
        import ninja as ninja_pkg  # the pip package ships the binary

        ninja = ninja or str(Path(ninja_pkg.BIN_DIR) / "ninja")
    except ImportError:
        pass
    if ninja:
        rules = [f"rule nvcc\n  command = {nvcc} {' '.join(flags)} -c $in -o $out\n  description = nvcc $in\n"]
        rules += [f"build {o}: nvcc {Path(s).resolve()}\n" for s, o in zip(sources, objects)]
        (build_dir / "build.ninja").write_text("\n".join(rules))
        subprocess.run([ninja, "-C", str(build_dir)], check=True)
    else:
        for s, o in zip(sources, objects):
            subprocess.run([nvcc, *flags, "-c", s, "-o", o], check=True)
    return objects


def compile_in_parallel(compiler):
    """The compiler's sources one process each, os.cpu_count() at a time (distutils compiles an
    extension's sources one after the other: the cpu modules' 8 C++ files took ~100 s of a
    clean build on a 2-core machine)."""
    if getattr(compiler, "_srem_parallel", False):
        return
    one_by_one = compiler.compile

    def compile(sources, *args, **kwargs):
        if len(sources) < 2:
            return one_by_one(sources, *args, **kwargs)
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            done = list(pool.map(lambda source: one_by_one([source], *args, **kwargs), sources))
        return [obj for objects in done for obj in objects]

    compiler.compile, compiler._srem_parallel = compile, True


class OptionalBuildExt(build_ext):
    """build_ext that skips a module it cannot build instead of failing the install; .cu sources
    go through nvcc (compile_cuda) and the objects join the host link; C++ sources compile in
    parallel (compile_in_parallel)."""

    def build_extension(self, ext):
        compile_in_parallel(self.compiler)
        try:
            if getattr(ext, "objects_of", None):  # another module's objects, compiled before this one
                objects = self.compiler.object_filenames(ext.objects_of, output_dir=self.build_temp)
                missing = [o for o in objects if not os.path.exists(o)]
                if missing:
                    raise RuntimeError(f"{missing[0]} is missing (the module that compiles it was skipped)")
                ext.extra_objects = objects
            cu = [s for s in ext.sources if s.endswith(".cu")]
            if cu:
                nvcc = find_nvcc()
                if nvcc is None:
                    raise RuntimeError("nvcc not found (put it on PATH or set CUDA_HOME)")
                build_dir = Path(self.build_temp) / "cuda"
                ext.extra_objects = compile_cuda(nvcc, cu, ext.include_dirs, build_dir)
                ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
                ext.library_dirs = nvcc_library_dirs(nvcc)
            super().build_extension(ext)
        except Exception as err:  # noqa: BLE001 - any compiler or toolchain failure
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            print(f"srem-kernels: skipping optional module {ext.name}: {first}")
            self.skipped = getattr(self, "skipped", set()) | {ext.name}

    def _built(self):
        return [e for e in self.extensions if e.name not in getattr(self, "skipped", set())]

    # An editable / --inplace install copies and lists the modules that were built, not the skipped.
    def copy_extensions_to_source(self):
        every, self.extensions = self.extensions, self._built()
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = every

    def get_outputs(self):
        every, self.extensions = self.extensions, self._built()
        try:
            return super().get_outputs()
        finally:
            self.extensions = every


CPU_KERNELS = [f"csrc/cpu/{name}.cpp" for name in ("stats", "coupled", "backward", "vecmath")]
CPU_HEADERS = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "csrc" / "cpu").glob("*.h"))]


def cpu_flags(march):
    """The CPU modules' compile flags: no -ffast-math, no FMA contraction (csrc/cpu/terms.h)."""
    return ["-std=c++17", "-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off",
            f"-march={march}", "-fvisibility=hidden", "-pthread"]  # fmt: skip


def cpu_node_extension(march):
    """srem_kernels.backends._srem_cpu_node (csrc/cpu/node.cpp with the kernels): the cpu backend's
    short eager call as one C++ autograd node, built against the installed torch's C++ API (the
    one module that links libtorch; rebuild it with torch). None (with a notice) where torch's
    headers are not there: cpu_eager.py's Python Function then runs the same steps."""
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as err:
        print(f"srem-kernels: skipping optional module srem_kernels.backends._srem_cpu_node: {err}")
        return None
    ext = Extension(
        "srem_kernels.backends._srem_cpu_node",
        sources=["csrc/cpu/glue.cpp", "csrc/cpu/node.cpp"],  # glue.cpp again: its bindings' pybind11 is torch's here
        depends=CPU_HEADERS + CPU_KERNELS,  # relinked when a kernel changes
        include_dirs=cpp_extension.include_paths(),  # torch's own pybind11 among them
        library_dirs=cpp_extension.library_paths(),
        libraries=["c10", "torch", "torch_cpu", "torch_python"],
        define_macros=[("TORCH_EXTENSION_NAME", "_srem_cpu_node"), ("TORCH_API_INCLUDE_EXTENSION_H", None),
                       ("_GLIBCXX_USE_CXX11_ABI", str(int(torch._C._GLIBCXX_USE_CXX11_ABI)))],  # fmt: skip
        language="c++",
        extra_compile_args=cpu_flags(march) + ["-std=c++20", "-g0"],  # torch 2.13's headers'; the last flag wins
        extra_link_args=["-pthread", "-fopenmp"],
    )
    # the kernels' objects as _srem_cpu compiled them (built first): the node runs the same machine code
    ext.objects_of = CPU_KERNELS
    return ext


def ext_modules():
    inc = _pybind11_include()
    if inc is None:
        print("srem-kernels: skipping the csrc/ modules: pybind11 is not installed")
        return []
    march = os.environ.get("SREM_CPU_ARCH", "native")
    cpu = Extension(
        "srem_kernels.backends._srem_cpu",
        sources=CPU_KERNELS + ["csrc/cpu/glue.cpp", "csrc/cpu/module.cpp"],
        depends=CPU_HEADERS,
        include_dirs=[inc],
        language="c++",
        extra_compile_args=cpu_flags(march),
        extra_link_args=["-pthread", "-fopenmp"],
    )
    mods = [cpu]
    node = cpu_node_extension(march)
    if node is not None:
        mods.append(node)
    if find_nvcc() is not None:
        mods.append(
            Extension(
                "srem_kernels.backends._srem_cuda",
                sources=["csrc/cuda/srem_cuda.cu", "csrc/cuda/bind.cpp"],
                include_dirs=[inc, str(ROOT / "csrc" / "cuda")],
                language="c++",
                extra_compile_args=["-std=c++17", "-O2", "-fvisibility=hidden"],
                libraries=["cudart_static", "dl", "rt", "pthread"],
            )
        )
    else:
        print("srem-kernels: skipping optional module srem_kernels.backends._srem_cuda: nvcc not found")
    return mods


setup(
    packages=find_packages(include=["srem_kernels", "srem_kernels.*", "python_ref", "python_ref.*"]),
    ext_modules=ext_modules(),
    cmdclass={"build_ext": OptionalBuildExt},
)

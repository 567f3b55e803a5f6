"""The Triton kernels compile for sm_90 on this CPU-only machine (scripts/triton_aot_check.py,
Triton's bundled ptxas): what the interpreter accepts but a GPU would reject fails here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[1]


def test_kernels_compile_for_sm90():
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this Triton has no bundled ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "scripts/triton_aot_check.py", "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(" ok (") >= 8 and "specialisations compiled" in proc.stdout, proc.stdout

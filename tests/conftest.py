import os

import pytest
import torch

# Triton kernels run on CPU tensors through the interpreter when there is no GPU; it is read
# when a kernel is defined, so before any kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from srem_kernels import _alloc  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def poison_kernel_outputs(monkeypatch):
    """Every buffer a fused backend allocates is NaN (or -1) until its kernel writes it."""
    monkeypatch.setattr(_alloc, "POISON", True)

"""The backends: interchangeable implementations of the SREM loss behind one contract.

    reference.py   python_ref as a backend: plain PyTorch, materialises B×B (the oracle)
    fused.py       the contract of the fused backends (Kernels: the B×B work in a few passes),
                   their autograd and torch.compile custom ops
    glue.py        everything after the kernels that is only B-vectors, one routine per device
                   class (csrc/cpu/glue.cpp, triton/glue.py), and the value checks
    dense.py       the fused contract executed densely in PyTorch (the tests' executable
                   contract, and the reference's row ranges in the distributed loss)
    panels.py      row ranges of the backends that sweep fp32 panels of S (cpu, cuda)
    cpu.py         csrc/cpu/ (C++, OpenMP): materialised or streaming
    cuda.py        csrc/cuda/ (CUDA C++)
    triton/        Triton kernels: tiles, passes, merge, the Python side (kernels.py), glue

srem_kernels/registry.py lists them and loads one when it is asked for; nothing here imports the
registry or the API above it (errors come from srem_kernels/errors.py). The API makes this package
callable (srem_kernels/__init__.py): `srem_kernels.backends()` is the registry's listing, every
backend, whether it runs here, why not.
"""

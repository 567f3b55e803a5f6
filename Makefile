# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install
# everything first. torch is installed on its own, pinned, before anything that depends on it:
# on this machine kind `torch==2.13.0` is a CPU wheel on local disk, while an unpinned torch
# pulls gigabytes of CUDA packages. Override for another machine: make test TORCH=torch==2.11.0
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.srem-installed

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): setup.py pyproject.toml $(wildcard csrc/*/*)  # csrc/: the compiled modules
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet setuptools wheel pybind11 ninja numpy
	$(PY) -m pip install --quiet --no-build-isolation -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m srem_kernels.demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info

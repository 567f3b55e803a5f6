# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install
# everything first. torch is installed on its own, pinned, before anything that depends on it:
# on this machine kind `torch==2.13.0` is a CPU wheel on local disk, while an unpinned torch
# pulls gigabytes of CUDA packages. Override for another machine: make test TORCH=torch==2.11.0
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.srem-installed

.PHONY: install demo test bench bench-full bench-micro gpu-check clean

install: $(STAMP)

$(STAMP): setup.py pyproject.toml $(wildcard csrc/*/*)  # csrc/: the compiled modules
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet setuptools wheel pybind11 ninja numpy
	$(PY) -m pip install --quiet --no-build-isolation -e ".[dev]"
	touch $(STAMP)

# The demo trains SREM on the synthetic benchmark at 40 % noise (a few minutes on a CPU), replacing
# its own last run (--overwrite);
# the loss-only demo is python -m srem_kernels.demo.
demo: $(STAMP)
	$(PY) -m srem_kernels.train --dataset synthetic --noise 0.4 --method srem --seed 0 --output runs/demo --overwrite

test: $(STAMP)
	$(PY) -m pytest -q

# Benchmarks (bench/): the quick CPU sweep and one training step; bench/RESULTS.md and plots.
bench: $(STAMP)
	$(PY) -m bench --quick
	$(PY) -m bench.train_step
	$(PY) -m bench.report

# The full sweep for this machine's device (on a GPU: B up to 256k, D 256 and 1024, fp32 and bf16).
bench-full: $(STAMP)
	$(PY) -m bench
	$(PY) -m bench.train_step
	$(PY) -m bench.report

bench-micro: $(STAMP)
	$(PY) -m pytest -q tests/test_bench.py -k micro --benchmark-enable

# On a lent GPU machine (torch, Triton, nvcc, compute-sanitizer in its image; no network): the
# budgeted tiers of bench/gpu_check/, results and logs in $(OUT). ARGS: e.g. --budget 300, --dry-run
gpu-check:
	OUT=$${OUT:-./gpu-check-out} bash scripts/gpu_check.sh $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info

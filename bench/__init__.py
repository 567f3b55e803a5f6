"""The srem-kernels benchmark: `python -m bench` (see bench/run.py)."""

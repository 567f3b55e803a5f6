#!/usr/bin/env bash
# The GPU check (make gpu-check) for a lent GPU machine without network (its image has torch with
# CUDA, Triton, nvcc, compute-sanitizer, pybind11): six tiers under one wall-clock budget, results
# and logs under $OUT (default ./gpu-check-out), a short table at the end. The tiers and files are
# described in bench/gpu_check/__init__.py.
#   scripts/gpu_check.sh [--budget 360] [--only selfcheck env correctness ...] [--cap speed=120]
#   scripts/gpu_check.sh --dry-run      # every tier at tiny sizes on this CPU (Triton's interpreter)
#   PY=/path/to/python scripts/gpu_check.sh --dry-run   # another interpreter (default below)
# Exit status 1 when a row failed. On a copy without .git, pass the commit: SREM_COMMIT=<hash>.
set -uo pipefail
cd "$(dirname "$0")/.."
# the interpreter of every tier: $PY, else this checkout's .venv (make install), else python3 on PATH (the device's image)
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY="$PWD/.venv/bin/python"; else PY="$(command -v python3 || command -v python)"; fi
fi
"$PY" -c "import torch" 2>/dev/null || { echo "gpu_check.sh: $PY cannot import torch; set PY to the interpreter that has it" >&2; exit 2; }
export SREM_CUDA_ARCHS="${SREM_CUDA_ARCHS:-90}" PYTHONUNBUFFERED=1
exec "$PY" -m bench.gpu_check --out "${OUT:-./gpu-check-out}" --python "$PY" "$@"

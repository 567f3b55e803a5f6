#!/usr/bin/env bash
# The one-command GPU check (make gpu-check) for a lent GPU machine without network: its image has
# torch with CUDA, Triton, nvcc and pybind11. Installs this checkout in place, runs the GPU tests
# (and the interpreter suite of the triton backend, now on CUDA tensors) and a short benchmark;
# logs and the CSV go to $OUT (default ./gpu-check-out). Exit status: the tests'.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu-check-out}"
PY="${PY:-$(command -v python || command -v python3)}"
mkdir -p "$OUT"
unset TRITON_INTERPRET
{
    date -u
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo "${SREM_COMMIT:-unknown}")"
    nvidia-smi || true
    "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
"$PY" -m pip install --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 || { echo "install failed, see $OUT/install.log"; tail -20 "$OUT/install.log"; }
"$PY" -m pytest -q -ra -p no:cacheprovider -m gpu 2>&1 | tee "$OUT/pytest_gpu.log"
rc=${PIPESTATUS[0]}
"$PY" -m pytest -q -ra -p no:cacheprovider tests/test_triton.py 2>&1 | tee "$OUT/pytest_triton_on_cuda.log"
rc2=${PIPESTATUS[0]}
# a short sweep of the benchmark (bench/): every backend and strategy vs the matmul floor, bf16, D=1024
"$PY" -m bench --batch ${BENCH_BATCH:-4096 16384 65536} --dim 1024 --dtype bf16 --repeats 5 --out "$OUT" 2>&1 | tee "$OUT/bench.log"
echo "gpu tests rc=$rc, triton suite on cuda rc=$rc2; logs in $OUT"
exit $(( rc != 0 ? rc : rc2 ))

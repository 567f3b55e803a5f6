"""The GPU check (scripts/gpu_check.sh, make gpu-check): what one short call on a lent GPU machine
learns, in tiers under one wall-clock budget (default 360 s, --budget). Each tier skips itself
when less than its estimate is left, stops at its cap, runs in processes of its own (a failure
does not stop the next tier) and appends its rows to $OUT/results.csv as it goes; the run ends
with a short table (the device's reply shows the tail of the output).

  1. env          versions (driver, nvcc, torch, Triton, compute-sanitizer), the install
                  (SREM_CUDA_ARCHS=90: one architecture), backends, registers of the CUDA kernels
  2. correctness  triton (both strategies) and cuda (own and torch GEMMs) through the public API,
                  B ∈ {2, 37, 130, 4099}, D ∈ {1, 64, 1024}, fp32/bf16, against the fp64 reference
                  with SPEC's tolerances, outputs poisoned, two runs bitwise equal (correctness.py)
  3. sanitizer    compute-sanitizer memcheck (cuda, triton) and racecheck (cuda) over tiny.py
  4. speed        B=16384, D=1024, bf16 against the three matmuls; cuda's own kernels against
                  torch.mm per panel; B=65536 streaming; the largest streaming B (speed.py)
  5. pytest       `pytest -m gpu` with whatever budget is left

--dry-run runs every tier on this CPU at tiny sizes under Triton's interpreter (the cpu backend
standing in for cuda, no install, no sanitizer, tier 5 a tiny real pytest run plus the -m gpu
collection): the plumbing, tested in `make test` (tests/test_gpu_check.py).

Files under $OUT, at most 8, flat (what a device call brings back): results.csv (every row),
table.txt, log.txt (every process's output), env.txt, install.log, sanitizer.txt, speed.csv
(bench/results' format: append it to bench/results/<device>.csv for bench/report.py), pytest.log.
"""

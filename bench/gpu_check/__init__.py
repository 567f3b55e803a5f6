"""The GPU check (scripts/gpu_check.sh, make gpu-check): what one short call on a lent GPU machine
learns, in tiers under one wall-clock budget (default 360 s, --budget). Each tier skips itself
when less than its estimate is left, stops at its cap (selfcheck 50 s, env 90, correctness 80,
sanitizer 60, speed 80: the default budget; pytest takes what is left), runs in processes of its
own (a failure or a poisoned CUDA context does not stop the next) and appends its rows to
$OUT/results.csv as it goes; the run ends with a short table (the device's reply shows the tail of
the output).

  1. selfcheck    srem_kernels.selfcheck of triton (no build needed) on the device, every case
                  against the fp64 reference, sizes that are multiples of 16 first, bf16 first;
                  its reports into env.txt; the first-use part's cost once compiled (selfcheck.py)
  2. env          versions (driver, nvcc, torch, Triton, compute-sanitizer), `pip install -v -e .`
                  (SREM_CUDA_ARCHS=90: one architecture; a module setup.py skipped is a FAIL with
                  its compiler error), backends, registers of the CUDA module's kernels (cuobjdump)
  3. correctness  the self-check of cuda (built by tier 2), then the GPU tests that tell most, most
                  telling first, one pytest process per file: test_gpu_triton.py's TF32,
                  matches_reference and determinism tests (3/4 of the tier), then
                  test_gpu_cuda.py's matches_reference, column panel = transposed row panel,
                  determinism (driver.CORRECTNESS)
  4. sanitizer    compute-sanitizer memcheck (cuda, triton) and racecheck (cuda) over tiny.py
  5. speed        one process per backend (triton, cuda, reference), the three matmuls raced in
                  each: B=16384, D=1024, bf16; cuda's own kernels against torch.mm per panel;
                  host syncs; B=65536 streaming; the largest streaming B (speed.py)
  6. pytest       every other GPU test (`-m gpu` less tier 3's), one process per file:
                  test_gpu_triton.py, test_gpu_cuda.py, then the rest, in what is left

A pytest run the budget cuts off is INFO "partial n/N"; a worker killed at its deadline a SKIP.
--dry-run runs every tier on this CPU at tiny sizes under Triton's interpreter (no install, no
sanitizer; tier 1 triton's fp32 self-check of one shape class; tier 3 the cpu backend's self-check
and the same checks' CPU variants from test_triton.py and test_cpu.py, the cpu backend standing in
for cuda; tier 6 the device's commands, every test skipped without a GPU):
the plumbing, tested in `make test` (tests/test_gpu_check.py).

Files under $OUT, at most 8, flat (what a device call brings back): results.csv (every row),
table.txt, log.txt (every process's output), env.txt (with the self-check's reports),
install.log, sanitizer.txt, speed.csv (bench/results' format, one run id: append it to
bench/results/<device>.csv for bench/report.py), pytest.log (tiers 3 and 6).
"""

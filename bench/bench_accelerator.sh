#!/usr/bin/env bash
# One accelerator benchmark call (at most 10 minutes): see bench/bench_accelerator.py.
#
#   bash bench/bench_accelerator.sh                  # on a GPU: full sizes, JSON in $OUT or bench/
#   bash bench/bench_accelerator.sh --smoke          # tiny sizes, runs on a CPU
#   SCORE_SDE_PYTORCH=/path/to/score_sde_pytorch bash bench/bench_accelerator.sh   # + torch
#
# Prints `BENCH section=... key=value ...` lines; writes every record to
# ${OUT:-bench}/accelerator_results.json. Extra arguments go to bench_accelerator.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# XLA: let the allocator take what it needs (the DiT batch search reads the device's limit)
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
out_dir="${OUT:-bench}"
mkdir -p "$out_dir"
json="$out_dir/accelerator_results.json"
# 570 s hard stop (the call limit is 600 s); sections stop starting after 480 s. The CPU smoke
# test raises both (BENCH_ACCELERATOR_TIMEOUT, BENCH_ACCELERATOR_BUDGET): compiling on a loaded CPU
timeout --signal=TERM --kill-after=15 "${BENCH_ACCELERATOR_TIMEOUT:-570}" \
    python bench/bench_accelerator.py --budget-s "${BENCH_ACCELERATOR_BUDGET:-480}" \
    --json "$json" "$@"
echo "BENCH_JSON $json"

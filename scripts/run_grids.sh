#!/usr/bin/env bash
# Runs the result grids behind docs/results.md and docs/comparison.md, in order. Resumable:
# start it again after an interruption; start it twice to use two workers (each with one
# torch thread) -- runs are claimed with lock files.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for grid in lenet300_fmnist quant_lenet300_fmnist lenet5_fmnist quant_lenet5_fmnist tune_dpp; do
    dpp compare "configs/grids/$grid.toml" --out "results/$grid.md"
done

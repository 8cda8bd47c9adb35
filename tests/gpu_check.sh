#!/usr/bin/env bash
# The GPU checks of one session with a lent device, in one short run (torch, numpy, pytest and
# the small hydra-core/omegaconf/antlr4 wheels are enough: no Ray, MLflow or Optuna there):
#   1. every CUDA test (cells, packs, noise, trainer), 2. the cell benchmark on CUDA,
#   3. odyssey bench study on CUDA (single / pack / nn.LSTM, and the full-arm estimate).
# Usage (repository root): bash tests/gpu_check.sh [TRIALS] [EPOCHS]   -> writes $OUT/ (or ./gpu_check/)
set -uo pipefail
OUT=${OUT:-gpu_check}; mkdir -p "$OUT"
TRIALS=${1:-64}; EPOCHS=${2:-1}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} ODYSSEY_JSB_DIR=${ODYSSEY_JSB_DIR:-$PWD/../shared/data/jsb}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -m pytest -q -p no:cacheprovider tests/test_cells.py tests/test_packs.py tests/test_train.py \
  -k "cuda or gpu" -m "not slow" 2>&1 | tail -15 | tee "$OUT/tests.txt"
python -m odyssey.cli bench cells --devices cuda --variants vanilla cifg fgr slstm indrnn mingru minlstm --batches 1 32 2>&1 | tee "$OUT/cells.txt"
python -m odyssey.cli bench study --devices cuda --arms pack nn.LSTM --trials "$TRIALS" --epochs "$EPOCHS" --repeats 2 \
  2>&1 | tee "$OUT/study_pack.txt"
python -m odyssey.cli bench study --devices cuda --arms single --trials 4 --epochs 1 --repeats 1 2>&1 | tee "$OUT/study_single.txt"

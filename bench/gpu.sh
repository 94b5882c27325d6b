#!/usr/bin/env bash
# One command on a GPU machine (a few minutes): the loop/ensemble table, then the optimizer and
# scaling figures on CUDA.   usage: bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv || true
$PY bench/bench_gpu.py --device cuda
$PY bench/bench_scaling.py --device cuda --steps 200 --threads 0

#!/usr/bin/env bash
# One command on a GPU machine (a few minutes): batched sweeps (BatchedOptimizer at 8, 32, 128
# members vs separate runs), the loop/ensemble table, then the scaling figures on CUDA.
#   usage: bash bench/gpu.sh            (CUDA)
#          bash bench/gpu.sh --quick    (a smoke run of the same commands on CPU, tiny sizes)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [[ "${1:-}" == "--quick" ]]; then
  $PY bench/bench_gpu.py --device cpu --quick --sections batched
  $PY bench/bench_gpu.py --device cpu --quick --sections trainer
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv || true
# batched first: its own command, so a failure in a later section cannot cost its figures
$PY bench/bench_gpu.py --device cuda --sections batched
$PY bench/bench_gpu.py --device cuda --sections trainer
$PY bench/bench_scaling.py --device cuda --steps 200 --threads 0

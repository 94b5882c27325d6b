#!/usr/bin/env bash
# One command on a GPU machine. Modes:
#   bash bench/gpu.sh              timings (a few minutes): batched sweeps (BatchedOptimizer at 8, 32,
#                                  128 members vs separate runs; the pipeline's launcher=batched path
#                                  vs separate Trainers), the loop/ensemble table, scaling on CUDA
#   bash bench/gpu.sh reproduce    table 2, table 3 (both phase 2s) and the fair grids, full scale,
#                                  every multirun through launcher=batched on this GPU (hours); the
#                                  wall time of each command is printed as `wall <s> <what>`
#   bash bench/gpu.sh --quick      a smoke run of the timing commands on CPU, tiny sizes
#   bash bench/gpu.sh reproduce --dry-run   print the reproduce commands, run nothing
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
timed() {  # timed <label> <command...>: run it, then print its wall time
  local label=$1 t0 rc=0
  shift
  t0=$(date +%s)
  "$@" || rc=$?
  echo "wall $(( $(date +%s) - t0 ))s $label (exit $rc)"
  return $rc
}
case "${1:-}" in
--quick)
  $PY bench/bench_gpu.py --device cpu --quick --sections batched
  $PY bench/bench_gpu.py --device cpu --quick --sections trainer
  $PY bench/bench_ensemble.py --device cpu --configs tiny --seeds 2 --rounds 1 --steps 20 \
    --variants separate,sweep,sweep_vmap
  exit 0
  ;;
reproduce)
  DRY=()
  [[ "${2:-}" == "--dry-run" ]] && DRY=(--dry-run)
  nvidia-smi --query-gpu=name,memory.total --format=csv || true
  # one process at a time owns the GPU: each sweep's groups train one after another, every
  # group as one batch (jobs differing only in optimizer values and seeds); the seeds of a
  # table-2 job are one batch of 5
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
  timed "table2+table5" $PY scripts/reproduce.py table2 table5 --scale full --launcher batched "${DRY[@]}" \
    -- trainer.device=cuda
  timed "table3" $PY scripts/reproduce.py table3 --scale full --launcher batched "${DRY[@]}" \
    -- trainer.device=cuda
  timed "fair grids" $PY scripts/fair.py --scale full --models mlp,transformer --launcher batched \
    "${DRY[@]}" -- trainer.device=cuda
  exit 0
  ;;
esac
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv || true
# batched first: its own commands, so a failure in a later section cannot cost its figures
$PY bench/bench_gpu.py --device cuda --sections batched
# the pipeline's launcher=batched path (Trainers, files, checkpoints) vs separate Trainers
$PY bench/bench_ensemble.py --device cuda --threads 0 --configs default --seeds 8 --rounds 3 \
  --steps 200 --variants separate,sweep,sweep_vmap
$PY bench/bench_ensemble.py --device cuda --threads 0 --configs default --seeds 32 --rounds 2 \
  --steps 200 --variants sweep,sweep_vmap
$PY bench/bench_gpu.py --device cuda --sections trainer
$PY bench/bench_scaling.py --device cuda --steps 200 --threads 0
$PY bench/bench_probe_memory.py --device cuda --widths 4096,8192 --threads 0

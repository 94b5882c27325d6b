#!/usr/bin/env bash
# The a+b mod 97 (40% train, MLP) rows of table 2 as measured on a 2-core CPU, in two streams.
# Budgets are cut to fit: AdamW wd 1.0 and GROKtimizer 6,000 steps; the filters 3,000; the
# plain-CDM / plain-GD phase 2 ablation and the tuned AdamW 3 seeds. A run that does not reach
# 99% validation inside its budget is counted as "not reached" in the table.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
D=${D:-outputs/multiruns/table2_grokking/full}
run() { .venv/bin/python train.py -m +experiment=table2_grokking dataset=modular_add "$@" hydra.sweep.dir="$D"; }
stream_a() {
  run method=groktimizer,adamw trainer.max_steps=6000
  run method=groktimizer_cdm,biphasic_gd trainer.max_steps=2000 'trainer.seeds=[0,1,2]'
}
stream_b() {
  run method=adam_ema,adam_ma trainer.max_steps=3000
  run method=adamw_tuned optimizer.weight_decay=5.0 trainer.max_steps=6000 'trainer.seeds=[0,1,2]'
}
case "${1:-both}" in
  a) stream_a ;;
  b) stream_b ;;
  both) stream_a & stream_b & wait ;;
esac

#!/bin/bash
# Probe batch A (auto default and plain CDM auto). Run from the repository root.
set -x
export OMP_NUM_THREADS=1
P=".venv/bin/python scripts/probe_auto.py"
O=outputs/results/autotune
$P --settings mlp_add tf2ln_mul digits --methods auto --seeds 0 1 --after 300 --out $O/probe_auto.jsonl
$P --settings mlp_add --methods cdm_auto --seeds 0 1 2 --after 300 --out $O/probe_cdm_auto.jsonl
$P --settings tf1_add --methods auto --seeds 0 --after 300 --out $O/probe_auto.jsonl

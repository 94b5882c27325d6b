#!/bin/bash
# Probe batch C: digits (low-sample, large init, MSE) and the automatic (rho) switch.
set -x
export OMP_NUM_THREADS=1
P=".venv/bin/python scripts/probe_auto.py"
O=outputs/results/autotune
$P --settings digits --methods auto old_default adamw1 --seeds 0 --out $O/probe_digits.jsonl
$P --settings mlp_add --methods auto_rho --seeds 0 --after 300 --out $O/probe_rho.jsonl

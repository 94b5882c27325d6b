# Two commands do all the set-up on a fresh machine:
#   make train   # a GROKtimizer run on the embedded default task (CPU is fine, no account)
#   make test    # the test suite
# Both create .venv on first use. torch is pinned to a release whose Linux wheel on PyPI is the
# CUDA build (GPU users get CUDA); machines with a local CPU wheel of it take that in seconds.
# Override with e.g.  make train TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv train test lint format bench clean-outputs \
	table1 table2 table3 table4 table5 robustness robustness-cpu panel table_fair reproduce tables fair

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[pipeline,dev]"
	touch $(STAMP)

train: $(STAMP)
	$(PY) train.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# CPU benchmarks (side-by-side ratios; tens of minutes on a shared 2-core machine); see bench/README.md
bench: $(STAMP)
	$(PY) bench/bench_optimizer.py
	$(PY) bench/bench_loop.py
	$(PY) bench/bench_ensemble.py
	$(PY) bench/bench_scaling.py
	$(PY) bench/bench_probe_memory.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests train.py bench scripts
	$(VENV)/bin/ruff format --check src tests train.py bench scripts

format: $(STAMP)
	$(VENV)/bin/ruff format src tests train.py bench scripts
	$(VENV)/bin/ruff check --fix src tests train.py bench scripts

# Paper tables: each runs its Hydra multirun (resuming unfinished jobs) and writes Markdown / CSV /
# PNG. SCALE=smoke (default; minutes on a 2-core CPU, outputs/results/smoke/) or SCALE=full (the
# real tables, outputs/results/). LAUNCHER=joblib runs jobs in parallel; MNIST=/path adds the
# MNIST rows to table 4. `make tables` only rebuilds the tables from existing sweep outputs.
SCALE ?= smoke
REPRODUCE = $(PY) scripts/reproduce.py --scale $(SCALE) $(if $(LAUNCHER),--launcher $(LAUNCHER)) \
	$(if $(MNIST),--mnist $(MNIST))

table1 table2 table3 table4 table5 robustness: $(STAMP)
	$(REPRODUCE) $@

reproduce: $(STAMP)
	$(REPRODUCE) all

# The robustness suite cut for a 2-core CPU (scripts/robustness.py: GROKtimizer on all 11
# settings, then AdamW to 3x and Adam+EMA to 2x its median t_gen99), then its table.
ROBUST_CPU := $(PY) scripts/robustness.py --out outputs/multiruns/robustness/cpu --workers 2
robustness-cpu: $(STAMP)
	$(ROBUST_CPU)
	$(PY) -m groktimizer.analysis.tables outputs/multiruns/robustness/cpu --table robustness \
		--out outputs/results/cpu/robustness --command "$(ROBUST_CPU:$(PY)=python)"

# The regression panel (scripts/panel.py): the default on 23 setups outside the suite, one seed,
# against the committed reference (outputs/results/cpu/panel/panel.json); exit 1 on a regression.
panel: $(STAMP)
	$(PY) scripts/panel.py --workers 2

tables: $(STAMP)
	$(REPRODUCE) --build-only all

# Fair comparison (issue 9): tune each method's 8-point grid on seeds 0-2, select on those seeds,
# report the reference and tuned settings on seeds 3-7, build outputs/results/[smoke/|cpu/]fair/<model>.
# SCALE=cpu: the cut that fits a 2-core CPU (MLP, 4-point grids, tuning seed 0, report seeds 3-5).
# MODELS=mlp,transformer (default both); LAUNCHER=joblib runs the tuning jobs in parallel.
MODELS ?= mlp,transformer
fair: $(STAMP)
	$(PY) scripts/fair.py --scale $(SCALE) --models $(MODELS) $(if $(LAUNCHER),--launcher $(LAUNCHER))

# tailbench: `make test` and `make benchmark` are the whole set-up on a fresh clone.
PY      := .venv/bin/python
VENV    := .venv/.installed
GRID    ?= full
PROFILE ?= quick
DATASET ?= auto
ARGS    ?=
WORKERS ?= auto
STORE   ?= runs
MLFLOW_URI ?= sqlite:///$(STORE)/mlflow.db
OPTUNA_STORAGE ?= $(STORE)/optuna.journal
PORT    ?= 5000
DASHBOARD_PORT ?= 8080

.PHONY: install test test-fast benchmark report results ui dashboard perf pruners gpu-check services \
        services-stop slurm slurm-stop lint clean

install: $(VENV)

# pip takes torch and torchvision from this machine's disk where they lie there (see README).
$(VENV): pyproject.toml
	@test -d .venv || python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q --no-compile torch==2.14.1 torchvision==0.29.1 || \
	  .venv/bin/pip install -q --no-compile torch torchvision
	.venv/bin/pip install -q --no-compile -e '.[dev,dashboard,postgres]'
	@# the bytecode pip would write on one core, on all of them (about 47 s -> 24 s here); as pip
	@# does, a file this Python cannot compile is passed over (torch's own py3.12 test file)
	@.venv/bin/python -m compileall -qq -j0 "$$(.venv/bin/python -c \
	  'import sysconfig; print(sysconfig.get_path("purelib"))')" || true
	@if [ -d /usr/share/datasets/fashion-mnist ]; then \
	  echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist is installed"; \
	elif command -v apt-get >/dev/null && { [ "$$(id -u)" = 0 ] || command -v sudo >/dev/null; }; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
	  echo "Fashion-MNIST: apt-get could not install dataset-fashion-mnist; put the IDX files in data/fashion-mnist"; \
	else \
	  echo "Fashion-MNIST: cannot run apt-get here (not root, no sudo); put the IDX files in data/fashion-mnist"; \
	fi
	@touch $(VENV)

# two pytest-xdist workers (this machine's 2 cores; much of the suite waits on processes and
# daemons), a test module on one worker (loadfile: test_scale's PostgreSQL, test_slurm's
# cluster and the modules' fixtures are made once), each on its share of the cores (tests/conftest.py:
# two workers of torch's default two threads each slowed the suite by 1.7x). TEST_WORKERS=0: in
# this one process.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

lint: install
	.venv/bin/ruff check .
	.venv/bin/lint-imports

benchmark: install
	.venv/bin/tailbench run --grid $(GRID) --profile $(PROFILE) --dataset $(DATASET) \
	  --tracking-uri $(MLFLOW_URI) --storage $(OPTUNA_STORAGE) --workers $(WORKERS) $(ARGS)

# the cells of the latest `tailbench run` on the store (ARGS="--invocation ID" for another)
report: install
	.venv/bin/tailbench report --tracking-uri $(MLFLOW_URI) $(ARGS)

results: install
	.venv/bin/tailbench results --tracking-uri $(MLFLOW_URI) $(ARGS)

ui: install
	@mkdir -p $(STORE)
	@# MLflow 3.17's UI opens on its GenAI pages; this link switches it to its runs (remembered)
	@echo "MLflow UI on http://127.0.0.1:$(PORT)/#/?workflowType=machine_learning (store $(MLFLOW_URI)); Ctrl-C stops it"
	.venv/bin/mlflow ui --backend-store-uri $(MLFLOW_URI) --host 127.0.0.1 --port $(PORT)

dashboard: install
	@echo "optuna-dashboard on http://127.0.0.1:$(DASHBOARD_PORT); Ctrl-C stops it"
	$(PY) -m studies.dashboard $(OPTUNA_STORAGE) --port $(DASHBOARD_PORT)

perf: install
	.venv/bin/tailbench perf --out $(STORE)/perf.json $(ARGS)

# today's pruning rule against its candidates over 9 quick cnn studies: about an hour (see README)
pruners: install
	.venv/bin/tailbench pruners --out $(STORE)/pruners.json $(ARGS)

# on a CUDA machine, under 5 minutes: 4 trials at once, 4 cnns packed vs sequential, bf16,
# channels_last; JSON in runs/
gpu-check: install
	.venv/bin/tailbench gpu-check --out $(STORE)/gpu-check.json $(ARGS)

# PostgreSQL (Debian's) in .services/ and an MLflow server on it, loopback only; see README
services: install
	tracking/services.sh start

services-stop:
	tracking/services.sh stop

# a one-node SLURM cluster on this machine (Debian's slurm-wlm and munge) in .slurm/, as root
slurm:
	tracking/slurm.sh start

slurm-stop:
	tracking/slurm.sh stop

clean:
	rm -rf runs reports .pytest_cache

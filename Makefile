# AstrID — the two commands that matter: `make demo` and `make test`.
# Everything sets itself up: a project-local .venv and AIRFLOW_HOME=.airflow (SQLite).
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__LOAD_EXAMPLES ?= False
export AIRFLOW__CORE__DAGS_FOLDER ?= $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER ?= $(CURDIR)/plugins
export PYTHONPATH := $(CURDIR)/plugins:$(PYTHONPATH)
PYTEST_ARGS ?=

.PHONY: demo test setup up seed lint format bench mwaa-bundle clean help bytecode requirements check-py312 compose-secrets helm-values

help:
	@echo "make demo   - seed a synthetic night and run the three DAGs once (SQLite, local files)"
	@echo "make test   - the whole test suite (what CI runs)"
	@echo "make up     - airflow standalone on localhost:8080 with this project"
	@echo "make seed   - register COUNT (10) synthetic observations in the embedded catalog"
	@echo "make bench  - benchmarks -> docs/benchmarks.md"
	@echo "make requirements - regenerate requirements.txt (exact pins) from requirements.in + constraints.txt"
	@echo "make check-py312  - the lock resolves to Python 3.12 wheels (needs PyPI)"
	@echo "make compose-secrets - write .env with fresh secrets for docker compose"
	@echo "make helm-values - regenerate deploy/helm/values-statsd-mappings.yaml from the StatsD mapping"

setup: $(STAMP)

# torch first, pinned, so nothing pulls a multi-GB CUDA build; then everything under our lock.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "torch==2.13.0"
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

$(AIRFLOW_HOME)/airflow.db: | $(STAMP)
	@mkdir -p $(AIRFLOW_HOME)
	$(BIN)/airflow db migrate > $(AIRFLOW_HOME)/db-migrate.log 2>&1 || (cat $(AIRFLOW_HOME)/db-migrate.log; exit 1)

# Bytecode for dags/ and plugins/, refreshed for changed files only: a DAG parse that has to
# compile our ~1,500 lines of operator/config source first spends ~16 ms of its 50 ms budget on it
# (and nothing writes the cache where PYTHONDONTWRITEBYTECODE is set). The Dockerfile does the same.
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q dags plugins

demo: $(STAMP) $(AIRFLOW_HOME)/airflow.db bytecode
	$(BIN)/python -m astrid.airflow.demo

test: $(STAMP) bytecode
	bash scripts/ensure-services.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

up: $(STAMP) $(AIRFLOW_HOME)/airflow.db bytecode
	bash scripts/standalone.sh

seed: $(STAMP)
	$(BIN)/astrid seed --count $${COUNT:-10} --labelled $${LABELLED:-0} --size $${SIZE:-1024} --seed $${SEED:-$$RANDOM}

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: $(STAMP) bytecode
	$(BIN)/python bench/run_all.py

mwaa-bundle: $(STAMP)
	bash scripts/mwaa-bundle.sh

# requirements.txt is generated: edit requirements.in (names) and constraints.txt (versions).
requirements: $(STAMP)
	$(BIN)/python scripts/lock_requirements.py

check-py312: $(STAMP)
	$(BIN)/python scripts/check_py312_wheels.py

compose-secrets:
	bash scripts/compose-secrets.sh

# deploy/helm/values-statsd-mappings.yaml is generated from include/monitoring/statsd-exporter/mapping.yml.
helm-values: $(STAMP)
	$(BIN)/python scripts/helm_statsd_mappings.py

clean:
	rm -rf $(AIRFLOW_HOME) .pytest_cache

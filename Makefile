# llmroute: the project's verbs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
PROTOS := $(shell find protos -name '*.proto')
export LITELLM_LOCAL_MODEL_COST_MAP ?= True

.PHONY: help install protos run demo test test-fast bench soak replay lint format typecheck train-classifier eval-classifier calibrate clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(VENV)/.deps: requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) pip install -q --python $(PY) -r requirements.lock
	touch $@

gen/.stamp: $(PROTOS) | $(VENV)/.deps
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -I protos --python_out=gen --pyi_out=gen --grpc_python_out=gen $(PROTOS)
	find gen/llmroute -type d -exec touch {}/__init__.py \;
	touch $@

$(VENV)/.installed: $(VENV)/.deps gen/.stamp pyproject.toml
	$(UV) pip install -q --python $(PY) --no-deps -e .
	touch $@

install: $(VENV)/.installed ## Create the virtualenv, install pinned dependencies, generate code

protos: $(VENV)/.deps ## Generate Python code from protos/ into gen/ (ignored by git)
	rm -f gen/.stamp && $(MAKE) --no-print-directory gen/.stamp

run: install ## Serve the three services, the simulator and the gateway in the foreground until Ctrl-C
	$(PY) -m devstack run

demo: install ## Start everything, route a mixed sample workload, print decisions and spend
	$(PY) -m devstack demo

test: install ## Run the test suite (unit, PostgreSQL, end-to-end)
	$(PY) -m pytest -q

test-fast: install ## Unit tests only (no end-to-end processes)
	$(PY) -m pytest -q -m "not e2e"

bench: install ## Benchmarks: router and gateway overhead, ledger ingest and stats, classifier latency
	$(PY) -m benchmarks.run

soak: install ## Sustained mixed traffic with provider faults, then the books checked: make soak DURATION=60 RATE=20
	$(PY) -m benchmarks.soak --duration $(or $(DURATION),60) --rate $(or $(RATE),20) $(ARGS)

replay: install ## Outcome data through the running feedback loop: static vs loop vs fully informed (docs/feedback-loop.md)
	$(PY) -m feedback_loop.replay $(ARGS)

train-classifier: install ## Train the local classifier artifact (reproducible)
	$(PY) -m classifier_svc.training.train $(ARGS)

eval-classifier: install ## Evaluate strategies and baselines on held-out data
	$(PY) -m classifier_svc.training.evaluate

calibrate: install ## Set tier thresholds in the policy for a target strong-call share
	$(PY) -m classifier_svc.training.calibrate $(ARGS)

lint: install ## Lint with ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## Format with ruff
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: install ## Type-check with mypy
	$(VENV)/bin/mypy service_kit classifier_svc router_svc ledger_svc simulator devstack benchmarks llmroute_cli llmroute_client feedback_loop gateway

clean: ## Remove the virtualenv, generated code and local state
	rm -rf $(VENV) gen var .pytest_cache

# llmroute: the project's verbs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
PROTOS := $(shell find protos -name '*.proto')

.PHONY: help install lock protos run demo test test-fast bench soak replay lint format typecheck train-classifier eval-classifier calibrate clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

# Every install is hash-checked against the lock files (`make lock` writes them): uv itself from
# requirements.tools.lock, then the pinned dependencies from requirements.lock.
$(VENV)/.tools: requirements.tools.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check --require-hashes -r requirements.tools.lock
	touch $@

$(VENV)/.deps: requirements.lock $(VENV)/.tools
	$(UV) pip install -q --python $(PY) --require-hashes -r requirements.lock
	touch $@

# Messages and their typed stubs (mypy-protobuf's protoc-gen-mypy: *_pb2.pyi), gRPC stubs and servicers
# and theirs (protoc-gen-mypy_grpc: *_pb2_grpc.pyi, for types-grpcio's grpc and grpc.aio).
gen/.stamp: $(PROTOS) requirements.lock | $(VENV)/.deps
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -I protos \
	  --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
	  --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
	  --python_out=gen --mypy_out=gen --grpc_python_out=gen --mypy_grpc_out=gen $(PROTOS)
	find gen/llmroute -type d -exec touch {}/__init__.py \;
	touch $@

$(VENV)/.installed: $(VENV)/.deps gen/.stamp pyproject.toml
	$(UV) pip install -q --python $(PY) --no-deps -e .
	touch $@

install: $(VENV)/.installed ## Create the virtualenv, install pinned dependencies, generate code

# Hashed lock files from pyproject.toml, each version kept unless UPGRADE=1 (or pyproject needs another):
# requirements.lock (with the dev extra: make install), requirements.runtime.lock (the images) and
# requirements.tools.lock (uv and protoc, bootstrap of both) pinned to the same versions.
LOCK_ARGS = --quiet --generate-hashes --python-version 3.11 --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)
lock: | $(VENV)/.tools ## Regenerate the hashed lock files from pyproject.toml (UPGRADE=1: newest versions)
	$(UV) pip compile $(LOCK_ARGS) pyproject.toml --extra dev -o requirements.lock
	$(UV) pip compile $(LOCK_ARGS) pyproject.toml -c requirements.lock -o requirements.runtime.lock
	printf 'uv==$(UV_VERSION)\ngrpcio-tools\n' \
	  | $(UV) pip compile $(LOCK_ARGS) - -c requirements.lock -o requirements.tools.lock

protos: $(VENV)/.deps ## Generate Python code from protos/ into gen/ (ignored by git)
	rm -f gen/.stamp && $(MAKE) --no-print-directory gen/.stamp

run: install ## Serve the three services, the simulator and the gateway in the foreground until Ctrl-C
	$(PY) -m devstack run

demo: install ## Start everything, route a mixed sample workload, print decisions and spend
	$(PY) -m devstack demo

# The tests run in a random order (pytest-randomly), its seed printed at the end: SEED=n repeats an order.
SEED_ARG = $(if $(SEED),--randomly-seed=$(SEED))

test: install ## Run the test suite (unit, PostgreSQL, end-to-end) in a random order; SEED=n repeats one
	$(PY) -m pytest -q $(SEED_ARG) $(ARGS)

test-fast: install ## Unit tests only (no end-to-end processes), in a random order; SEED=n repeats one
	$(PY) -m pytest -q -m "not e2e" $(SEED_ARG) $(ARGS)

bench: install ## Benchmarks: router and gateway overhead, ledger ingest and stats, classifier latency
	$(PY) -m benchmarks.run

soak: install ## Sustained mixed traffic with provider faults, then the books checked: make soak DURATION=60 RATE=20
	$(PY) -m benchmarks.soak --duration $(or $(DURATION),60) --rate $(or $(RATE),20) $(ARGS)

replay: install ## Outcome data through the running feedback loop: static vs loop vs fully informed (docs/feedback-loop.md)
	$(PY) -m feedback_loop.replay $(ARGS)

train-classifier: install ## Train the local classifier artifact (reproducible)
	$(PY) -m classifier_training.train $(ARGS)

eval-classifier: install ## Evaluate strategies and baselines on held-out data
	$(PY) -m classifier_training.evaluate

calibrate: install ## Set tier thresholds in the policy for a target strong-call share
	$(PY) -m classifier_training.calibrate $(ARGS)

lint: install ## Lint with ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## Format with ruff
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: install ## Type-check with mypy (strict) the packages and the tests
	$(VENV)/bin/mypy service_kit difficulty classifier_svc classifier_training router_svc ledger_svc ledger_client simulator devstack benchmarks llmroute_cli llmroute_client feedback_loop gateway tests

clean: ## Remove the virtualenv, generated code and local state
	rm -rf $(VENV) gen var .pytest_cache

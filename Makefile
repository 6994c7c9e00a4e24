# The two commands a newcomer needs:  make run   and   make test
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_USERS ?= 1000
DEMO_RATE ?= 200

.PHONY: run test lint down status bench venv unit clean-state lock

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@bash deploy/local/bootstrap.sh "$(PY)" "$(VENV)"
	@touch $(STAMP)

## make lock: refresh requirements.lock after a dependency change in pyproject.toml
## (keeps every other pin); LOCK_ARGS=--upgrade moves everything to the newest allowed
lock:
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q 'uv>=0.5,<1'
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra tracing --universal --python-version 3.11 \
	  --generate-hashes --no-header --quiet -o requirements.lock $(LOCK_ARGS)

## make run: venv, stack up, migrate, seed, topics, demo producer + worker (Ctrl-C stops both)
run: $(STAMP)
	$(BIN)/collector stack up
	$(BIN)/collector db migrate
	$(BIN)/collector db seed --users $(DEMO_USERS)
	$(BIN)/collector topics create
	@bash deploy/local/run-demo.sh "$(BIN)" "$(DEMO_USERS)" "$(DEMO_RATE)"

## make test: lint + type check + the whole test suite (starts the stack it needs)
test: $(STAMP)
	$(BIN)/ruff check collector tests deploy benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check collector tests deploy benchmarks
	$(BIN)/ruff format --check collector tests deploy benchmarks || true
	$(BIN)/mypy

down: $(STAMP)
	$(BIN)/collector stack down

status: $(STAMP)
	$(BIN)/collector stack status

## make bench: benchmarks on the local stack (BENCH_N=20000 for a quick one; BENCH_ARGS="--help")
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

clean-state:
	rm -rf .local/faust

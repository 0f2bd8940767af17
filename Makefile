# Mooring: the index of what a developer can do. `make help` lists it.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Builds go to a target directory that survives between runs (CI sets it under /var/tmp).
CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR
BIN := $(CARGO_TARGET_DIR)/debug
RELEASE_BIN := $(CARGO_TARGET_DIR)/release
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
CI ?=

.PHONY: help run build test test-rust test-python test-long lint fmt openapi openapi-check \
        bench bench-engine bench-api bench-failover venv deps

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

deps: ## install what the build and tests need (Debian packages, idempotent)
	@./scripts/ensure-deps.sh

venv: $(VENV)/.installed ## create the Python venv with pika, pytest and the AWS CLI
$(VENV)/.installed: tests/python/requirements.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
	@touch $@

build: ## build every binary (debug)
	cargo build --workspace --bins

run: build ## start the control plane on its embedded default (SQLite, local provider)
	@echo "mooring: API on http://127.0.0.1:7878; once started, point the AWS CLI at it with"
	@echo "  export AWS_SHARED_CREDENTIALS_FILE=$(CURDIR)/.mooring/credentials AWS_DEFAULT_REGION=us-east-1"
	@echo "  aws mq list-brokers --endpoint-url http://127.0.0.1:7878"
	$(BIN)/mooring serve

test: deps venv build ## run the whole test suite (Rust and Python, real peers)
	cargo fmt --all -- --check
	$(MAKE) openapi-check
	$(MAKE) test-rust
	$(MAKE) test-python

# The replication chaos and two-control-plane tests run here with a few kills each;
# `make test-long` (MOORING_LONG=1) runs the issue's full counts (20 and 10 kills per broker).
test-rust: ## Rust unit, integration and end-to-end tests
	cargo test --workspace --all-targets -- --test-threads=2

test-python: venv build ## pika and AWS CLI tests against real agents and control planes
	MOORING_BIN_DIR=$(BIN) $(PY) -m pytest -q tests/python

test-long: ## soak and long crash tests (not part of make test)
	MOORING_LONG=1 $(MAKE) test

lint: ## rustfmt and clippy with -D warnings
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	cargo fmt --all

openapi: build ## regenerate the committed OpenAPI document
	$(BIN)/mooring openapi > openapi/mooring.json

openapi-check: build ## fail when the committed OpenAPI document is stale
	@$(BIN)/mooring openapi | diff -q - openapi/mooring.json >/dev/null \
	  || { echo "openapi/mooring.json is stale: run make openapi"; exit 1; }

bench: bench-engine bench-api bench-failover ## every benchmark

bench-engine: venv ## mooring-agent against RabbitMQ 3.10, side by side
	cargo build --release --bins
	./bench/run-engine.sh

bench-api: ## control-plane API against raw Postgres (pgbench)
	cargo build --release --bins
	./bench/run-api.sh

bench-failover: ## failover time and planned-switchover gap of replicated brokers (release agents)
	cargo build --release --bins
	./bench/run-failover.sh

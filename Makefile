# One task runner: the README and .ci/run call these targets.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
SAGAS := $(wildcard sagas/*.yaml)

.PHONY: help setup build demo test lint fmt clippy check-core-deps ci clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

setup: ## install what the project needs (pinned nats-server into .tools/, grpcurl for its test)
	@scripts/install-nats-server.sh
	@scripts/install-grpcurl.sh >/dev/null

build: ## build every crate and binary
	$(CARGO) build --workspace --all-targets

demo: setup ## validate and draw the shipped sagas (the stack demo comes with the gateway)
	$(CARGO) run -q -p sagactl -- def validate --explain $(SAGAS)
	$(CARGO) run -q -p sagactl -- def graph sagas/order-checkout.yaml

test: setup ## run every test (unit, property, CLI, end-to-end on a real nats-server)
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --all-targets --no-fail-fast
	$(CARGO) test --workspace --doc

fmt: ## format the code
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

check-core-deps: ## saga-core must stay free of I/O crates
	@scripts/check-core-deps.sh

lint: check-core-deps clippy ## fmt check, clippy -D warnings, core dependency check
	$(CARGO) fmt --all -- --check

ci: lint test ## what CI runs

clean:
	$(CARGO) clean

# One task runner: the README and .ci/run call these targets.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
SAGAS := $(wildcard sagas/*.yaml)

.PHONY: help setup build demo playground bench chaos test lint fmt clippy check-core-deps ci clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

setup: ## install what the project needs (pinned nats-server into .tools/, grpcurl for its test)
	@scripts/install-nats-server.sh
	@scripts/install-grpcurl.sh >/dev/null

build: ## build every crate and binary
	$(CARGO) build --workspace --all-targets

# Ports of the local stack (override: make demo NATS_PORT=4222 GRPC_ADDR=0.0.0.0:50051).
NATS_PORT ?= 4333
GRPC_ADDR ?= 127.0.0.1:50051

demo: setup ## run the whole stack locally with a demo (Ctrl-C stops it)
	$(CARGO) build --workspace --bins
	$(CARGO) run -q -p sagactl -- def validate $(SAGAS)
	target/debug/sagactl dev --demo --nats-port $(NATS_PORT) --grpc-addr $(GRPC_ADDR)

playground: setup ## three workers to watch failover (README "Watch failover"; Ctrl-C stops it)
	$(CARGO) build --workspace --bins
	target/debug/sagactl dev --workers 3 --nats-port $(NATS_PORT) --grpc-addr $(GRPC_ADDR)

bench: setup ## sagactl bench against a release stack (see docs/benchmarks.md)
	$(CARGO) build --release --workspace --bins
	scripts/bench.sh

# The long chaos run (docs/reliability.md); e.g. make chaos CHAOS_SEED=7 CHAOS_ORDERS=20000.
# 250 faults: 50 of each of the 5 kinds. Data, logs and report: target/chaos/seed-<SEED>-<time>/.
CHAOS_ORDERS ?= 10000
CHAOS_RATE ?= 20
CHAOS_WORKERS ?= 3
CHAOS_FAULTS ?= 250
CHAOS_SEED ?= 1

chaos: setup ## long chaos run on a release stack: 10,000 orders, 50 faults of every kind
	$(CARGO) build --release --workspace --bins
	target/release/sagactl chaos --orders $(CHAOS_ORDERS) --rate $(CHAOS_RATE) \
		--workers $(CHAOS_WORKERS) --faults $(CHAOS_FAULTS) --seed $(CHAOS_SEED)

test: setup ## run every test (unit, property, CLI, end-to-end on a real nats-server)
	@scripts/install-faketime.sh
	@scripts/install-postgresql.sh
	@scripts/install-prometheus.sh
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --all-targets --no-fail-fast
	$(CARGO) test --workspace --doc

fmt: ## format the code
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

check-core-deps: ## saga-core must stay free of I/O crates
	@scripts/check-core-deps.sh

lint: check-core-deps clippy ## fmt check, clippy -D warnings, core dependency check, alert rules
	$(CARGO) fmt --all -- --check
	@scripts/install-prometheus.sh >/dev/null
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts_test.yml

ci: lint test ## what CI runs

clean:
	$(CARGO) clean

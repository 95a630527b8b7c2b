# ringmq: one entry point for people and CI. `make run` and `make test` are the README's promise.
SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
RINGMQ_BIN := $(CURDIR)/target/release/ringmq
ROUNDS ?= 3

.PHONY: run build test deps lint unit integration bench fuzz fuzz-check clean

## Build and start the broker on its embedded defaults (0.0.0.0:1883, one shard per core, ./data).
run: build
	$(RINGMQ_BIN)

build:
	$(CARGO) build --release -p ringmq -p ringmq-loadgen

## Everything CI runs: lints, unit and property tests, black-box tests with real clients.
test: deps build lint unit integration

## Installs what the tests drive the broker with, when it is missing (fresh Debian machine).
deps:
	@if ! command -v mosquitto_pub >/dev/null || ! command -v mosquitto >/dev/null; then \
	  echo "installing mosquitto and mosquitto-clients"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null; \
	fi
	@if ! $(PYTHON) -c "import paho.mqtt, pytest, prometheus_client" 2>/dev/null; then \
	  echo "installing python test dependencies"; \
	  $(PYTHON) -m pip install -q -r tests/integration/requirements.txt; \
	fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --release -- -D warnings

unit:
	$(CARGO) test --workspace --release

integration: build
	RINGMQ_BIN=$(RINGMQ_BIN) $(PYTHON) -m pytest tests/integration -q -p no:cacheprovider

## Side-by-side benchmark against Mosquitto; writes bench/results/<date>-<host>.md.
bench: build
	$(PYTHON) bench/run.py $(BENCH_ARGS)

## Coverage-guided fuzzing of the decoder (needs cargo-fuzz and a nightly toolchain).
fuzz:
	cd fuzz && $(CARGO) fuzz run decode -- -max_total_time=$${FUZZ_SECONDS:-60}

clean:
	$(CARGO) clean

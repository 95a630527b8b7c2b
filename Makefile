# ringmq: one entry point for people and CI. `make run` and `make test` are the README's promise.
SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
RINGMQ_BIN := $(CURDIR)/target/release/ringmq
ROUNDS ?= 3

.PHONY: run build test deps lint unit integration crash-test bench bench-ws bench-backlog fuzz clean

## Build and start the broker on its embedded defaults (0.0.0.0:1883, one shard per core, ./data).
run: build
	$(RINGMQ_BIN)

build:
	$(CARGO) build --release -p ringmq -p ringmq-loadgen

## Everything CI runs: lints, unit and property tests, black-box tests with real clients.
test: deps build lint unit integration

## Installs what the tests drive the broker with, when it is missing (fresh Debian machine).
deps:
	@if ! command -v mosquitto_pub >/dev/null || ! command -v mosquitto >/dev/null || ! command -v prometheus >/dev/null || ! command -v openssl >/dev/null || ! command -v testssl >/dev/null; then \
	  echo "installing mosquitto, mosquitto-clients, prometheus, openssl and testssl.sh (tests/integration/test_prometheus_server.py, test_tls.py)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends mosquitto mosquitto-clients prometheus openssl ca-certificates testssl.sh >/dev/null; \
	fi
	@if ! $(PYTHON) -c "import paho.mqtt, pytest, prometheus_client, cryptography, websockets" 2>/dev/null; then \
	  echo "installing python test dependencies"; \
	  $(PYTHON) -m pip install -q -r tests/integration/requirements.txt; \
	fi
	@if ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
	  echo "installing nodejs and npm (MQTT.js scenarios, tests/integration/test_mqttjs.py)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; \
	fi
	@if ! command -v chromium >/dev/null; then \
	  echo "installing chromium (MQTT.js in a headless browser, tests/integration/test_browser.py)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	fi
	@if [ ! -d tests/integration/js/node_modules ]; then \
	  echo "installing MQTT.js (npm ci in tests/integration/js)"; \
	  npm ci --prefix tests/integration/js --no-audit --no-fund --loglevel=error >/dev/null; \
	fi

## The core is sans-I/O: no executor, socket, clock or random source in its dependency tree or
## its code (time and entropy come in through its Clock and Entropy traits).
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --release -- -D warnings
	@if $(CARGO) tree -p ringmq-core -e normal --prefix none | grep -E '^(glommio|socket2|signal-hook|getrandom|rand|futures|tokio|mio) '; then \
	  echo "lint: ringmq-core must not depend on an executor, sockets or a random source (above)"; exit 1; fi
	@if grep -rnE 'Instant::now|SystemTime::now|getrandom|libc::|std::net::[a-z]|UdpSocket|TcpStream|std::thread::sleep' shards/core/src --include=*.rs | grep -v 'lint: test-only clock'; then \
	  echo "lint: ringmq-core reads a clock, a random source or a socket (above); take them from env::Clock/Entropy or the driver"; exit 1; fi
	@echo "lint: ringmq-core is free of I/O"

unit:
	$(CARGO) test --workspace --release

integration: build
	CRASH_ROUNDS=$(ROUNDS) RINGMQ_BIN=$(RINGMQ_BIN) $(PYTHON) -m pytest tests/integration -q -p no:cacheprovider

## The journal crash test alone, with many kills: make crash-test ROUNDS=100.
crash-test: build
	CRASH_ROUNDS=$(ROUNDS) RINGMQ_BIN=$(RINGMQ_BIN) $(PYTHON) -m pytest tests/integration/test_crash.py -q -s -p no:cacheprovider

## Side-by-side benchmark against Mosquitto; writes bench/results/<date>-<host>.md.
bench: build
	$(PYTHON) bench/run.py $(BENCH_ARGS)

## MQTT over WebSocket, both brokers on WebSocket listeners: fan-in QoS 0 and the idle fleet's
## memory per connection (bench/README.md, "Over WebSocket").
bench-ws: build
	$(PYTHON) bench/run.py --ws --scenarios fanin-qos0,idle $(BENCH_ARGS)

## One offline session with a long queue (1,000,000 QoS 1 messages by default), beside Mosquitto:
## memory per queued message and drain rate; writes bench/results/<date>-backlog.md.
bench-backlog: build
	$(PYTHON) bench/backlog.py $(BACKLOG_ARGS)

## Coverage-guided fuzzing of the decoder, of journal recovery and of the core (arbitrary client
## bytes through ringmq_sim::hostile), FUZZ_SECONDS per target, one
## after the other (needs `cargo install cargo-fuzz` and a nightly toolchain). New inputs land in
## fuzz/corpus/<target>/ (kept in git; `make test` replays it), crashes in fuzz/artifacts/.
## See docs/fuzzing.md.
FUZZ_SECONDS ?= 60
FUZZ_TOOLCHAIN ?= nightly
fuzz:
	cd fuzz && $(CARGO) +$(FUZZ_TOOLCHAIN) fuzz run -O decode -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096
	cd fuzz && $(CARGO) +$(FUZZ_TOOLCHAIN) fuzz run -O journal_open -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096
	cd fuzz && $(CARGO) +$(FUZZ_TOOLCHAIN) fuzz run -O core_bytes -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096

## The deterministic simulator (shards/sim/README.md): SEEDS seeds, about 100 a second.
## A failing seed prints its trace and the command that replays it.
SEEDS ?= 6000
.PHONY: sim
sim:
	SIM_SEEDS=$(SEEDS) $(CARGO) test -p ringmq-sim --release -- --nocapture

clean:
	$(CARGO) clean

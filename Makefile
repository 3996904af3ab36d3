# Every target installs what it needs: a fresh Debian machine with Python 3.11 is enough.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT    := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get
ARGS   ?=

.PHONY: install run test protos lint bench clean .test-peers

# venv and pip come from Debian's python3-venv when the interpreter lacks them.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || \
		{ $(APT) update -qq && $(APT) install -y -qq python3-venv; }
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

install: $(STAMP)

# promtool (Debian's prometheus package) lints the /metrics exposition in the tests;
# PostgreSQL (Debian's postgresql) is the fleet store the tests run their own clusters of;
# headless Chromium (chromium, chromium-driver) drives the console's browser tests.
.test-peers:
	@{ command -v promtool && ls /usr/lib/postgresql/*/bin/pg_ctl && \
	   command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || \
		{ $(APT) update -qq && \
		  $(APT) install -y -qq --no-install-recommends prometheus postgresql \
		    chromium chromium-driver; }

run: $(STAMP)
	$(BIN)/aigw serve $(ARGS)

test: $(STAMP) .test-peers
	$(BIN)/python -m pytest $(ARGS)

protos: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=protos --pyi_out=protos \
		--grpc_python_out=protos protos/aigw/v1/*.proto

# h2load (Debian's nghttp2-client) drives the benchmarks' closed-loop load.
.PHONY: .h2load
.h2load:
	@command -v h2load >/dev/null || \
		{ $(APT) update -qq && $(APT) install -y -qq --no-install-recommends nghttp2-client; }

# Bare grpc.aio vs aigw (telemetry minimal, full with one and with two serving processes,
# exporter down, fleet mode on PostgreSQL) and the fleet's store writes and config
# convergence: about 10 minutes, 127.0.0.1 only; prints one
# summary line per scenario and rewrites BENCHMARKS.md. ARGS: see --help (e.g. ARGS="--scenarios
# baseline,fleet"); `python -m tests.bench.fleet` runs the two fleet measurements alone.
bench: $(STAMP) .h2load .test-peers
	$(BIN)/python -m tests.bench $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

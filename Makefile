# The two commands a user needs: `make run` (install what is missing, build, serve on
# port 8000) and `make test` (install what is missing, run every test).

RUNTIME_DIR ?= /opt/code-interpreter
export RUNTIME_DIR
BIN := target/release/code-interpreter

PYTHON := $(RUNTIME_DIR)/python/bin/python
# As root the server runs user code as uid 65534, which must reach DATA_DIR by path:
# a system directory works wherever the checkout is (a home directory is often 0700).
ifeq ($(shell id -u),0)
RUN_DATA_DIR ?= /var/lib/code-interpreter
else
RUN_DATA_DIR ?= data
endif

.PHONY: run test bench lint bootstrap build check-rust

run: bootstrap build
	DATA_DIR=$${DATA_DIR:-$(RUN_DATA_DIR)} ./$(BIN) serve

test: bootstrap check-rust
	cargo test --locked
	tests/mcp/run.sh -q
	CODE_INTERPRETER_BIN=target/debug/code-interpreter e2e/librechat/run.sh
	# One smoke run of every benchmark scenario, so the harness cannot rot (no timing goals).
	BENCH_BINARY=target/debug/code-interpreter $(PYTHON) bench/run.py --quick --out target/bench-smoke

# Benchmarks against baselines measured in the same run (QUICK=1: a smoke run).
bench: bootstrap check-rust
	$(PYTHON) bench/run.py $(if $(filter 1 true yes,$(QUICK)),--quick)

lint: check-rust
	cargo fmt --all -- --check
	cargo clippy --all-targets --locked -- -D warnings

bootstrap:
	scripts/bootstrap

build: check-rust
	cargo build --release --locked

# The server is built from source: it needs Rust 1.85 or newer (edition 2024).
check-rust:
	@command -v cargo >/dev/null || { echo "make: cargo is missing; install Rust 1.85+ with rustup (https://rustup.rs)" >&2; exit 1; }

# The two commands a user needs: `make run` (install what is missing, build, serve on
# port 8000) and `make test` (install what is missing, run every test). `make help` lists
# the rest. Every target installs what it needs first, through scripts/bootstrap.

RUNTIME_DIR ?= /opt/code-interpreter
export RUNTIME_DIR
BIN := target/release/code-interpreter
DEBUG_BIN := target/debug/code-interpreter

PYTHON := $(RUNTIME_DIR)/python/bin/python
# The cargo to build with: the one on PATH when it is 1.85 or newer, else Debian's
# cargo-web, which scripts/bootstrap installs. Expanded when a recipe runs, after bootstrap.
CARGO = $(shell scripts/find-cargo 2>/dev/null || echo cargo)
# As root the server runs user code as uid 65534, which must reach DATA_DIR by path:
# a system directory works wherever the checkout is (a home directory is often 0700).
ifeq ($(shell id -u),0)
RUN_DATA_DIR ?= /var/lib/code-interpreter
else
RUN_DATA_DIR ?= data
endif
# The binary `make e2e` serves (the debug build `make test` has just made, by default).
E2E_BINARY ?= $(DEBUG_BIN)

.PHONY: help install bootstrap run dev test lint format-check typecheck openapi fuzz bench \
	e2e image image-test build build-debug check-rust web ui-dev helm-check

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z0-9-]*:.*## / {printf "  make %-13s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: bootstrap ## Install every runtime, package and tool the server needs (scripts/bootstrap)

run: bootstrap build ## Build the release binary and serve on 127.0.0.1:8000
	DATA_DIR=$${DATA_DIR:-$(RUN_DATA_DIR)} ./$(BIN) serve

dev: bootstrap build-debug ## Debug build, served with debug logs and request logging
	DATA_DIR=$${DATA_DIR:-$(RUN_DATA_DIR)} LOG_LEVEL=$${LOG_LEVEL:-code_interpreter=debug,info} \
		LOG_REQUESTS=$${LOG_REQUESTS:-true} ./$(DEBUG_BIN) serve

test: bootstrap check-rust ## Every test: cargo, MCP, Schemathesis, LibreChat, browser, benchmark smoke, smoke scripts, README, image, Helm chart
	$(CARGO) test --locked
	# Again against Redis + S3 (STORE=shared): the file API, every language's runs, the HTTP
	# shapes, LibreChat's calls and notebooks whole, and the store's part of the Python,
	# programmatic, cancellation and stream suites (docs/several-machines.md#tests says why
	# the rest runs on the local store only); tests/shared_store.rs and tests/cluster.rs
	# (three nodes) ran above.
	CODE_INTERPRETER_TEST_STORE=shared $(CARGO) test --locked --test files_api --test exec_api \
		--test http_api --test librechat_api --test notebook_api
	CODE_INTERPRETER_TEST_STORE=shared $(CARGO) test --locked --test python_api \
		--test programmatic --test cancellation --test stream_api -- \
		state_persists sees_its_uploads args_files_sqlite matplotlib_plot figure_saved \
		after_a_server_restart idle_kernels_are_shut_down_and_files_stay \
		a_python_program_is_suspended a_run_never_continued_frees_its_slot \
		deleting_a_session_stops_its_run_first \
		expiry_never_deletes_a_session_under_its_run rich_outputs_and_errors
	deploy/helm/check
	tests/mcp/run.sh -q
	CODE_INTERPRETER_BIN=$(DEBUG_BIN) tests/schemathesis/run.sh
	CODE_INTERPRETER_BIN=$(DEBUG_BIN) e2e/librechat/run.sh
	CODE_INTERPRETER_BIN=$(DEBUG_BIN) e2e/browser/run.sh
	# One smoke run of every benchmark scenario, so the harness cannot rot (no timing goals).
	BENCH_BINARY=$(DEBUG_BIN) $(PYTHON) bench/run.py --quick --out target/bench-smoke
	$(MAKE) --no-print-directory e2e
	$(MAKE) --no-print-directory image-test

helm-check: ## Render the Helm chart and validate it against the Kubernetes schemas (kubeconform)
	deploy/helm/check

e2e: bootstrap build-debug ## Start a server, run the smoke scripts (e2e/run_all.sh) and the README's examples
	E2E_REQUIRE_ALL=1 e2e/with-server.sh $(E2E_BINARY) e2e/run_all.sh
	e2e/with-server.sh $(E2E_BINARY) python3 e2e/readme.py README.md

lint: check-rust ## Formatting, clippy and hadolint (the Dockerfile)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
	scripts/image lint

format-check: check-rust ## Check formatting only (cargo fmt --check)
	$(CARGO) fmt --all -- --check

typecheck: check-rust ## Type-check every target without building (cargo check --all-targets)
	$(CARGO) check --all-targets --locked

openapi: check-rust ## Write openapi.json from the code (a test fails when it is stale)
	$(CARGO) run --locked --quiet -- openapi > openapi.json.tmp
	mv openapi.json.tmp openapi.json

# Coverage-guided fuzzing of the kernel-facing decoders (needs a nightly toolchain and
# cargo-fuzz; not part of make test, whose proptest cases cover the same properties).
FUZZ_SECONDS ?= 300
fuzz: ## Fuzz the ZMTP decoder and the Jupyter codec, FUZZ_SECONDS each (nightly + cargo-fuzz)
	cd fuzz && for t in zmtp_decoder jupyter_message; do \
		cargo +nightly fuzz run -O $$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=1024 || exit 1; done

# Benchmarks against baselines measured in the same run (QUICK=1: a smoke run).
bench: bootstrap check-rust ## Benchmarks against same-run baselines (QUICK=1 for a smoke run)
	$(PYTHON) bench/run.py $(if $(filter 1 true yes,$(QUICK)),--quick)

image: ## Build the container image from source with podman (installs podman when missing)
	scripts/image build

image-test: build-debug ## Build the image around the host's binary, run every language in it, stop it
	scripts/image test $(DEBUG_BIN)

bootstrap: ## Same as install
	scripts/bootstrap

build: check-rust web ## Build the release binary (target/release), the playground first
	$(CARGO) build --release --locked

build-debug: check-rust ## Build the debug binary (target/debug)
	$(CARGO) build --locked

# The playground (web/ → web/dist, which the binary embeds). dist/ is committed, so
# `cargo build` alone works; e2e/browser checks that it matches a fresh build.
web: ## Build the playground (web/ into web/dist, which the binary embeds)
	web/build.sh

# Rebuild the playground on every change to web/src (then rebuild the server to embed it).
ui-dev: ## Rebuild the playground on every change to web/src (rebuild the server to embed it)
	web/build.sh --watch

# The server is built from source: it needs Rust 1.85 or newer (edition 2024).
check-rust: ## Check that a cargo >= 1.85 is there (scripts/find-cargo)
	@scripts/find-cargo >/dev/null

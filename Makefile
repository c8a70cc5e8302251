# bertd: every target does its own set-up, so each works on a fresh clone.
VENV   := .venv
PYTHON := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.setup-done
# The Node client example's packages (clients/node/package-lock.json).
NODE_STAMP  := clients/node/node_modules/.setup-done

# tch's build finds libtorch through the venv's python (LIBTORCH_USE_PYTORCH + VIRTUAL_ENV).
export LIBTORCH_USE_PYTORCH := 1
export VIRTUAL_ENV := $(CURDIR)/$(VENV)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

ADDR ?= 127.0.0.1:50051

.PHONY: setup build run test lint bench bench-tokenize compare stream-memory gpu-pack fuzz soak fixtures clean

setup: $(SETUP_STAMP) $(NODE_STAMP)

$(SETUP_STAMP): requirements.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	touch $@

$(NODE_STAMP): clients/node/package-lock.json
	cd clients/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

build: setup
	cargo build --release --workspace --bins

## The main job: serve the default model on CPU at $(ADDR) until SIGTERM / Ctrl-C.
run: build
	./target/release/bertd serve --addr $(ADDR)

## The whole test suite (fmt, clippy, unit and integration tests).
test: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace

lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

bench: setup
	cargo bench --bench engine_throughput
	cargo bench --bench grpc_throughput
	cargo bench --bench telemetry_overhead
	$(MAKE) bench-tokenize

## Tokenizing per input on one thread, bertd's path against HuggingFace's, on the realistic corpus.
bench-tokenize: setup
	.venv/bin/python bench/corpus.py --lines 2000 --out target/corpus-2000.txt
	cargo bench --bench tokenize -- --corpus target/corpus-2000.txt

## bertd against sentence-transformers, transformers and ONNX Runtime on one realistic corpus, in one
## run (ratios). Extra server flags: make compare ARGS="--max-batch-size 16".
compare: build
	bench/compare.sh $(ARGS)

## The server's resident memory through one stream of 1,000,000 inputs (INPUTS=...), sampled.
stream-memory: build
	bench/stream_memory.sh $(ARGS)

## What bench/gpu.py needs on a lent GPU machine, in target/gpu (BENCHMARKS.md says how to run it).
gpu-pack: setup
	bench/gpu.sh

## Longer runs of what `make test` runs briefly: 2,000,000 generated requests; a 10-minute soak.
fuzz: setup
	BERTD_FUZZ_REQUESTS=2000000 cargo test --release --test fuzz -- --nocapture

soak: setup
	BERTD_SOAK_SECS=600 cargo test --release --test soak -- --nocapture

## Regenerate the tiny test models and reference outputs (needs transformers, installed by setup).
fixtures: setup
	$(PYTHON) tests/fixtures/generate.py

clean:
	cargo clean

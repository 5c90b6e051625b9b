# The two commands that matter: `make demo` and `make test`. Both install what is missing first.
.PHONY: setup build demo test eval bench-ingest bench-search fuzz soak mutation-check clean

# cargo's builds live outside the work tree, one folder per Rust toolchain, so a fresh clone on
# the same machine (CI) compiles only what changed. Set CARGO_TARGET_DIR to build elsewhere.
RUST_VERSION := $(shell rustc -V 2>/dev/null | sed 's/[^A-Za-z0-9.]\{1,\}/-/g; s/-$$//')
export CARGO_TARGET_DIR ?= $(HOME)/.cache/imgsearch/cargo-target-$(RUST_VERSION)

setup:
	scripts/setup.sh

build: setup
	cargo build --locked

## Start Milvus Lite, ingest data/sample, serve search on http://127.0.0.1:8080 (Ctrl-C stops all).
demo: build
	"$(CARGO_TARGET_DIR)/debug/imgsearch" standalone --images data/sample --data-dir data/standalone

## Every test, against a real Milvus Lite, a real Milvus 2.3.5, ONNX Runtime, SQLite, PostgreSQL,
## MariaDB and a real Kubernetes control plane, whose kubectl comes first on PATH. (cargo
## test builds the binary too; a separate `cargo build` first would compile the dependencies
## twice, since dev-dependencies change their feature sets.)
## Each test binary runs under a 10-minute limit (the slowest takes about one): a test that
## hangs fails the run, naming itself in libtest's "running for over 60 seconds", instead of
## holding CI until its own limit. (Set for this command only: `cargo run` stays unlimited.)
TEST_RUNNER := CARGO_TARGET_$(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p' | tr 'a-z-' 'A-Z_')_RUNNER
test:
	scripts/setup.sh --test-servers
	PATH="$$(scripts/kube-build.sh):$$PATH" $(TEST_RUNNER)="timeout --kill-after=10 600" scripts/test-databases.sh scripts/milvus-server.sh scripts/milvus-lite.sh cargo test --locked --all-targets

## Retrieval quality of the built-in model: precision@1/5/10 on the labelled Fashion-MNIST sample,
## and recall@1, MRR and distances per kind of copy on the near-duplicate photo benchmark.
eval:
	scripts/setup.sh --eval-data
	cargo build --locked
	"$(CARGO_TARGET_DIR)/debug/imgsearch" eval --labels-from-dirs data/sample/fashion --near-duplicates data/near-duplicates

# Benchmarks, not tests: release build, figures printed as a table (see docs/benchmarks.md).
bench-ingest:
	scripts/setup.sh --eval-data
	scripts/milvus-lite.sh cargo bench --locked --bench ingest

# 100,000 vectors in Milvus 2.3.5, the release server loaded at concurrency 1, 4 and 32.
bench-search:
	scripts/setup.sh --eval-data
	scripts/milvus-server.sh cargo bench --locked --bench search

# Ten minutes of load through Milvus and PostgreSQL crashes, then a check that nothing
# acknowledged was lost; prints the table in docs/reliability.md. (`make test` runs 100 s of it.)
soak:
	scripts/setup.sh --test-servers
	SOAK_RUN="commit $$(git rev-parse --short HEAD)$$(git diff --quiet HEAD -- src tests || echo ' (with changes)'), $$(date +%F)" \
	SOAK_SECONDS=$${SOAK_SECONDS:-600} cargo test --locked --test soak -- --nocapture

# Coverage-guided fuzzing (AFL++ via afl.rs, stable Rust): every target in fuzz/src/targets.rs
# for FUZZ_SECONDS each (default 300), then a table; findings land in fuzz/findings/.
fuzz:
	scripts/fuzz.sh

# The record that each test docs/reliability.md names for a promise fails when the behaviour is
# removed: one mutation at a time, in the working tree (which must be clean), the file restored.
mutation-check:
	scripts/setup.sh --test-servers
	scripts/test-databases.sh scripts/milvus-lite.sh .venv/bin/python scripts/mutation_check.py

clean:
	rm -rf data/standalone

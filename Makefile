# minkube: build, test and demo entry points. CI runs `make test` (see .ci/run).
CARGO ?= cargo
cargo := $(CARGO)

# Image made by `make test-image` (no registry: built from /bin/busybox).
TEST_IMAGE_TAG ?= minkube-test:manual
TEST_IMAGE_LABEL ?= minkube.test-run=manual
# Label key that marks test containers and images; clean-test-artifacts removes only those.
TEST_RUN_LABEL ?= minkube.test-run

.PHONY: all build test fmt fmt-check lint unit-test demo bench bench-quick test-image clean-test-artifacts

all: build

## build: every binary of the workspace (debug)
build:
	$(cargo) build --workspace --bins

## test: formatting, lints, build, then every test (unit and end-to-end).
## Steps run in this order even under `make -j`.
test:
	$(cargo) fmt --all -- --check
	$(cargo) clippy --workspace --all-targets -- -D warnings
	$(cargo) build --workspace --bins
	@$(MAKE) --no-print-directory unit-test

fmt:
	$(cargo) fmt --all

fmt-check:
	$(cargo) fmt --all -- --check

lint:
	$(cargo) clippy --workspace --all-targets -- -D warnings

# nextest when installed, plain cargo test otherwise.
unit-test:
	@if $(cargo) nextest --version >/dev/null 2>&1; then \
		echo "$(cargo) nextest run --workspace"; \
		$(cargo) nextest run --workspace; \
	else \
		echo "cargo-nextest not found; using cargo test"; \
		echo "$(cargo) test --workspace"; \
		$(cargo) test --workspace; \
	fi

## demo: a manager, an agent and a few tasks on the local Docker; cleans up after itself
demo:
	bash scripts/demo.sh

## bench: release build, every benchmark scenario, figures printed and written to bench/results.md
bench:
	$(cargo) build --release -p minkube-manager -p minkube-agent -p minkube-bench --bins
	$(cargo) run --release -p minkube-bench -- --out bench/results.md $(BENCH_ARGS)

## bench-quick: the same at smaller sizes (the targets are for full sizes); prints only
bench-quick:
	$(cargo) build --release -p minkube-manager -p minkube-agent -p minkube-bench --bins
	$(cargo) run --release -p minkube-bench -- --quick $(BENCH_ARGS)

## test-image: the busybox image the tests use, tagged $(TEST_IMAGE_TAG)
test-image:
	bash scripts/test-image.sh '$(TEST_IMAGE_TAG)' '$(TEST_IMAGE_LABEL)'

## clean-test-artifacts: containers and images labelled $(TEST_RUN_LABEL), and nothing else
clean-test-artifacts:
	@ids=$$(docker ps -aq --filter 'label=$(TEST_RUN_LABEL)'); \
	if [ -n "$$ids" ]; then echo "removing containers: $$ids"; docker rm -f $$ids >/dev/null; fi; \
	imgs=$$(docker images -q --filter 'label=$(TEST_RUN_LABEL)' | sort -u); \
	if [ -n "$$imgs" ]; then echo "removing images: $$imgs"; docker rmi -f $$imgs >/dev/null; fi; \
	echo "test artifacts removed"

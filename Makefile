# minkube: build, test and demo entry points. CI runs `make test` (see .ci/run).
CARGO ?= cargo
cargo := $(CARGO)

# Image made by `make test-image` (no registry: built from /bin/busybox).
TEST_IMAGE_TAG ?= minkube-test:manual
TEST_IMAGE_LABEL ?= minkube.test-run=manual
# Label key that marks test containers and images; clean-test-artifacts removes only those.
TEST_RUN_LABEL ?= minkube.test-run

# Installation layout (`make install`, PREFIX and DESTDIR aware).
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
DOCDIR ?= $(PREFIX)/share/doc/minkube
# Cargo profile of the installed binaries; INSTALL_BUILD=no installs what is built.
PROFILE ?= release
INSTALL_BUILD ?= yes
profile_dir := $(if $(filter dev,$(PROFILE)),debug,$(PROFILE))

.PHONY: all build test install uninstall deb cluster-image cluster-up cluster-down fmt fmt-check lint unit-test demo bench bench-quick test-image clean-test-artifacts

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

## install: binaries, systemd units, sysusers entry, example config and docs
## under $(DESTDIR)$(PREFIX); existing files in $(SYSCONFDIR)/minkube are kept
install:
ifeq ($(INSTALL_BUILD),yes)
	$(cargo) build --profile $(PROFILE) -p minkube -p minkube-manager -p minkube-agent --bins
endif
	@for b in minkube minkube-manager minkube-agent; do \
		test -x target/$(profile_dir)/$$b || { echo "target/$(profile_dir)/$$b is missing: build it first (cargo build --profile $(PROFILE))" >&2; exit 1; }; \
	done
	install -d '$(DESTDIR)$(BINDIR)' '$(DESTDIR)$(UNITDIR)' '$(DESTDIR)$(SYSUSERSDIR)' \
		'$(DESTDIR)$(DOCDIR)/examples' '$(DESTDIR)$(SYSCONFDIR)/minkube'
	install -m 0755 target/$(profile_dir)/minkube target/$(profile_dir)/minkube-manager \
		target/$(profile_dir)/minkube-agent '$(DESTDIR)$(BINDIR)/'
	@for u in minkube-manager minkube-agent; do \
		echo "install -m 0644 deploy/systemd/$$u.service $(DESTDIR)$(UNITDIR)/$$u.service"; \
		sed -e 's|/usr/local/bin|$(BINDIR)|g' -e 's|/usr/local/share/doc/minkube|$(DOCDIR)|g' \
			-e 's|/etc/minkube|$(SYSCONFDIR)/minkube|g' deploy/systemd/$$u.service \
			> '$(DESTDIR)$(UNITDIR)/'$$u.service; \
		chmod 0644 '$(DESTDIR)$(UNITDIR)/'$$u.service; \
	done
	install -m 0644 deploy/systemd/minkube.sysusers '$(DESTDIR)$(SYSUSERSDIR)/minkube.conf'
	@# The env files may hold a join token: readable by root only (systemd reads them as root).
	@for f in manager.env agent.env; do \
		if [ -e '$(DESTDIR)$(SYSCONFDIR)/minkube/'$$f ]; then \
			echo "keeping $(DESTDIR)$(SYSCONFDIR)/minkube/$$f"; \
		else \
			echo "install -m 0600 deploy/config/$$f $(DESTDIR)$(SYSCONFDIR)/minkube/$$f"; \
			install -m 0600 deploy/config/$$f '$(DESTDIR)$(SYSCONFDIR)/minkube/'$$f; \
		fi; \
	done
	install -m 0644 deploy/config/manager.env deploy/config/agent.env deploy/config/manager.toml \
		deploy/config/agent.toml '$(DESTDIR)$(DOCDIR)/examples/'
	install -m 0644 README.md docs/*.md '$(DESTDIR)$(DOCDIR)/'
	@echo "installed under $(DESTDIR)$(PREFIX); next: systemd-sysusers, then see $(DOCDIR)/operations.md"

## deb: a Debian package of the same install tree (PREFIX=/usr), in $(DEB_DIR)
DEB_DIR ?= target/deb
deb:
	rm -rf '$(abspath $(DEB_DIR))/root'
	@$(MAKE) --no-print-directory install DESTDIR='$(abspath $(DEB_DIR))/root' PREFIX=/usr \
		PROFILE=$(PROFILE) INSTALL_BUILD=$(INSTALL_BUILD)
	deploy/deb/build-deb.sh '$(abspath $(DEB_DIR))/root' '$(abspath $(DEB_DIR))'

## uninstall: removes what install put in place, except the config in $(SYSCONFDIR)/minkube
uninstall:
	rm -f '$(DESTDIR)$(BINDIR)/minkube' '$(DESTDIR)$(BINDIR)/minkube-manager' '$(DESTDIR)$(BINDIR)/minkube-agent' \
		'$(DESTDIR)$(UNITDIR)/minkube-manager.service' '$(DESTDIR)$(UNITDIR)/minkube-agent.service' \
		'$(DESTDIR)$(SYSUSERSDIR)/minkube.conf'
	rm -rf '$(DESTDIR)$(DOCDIR)'

# The compose test cluster (deploy/compose): image tag and compose project.
CLUSTER_IMAGE ?= minkube-node:local
CLUSTER_PROJECT ?= minkube-cluster
cluster_env = MINKUBE_CLUSTER_IMAGE='$(CLUSTER_IMAGE)' MINKUBE_CLUSTER_PROJECT='$(CLUSTER_PROJECT)' BIN_DIR='$(CURDIR)/target/$(profile_dir)'

## cluster-image: the image the compose cluster runs, from $(PROFILE) binaries
cluster-image:
	$(cargo) build --profile $(PROFILE) -p minkube -p minkube-manager -p minkube-agent --bins
	deploy/compose/build-image.sh target/$(profile_dir) '$(CLUSTER_IMAGE)' minkube.cluster=local

## cluster-up: a manager and 3 agent hosts on a private Docker network (deploy/compose)
cluster-up: cluster-image
	$(cluster_env) deploy/compose/cluster.sh up

## cluster-down: removes the compose cluster, its volumes and its task containers
cluster-down:
	$(cluster_env) deploy/compose/cluster.sh down

# Portcullis: `make run` serves the demo, `make test` runs every test. Both install what
# a fresh Debian machine lacks first (`make deps`).

CARGO ?= cargo
PREFIX ?= /usr/local
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
RELEASE := target/release

.PHONY: deps build run test lint bench load-test chaos install fuzz clean

deps:
	@missing=""; \
	command -v cmake >/dev/null 2>&1 || missing="$$missing cmake"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing build-essential"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

build: deps
	$(CARGO) build --release --bins

# Starts four demo upstreams and the gateway in the foreground; Ctrl-C (or SIGTERM to make)
# stops everything (scripts/run-demo.sh).
run: build
	@./scripts/run-demo.sh $(RELEASE) conf/portcullis.yaml

test: deps
	$(CARGO) build --bins
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --no-fail-fast; \
	else \
		$(CARGO) test --no-fail-fast; \
	fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

bench: deps
	$(CARGO) bench --bench hot_paths
	./load-tests/bench.sh

load-test: build
	./load-tests/run-k6.sh smoke.js

# Bounded chaos run (not in `make test`): faults under mixed traffic, report, non-zero exit
# when a target is missed. CHAOS_SECONDS=60 (default 180), SOAK=10m. load-tests/README.md.
chaos: deps
	./load-tests/chaos.sh

install: build
	$(SUDO) install -D -m 0755 $(RELEASE)/portcullis $(PREFIX)/bin/portcullis
	$(SUDO) install -d -m 0755 /etc/portcullis
	@[ -f /etc/portcullis/portcullis.yaml ] || $(SUDO) install -m 0644 conf/portcullis.yaml /etc/portcullis/portcullis.yaml
	@[ -f /etc/portcullis/pingora.yaml ] || $(SUDO) install -m 0644 conf/pingora.yaml /etc/portcullis/pingora.yaml
	$(SUDO) install -D -m 0644 conf/portcullis.service /etc/systemd/system/portcullis.service
	@id portcullis >/dev/null 2>&1 || $(SUDO) useradd --system --no-create-home --shell /usr/sbin/nologin portcullis
	-$(SUDO) systemctl daemon-reload

# Bounded fuzzing of the config parser, path router and credential parsers (not in `make test`).
fuzz:
	FUZZ_SECONDS=$${FUZZ_SECONDS:-60} ./fuzz/run.sh

clean:
	$(CARGO) clean

# Portcullis: `make run` serves the demo, `make test` runs every test. Both install what
# a fresh Debian machine lacks first (`make deps`).

CARGO ?= cargo
PREFIX ?= /usr/local
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
RELEASE := target/release

.PHONY: deps build run test lint bench load-test chaos cache-tests install fuzz mutants clean wasm-filters

deps:
	@missing=""; \
	command -v cmake >/dev/null 2>&1 || missing="$$missing cmake"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing build-essential"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v redis-cli >/dev/null 2>&1 || missing="$$missing redis-tools"; \
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

# Rebuild the proxy-wasm test filters (tests/wasm/*.wasm, committed so `make test` needs
# neither npm nor wabt): AssemblyScript ones with the SDK `@solo-io/proxy-runtime`, hand-written
# WAT ones with wabt's wat2wasm (`apt-get install wabt`).
wasm-filters:
	cd tests/wasm/as && npm ci --no-audit --no-fund && sh build.sh
	for f in tests/wasm/wat/*.wat; do wat2wasm "$$f" -o "tests/wasm/$$(basename "$$f" .wat).wasm"; done

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

bench: deps
	$(CARGO) bench --bench hot_paths
	$(CARGO) bench --bench cache_store
	./load-tests/bench.sh
	$(CARGO) build --release --bins
	./load-tests/callgrind.sh
	WASM=noop ./load-tests/callgrind.sh
	PLUGINS=header-rules ./load-tests/callgrind.sh

load-test: build
	./load-tests/run-k6.sh smoke.js

# Bounded chaos run (not in `make test`): faults under mixed traffic, report, non-zero exit
# when a target is missed. CHAOS_SECONDS=60 (default 180), SOAK=10m. load-tests/README.md.
chaos: deps
	./load-tests/chaos.sh

# The HTTP caching conformance suite (not in `make test`: CI has no copy of it). Clone
# github.com/http-tests/cache-tests and pass its path; prints required/optimal/total passed
# (docs/cache.md). FAILS=1 lists the rest.
CACHE_TESTS ?= ../cache-tests
cache-tests:
	$(CARGO) build --bins
	./scripts/cache-tests.sh $(CACHE_TESTS) target/debug/portcullis

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

# Mutation testing (not in `make test`): cargo-mutants over the modules where a silent bug
# costs most, judged by the library's unit tests alone (`-C --lib` builds and runs only the
# lib test binary: about 6 s per mutant here, 930 mutants in 87 min). --in-place mutates this
# tree and reuses target/mutants; do not edit or build here while it runs. lld links it when
# installed (apt-get install lld). Narrow it with MUTANTS_FILES="src/upstream/retry.rs" or
# MUTANTS_ARGS="--re take_budget"; MUTANTS_ARGS=--iterate re-tests only what was not caught.
MUTANTS_FILES ?= src/routing/mod.rs src/routing/path.rs src/routing/pattern.rs \
	src/auth/jwt.rs src/auth/api_key.rs src/auth/cache.rs src/auth/revocation.rs \
	src/ratelimit/local.rs src/ratelimit/mod.rs src/ratelimit/cluster.rs \
	src/upstream/retry.rs src/upstream/breaker.rs src/cache/key.rs src/cache/policy.rs \
	src/view.rs
MUTANTS_ARGS ?=
MUTANTS_RUSTFLAGS := $(if $(shell command -v ld.lld 2>/dev/null),-C link-arg=-fuse-ld=lld,)
mutants:
	@command -v cargo-mutants >/dev/null 2>&1 || $(CARGO) install cargo-mutants --locked
	RUSTFLAGS="$(MUTANTS_RUSTFLAGS)" $(CARGO) mutants --in-place --no-shuffle --profile mutants \
		-C --lib $(foreach f,$(MUTANTS_FILES),--file $(f)) $(MUTANTS_ARGS)

clean:
	$(CARGO) clean

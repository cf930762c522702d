# The two commands: `make run` (the whole system with demo data) and `make test` (every test suite).
# PostgreSQL is found by scripts/postgres.sh: DATABASE_URL's server, else 127.0.0.1:5432, else a
# project-private cluster in .pgdata/ started from the local PostgreSQL binaries.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
BIN := target/debug/smartscheduler
RUN_DB ?= smartscheduler
ADDR ?= 127.0.0.1:8080
# `make chaos`: seconds of faults per run, number of runs, which faults (all, nats, kill, conn, or a list
# such as kill,clock; nats runs the broker topology); SEED repeats a run (run k uses SEED + k).
SECONDS ?= 45
RUNS ?= 20
FAULTS ?= all
SEED ?=

.PHONY: nats-server help run port-free test test-rust test-chaos test-frontend test-e2e test-topology test-fuzz-api lint bench nchan chaos frontend frontend-deps chromium nginx pg-stop clean

help:
	@echo "make run     build everything and serve the console with demo data on http://$(ADDR) (ADDR=host:port to change)"
	@echo "make test    every test suite: lint, Rust unit + integration (real PostgreSQL), a short fault run, frontend unit,"
	@echo "             browser end-to-end, the nginx topology, the API fuzzer"
	@echo "make bench   benchmarks; figures go to docs/performance.md (BENCH_ARGS='--only 9' runs one section)"
	@echo "make chaos   fault-injection soak: SECONDS=45 RUNS=20 FAULTS=all|nats|kill|conn|<list> [SEED=n] (docs/chaos.md)"
	@echo "make lint    cargo fmt --check and clippy -D warnings"

run: port-free frontend
	$(CARGO) build --bin smartscheduler
	@server=$$(scripts/postgres.sh url); \
	if [ -n "$${DATABASE_URL:-}" ]; then url=$$DATABASE_URL; else \
	  url="$$server/$(RUN_DB)"; scripts/create-db.sh "$$server" "$(RUN_DB)"; fi; \
	export DATABASE_URL="$$url"; \
	echo "make run: database $${url%%\?*}"; \
	$(BIN) migrate && $(BIN) seed --demo && \
	echo "make run: serving the console built into $(BIN) with demo data; Ctrl-C stops it" && \
	exec $(BIN) serve --dev --addr "$(ADDR)"

# Says at once, before building, when something already listens on ADDR.
port-free:
	@addr='$(ADDR)'; host=$${addr%:*}; port=$${addr##*:}; host=$${host#[}; host=$${host%]}; \
	if (exec 3<>"/dev/tcp/$$host/$$port") 2>/dev/null; then \
	  echo "make run: $(ADDR) is taken (another make run, or another program, listens there)."; \
	  echo "make run: pick another address, for example: make run ADDR=$${addr%:*}:$$((port + 1))"; \
	  exit 1; fi

# The frontend first: the binary embeds frontend/dist when it is built (see build.rs), so every suite
# after it runs against the console a user gets.
test: frontend lint test-rust test-chaos test-frontend test-e2e test-topology test-fuzz-api
	@echo "make test: all suites passed"

test-rust: nats-server
	@server=$$(scripts/postgres.sh url); \
	SMARTSCHEDULER_TEST_ADMIN_URL="$$server/postgres" $(CARGO) test --all-targets --locked

# A short fault-injection run (docs/chaos.md): two runs of 20 s with every kind of fault on PostgreSQL
# alone, and one of 20 s on the broker topology (NATS cluster, relays, edge nodes) with the NATS faults too.
test-chaos: nats-server
	$(CARGO) build --locked --bin smartscheduler --bin smartscheduler-chaos
	@server=$$(scripts/postgres.sh url); \
	SMARTSCHEDULER_TEST_ADMIN_URL="$$server/postgres" target/debug/smartscheduler-chaos --seconds 20 --runs 2 --faults all && \
	SMARTSCHEDULER_TEST_ADMIN_URL="$$server/postgres" target/debug/smartscheduler-chaos --seconds 20 --runs 1 --faults nats

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

frontend-deps:
	@cd frontend && if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then npm ci --no-audit --no-fund; fi

frontend: frontend-deps
	cd frontend && npm run build

test-frontend: frontend-deps
	cd frontend && npm test

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" != 0 ]; then echo "the browser tests need Debian's chromium: install it with 'sudo apt-get install chromium'" >&2; exit 1; fi; \
	  echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test-e2e: chromium frontend
	$(CARGO) build --bin smartscheduler --locked
	@server=$$(scripts/postgres.sh url); db="ss_e2e_$$(date +%s)_$$$$"; \
	scripts/create-db.sh "$$server" "$$db"; \
	trap '$(CURDIR)/scripts/create-db.sh --drop "$$server" "$$db"' EXIT; \
	cd frontend && SMARTSCHEDULER_BIN="$(CURDIR)/$(BIN)" DATABASE_URL="$$server/$$db" npm run test:e2e

# Debian's nats-server (2.9, JetStream) for the broker tests, which start their own servers on free ports.
# RUNLEVEL=1: the package's scripts start no system-wide service.
nats-server:
	@command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || { \
	  if [ "$$(id -u)" != 0 ]; then echo "the broker tests need Debian's nats-server: install it with 'sudo apt-get install nats-server'" >&2; exit 1; fi; \
	  echo "installing Debian's nats-server for the broker tests"; \
	  apt-get update -qq && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null; }

# Debian's nginx for the topology test. RUNLEVEL=1 keeps the package's scripts from starting the
# system-wide nginx service on a machine without systemd (the test runs its own nginx).
nginx:
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { \
	  if [ "$$(id -u)" != 0 ]; then echo "the topology test needs Debian's nginx: install it with 'sudo apt-get install nginx'" >&2; exit 1; fi; \
	  echo "installing Debian's nginx for the topology test"; \
	  apt-get update -qq && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; }

# The production topology of deploy/nginx (TLS, HTTP/2, two `serve` instances on one database) in Chromium.
test-topology: chromium nginx nats-server frontend
	$(CARGO) build --bin smartscheduler --locked
	@server=$$(scripts/postgres.sh url); db="ss_topology_$$(date +%s)_$$$$"; \
	scripts/create-db.sh "$$server" "$$db"; \
	trap '$(CURDIR)/scripts/create-db.sh --drop "$$server" "$$db"' EXIT; \
	cd frontend && SMARTSCHEDULER_BIN="$(CURDIR)/$(BIN)" DATABASE_URL="$$server/$$db" npm run test:topology

# The HTTP API fuzzed from its own OpenAPI document (schemathesis, installed into .tmp/fuzz-venv on first use).
# FUZZ_EXAMPLES per operation and phase (default 50); docs/fuzzing.md says how to run it longer.
test-fuzz-api:
	$(CARGO) build --bin smartscheduler --locked
	scripts/fuzz-api.sh $(BIN)

# The bench's peer (section 9): Debian's nginx with the nchan module, run by the bench on a loopback port
# with its own configuration. Installed only here; `make test` never needs it. (Debian's packages do not
# start a service where there is no init system or policy-rc.d forbids it, as in containers; elsewhere the
# stock nginx service starts too, and the bench does not use it.)
NCHAN_MODULE := /usr/lib/nginx/modules/ngx_nchan_module.so
nchan:
	@if [ ! -x /usr/sbin/nginx ] || [ ! -f $(NCHAN_MODULE) ]; then \
	  echo "installing Debian's nginx and libnginx-mod-nchan for the bench's peer (section 9)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      nginx libnginx-mod-nchan >/dev/null; } || echo "could not install nchan: section 9 will say so"; fi

bench: nchan nats-server
	$(CARGO) build --release --bin smartscheduler-bench --bin smartscheduler
	@server=$$(scripts/postgres.sh url); \
	ulimit -n 65536 2>/dev/null || ulimit -n "$$(ulimit -Hn)" 2>/dev/null || true; \
	SMARTSCHEDULER_TEST_ADMIN_URL="$$server/postgres" target/release/smartscheduler-bench --out docs/performance.md $(BENCH_ARGS)

chaos: $(if $(findstring nats,$(FAULTS)),nats-server)
	$(CARGO) build --release --locked --bin smartscheduler --bin smartscheduler-chaos
	@server=$$(scripts/postgres.sh url); \
	ulimit -n 65536 2>/dev/null || ulimit -n "$$(ulimit -Hn)" 2>/dev/null || true; \
	SMARTSCHEDULER_TEST_ADMIN_URL="$$server/postgres" target/release/smartscheduler-chaos \
	  --seconds $(SECONDS) --runs $(RUNS) --faults $(FAULTS) $(if $(SEED),--seed $(SEED))

pg-stop:
	@scripts/postgres.sh stop

clean:
	$(CARGO) clean
	rm -rf frontend/node_modules frontend/dist

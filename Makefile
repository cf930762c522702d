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

.PHONY: help run test test-rust test-frontend test-e2e lint bench nchan frontend frontend-deps chromium pg-stop clean

help:
	@echo "make run     build everything and serve the console with demo data on http://$(ADDR)"
	@echo "make test    every test suite: Rust unit + integration (real PostgreSQL), frontend unit, browser end-to-end"
	@echo "make bench   benchmarks; figures go to docs/performance.md (one section alone: make bench, then target/release/smartscheduler-bench --only 9)"
	@echo "make lint    cargo fmt --check and clippy -D warnings"

run: frontend
	$(CARGO) build --bin smartscheduler
	@server=$$(scripts/postgres.sh url); \
	if [ -n "$${DATABASE_URL:-}" ]; then url=$$DATABASE_URL; else \
	  url="$$server/$(RUN_DB)"; scripts/create-db.sh "$$server" "$(RUN_DB)"; fi; \
	export DATABASE_URL="$$url"; \
	echo "database: $${url%%\?*}"; \
	$(BIN) migrate && $(BIN) seed --demo && \
	exec $(BIN) serve --dev --addr "$(ADDR)" --static-dir frontend/dist

test: lint test-rust test-frontend test-e2e
	@echo "make test: all suites passed"

test-rust:
	@server=$$(scripts/postgres.sh url); \
	SMARTSCHEDULER_TEST_ADMIN_URL="$$server/postgres" $(CARGO) test --all-targets --locked

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
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test-e2e: chromium frontend
	$(CARGO) build --bin smartscheduler --locked
	@server=$$(scripts/postgres.sh url); db="ss_e2e_$$(date +%s)_$$$$"; \
	scripts/create-db.sh "$$server" "$$db"; \
	trap '$(CURDIR)/scripts/create-db.sh --drop "$$server" "$$db"' EXIT; \
	cd frontend && SMARTSCHEDULER_BIN="$(CURDIR)/$(BIN)" DATABASE_URL="$$server/$$db" npm run test:e2e

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

bench: nchan
	$(CARGO) build --release --bin smartscheduler-bench --bin smartscheduler
	@server=$$(scripts/postgres.sh url); \
	ulimit -n "$$(ulimit -Hn)" 2>/dev/null || true; \
	SMARTSCHEDULER_TEST_ADMIN_URL="$$server/postgres" target/release/smartscheduler-bench --out docs/performance.md $(BENCH_ARGS)

pg-stop:
	scripts/postgres.sh stop

clean:
	$(CARGO) clean
	rm -rf frontend/node_modules frontend/dist

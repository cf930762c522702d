#!/usr/bin/env bash
# scripts/fuzz-api.sh BIN: fuzz the HTTP API from its own OpenAPI document with schemathesis.
#
# Starts `BIN serve --dev` on a free port against a fresh demo database, signs a token for dana (all four
# regions), and runs schemathesis against GET /api/openapi.json: every operation but the endless event
# stream, positive and negative inputs. Fails on any server error or any response that does not conform
# to the document (status, content type, headers, body schema). Budget: FUZZ_EXAMPLES test cases per
# operation and phase (default 50), FUZZ_SEED for a reproducible run, FUZZ_SCHEMA=FILE to fuzz a build
# that does not serve the document (an older one) with a document from a file; see docs/fuzzing.md.
#
# schemathesis is installed from PyPI into .tmp/fuzz-venv (ignored by git) the first time, and again only
# when SCHEMATHESIS_VERSION changes.
set -euo pipefail
bin=$(realpath "$1")
examples=${FUZZ_EXAMPLES:-50}
schema=${FUZZ_SCHEMA:+$(realpath "$FUZZ_SCHEMA")}
seed=${FUZZ_SEED:-$RANDOM}
version=${SCHEMATHESIS_VERSION:-4.32.5}
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/.tmp/fuzz-venv

site_custom=$root/scripts/fuzz-api-sitecustomize.py
installed() {
    [ "$("$venv/bin/st" --version 2>/dev/null)" = "st, version $version" ] \
        && cmp -s "$site_custom" "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/sitecustomize.py"
}
if ! installed; then
    python3 -c 'import venv, ensurepip' 2>/dev/null \
        || { echo "fuzz-api.sh: python3 with venv is needed: apt-get install python3 python3-venv" >&2; exit 1; }
    echo "installing schemathesis $version into .tmp/fuzz-venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
    cp "$site_custom" "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/sitecustomize.py"
fi

server=$("$root/scripts/postgres.sh" url)
db="ss_fuzz_$(date +%s)_$$"
"$root/scripts/create-db.sh" "$server" "$db"
work=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; fi
    "$root/scripts/create-db.sh" --drop "$server" "$db" || true
    rm -rf "$work"
}
trap cleanup EXIT

export DATABASE_URL="$server/$db"
SMARTSCHEDULER_AUTH_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
export SMARTSCHEDULER_AUTH_SECRET RUST_LOG=${RUST_LOG:-warn}
"$bin" migrate >/dev/null
"$bin" seed --demo >/dev/null
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin" serve --dev --addr "127.0.0.1:$port" >"$work/server.log" 2>&1 &
pid=$!
token=$("$bin" token --dispatcher dana --ttl 1h)
python3 - "$port" <<'PY' || { echo "fuzz-api.sh: the server did not become ready:" >&2; cat "$work/server.log" >&2; exit 1; }
import sys, time, urllib.request
for _ in range(300):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=1)
        sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit(1)
PY

started=$(date +%s)
status=0
# From the scratch folder: schemathesis and Hypothesis keep their example databases in the working directory.
cd "$work"
"$venv/bin/st" run "${schema:-http://127.0.0.1:$port/api/openapi.json}" \
    --url "http://127.0.0.1:$port" \
    --header "Authorization: Bearer $token" \
    --exclude-path /api/events \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
    --mode all --max-examples "$examples" --seed "$seed" \
    --request-timeout 10 --workers 2 --no-color \
    || status=$?
echo "schemathesis: seed $seed, $examples examples per operation, $(($(date +%s) - started)) s"
if [ "$status" -ne 0 ]; then
    # What the server logged about the failures (a 500 says only "it has been logged").
    echo "fuzz-api.sh: the server's errors and warnings during the run:" >&2
    grep -E " (ERROR|WARN) " "$work/server.log" | grep -v "built without the browser console" | tail -n 40 >&2 || true
fi
if grep -q "panicked" "$work/server.log"; then
    echo "fuzz-api.sh: the server panicked:" >&2
    grep -A5 "panicked" "$work/server.log" >&2
    status=1
fi
exit $status

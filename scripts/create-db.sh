#!/usr/bin/env bash
# scripts/create-db.sh SERVER_URL NAME         create database NAME if it does not exist
# scripts/create-db.sh --drop SERVER_URL NAME  drop it (forcefully: test databases only)
# Uses psql from the PostgreSQL client binaries (beside the server binaries when psql is not on PATH).
set -euo pipefail
drop=no
if [ "${1:-}" = --drop ]; then drop=yes; shift; fi
server=$1 name=$2
[[ "$name" =~ ^[a-z_][a-z0-9_]*$ ]] || { echo "create-db.sh: bad database name $name" >&2; exit 2; }
psql_bin=$(command -v psql || ls -d /usr/lib/postgresql/*/bin/psql 2>/dev/null | sort -V | tail -n 1)
[ -n "$psql_bin" ] || { echo "create-db.sh: psql not found: apt-get install postgresql-client" >&2; exit 1; }
if [ $drop = yes ]; then
    "$psql_bin" "$server/postgres" -qAtc "DROP DATABASE IF EXISTS $name WITH (FORCE)" >/dev/null
    exit 0
fi
exists=$("$psql_bin" "$server/postgres" -qAtc "SELECT 1 FROM pg_database WHERE datname = '$name'")
if [ "$exists" != 1 ]; then
    if "$psql_bin" "$server/postgres" -qAtc "CREATE DATABASE $name" >/dev/null 2>&1; then
        echo "create-db.sh: created database $name on ${server#*://}" >&2
    else  # created meanwhile by a concurrent call
        "$psql_bin" "$server/postgres" -qAtc "SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1
    fi
fi

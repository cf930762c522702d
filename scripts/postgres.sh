#!/usr/bin/env bash
# Finds a PostgreSQL server for `make run` and `make test` and prints its base URL (no database name),
# for example postgres://postgres@127.0.0.1:5432
#
#   scripts/postgres.sh url    the server to use, starting a project-private one if needed
#   scripts/postgres.sh stop   stop the project-private cluster, if it runs
#
# Order: 1. DATABASE_URL's server, if DATABASE_URL is set;
#        2. 127.0.0.1:5432, if a server answers there (every dev and CI machine of this project has one);
#        3. a project-private cluster: initdb into $SS_PG_DIR (default .pgdata/, git-ignored) on its own port,
#           from the local PostgreSQL binaries (as root, initdb and postgres run as the `postgres` user);
#        4. else a one-line message naming what to install.
# SS_PG_MODE=private skips steps 1 and 2 (the test suite uses it to exercise step 3); SS_PG_PORT picks the port.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
data_root=${SS_PG_DIR:-$root/.pgdata}
mode=${SS_PG_MODE:-auto}
# A port per checkout, so two checkouts can each run their own cluster.
default_port=$((55000 + $(printf '%s' "$data_root" | cksum | cut -d' ' -f1) % 1000))
port=${SS_PG_PORT:-$default_port}

die() { echo "postgres.sh: $*" >&2; exit 1; }
say() { echo "postgres.sh: $*" >&2; }  # what it did, on stderr: stdout carries only the URL

find_bindir() {
    if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
        pg_config --bindir; return
    fi
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$d" ] && [ -x "$d/initdb" ] && { echo "$d"; return; }
    command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return; }
    return 1
}

answers() { # host port
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$1" -p "$2" -t 2
    else
        (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
    fi
}

as_owner() { # run a command as the cluster owner (postgres when we are root)
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

server_of_database_url() {
    # postgres://user:pass@host:port/db?opts -> postgres://user:pass@host:port
    local rest=${DATABASE_URL#*://}
    local scheme=${DATABASE_URL%%://*}
    rest=${rest%%\?*}
    echo "$scheme://${rest%%/*}"
}

start_private() {
    local bindir
    bindir=$(find_bindir) || die "no PostgreSQL server found: install it (Debian/Ubuntu: apt-get install postgresql) or set DATABASE_URL"
    local data="$data_root/data" run="$data_root/run" log="$data_root/postgres.log"
    mkdir -p "$data_root"
    exec 9>"$data_root/.lock"
    flock 9   # two make invocations at once: one initialises, the other waits
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user to own the cluster (apt-get install postgresql creates it)"
        chown postgres "$data_root"
    fi
    if [ ! -s "$data/PG_VERSION" ]; then
        mkdir -p "$data"
        [ "$(id -u)" = 0 ] && chown postgres "$data"
        as_owner "$bindir/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-instructions >"$data_root/initdb.log" 2>&1 \
            || die "initdb failed; see $data_root/initdb.log"
        say "created a project-private PostgreSQL cluster in $data (nothing answered on 127.0.0.1:5432)"
    fi
    mkdir -p "$run"
    [ "$(id -u)" = 0 ] && chown postgres "$run" "$data_root"
    # TLS on, like a managed server (and Debian's cluster): a self-signed certificate for localhost/127.0.0.1,
    # so that sslmode=require works against this cluster too (verify-ca with sslrootcert=$data/server.crt).
    local ssl=""
    if [ ! -s "$data/server.crt" ] && command -v openssl >/dev/null 2>&1; then
        openssl req -new -x509 -days 3650 -nodes -subj /CN=localhost \
            -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -addext "basicConstraints=critical,CA:TRUE" \
            -keyout "$data/server.key" -out "$data/server.crt" >/dev/null 2>&1 || rm -f "$data/server.key" "$data/server.crt"
        if [ -s "$data/server.crt" ]; then
            chmod 600 "$data/server.key"
            [ "$(id -u)" = 0 ] && chown postgres "$data/server.key" "$data/server.crt"
        fi
    fi
    [ -s "$data/server.crt" ] && ssl="-c ssl=on"
    if ! answers 127.0.0.1 "$port"; then
        as_owner "$bindir/pg_ctl" -D "$data" -l "$log" -w -t 30 \
            -o "-p $port -k $run -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on $ssl" start >/dev/null 2>&1 9>&- \
            || die "the private cluster did not start; see $log"
        say "started the project-private PostgreSQL on 127.0.0.1:$port (data $data, log $log); it keeps running: stop it with 'make pg-stop'"
    else
        say "using the project-private PostgreSQL on 127.0.0.1:$port (data $data); stop it with 'make pg-stop'"
    fi
    echo "postgres://postgres@127.0.0.1:$port"
}

case "${1:-url}" in
    url)
        if [ "$mode" != private ] && [ -n "${DATABASE_URL:-}" ]; then
            server_of_database_url; exit 0
        fi
        if [ "$mode" != private ] && answers 127.0.0.1 5432; then
            echo "postgres://postgres@127.0.0.1:5432"; exit 0
        fi
        start_private
        ;;
    stop)
        bindir=$(find_bindir) || exit 0
        if [ -s "$data_root/data/postmaster.pid" ]; then
            as_owner "$bindir/pg_ctl" -D "$data_root/data" -m fast -w stop >/dev/null 2>&1 || true
            say "stopped the project-private PostgreSQL (data $data_root/data kept; 'make run' starts it again)"
        else
            say "the project-private PostgreSQL is not running"
        fi
        ;;
    *) die "usage: scripts/postgres.sh [url|stop]" ;;
esac

#!/bin/bash
# scripts/receipts-cost.sh: what delivery receipts cost PostgreSQL (issue 24, part 1), measured with pgbench
# against ss_record_receipt on a fresh database: 1,000 dispatchers, every report moving its dispatcher further
# (the worst case: each one writes a row and NOTIFYs). 200 reports/s is 1,000 consoles at one report per 5 s
# under a steady event stream; 4,000 reports/s is the naive design (a report per applied event) for only 20
# consoles at 200 events/s. Prints the PostgreSQL backends' CPU (% of one core, from /proc) and rows
# written/s. Needs pgbench (postgresql-contrib / postgresql-client) and `cargo build` first. This is the
# unbatched baseline, one transaction per report; what consoles cost through the server, whose reports are
# stored in batches, is `make bench` section 16 (docs/performance.md).
set -e
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
U=${SERVER_URL:-$("$(dirname "$0")/postgres.sh" url)}
DB=rcpt_bench_$$
psql -q $U/postgres -c "CREATE DATABASE $DB"
DATABASE_URL=$U/$DB "$(dirname "$0")/../target/debug/smartscheduler" migrate >/dev/null
psql -q $U/$DB <<SQL
INSERT INTO dispatchers (id, name) SELECT 'd' || i, 'D ' || i FROM generate_series(1,1000) i;
INSERT INTO dispatcher_groups (dispatcher_id, group_key) SELECT 'd' || i, 'region:north' FROM generate_series(1,1000) i;
UPDATE stream_meta SET last_seq = 9000000000000000000;
SQL
EPOCH=$(psql -tA $U/$DB -c "SELECT epoch FROM stream_meta")
cat > "$work/rcpt.pgb" <<P
\set d random(1, 1000)
SELECT * FROM ss_record_receipt('d' || :d, '$EPOCH', (extract(epoch from clock_timestamp()) * 1000000)::bigint, ARRAY[concat('region', chr(58), 'north')]);
P
for rate in 200 4000; do
  psql -q $U/$DB -c "SELECT pg_stat_reset()" >/dev/null
  pgbench -n -M extended -c 2 -j 1 -R $rate -T 20 -f "$work/rcpt.pgb" $U/$DB > "$work/pgb.out" 2>&1 &
  sleep 1
  pids=$(psql -tA $U/$DB -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbench'")
  t0=0; for p in $pids; do t0=$((t0 + $(awk '{print $14+$15}' /proc/$p/stat))); done
  s0=$(date +%s.%N); rows0=$(psql -tA $U/$DB -c "SELECT count(*) FROM console_receipts")
  sleep 15
  t1=0; for p in $pids; do t1=$((t1 + $(awk '{print $14+$15}' /proc/$p/stat))); done
  s1=$(date +%s.%N); rows1=$(psql -tA $U/$DB -c "SELECT count(*) FROM console_receipts")
  wait
  el=$(echo "$s1 - $s0" | bc)
  echo "rate $rate reports/s: PG backend CPU $(echo "scale=2; ($t1 - $t0) / $el" | bc) % of a core (ticks of 10 ms), rows written/s $(echo "scale=1; ($rows1 - $rows0) / $el" | bc), $(grep -E 'latency average|tps' "$work/pgb.out" | tr '\n' ' ')"
done
psql -q $U/postgres -c "DROP DATABASE $DB"

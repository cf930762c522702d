-- 02_pending.sql: the publish backlog (rows in the outbox) and its 20 oldest rows.
--
-- When to use it: 01_health.sql or `outbox status` shows pending rows or an old oldest-pending age, and
-- you want to know what is stuck: one event type, one writer, replayed copies, or everything.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/02_pending.sql
--
-- Read-only. Rows leave the outbox when a relay publishes them; if they stay while a relay is alive,
-- look for a long transaction holding the stream_meta row lock (03_relay_lag.sql shows the relays).

\echo '== backlog =='
SELECT count(*)                                        AS pending,
       min(created_at)                                 AS oldest_created_at,
       round(extract(epoch FROM now() - min(created_at))::numeric, 1) AS oldest_age_s,
       count(*) FILTER (WHERE replay_of IS NOT NULL)   AS replayed_copies,
       pg_size_pretty(coalesce(sum(pg_column_size(payload)), 0)) AS payload_bytes
FROM outbox;

\echo '== backlog by event type =='
SELECT event_type, count(*) AS pending, min(created_at) AS oldest_created_at
FROM outbox GROUP BY event_type ORDER BY pending DESC, event_type;

\echo '== 20 oldest pending rows =='
SELECT id, event_id, event_type, aggregate_id, groups, replay_of, created_at,
       round(extract(epoch FROM now() - created_at)::numeric, 1) AS age_s,
       pg_column_size(payload)                                    AS payload_bytes
FROM outbox
ORDER BY id
LIMIT 20;

\echo '== sessions holding the publish fence or waiting for it (long transactions block the relay) =='
SELECT a.pid, a.application_name, a.state, a.wait_event_type, a.wait_event,
       now() - a.xact_start AS xact_age, left(a.query, 80) AS query
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.xact_start IS NOT NULL
ORDER BY a.xact_start
LIMIT 20;

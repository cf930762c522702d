-- 01_health.sql: the event stream's health at a glance.
--
-- When to use it: first thing when anyone reports "the sheet is not updating", during an incident, or as a
-- routine check. One row per question; read the `verdict` column first.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/01_health.sql
--
-- Read-only. Cheap: the outbox count scans the backlog only; publish counts use the BRIN index on
-- event_log.published_at; the oldest kept seq uses the primary keys of the partitions.
-- The same numbers, as JSON: smartscheduler outbox status --json.

\echo '== stream =='
SELECT m.epoch,
       m.epoch || '-' || m.last_seq                                   AS last_position,
       m.last_published_at,
       round(extract(epoch FROM now() - m.last_published_at)::numeric, 1) AS last_publish_age_s,
       m.retention,
       (SELECT m.epoch || '-' || min(seq) FROM event_log)             AS oldest_kept_position,
       m.expired_through_seq,
       m.partitions_until,
       m.created_at                                                   AS epoch_created_at
FROM stream_meta m;

\echo '== checks (verdict) =='
WITH facts AS (
    SELECT (SELECT count(*) FROM outbox)                                          AS pending,
           (SELECT extract(epoch FROM now() - created_at) FROM outbox ORDER BY id LIMIT 1) AS oldest_pending_s,
           (SELECT count(*) FROM node_heartbeats
             WHERE role = 'relay' AND beat_at > now() - interval '15 seconds')     AS relays_alive,
           (SELECT count(*) FROM node_heartbeats
             WHERE role = 'listener' AND beat_at > now() - interval '15 seconds')  AS listeners_alive,
           (SELECT count(*) FROM event_log WHERE published_at > now() - interval '1 minute') AS published_1m,
           (SELECT count(*) FROM event_log WHERE published_at > now() - interval '1 hour')   AS published_1h,
           (SELECT partitions_until - now() FROM stream_meta)                      AS partition_headroom
)
SELECT check_name, value, verdict
FROM facts, LATERAL (VALUES
    ('pending rows',              pending::text,
        CASE WHEN pending > 0 AND relays_alive = 0 THEN 'BAD: backlog and no relay alive' ELSE 'ok' END),
    ('oldest pending age (s)',    coalesce(round(oldest_pending_s::numeric, 1)::text, '-'),
        CASE WHEN oldest_pending_s > 30 THEN 'BAD: older than 30 s' ELSE 'ok' END),
    ('relays alive',              relays_alive::text,
        CASE WHEN relays_alive = 0 THEN 'WARN: nothing will be published' ELSE 'ok' END),
    ('listeners alive',           listeners_alive::text,
        CASE WHEN listeners_alive = 0 THEN 'WARN: no serve process streams to browsers' ELSE 'ok' END),
    ('publish rate 1 min (ev/s)', round(published_1m / 60.0, 2)::text, 'info'),
    ('publish rate 1 h (ev/s)',   round(published_1h / 3600.0, 2)::text, 'info'),
    ('partition headroom',        partition_headroom::text,
        CASE WHEN partition_headroom < interval '1 day' THEN 'BAD: run smartscheduler retention' ELSE 'ok' END)
) AS c(check_name, value, verdict);

-- 03_relay_lag.sql: how far behind the relay is, and which relays and listeners are alive.
--
-- When to use it: events arrive late in browsers, the smartscheduler_publish_lag_seconds alert fires, or
-- you want to confirm a relay or serve process is up after a restart.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/03_relay_lag.sql
--
-- Read-only. Publish lag is measured per event from occurred_at (the writer's outbox insert) to
-- published_at (the relay's move into event_log), over the last hour.

\echo '== last publish =='
SELECT epoch || '-' || last_seq                               AS last_position,
       last_published_at,
       round(extract(epoch FROM now() - last_published_at)::numeric, 1) AS last_publish_age_s,
       (SELECT count(*) FROM outbox)                          AS pending
FROM stream_meta;

\echo '== publish lag over the last hour (seconds) =='
SELECT count(*)                                                                          AS events,
       round((percentile_cont(0.50) WITHIN GROUP (ORDER BY lag_s))::numeric, 3)          AS p50_s,
       round((percentile_cont(0.90) WITHIN GROUP (ORDER BY lag_s))::numeric, 3)          AS p90_s,
       round((percentile_cont(0.99) WITHIN GROUP (ORDER BY lag_s))::numeric, 3)          AS p99_s,
       round(max(lag_s)::numeric, 3)                                                     AS max_s
FROM (SELECT extract(epoch FROM published_at - occurred_at) AS lag_s
      FROM event_log WHERE published_at > now() - interval '1 hour') AS l;

\echo '== publish lag per 5 minutes, last hour =='
SELECT date_bin('5 minutes', published_at, timestamptz '2000-01-01') AS bucket,
       count(*)                                                      AS events,
       round(avg(extract(epoch FROM published_at - occurred_at))::numeric, 3) AS avg_lag_s,
       round(max(extract(epoch FROM published_at - occurred_at))::numeric, 3) AS max_lag_s
FROM event_log
WHERE published_at > now() - interval '1 hour'
GROUP BY 1 ORDER BY 1;

\echo '== relay and listener heartbeats (alive = beat within 15 s) =='
SELECT role, host, pid, node_id, started_at, beat_at,
       round(extract(epoch FROM now() - beat_at)::numeric, 1) AS beat_age_s,
       beat_at > now() - interval '15 seconds'               AS alive
FROM node_heartbeats
ORDER BY role, alive DESC, beat_at DESC;

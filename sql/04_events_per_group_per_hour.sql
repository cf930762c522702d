-- 04_events_per_group_per_hour.sql: published events per group per hour over the last 24 hours,
-- with hours that saw nothing shown as 0.
--
-- When to use it: "region X saw nothing for an hour": check whether events for that group were
-- published at all (0 here: the writers or the relay; non-zero: the delivery side, browsers, membership).
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/04_events_per_group_per_hour.sql
--
-- Read-only. Uses event_log_groups (one row per group and event), so it reads only index-sized rows.
-- Groups listed: every group a dispatcher holds, plus every group that had an event in the window.

\echo '== totals per group, last 24 h =='
SELECT group_key, count(*) AS events, max(published_at) AS last_published_at
FROM event_log_groups
WHERE published_at > now() - interval '24 hours'
GROUP BY group_key
ORDER BY group_key;

\echo '== per group per hour, last 24 h (0 = nothing published that hour) =='
WITH hours AS (
    SELECT generate_series(date_trunc('hour', now() - interval '23 hours'), date_trunc('hour', now()),
                           interval '1 hour') AS hour
), groups AS (
    SELECT group_key FROM dispatcher_groups
    UNION
    SELECT DISTINCT group_key FROM event_log_groups WHERE published_at > now() - interval '24 hours'
), counts AS (
    SELECT group_key, date_trunc('hour', published_at) AS hour, count(*) AS events
    FROM event_log_groups
    WHERE published_at >= date_trunc('hour', now() - interval '23 hours')
    GROUP BY 1, 2
)
SELECT h.hour, g.group_key, coalesce(c.events, 0) AS events
FROM hours h
CROSS JOIN groups g
LEFT JOIN counts c ON c.group_key = g.group_key AND c.hour = h.hour
ORDER BY g.group_key, h.hour;

-- Operations views, the replay index, and a stricter group check. (Later changes always go in new
-- migrations: an applied migration never changes, or sqlx refuses the database.)

-- Groups of an event are distinct (the relay indexes each group of an event once) and never NULL.
CREATE OR REPLACE FUNCTION ss_valid_groups(groups text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT groups IS NOT NULL
       AND array_ndims(groups) = 1
       AND cardinality(groups) BETWEEN 1 AND 32
       AND (SELECT count(g) = cardinality(groups)                     -- no NULLs
               AND count(DISTINCT g) = cardinality(groups)            -- no repeats
               AND coalesce(bool_and(g ~ '^[a-z0-9][a-z0-9:_-]{0,63}$'), false)
            FROM unnest(groups) AS g)
$$;
COMMENT ON FUNCTION ss_valid_groups(text[]) IS
    'True when there are 1 to 32 distinct group keys, each matching ^[a-z0-9][a-z0-9:_-]{0,63}$.';
-- Views for the DBA runbook (sql/) and for ad-hoc inspection.

CREATE VIEW ss_outbox_backlog AS
    SELECT count(*) AS pending,
           min(created_at) AS oldest_created_at,
           extract(epoch FROM now() - min(created_at)) AS oldest_age_s
    FROM outbox;
COMMENT ON VIEW ss_outbox_backlog IS 'The publish backlog: rows waiting in the outbox and the age of the oldest (seconds).';

CREATE VIEW ss_node_health AS
    SELECT role, node_id, host, pid, started_at, beat_at,
           extract(epoch FROM now() - beat_at) AS beat_age_s,
           beat_at > now() - interval '15 seconds' AS alive
    FROM node_heartbeats;
COMMENT ON VIEW ss_node_health IS 'Relays and stream listeners with their heartbeat age; alive = a beat within 15 s.';

CREATE VIEW ss_publish_lag_last_hour AS
    SELECT count(*) AS events,
           percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP
               (ORDER BY extract(epoch FROM published_at - occurred_at)) AS p50_p90_p99_s,
           max(extract(epoch FROM published_at - occurred_at)) AS max_s
    FROM event_log
    WHERE published_at > now() - interval '1 hour';
COMMENT ON VIEW ss_publish_lag_last_hour IS
    'Publish lag (outbox insert to publish, seconds) percentiles p50/p90/p99 and max over the last hour.';

CREATE VIEW ss_events_per_group_hour AS
    SELECT group_key, date_trunc('hour', published_at) AS hour, count(*) AS events
    FROM event_log_groups
    GROUP BY 1, 2;
COMMENT ON VIEW ss_events_per_group_hour IS 'Published events per group per hour, over the retention window.';

CREATE VIEW ss_event_log_partitions AS
    SELECT p.relname AS parent, c.relname AS partition, pg_total_relation_size(c.oid) AS bytes
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    JOIN pg_class p ON p.oid = i.inhparent
    WHERE i.inhparent IN ('event_log'::regclass, 'event_log_groups'::regclass);
COMMENT ON VIEW ss_event_log_partitions IS 'Daily partitions of event_log and event_log_groups with their sizes (bytes).';

-- Replay's "has this original been copied already?" check: an index probe instead of a scan of the log tail.
CREATE INDEX event_log_replay_of ON event_log (replay_of) WHERE replay_of IS NOT NULL;

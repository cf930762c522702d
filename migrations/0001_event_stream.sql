-- The event stream: outbox (written by applications), event_log (published, commit-ordered,
-- dense positions) and stream_meta (the epoch and the position counter that is the publish fence).

CREATE FUNCTION ss_valid_groups(groups text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT groups IS NOT NULL
       AND array_ndims(groups) = 1
       AND cardinality(groups) BETWEEN 1 AND 32
       AND NOT EXISTS (
           SELECT 1 FROM unnest(groups) AS g
           WHERE g IS NULL OR g !~ '^[a-z0-9][a-z0-9:_-]{0,63}$'
       )
$$;
COMMENT ON FUNCTION ss_valid_groups(text[]) IS
    'True when every element is a group key (^[a-z0-9][a-z0-9:_-]{0,63}$) and there are 1 to 32 of them.';

CREATE TABLE stream_meta (
    stream              text PRIMARY KEY DEFAULT 'main' CHECK (stream = 'main'),
    epoch               text NOT NULL
                        DEFAULT substr(md5(random()::text || clock_timestamp()::text), 1, 8)
                        CHECK (epoch ~ '^[0-9a-f]{8}$'),
    last_seq            bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    last_published_at   timestamptz,
    retention           interval NOT NULL DEFAULT interval '7 days' CHECK (retention > interval '0'),
    expired_through_seq bigint NOT NULL DEFAULT 0 CHECK (expired_through_seq >= 0),
    partitions_until    timestamptz NOT NULL DEFAULT '-infinity',
    created_at          timestamptz NOT NULL DEFAULT now()
);
INSERT INTO stream_meta DEFAULT VALUES;

COMMENT ON TABLE stream_meta IS
    'One row per event log. Its row lock is the publish fence: a relay holds it while it numbers and moves a batch, '
    'so positions are assigned in commit order and have no holes.';
COMMENT ON COLUMN stream_meta.stream IS 'Always ''main'': there is one event log per database.';
COMMENT ON COLUMN stream_meta.epoch IS
    '8 lowercase hex digits naming this log; the first half of every position (epoch-seq). '
    'Changes only when the log is recreated or restored; clients holding another epoch get event: reset.';
COMMENT ON COLUMN stream_meta.last_seq IS 'The last position published (0 before the first event). Next event gets last_seq + 1.';
COMMENT ON COLUMN stream_meta.last_published_at IS 'When the last batch was published.';
COMMENT ON COLUMN stream_meta.retention IS 'How long event_log keeps events (whole daily partitions older than this are dropped).';
COMMENT ON COLUMN stream_meta.expired_through_seq IS
    'Highest seq removed by retention. A client resuming from a lower seq would miss events and gets event: reset (expired).';
COMMENT ON COLUMN stream_meta.partitions_until IS 'event_log partitions exist up to this instant (exclusive).';
COMMENT ON COLUMN stream_meta.created_at IS 'When this log (epoch) was created.';

CREATE TABLE outbox (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id      uuid NOT NULL DEFAULT gen_random_uuid(),
    event_type    text NOT NULL CHECK (event_type ~ '^[A-Za-z][A-Za-z0-9_.-]{0,63}$'),
    aggregate_id  uuid NOT NULL,
    groups        text[] NOT NULL CHECK (ss_valid_groups(groups)),
    payload       jsonb NOT NULL CHECK (jsonb_typeof(payload) = 'object'),
    replay_of     text CHECK (replay_of ~ '^[0-9a-f]{8}-[0-9]+$'),
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT outbox_payload_size CHECK (pg_column_size(payload) <= 65536),
    CONSTRAINT outbox_payload_no_envelope_keys
        CHECK (NOT payload ?| ARRAY['eventId', 'type', 'position', 'groups', 'occurredAt', 'replayOf'])
);
COMMENT ON TABLE outbox IS
    'Events written by application transactions and not yet published. Write with one '
    'INSERT INTO outbox (event_type, aggregate_id, groups, payload) inside your transaction; the relay moves '
    'committed rows to event_log in id order and deletes them here. Rows that stay here are the publish backlog.';
COMMENT ON COLUMN outbox.id IS 'Insert order. NOT a resume position: transactions commit in any order.';
COMMENT ON COLUMN outbox.event_id IS 'Unique id of the event, kept in event_log and sent to clients for de-duplication.';
COMMENT ON COLUMN outbox.event_type IS 'The SSE event name, for example RecommendationReady.';
COMMENT ON COLUMN outbox.aggregate_id IS 'The entity the event is about (for RecommendationReady: the job id).';
COMMENT ON COLUMN outbox.groups IS 'Dispatcher groups that receive the event, for example {region:north}.';
COMMENT ON COLUMN outbox.payload IS 'A JSON object merged into the SSE data next to the envelope fields; at most 64 KiB.';
COMMENT ON COLUMN outbox.replay_of IS 'For a replayed copy: the position of the original event; NULL otherwise.';
COMMENT ON COLUMN outbox.created_at IS 'When the writer inserted the row (the event''s occurredAt); publish lag is measured from here.';

CREATE TABLE event_log (
    seq           bigint NOT NULL,
    event_id      uuid NOT NULL,
    event_type    text NOT NULL,
    aggregate_id  uuid NOT NULL,
    groups        text[] NOT NULL,
    payload       jsonb NOT NULL,
    replay_of     text,
    occurred_at   timestamptz NOT NULL,
    published_at  timestamptz NOT NULL,
    PRIMARY KEY (seq, published_at)
) PARTITION BY RANGE (published_at);
COMMENT ON TABLE event_log IS
    'Published events in position (seq) order, which is commit order. seq is dense: within the retention window '
    'count(*) = max(seq) - min(seq) + 1. Daily range partitions on published_at; retention drops whole partitions.';
COMMENT ON COLUMN event_log.seq IS 'The position within the epoch; a client position is <epoch>-<seq>.';
COMMENT ON COLUMN event_log.event_id IS 'The outbox event id (clients de-duplicate on it).';
COMMENT ON COLUMN event_log.event_type IS 'The SSE event name.';
COMMENT ON COLUMN event_log.aggregate_id IS 'The entity the event is about (job id for RecommendationReady).';
COMMENT ON COLUMN event_log.groups IS 'Dispatcher groups that receive the event.';
COMMENT ON COLUMN event_log.payload IS 'The writer''s JSON object, merged into the SSE data.';
COMMENT ON COLUMN event_log.replay_of IS 'For a replayed copy, the original position.';
COMMENT ON COLUMN event_log.occurred_at IS 'When the writer committed the event to the outbox (outbox.created_at).';
COMMENT ON COLUMN event_log.published_at IS 'When the relay published it; non-decreasing in seq. Partition key.';

-- One row per (group, event): lets a client of a quiet group resume without scanning a busy log.
CREATE TABLE event_log_groups (
    group_key     text NOT NULL,
    seq           bigint NOT NULL,
    published_at  timestamptz NOT NULL,
    PRIMARY KEY (group_key, seq, published_at)
) PARTITION BY RANGE (published_at);
COMMENT ON TABLE event_log_groups IS
    'Index of event_log by group: one row per (group, event). Resume queries walk (group_key, seq) so that the '
    'cost is the events of the client''s groups, not of the whole log. Partitioned and dropped with event_log.';
COMMENT ON COLUMN event_log_groups.group_key IS 'One of the event''s groups.';
COMMENT ON COLUMN event_log_groups.seq IS 'The event''s position (event_log.seq).';
COMMENT ON COLUMN event_log_groups.published_at IS 'Copy of event_log.published_at (partition key).';

-- Creates the daily partitions of event_log and event_log_groups covering [from_day, until_day).
CREATE FUNCTION ss_ensure_partitions(from_day date, until_day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    d date := from_day;
    created integer := 0;
    suffix text;
BEGIN
    WHILE d < until_day LOOP
        suffix := to_char(d, 'YYYYMMDD');
        IF to_regclass('event_log_p' || suffix) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF event_log FOR VALUES FROM (%L) TO (%L)',
                           'event_log_p' || suffix, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
            EXECUTE format('CREATE INDEX ON %I USING brin (published_at)', 'event_log_p' || suffix);
            EXECUTE format('COMMENT ON TABLE %I IS %L', 'event_log_p' || suffix,
                           'Partition of event_log: events published on ' || d || ' (UTC). Dropped whole by retention.');
            created := created + 1;
        END IF;
        IF to_regclass('event_log_groups_p' || suffix) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF event_log_groups FOR VALUES FROM (%L) TO (%L)',
                           'event_log_groups_p' || suffix, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
            EXECUTE format('COMMENT ON TABLE %I IS %L', 'event_log_groups_p' || suffix,
                           'Partition of event_log_groups for events published on ' || d || ' (UTC).');
        END IF;
        d := d + 1;
    END LOOP;
    UPDATE stream_meta SET partitions_until = GREATEST(partitions_until, until_day::timestamp AT TIME ZONE 'UTC');
    RETURN created;
END
$$;
COMMENT ON FUNCTION ss_ensure_partitions(date, date) IS
    'Creates missing daily (UTC) partitions of event_log and event_log_groups for [from_day, until_day). Idempotent.';

SELECT ss_ensure_partitions((now() AT TIME ZONE 'UTC')::date - 1, (now() AT TIME ZONE 'UTC')::date + 8);

CREATE TABLE node_heartbeats (
    node_id     uuid NOT NULL,
    role        text NOT NULL CHECK (role IN ('relay', 'listener')),
    host        text NOT NULL,
    pid         integer NOT NULL,
    started_at  timestamptz NOT NULL,
    beat_at     timestamptz NOT NULL,
    PRIMARY KEY (node_id, role)
);
COMMENT ON TABLE node_heartbeats IS
    'Liveness of relays and stream listeners: each process updates its rows every few seconds. '
    'A beat older than 15 s means that process is gone or stuck.';
COMMENT ON COLUMN node_heartbeats.node_id IS 'Random id of the process, chosen at start-up.';
COMMENT ON COLUMN node_heartbeats.role IS 'relay (publishes the outbox) or listener (LISTENs and streams to browsers).';
COMMENT ON COLUMN node_heartbeats.host IS 'Host name of the process.';
COMMENT ON COLUMN node_heartbeats.pid IS 'Operating-system process id.';
COMMENT ON COLUMN node_heartbeats.started_at IS 'When the process started.';
COMMENT ON COLUMN node_heartbeats.beat_at IS 'Last heartbeat.';

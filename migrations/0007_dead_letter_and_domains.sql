-- Poison rows and clock steps (issue 11), and the payload limit measured on the wire (issue 13).
--
-- 1. The outbox refuses at INSERT what the relay and the stream cannot publish: every column already had
--    its domain except created_at (any timestamptz, 'infinity' included, which no client can be sent) and the
--    payload size, which measured PostgreSQL's compressed storage instead of the JSON that goes on the wire.
-- 2. event_log gets the same domain, so a row that slipped past (a constraint dropped by hand, a restore)
--    fails the publish in SQL, where the relay can park it, instead of in the code that decodes it.
-- 3. outbox_dead_letter: where such a row is parked, with the error, for a DBA to see and fix or drop.
-- 4. ss_publish_batch stamps published_at as max(clock, last published_at), so published_at never decreases
--    along seq even when the database's clock steps back; ss_publish_batch_parking publishes row by row and
--    parks the rows that fail, for the relay to call when a batch fails on a row.

-- The instants the stream can send: RFC 3339 has four-digit years. Also what sqlx/chrono decode.
CREATE FUNCTION ss_valid_instant(t timestamptz) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT t IS NOT NULL AND t >= '0001-01-01 00:00:00+00' AND t < '10000-01-01 00:00:00+00'
$$;
COMMENT ON FUNCTION ss_valid_instant(timestamptz) IS
    'True for an instant a client can be sent (years 0001 to 9999, UTC; not infinity).';

CREATE TABLE outbox_dead_letter (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    outbox_id     bigint NOT NULL,
    event_id      uuid,
    event_type    text,
    aggregate_id  uuid,
    groups        text[],
    payload       jsonb,
    replay_of     text,
    created_at    timestamptz,
    error         text NOT NULL,
    parked_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE outbox_dead_letter IS
    'Outbox rows that could not be published, with the error. Nothing here reaches clients. To publish one after '
    'fixing it, INSERT its columns into outbox again (sql/08_dead_letters.sql) and delete it here.';
COMMENT ON COLUMN outbox_dead_letter.id IS 'Order in which rows were parked.';
COMMENT ON COLUMN outbox_dead_letter.outbox_id IS 'The row''s id in outbox when it was parked.';
COMMENT ON COLUMN outbox_dead_letter.event_id IS 'outbox.event_id of the parked row.';
COMMENT ON COLUMN outbox_dead_letter.event_type IS 'outbox.event_type of the parked row.';
COMMENT ON COLUMN outbox_dead_letter.aggregate_id IS 'outbox.aggregate_id of the parked row.';
COMMENT ON COLUMN outbox_dead_letter.groups IS 'outbox.groups of the parked row.';
COMMENT ON COLUMN outbox_dead_letter.payload IS 'outbox.payload of the parked row.';
COMMENT ON COLUMN outbox_dead_letter.replay_of IS 'outbox.replay_of of the parked row.';
COMMENT ON COLUMN outbox_dead_letter.created_at IS 'outbox.created_at of the parked row.';
COMMENT ON COLUMN outbox_dead_letter.error IS 'Why it could not be published (the check or PostgreSQL error that refused it).';
COMMENT ON COLUMN outbox_dead_letter.parked_at IS 'When the relay (or this migration) parked it.';

-- Rows already waiting that the new checks would refuse: parked, not lost and not blocking the migration.
WITH bad AS (
    DELETE FROM outbox
    WHERE NOT ss_valid_instant(created_at) OR octet_length(payload::text) > 65536
    RETURNING *
)
INSERT INTO outbox_dead_letter (outbox_id, event_id, event_type, aggregate_id, groups, payload, replay_of, created_at, error)
SELECT id, event_id, event_type, aggregate_id, groups, payload, replay_of, created_at,
       CASE WHEN NOT ss_valid_instant(created_at) THEN 'created_at outside 0001..9999 (migration 0007)'
            ELSE 'payload over 65536 bytes as JSON text (migration 0007)' END
FROM bad;

ALTER TABLE outbox ADD CONSTRAINT outbox_created_at_sendable CHECK (ss_valid_instant(created_at));
-- What goes on the wire is the JSON text, not what PostgreSQL stores (which may be compressed 100:1).
ALTER TABLE outbox DROP CONSTRAINT outbox_payload_size;
ALTER TABLE outbox ADD CONSTRAINT outbox_payload_size CHECK (octet_length(payload::text) <= 65536);

-- Events already published with an instant no client can be sent (only possible before this migration):
-- occurred_at takes the publish time. They cannot be removed (positions are dense) and must not break
-- every stream that reads them.
UPDATE event_log SET occurred_at = published_at WHERE NOT ss_valid_instant(occurred_at);
ALTER TABLE event_log ADD CONSTRAINT event_log_occurred_at_sendable CHECK (ss_valid_instant(occurred_at));
ALTER TABLE event_log ADD CONSTRAINT event_log_published_at_sendable CHECK (ss_valid_instant(published_at));

CREATE OR REPLACE FUNCTION ss_publish_batch(batch_size bigint, channel text)
RETURNS TABLE (
    epoch        text,
    seq          bigint,
    event_id     uuid,
    event_type   text,
    groups       text[],
    payload      text,
    replay_of    text,
    occurred_at  timestamptz,
    published_at timestamptz
)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    v_epoch        text;
    v_last_seq     bigint;
    v_last_at      timestamptz;
    v_needs_parts  boolean;
    v_published_at timestamptz;
    v_count        bigint;
BEGIN
    -- The fence relies on each statement below taking a fresh snapshot once the lock is held, which is
    -- what READ COMMITTED does (a VOLATILE function's statements each take their own).
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'ss_publish_batch needs READ COMMITTED, not %', current_setting('transaction_isolation');
    END IF;

    -- The fence. Every publisher queues here; whoever holds it numbers the next batch from the committed
    -- last_seq, and sees every outbox row that committed before, including rows with lower ids that
    -- committed late.
    SELECT m.epoch, m.last_seq, m.last_published_at, m.partitions_until < now() + interval '2 days'
      INTO v_epoch, v_last_seq, v_last_at, v_needs_parts
      FROM stream_meta m WHERE m.stream = 'main' FOR UPDATE;

    IF v_needs_parts THEN
        PERFORM ss_ensure_partitions((now() AT TIME ZONE 'UTC')::date - 1, (now() AT TIME ZONE 'UTC')::date + 8);
    END IF;

    -- Taken after the fence (not statement_timestamp(), which is when the caller's statement started,
    -- possibly before it waited for the lock), and never before the previous batch's: when the clock steps
    -- back, published_at holds still until the clock catches up. Nothing orders by it (seq is the order), but
    -- retention drops whole time ranges and must not make holes.
    v_published_at := greatest(clock_timestamp(), v_last_at);

    RETURN QUERY
    WITH moved AS (
        DELETE FROM outbox
        -- = ANY(ARRAY(...)) makes these primary-key probes; IN (subquery) gets planned as a hash join over a
        -- scan of the whole outbox, which makes draining a backlog quadratic.
        WHERE outbox.id = ANY (ARRAY(SELECT o.id FROM outbox o ORDER BY o.id LIMIT batch_size))
        RETURNING outbox.id, outbox.event_id, outbox.event_type, outbox.aggregate_id, outbox.groups,
                  outbox.payload, outbox.replay_of, outbox.created_at
    ), numbered AS (
        SELECT moved.*, v_last_seq + row_number() OVER (ORDER BY moved.id) AS seq FROM moved
    ), logged AS (
        INSERT INTO event_log
            (seq, event_id, event_type, aggregate_id, groups, payload, replay_of, occurred_at, published_at)
        SELECT n.seq, n.event_id, n.event_type, n.aggregate_id, n.groups, n.payload, n.replay_of, n.created_at,
               v_published_at
        FROM numbered n
        RETURNING event_log.seq, event_log.event_id, event_log.event_type, event_log.groups,
                  event_log.payload, event_log.replay_of, event_log.occurred_at, event_log.published_at
    ), indexed AS (
        INSERT INTO event_log_groups (group_key, seq, published_at)
        -- The outbox refuses repeated groups (ss_valid_groups), so no DISTINCT is needed here.
        SELECT g, l.seq, l.published_at FROM logged l, unnest(l.groups) AS g
    )
    SELECT v_epoch, l.seq, l.event_id, l.event_type, l.groups, l.payload::text, l.replay_of, l.occurred_at,
           l.published_at
    FROM logged l ORDER BY l.seq;

    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        UPDATE stream_meta SET last_seq = v_last_seq + v_count, last_published_at = v_published_at
         WHERE stream = 'main';
        -- One NOTIFY per batch, carrying only the new last position: listeners read the rows themselves.
        -- Delivered at COMMIT, and only if there is one.
        PERFORM pg_notify(channel, v_epoch || '-' || (v_last_seq + v_count));
    END IF;
END
$$;
COMMENT ON FUNCTION ss_publish_batch(bigint, text) IS
    'The relay''s publish step: under the row lock on stream_meta (the fence), moves up to batch_size committed '
    'outbox rows in id order to event_log, numbered densely after last_seq, advances last_seq and NOTIFYs channel '
    'with <epoch>-<last_seq>. published_at = max(clock, previous published_at). Returns the published events '
    '(payload as jsonb text). Call it in its own READ COMMITTED transaction; the rows are published when that commits.';

-- The careful publish step, for when ss_publish_batch fails on a row: the same move, one row at a time, each
-- in a subtransaction; a row that fails is moved to outbox_dead_letter with the error instead, and the rows
-- after it are published. Slower (a subtransaction per row), so the relay uses it only after a failed batch.
CREATE FUNCTION ss_publish_batch_parking(batch_size bigint, channel text)
RETURNS TABLE (
    epoch        text,
    seq          bigint,
    event_id     uuid,
    event_type   text,
    groups       text[],
    payload      text,
    replay_of    text,
    occurred_at  timestamptz,
    published_at timestamptz
)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    v_epoch        text;
    v_first_seq    bigint;
    v_last_seq     bigint;
    v_last_at      timestamptz;
    v_published_at timestamptz;
    v_row          outbox%ROWTYPE;
    v_error        text;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'ss_publish_batch_parking needs READ COMMITTED, not %', current_setting('transaction_isolation');
    END IF;
    SELECT m.epoch, m.last_seq, m.last_published_at INTO v_epoch, v_last_seq, v_last_at
      FROM stream_meta m WHERE m.stream = 'main' FOR UPDATE;
    PERFORM ss_ensure_partitions((now() AT TIME ZONE 'UTC')::date - 1, (now() AT TIME ZONE 'UTC')::date + 8);
    v_first_seq := v_last_seq;
    v_published_at := greatest(clock_timestamp(), v_last_at);

    FOR v_row IN SELECT * FROM outbox o ORDER BY o.id LIMIT batch_size LOOP
        BEGIN
            IF octet_length(v_row.payload::text) > 65536 THEN
                RAISE EXCEPTION 'payload is % bytes as JSON text; the limit is 65536', octet_length(v_row.payload::text);
            END IF;
            INSERT INTO event_log
                (seq, event_id, event_type, aggregate_id, groups, payload, replay_of, occurred_at, published_at)
            VALUES (v_last_seq + 1, v_row.event_id, v_row.event_type, v_row.aggregate_id, v_row.groups,
                    v_row.payload, v_row.replay_of, v_row.created_at, v_published_at);
            INSERT INTO event_log_groups (group_key, seq, published_at)
            SELECT g, v_last_seq + 1, v_published_at FROM unnest(v_row.groups) AS g;
            v_last_seq := v_last_seq + 1;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_error = MESSAGE_TEXT;
            INSERT INTO outbox_dead_letter
                (outbox_id, event_id, event_type, aggregate_id, groups, payload, replay_of, created_at, error)
            VALUES (v_row.id, v_row.event_id, v_row.event_type, v_row.aggregate_id, v_row.groups, v_row.payload,
                    v_row.replay_of, v_row.created_at, v_error);
            RAISE WARNING 'outbox row % parked in outbox_dead_letter: %', v_row.id, v_error;
        END;
        DELETE FROM outbox WHERE id = v_row.id;
    END LOOP;

    IF v_last_seq > v_first_seq THEN
        UPDATE stream_meta SET last_seq = v_last_seq, last_published_at = v_published_at WHERE stream = 'main';
        PERFORM pg_notify(channel, v_epoch || '-' || v_last_seq);
    END IF;
    RETURN QUERY
    SELECT v_epoch, e.seq, e.event_id, e.event_type, e.groups, e.payload::text, e.replay_of, e.occurred_at,
           e.published_at
    FROM event_log e
    WHERE e.seq > v_first_seq AND e.seq <= v_last_seq AND e.published_at = v_published_at
    ORDER BY e.seq;
END
$$;
COMMENT ON FUNCTION ss_publish_batch_parking(bigint, text) IS
    'Like ss_publish_batch, one row at a time: a row that cannot be published is moved to outbox_dead_letter with '
    'its error, and the rows after it are published. The relay calls it after ss_publish_batch failed on a row.';

CREATE VIEW ss_dead_letters AS
    SELECT count(*) AS parked, max(parked_at) AS last_parked_at FROM outbox_dead_letter;
COMMENT ON VIEW ss_dead_letters IS 'How many outbox rows were parked as unpublishable, and when the last one was.';

-- The relay's publish step as one function, so that a batch costs the relay one round trip instead of four
-- (BEGIN, fence, move, COMMIT): the step sits on every event's path from commit to screen.

CREATE FUNCTION ss_publish_batch(batch_size bigint, channel text)
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
    SELECT m.epoch, m.last_seq, m.partitions_until < now() + interval '2 days'
      INTO v_epoch, v_last_seq, v_needs_parts
      FROM stream_meta m WHERE m.stream = 'main' FOR UPDATE;

    IF v_needs_parts THEN
        PERFORM ss_ensure_partitions((now() AT TIME ZONE 'UTC')::date - 1, (now() AT TIME ZONE 'UTC')::date + 8);
    END IF;

    -- Taken after the fence (not statement_timestamp(), which is when the caller's statement started,
    -- possibly before it waited for the lock), so published_at never decreases along seq and retention
    -- drops whole time ranges without making holes.
    v_published_at := clock_timestamp();

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
    'with <epoch>-<last_seq>. Returns the published events (payload as jsonb text). Call it in its own '
    'READ COMMITTED transaction; the rows are published when that commits.';

-- Delivery receipts (issue 24, part 1): how far each dispatcher's consoles have applied the log, so that a
-- supervisor sees who has seen a job's latest recommendations, and when.
--
-- Cost is per console report, not per event. A console reports the last position it applied (after the sheet
-- re-rendered) at most once every few seconds; a report writes a row only when it moves its dispatcher past
-- every earlier report (a second tab of the same dispatcher, or a console behind another, writes nothing).
-- Positions are dense and consoles apply events in order, so one number per dispatcher says which events they
-- have: every event of their groups up to it. The rows form a step function per dispatcher (seq rising with
-- each row), and "when did Bob first have seq S" is one index probe: his first row with seq >= S.

CREATE TABLE console_receipts (
    dispatcher_id text NOT NULL REFERENCES dispatchers (id) ON DELETE CASCADE,
    epoch         text NOT NULL CHECK (epoch ~ '^[0-9a-f]{8}$'),
    seq           bigint NOT NULL CHECK (seq >= 0),
    reached_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dispatcher_id, epoch, seq)
);

COMMENT ON TABLE console_receipts IS
    'Delivery receipts: one row each time a dispatcher''s consoles reported having applied the log further than '
    'ever before (POST /api/receipts). A dispatcher whose latest row has seq N has applied every event of their '
    'groups up to N. Rows of expired positions are pruned by retention, keeping each dispatcher''s latest.';
COMMENT ON COLUMN console_receipts.dispatcher_id IS 'The dispatcher whose console reported.';
COMMENT ON COLUMN console_receipts.epoch IS 'The log''s epoch the position belongs to (stream_meta.epoch).';
COMMENT ON COLUMN console_receipts.seq IS
    'The position reached: the console had applied (rendered) every event of its groups up to it. Rises with '
    'every row of a dispatcher and epoch.';
COMMENT ON COLUMN console_receipts.reached_at IS
    'When the server stored the report (its clock): the "seen at" of events up to seq that earlier rows '
    'do not cover. For display only; nothing is ordered by it.';

-- Which position the RecommendationReady event of a set was published at: the receipts of a job's latest set
-- compare dispatchers' positions with it. Partial: only original recommendation events (not replayed copies).
CREATE INDEX event_log_recommendation_ready ON event_log (aggregate_id, seq)
    WHERE event_type = 'RecommendationReady' AND replay_of IS NULL;

-- Records a console's report. Serialised per dispatcher (a transaction-scoped advisory lock), so that two tabs
-- reporting at once cannot write rows out of order. A position of another epoch than the log's is ignored (the
-- console is about to get a reset); one beyond the log's head is clamped to it (nothing beyond it exists to
-- have been applied). Returns the row written, or nothing when the report moved nothing. The row's NOTIFY on
-- 'ss_receipts' (sent at commit, so only for a stored row) is the hint that updates open sheets: a JSON object
-- with dispatcherId, epoch, seq, reachedAt and groups (the dispatcher's region groups, which receive it).
CREATE FUNCTION ss_record_receipt(p_dispatcher text, p_epoch text, p_seq bigint, p_groups text[])
RETURNS TABLE (seq bigint, reached_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_epoch   text;
    v_head    bigint;
    v_seq     bigint;
    v_reached bigint;
    v_at      timestamptz;
BEGIN
    SELECT m.epoch, m.last_seq INTO v_epoch, v_head FROM stream_meta m WHERE m.stream = 'main';
    IF v_epoch IS DISTINCT FROM p_epoch THEN
        RETURN;
    END IF;
    v_seq := least(p_seq, v_head);
    PERFORM pg_advisory_xact_lock(hashtextextended('ss_receipt:' || p_dispatcher, 0));
    SELECT max(r.seq) INTO v_reached FROM console_receipts r WHERE r.dispatcher_id = p_dispatcher AND r.epoch = p_epoch;
    IF v_seq <= coalesce(v_reached, 0) THEN
        RETURN;
    END IF;
    INSERT INTO console_receipts AS r (dispatcher_id, epoch, seq) VALUES (p_dispatcher, p_epoch, v_seq)
        RETURNING r.reached_at INTO v_at;
    PERFORM pg_notify('ss_receipts', json_build_object(
        'dispatcherId', p_dispatcher, 'epoch', p_epoch, 'seq', v_seq,
        'reachedAt', to_char(v_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        'groups', coalesce(p_groups, '{}'))::text);
    seq := v_seq;
    reached_at := v_at;
    RETURN NEXT;
END;
$$;

COMMENT ON FUNCTION ss_record_receipt(text, text, bigint, text[]) IS
    'Stores a console''s receipt (POST /api/receipts) if it moves its dispatcher further than before, and '
    'NOTIFYs ss_receipts so that open sheets update. Returns the row written, or no row.';

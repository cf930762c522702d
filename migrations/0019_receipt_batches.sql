-- Delivery receipts stored in batches (issue 24, part 1): each server gathers its consoles' reports for up to a
-- second and stores them in one transaction, so that PostgreSQL's cost is one commit per server per second
-- plus one index insert per dispatcher that moved, instead of one plpgsql call, lock and commit per report.
-- Measured: 1,000 consoles at one report per 5 s cost 7.8 % of a core one transaction at a time (bench
-- section 16 has the batched figure).
--
-- Same rules as ss_record_receipt (0018), which stays for single reports: serialised per dispatcher (advisory
-- locks, taken in key order so that two servers' batches cannot deadlock), positions of another epoch ignored,
-- positions beyond the head clamped to it, a row only when it moves its dispatcher further, a NOTIFY on
-- 'ss_receipts' per row written. Several reports of one dispatcher in a batch count as their furthest. A
-- dispatcher deleted since sign-in is skipped. reached_at is the time of the insert (after the locks), never
-- earlier than the dispatcher's previous row: display only, nothing is ordered by it.
--
-- p_reports: a JSON array of {"dispatcherId": text, "epoch": text, "seq": bigint, "groups": [text] | null}.
-- Returns the rows written.
CREATE FUNCTION ss_record_receipts(p_reports jsonb)
RETURNS TABLE (dispatcher_id text, seq bigint, reached_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_epoch text;
    v_head  bigint;
    v_row   record;
BEGIN
    SELECT m.epoch, m.last_seq INTO v_epoch, v_head FROM stream_meta m WHERE m.stream = 'main';
    PERFORM pg_advisory_xact_lock(k.key)
    FROM (SELECT DISTINCT hashtextextended('ss_receipt:' || r."dispatcherId", 0) AS key
          FROM jsonb_to_recordset(p_reports) AS r("dispatcherId" text, epoch text)
          WHERE r.epoch = v_epoch
          ORDER BY 1) k;
    FOR v_row IN
        WITH report AS (
            SELECT r."dispatcherId" AS d, max(least(r.seq, v_head)) AS s,
                   (array_agg(r.groups ORDER BY r.seq DESC))[1] AS g
            FROM jsonb_to_recordset(p_reports) AS r("dispatcherId" text, epoch text, seq bigint, groups jsonb)
            WHERE r.epoch = v_epoch AND r."dispatcherId" IS NOT NULL AND r.seq IS NOT NULL
            GROUP BY r."dispatcherId"
        ), moved AS (
            -- Only dispatchers that still exist (one deleted since sign-in moves nothing), and only those the
            -- report moves further. reached_at is taken after the locks and never before the dispatcher's
            -- previous row, so that each dispatcher's rows stay a step function in both seq and time.
            SELECT report.*, greatest(clock_timestamp(), last.reached_at) AS at FROM report
            LEFT JOIN LATERAL (SELECT c.seq, c.reached_at FROM console_receipts c
                               WHERE c.dispatcher_id = report.d AND c.epoch = v_epoch
                               ORDER BY c.seq DESC LIMIT 1) last ON true
            WHERE report.s > coalesce(last.seq, 0)
              AND EXISTS (SELECT 1 FROM dispatchers d WHERE d.id = report.d)
        ), written AS (
            INSERT INTO console_receipts AS c (dispatcher_id, epoch, seq, reached_at)
            SELECT moved.d, v_epoch, moved.s, moved.at FROM moved
            RETURNING c.dispatcher_id, c.seq, c.reached_at
        )
        SELECT w.dispatcher_id, w.seq, w.reached_at, m.g FROM written w JOIN moved m ON m.d = w.dispatcher_id
    LOOP
        PERFORM pg_notify('ss_receipts', json_build_object(
            'dispatcherId', v_row.dispatcher_id, 'epoch', v_epoch, 'seq', v_row.seq,
            'reachedAt', to_char(v_row.reached_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
            'groups', v_row.g)::text); -- null: every stream (see receipts::hint_groups)
        dispatcher_id := v_row.dispatcher_id;
        seq := v_row.seq;
        reached_at := v_row.reached_at;
        RETURN NEXT;
    END LOOP;
END;
$$;

COMMENT ON FUNCTION ss_record_receipts(jsonb) IS
    'Stores a batch of consoles'' receipts (POST /api/receipts, gathered by each server for up to a second): '
    'for each dispatcher, its furthest report if that moves it further than before, with a NOTIFY on '
    'ss_receipts per row. Returns the rows written.';

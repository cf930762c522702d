-- Delivery receipts stored in batches (issue 24, part 1): each server gathers its consoles' reports for up to a
-- second and stores them in one transaction, so that PostgreSQL's cost is one commit per server per second
-- plus one index insert per dispatcher that moved, instead of one plpgsql call, lock and commit per report.
-- Measured: 1,000 consoles at one report per 5 s cost 7.8 % of a core one transaction at a time (bench
-- section 16 has the batched figure).
--
-- Same rules as ss_record_receipt (0018), which becomes a batch of one: serialised (one transaction-scoped
-- advisory lock for all receipts: a server stores at most one batch a second, so batches of many servers
-- queue for milliseconds, and one lock per batch instead of one per dispatcher keeps PostgreSQL's shared lock
-- table out of it), positions of another epoch ignored, positions beyond the head clamped to it, a row only
-- when it moves its dispatcher further, a NOTIFY on 'ss_receipts' per row written. One statement does it all,
-- so a row costs no plpgsql step of its own.
--
-- The batch also checks each report's access, so that a report costs its request no read of its dispatcher
-- (at 200 reports/s that read was most of what receipts cost): the dispatcher must exist and be enabled, and
-- a token this server issued must carry the dispatcher's token generation ("generation"; null for the
-- identity provider's tokens, bound only by disabled). The check reads the rows as of the batch, which began
-- after every report in it arrived. The hint's groups are the dispatcher's region groups as of the batch.
--
-- p_reports: a JSON array of {"dispatcherId": text, "generation": bigint | null, "epoch": text, "seq": bigint}.
-- Returns one row per (dispatcherId, generation) of the input: verdict 'admitted' (seq and reached_at set
-- when a row was written), 'revoked', 'disabled' or 'unknown'; epoch: the log's, as the batch read it;
-- groups: the written row's hint groups (null when more than 80: every stream).
CREATE FUNCTION ss_record_receipts(p_reports jsonb)
RETURNS TABLE (dispatcher_id text, generation bigint, verdict text, epoch text, seq bigint,
               reached_at timestamptz, groups text[])
LANGUAGE plpgsql AS $$
DECLARE
    v_epoch text;
    v_head  bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('ss_receipts', 0));
    -- Read after the lock, so that the statement below sees the rows of the batch that held it before. The
    -- epoch is a variable, not a join, so that each dispatcher's latest row is one backward index probe.
    SELECT m.epoch, m.last_seq INTO v_epoch, v_head FROM stream_meta m WHERE m.stream = 'main';
    RETURN QUERY
    WITH report AS (
        -- Several reports of one dispatcher (its tabs) count as their furthest; those of another epoch as none.
        SELECT r."dispatcherId" AS d, r.generation AS gen,
               max(least(r.seq, v_head)) FILTER (WHERE r.epoch = v_epoch) AS s
        FROM jsonb_to_recordset(p_reports) AS r("dispatcherId" text, generation bigint, epoch text, seq bigint)
        WHERE r."dispatcherId" IS NOT NULL
        GROUP BY r."dispatcherId", r.generation
    ), checked AS (
        SELECT report.*,
               CASE WHEN x.id IS NULL THEN 'unknown'
                    WHEN report.gen IS NOT NULL AND report.gen <> x.token_generation THEN 'revoked'
                    WHEN x.disabled_at IS NOT NULL THEN 'disabled'
                    ELSE 'admitted' END AS v
        FROM report LEFT JOIN dispatchers x ON x.id = report.d
    ), moved AS (
        -- Only the admitted reports that move their dispatcher further. reached_at is taken after the lock
        -- and never before the dispatcher's previous row, so that each dispatcher's rows stay a step
        -- function in both seq and time.
        SELECT a.d, a.s, greatest(clock_timestamp(), last.reached_at) AS at
        FROM (SELECT c.d, max(c.s) AS s FROM checked c WHERE c.v = 'admitted' AND c.s IS NOT NULL GROUP BY c.d) a
        LEFT JOIN LATERAL (SELECT r.seq, r.reached_at FROM console_receipts r
                           WHERE r.dispatcher_id = a.d AND r.epoch = v_epoch
                           ORDER BY r.seq DESC LIMIT 1) last ON true
        WHERE a.s > coalesce(last.seq, 0)
    ), written AS (
        INSERT INTO console_receipts AS c (dispatcher_id, epoch, seq, reached_at)
        SELECT moved.d, v_epoch, moved.s, moved.at FROM moved
        RETURNING c.dispatcher_id, c.seq, c.reached_at
    ), announced AS MATERIALIZED (
        -- The hint goes to the streams of the dispatcher's region groups (all streams beyond 80 of them).
        SELECT w.*, (SELECT CASE WHEN count(*) <= 80 THEN coalesce(array_agg(g.group_key ORDER BY g.group_key), '{}') END
                     FROM dispatcher_groups g
                     WHERE g.dispatcher_id = w.dispatcher_id AND g.group_key LIKE 'region:%') AS regions
        FROM written w
    ), notified AS (
        SELECT a.*, pg_notify('ss_receipts', json_build_object(
                   'dispatcherId', a.dispatcher_id, 'epoch', v_epoch, 'seq', a.seq,
                   'reachedAt', to_char(a.reached_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                   'groups', a.regions)::text) AS sent
        FROM announced a
    )
    SELECT c.d, c.gen, c.v, v_epoch, n.seq, n.reached_at, n.regions
    FROM checked c LEFT JOIN notified n ON n.dispatcher_id = c.d AND c.v = 'admitted';
END;
$$;

COMMENT ON FUNCTION ss_record_receipts(jsonb) IS
    'Stores a batch of consoles'' receipts (POST /api/receipts, gathered by each server for up to a second): '
    'checks each report''s access (dispatcher enabled, token generation), and for each dispatcher stores its '
    'furthest report if that moves it further than before, with a NOTIFY on ss_receipts per row. Returns a '
    'verdict per dispatcher and generation of the input.';

-- One report is a batch of one, so that both take the same lock and keep the same rules. p_groups is no longer
-- read: the hint's groups are the dispatcher's region groups. No generation: the caller vouches for the token.
CREATE OR REPLACE FUNCTION ss_record_receipt(p_dispatcher text, p_epoch text, p_seq bigint, p_groups text[])
RETURNS TABLE (seq bigint, reached_at timestamptz)
LANGUAGE sql AS $$
    SELECT r.seq, r.reached_at
    FROM ss_record_receipts(jsonb_build_array(jsonb_build_object(
        'dispatcherId', p_dispatcher, 'epoch', p_epoch, 'seq', p_seq))) r
    WHERE r.seq IS NOT NULL;
$$;

-- 07_replay_by_hand.sql: replay a seq range by hand: copies of the original events go into the outbox
-- (new event ids, same type, aggregate, groups and payload, replay_of = the original position) and the
-- relay publishes them at new positions after the current end of the log.
--
-- When to use it: when the `smartscheduler replay` command is not at hand (no binary on the DBA host).
-- Prefer the command: it batches large ranges and shows progress. Same semantics as
-- `smartscheduler replay --from <epoch>-<from_seq> --to <epoch>-<to_seq>`:
--   * from_seq is exclusive (like Last-Event-ID), to_seq inclusive;
--   * only originals (replay_of IS NULL) are copied, never earlier copies;
--   * originals that already have a copy (in the outbox or in event_log) are skipped, so running it twice
--     copies nothing the second time;
--   * it takes the same advisory lock as the command, so it never races a running replay.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -v from_seq=1000 -v to_seq=1200 -f sql/07_replay_by_hand.sql
--   add -v dry_run=1 to see what would be copied and roll back.
--
-- The defaults (from_seq = 0, to_seq = 0) replay nothing. Keep ranges to a few thousand events per run
-- (one transaction); for more, run it several times with consecutive ranges.

\if :{?from_seq}
\else
\set from_seq 0
\endif
\if :{?to_seq}
\else
\set to_seq 0
\endif
\if :{?dry_run}
\else
\set dry_run 0
\endif

BEGIN;

-- Serialise with `smartscheduler replay` (same key) so the "already copied" check below is exact.
SELECT pg_advisory_xact_lock(6004233185868398937) AS replay_lock \gset

\echo '== range (from_seq exclusive, to_seq inclusive) =='
SELECT m.epoch || '-' || (:'from_seq')::bigint AS after_position,
       m.epoch || '-' || (:'to_seq')::bigint   AS through_position,
       m.last_seq,
       m.expired_through_seq
FROM stream_meta m;

-- Copy, in original seq order (outbox ids follow it, and the relay publishes in id order).
\echo '== copies inserted =='
WITH copies AS (
    -- Copies are published after their originals, so only the log after from_seq can hold them.
    SELECT split_part(e.replay_of, '-', 2)::bigint AS seq
    FROM event_log e, stream_meta m
    WHERE e.seq > (:'from_seq')::bigint AND e.replay_of LIKE m.epoch || '-%'
    UNION
    SELECT split_part(o.replay_of, '-', 2)::bigint
    FROM outbox o, stream_meta m
    WHERE o.replay_of LIKE m.epoch || '-%'
), inserted AS (
    INSERT INTO outbox (event_type, aggregate_id, groups, payload, replay_of)
    SELECT e.event_type, e.aggregate_id, e.groups, e.payload, m.epoch || '-' || e.seq
    FROM event_log e, stream_meta m
    WHERE e.seq > (:'from_seq')::bigint AND e.seq <= (:'to_seq')::bigint
      AND e.replay_of IS NULL
      AND NOT EXISTS (SELECT 1 FROM copies c WHERE c.seq = e.seq)
    ORDER BY e.seq
    RETURNING split_part(replay_of, '-', 2)::bigint AS seq
)
SELECT count(*)                                               AS inserted,
       (SELECT epoch FROM stream_meta) || '-' || min(i.seq)   AS first_original,
       (SELECT epoch FROM stream_meta) || '-' || max(i.seq)   AS last_original
FROM inserted i;

\if :dry_run
\echo dry run: rolling back
ROLLBACK;
\else
COMMIT;
\echo committed: the relay publishes the copies (watch them with sql/02_pending.sql)
\endif

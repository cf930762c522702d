-- 06_density.sql: checks the stream's core invariant: seq is dense. Within the retention window
-- count(*) = max(seq) - min(seq) + 1, the log ends at stream_meta.last_seq, and it starts right after
-- the last seq retention dropped. Prints OK or BROKEN, and the first holes when broken.
--
-- When to use it: after a restore, after manual surgery on event_log, when a client reports a missing
-- event, or routinely. A BROKEN log means a resuming client can miss events: escalate, and consider an
-- epoch change (docs/operations.md, "The database was restored from a backup") so clients reload.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/06_density.sql
--
-- Read-only. Scans event_log's primary keys (the whole retention window).

WITH facts AS (
    SELECT count(e.seq) AS events, min(e.seq) AS min_seq, max(e.seq) AS max_seq, m.last_seq, m.expired_through_seq
    FROM stream_meta m LEFT JOIN event_log e ON true
    GROUP BY m.last_seq, m.expired_through_seq
), checks AS (
    SELECT facts.*,
           events = coalesce(max_seq - min_seq + 1, 0)                            AS count_matches_range,
           coalesce(max_seq, last_seq) = last_seq                                 AS ends_at_last_seq,
           -- Retention drops whole days from the start, so the log starts right after the last expired seq.
           CASE WHEN min_seq IS NULL THEN last_seq >= expired_through_seq
                ELSE min_seq - 1 = expired_through_seq END                        AS starts_after_expired
    FROM facts
)
SELECT events, coalesce(min_seq::text, '-') AS min_seq, coalesce(max_seq::text, '-') AS max_seq,
       last_seq, expired_through_seq, count_matches_range, ends_at_last_seq, starts_after_expired,
       CASE WHEN count_matches_range AND ends_at_last_seq AND starts_after_expired THEN 'OK' ELSE 'BROKEN' END
           AS density,
       (count_matches_range AND ends_at_last_seq AND starts_after_expired) AS dense
FROM checks
\gset density_

\echo density: :density_density (events :density_events, seq :density_min_seq .. :density_max_seq, last_seq :density_last_seq, expired through :density_expired_through_seq)

\if :density_dense
\else
\echo checks: count = max - min + 1: :density_count_matches_range, max = last_seq: :density_ends_at_last_seq, min - 1 = expired_through_seq: :density_starts_after_expired
\echo '== first 20 holes or repeats =='
SELECT seq AS after_seq, next_seq, next_seq - seq - 1 AS missing
FROM (SELECT seq, lead(seq) OVER (ORDER BY seq) AS next_seq FROM event_log) AS s
WHERE next_seq IS NOT NULL AND next_seq <> seq + 1
ORDER BY seq
LIMIT 20;
\endif

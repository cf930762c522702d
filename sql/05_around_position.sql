-- 05_around_position.sql: the events around one position (seq - 5 .. seq + 5), with their payloads.
--
-- When to use it: a client or a log line names a position (for example after an `event: reset`, a
-- duplicate, or a suspected gap) and you want to see what was published there.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -v seq=1042 -f sql/05_around_position.sql
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -v seq=7f3a9c21-1042 -f sql/05_around_position.sql
--
-- `seq` is a seq or a whole position; unset or 0 means the last published position. When a whole
-- position of another epoch is given, the `epoch_matches` column says so: that position names events
-- of a log that no longer exists (restore or recreate), and the rows shown are unrelated.
-- Read-only.

\if :{?seq}
\else
\set seq 0
\endif

\echo '== target =='
SELECT :'seq'                                                           AS given,
       t.seq                                                            AS target_seq,
       m.epoch || '-' || t.seq                                          AS target_position,
       (strpos(:'seq', '-') = 0 OR split_part(:'seq', '-', 1) = m.epoch) AS epoch_matches,
       t.seq <= m.expired_through_seq                                   AS expired,
       m.last_seq
FROM stream_meta m,
     LATERAL (SELECT coalesce(nullif(CASE WHEN strpos(:'seq', '-') > 0 THEN split_part(:'seq', '-', 2)
                                          ELSE :'seq' END::bigint, 0),
                              m.last_seq) AS seq) AS t;

\echo '== events seq - 5 .. seq + 5 =='
\x auto
SELECT e.seq, m.epoch || '-' || e.seq AS position, e.event_type, e.event_id, e.aggregate_id, e.groups,
       e.replay_of, e.occurred_at, e.published_at, e.payload
FROM stream_meta m,
     LATERAL (SELECT coalesce(nullif(CASE WHEN strpos(:'seq', '-') > 0 THEN split_part(:'seq', '-', 2)
                                          ELSE :'seq' END::bigint, 0),
                              m.last_seq) AS seq) AS t
JOIN event_log e ON e.seq BETWEEN t.seq - 5 AND t.seq + 5
ORDER BY e.seq;
\x off

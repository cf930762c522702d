-- 09_unapplied_events.sql: the events of the last hour that no console of one dispatcher has applied.
-- Run: psql "$DATABASE_URL" -v dispatcher=alice -f sql/09_unapplied_events.sql
--
-- When to use it: a dispatcher says they never saw a recommendation, or a sheet's "seen by" names them as
-- "not yet" for longer than expected. Consoles report the last position they applied (POST /api/receipts,
-- at most every few seconds and when hidden or closed), and they apply the events of their groups in order,
-- so everything of their groups after their latest receipt is what they have not applied: events still on
-- their way, or a console that is closed, offline or stuck. (A console that was reset reloads the sheet over
-- REST: the events it skipped count as applied, because what it shows includes them.)

\if :{?dispatcher}
\else
  \echo 'name the dispatcher: psql "$DATABASE_URL" -v dispatcher=alice -f sql/09_unapplied_events.sql'
  \quit
\endif

\echo 'Their latest receipt in this epoch (none: no console of theirs has reported yet):'
SELECT r.dispatcher_id, m.epoch || '-' || r.seq AS applied_through, r.reached_at,
       m.last_seq - r.seq AS events_of_the_log_since
FROM console_receipts r JOIN stream_meta m ON m.epoch = r.epoch
WHERE r.dispatcher_id = :'dispatcher'
ORDER BY r.seq DESC
LIMIT 1;

\echo 'Events of their groups in the last hour that none of their consoles has applied, oldest first:'
SELECT m.epoch || '-' || l.seq AS position, l.event_type, l.aggregate_id, l.groups, l.published_at,
       l.payload -> 'summary' ->> 'recommendationSetId' AS recommendation_set_id
FROM event_log l CROSS JOIN stream_meta m
WHERE l.published_at > now() - interval '1 hour'
  AND l.groups && ARRAY(SELECT g.group_key FROM dispatcher_groups g WHERE g.dispatcher_id = :'dispatcher')
  AND l.seq > coalesce((SELECT max(r.seq) FROM console_receipts r
                        WHERE r.dispatcher_id = :'dispatcher' AND r.epoch = m.epoch), 0)
ORDER BY l.seq;

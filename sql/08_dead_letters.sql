-- 08_dead_letters.sql: outbox rows the relay could not publish, parked with the error. They reach no client.
-- Run: psql "$DATABASE_URL" -f sql/08_dead_letters.sql
--
-- When to use it: when `outbox status` reports dead letters, or smartscheduler_outbox_dead_letters > 0.
-- A row lands here only when PostgreSQL refused to publish it (a value outside what the stream can send,
-- for example after a CHECK on outbox was dropped by hand). `outbox status` reports the count as unhealthy
-- until the rows are dealt with: fix and publish again, or delete.

\echo 'Parked rows, oldest first:'
SELECT id, outbox_id, event_id, event_type, groups, created_at, parked_at, error,
       octet_length(payload::text) AS payload_bytes
FROM outbox_dead_letter
ORDER BY id;

-- To publish a parked row again after fixing what was wrong, in one transaction (replace 42 with its id;
-- the new outbox row gets a fresh event_id unless you keep the original as below):
--
--   BEGIN;
--   INSERT INTO outbox (event_id, event_type, aggregate_id, groups, payload, replay_of)
--   SELECT event_id, event_type, aggregate_id, groups, payload, replay_of
--   FROM outbox_dead_letter WHERE id = 42;
--   DELETE FROM outbox_dead_letter WHERE id = 42;
--   COMMIT;
--
-- To give up on one: DELETE FROM outbox_dead_letter WHERE id = 42;

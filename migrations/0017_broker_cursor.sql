-- How far each epoch of the log has reached the broker (NATS JetStream), for deployments that run one
-- (`serve --broker` / `relay --broker`). The broker publisher advances `published_seq` after JetStream
-- acknowledged every event up to it; a publisher that restarts resumes from JetStream's own last sequence,
-- which equals the last `seq` it holds (each publish expects the previous sequence), so this row is the
-- publishers' fence (its row lock lets one publish at a time) and what operators watch (cursor age, lag).
CREATE TABLE broker_cursor (
    epoch         text PRIMARY KEY,
    stream        text NOT NULL,
    published_seq bigint NOT NULL CHECK (published_seq >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE broker_cursor IS
    'Per epoch: the last seq JetStream acknowledged (published_seq) and when it moved (updated_at).';

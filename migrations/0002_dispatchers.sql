-- Dispatchers and their group membership. Membership lives here, not in tokens, so that a change
-- reaches open streams (they re-read it every few seconds).

CREATE TABLE dispatchers (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE dispatchers IS 'People who watch the recommendations sheet. A token''s sub is a dispatchers.id.';
COMMENT ON COLUMN dispatchers.id IS 'Login id, for example alice.';
COMMENT ON COLUMN dispatchers.name IS 'Display name.';
COMMENT ON COLUMN dispatchers.created_at IS 'When the dispatcher was added.';

CREATE TABLE dispatcher_groups (
    dispatcher_id  text NOT NULL REFERENCES dispatchers (id) ON DELETE CASCADE,
    group_key      text NOT NULL CHECK (ss_valid_groups(ARRAY[group_key])),
    added_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dispatcher_id, group_key)
);
COMMENT ON TABLE dispatcher_groups IS
    'Which groups each dispatcher belongs to. Open streams apply a change within 5 seconds.';
COMMENT ON COLUMN dispatcher_groups.dispatcher_id IS 'The dispatcher.';
COMMENT ON COLUMN dispatcher_groups.group_key IS 'A group key such as region:north or team:hvac.';
COMMENT ON COLUMN dispatcher_groups.added_at IS 'When the membership was granted.';

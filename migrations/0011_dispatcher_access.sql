-- Withdrawing access (issue 22, item 7): a dispatcher can be disabled, and the tokens this server issued for
-- them revoked, without rotating the secret.
--
-- A token from `smartscheduler token` (or the demo login) carries its dispatcher's token_generation as the
-- private claim `gen`, and is accepted only while that is still the dispatcher's generation. No correctness
-- rests on clocks: generations come from one sequence, so revoking (a new value) and removing and re-adding
-- a dispatcher (a new row, a new value) both leave every earlier token behind. Dispatchers that existed
-- before this migration keep generation 0, which is what a token without `gen` (issued before it) counts
-- as: those tokens stay valid until their dispatcher's first `revoke-tokens`, removal or expiry.

CREATE SEQUENCE dispatcher_token_generation AS bigint START WITH 1;
COMMENT ON SEQUENCE dispatcher_token_generation IS
    'Source of dispatchers.token_generation: every new dispatcher row and every revoke-tokens takes the next value, '
    'so a generation is never given twice, not even to a dispatcher removed and added again under the same id.';

ALTER TABLE dispatchers
    ADD COLUMN token_generation bigint NOT NULL DEFAULT 0 CHECK (token_generation >= 0),
    ADD COLUMN disabled_at timestamptz NULL;
ALTER TABLE dispatchers ALTER COLUMN token_generation SET DEFAULT nextval('dispatcher_token_generation');
ALTER SEQUENCE dispatcher_token_generation OWNED BY dispatchers.token_generation;

COMMENT ON COLUMN dispatchers.token_generation IS
    'The gen a token issued by this server must carry to be accepted. dispatcher revoke-tokens sets the next '
    'value of dispatcher_token_generation; 0 for dispatchers added before migration 0011.';
COMMENT ON COLUMN dispatchers.disabled_at IS
    'Set by dispatcher disable, cleared by dispatcher enable. While set, every request of this dispatcher is 403 '
    'dispatcher_disabled and their open streams end with access-revoked. Only NULL or not matters; the time is '
    'for people.';

-- Operations: comments for DBAs on objects created by tools.

COMMENT ON TABLE _sqlx_migrations IS
    'Schema migrations applied by smartscheduler migrate (sqlx). Do not edit by hand.';

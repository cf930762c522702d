//! Connecting to PostgreSQL and applying `migrations/`.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use std::str::FromStr;
use std::time::Duration;

/// The schema, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL is not a valid PostgreSQL connection string")]
    BadUrl(#[source] sqlx::Error),
    #[error("cannot connect to PostgreSQL at {target}")]
    Connect {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Parses a connection string into options with quiet statement logging.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, DbError> {
    let options = PgConnectOptions::from_str(url).map_err(DbError::BadUrl)?;
    Ok(options
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500))
        // The publish fence needs each statement to see what committed before it (READ COMMITTED), and
        // ss_publish_batch refuses to run otherwise: a database or role whose default is REPEATABLE READ
        // or SERIALIZABLE must not stop the relay.
        .options([("default_transaction_isolation", "read committed")]))
}

/// A pool for `url`. Connects eagerly so that a wrong URL fails now with a clear message.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    let options = connect_options(url)?;
    let target = describe(&options);
    // One direct connection first: a pool retries until its timeout and then reports only "timed out",
    // while this says why (connection refused, no such database, authentication failed) at once.
    PgConnection::connect_with(&options)
        .await
        .map_err(|source| DbError::Connect { target: target.clone(), source })?
        .close()
        .await
        .ok();
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .map_err(|source| DbError::Connect { target, source })
}

/// A pool that does not connect until first used: for `serve`, which must start (and report 503) while the
/// database is down.
pub fn connect_lazy(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    let options = connect_options(url)?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy_with(options))
}

/// Applies pending migrations. Concurrent callers are safe: sqlx takes an advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// `host:port/database` for messages (never the password).
pub fn describe(options: &PgConnectOptions) -> String {
    format!("{}:{}/{}", options.get_host(), options.get_port(), options.get_database().unwrap_or("postgres"))
}

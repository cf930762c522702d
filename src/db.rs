//! Connecting to PostgreSQL and applying `migrations/`.

use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use std::str::FromStr;
use std::time::Duration;

/// The schema, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why the database cannot be used: a bad URL, no connection, or a failed migration.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The connection string does not parse; carries the parser's reason.
    #[error(
        "DATABASE_URL is not a valid PostgreSQL connection string ({0}); \
         expected postgres://user:password@host:port/database, optionally ?sslmode=require"
    )]
    BadUrl(String),
    /// Connecting failed. `cause` is the reason in one line; `transient` says whether waiting may help.
    #[error("cannot connect to PostgreSQL at {target}: {cause}")]
    Connect {
        /// Where it tried to connect (`host:port/database`, without credentials).
        target: String,
        /// Why it failed, in one line for the operator.
        cause: String,
        /// True when waiting may help (refused, starting up, no free slot), false when it cannot (no such
        /// database or role, wrong password, refused certificate).
        transient: bool,
        /// The driver's error (not a `#[source]`: `cause` already says it in the operator's words).
        error: sqlx::Error,
    },
    /// Applying `migrations/` failed.
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl DbError {
    fn connect(target: String, error: sqlx::Error) -> Self {
        Self::Connect { target, cause: cause(&error), transient: is_transient(&error), error }
    }

    /// Whether trying again later may succeed: the server is not up yet, is starting or shutting down, or
    /// has no connection slot free. A database or role that does not exist, a wrong password, a refused
    /// certificate or a malformed URL stay so however long one waits.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Connect { transient: true, .. })
    }
}

/// Whether a failure to connect may go away by itself (see [`DbError::is_transient`]).
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        // Refused, reset, unreachable, name not resolvable yet: the server or the network is coming up. Not
        // invalid data: that is what a refused certificate (or a server that does not speak PostgreSQL) is.
        sqlx::Error::Io(e) => !matches!(e.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput),
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(e) => e.code().is_some_and(|code| {
            // Class 08 connection exceptions, 53 insufficient resources (too many connections), and
            // 57P01..57P03: shutting down, crashed, or still starting ("the database system is starting up").
            code.starts_with("08") || code.starts_with("53") || matches!(&*code, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// The reason a connection failed, in one line: the server's own message for its errors (without the
/// source line number that sqlx's display adds), the system's for I/O, the verifier's for TLS.
fn cause(error: &sqlx::Error) -> String {
    let text = match error {
        sqlx::Error::Database(e) => e.message().to_owned(),
        sqlx::Error::Io(e) => e.to_string(),
        sqlx::Error::Tls(e) => format!("TLS: {e}"),
        other => other.to_string(),
    };
    text.replace(['\n', '\r'], " ")
}

/// Parses a connection string into options with quiet statement logging.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, DbError> {
    // The parser takes any scheme ("localhost:5432/db" would be scheme "localhost"): say so instead.
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    if !matches!(scheme, Some("postgres" | "postgresql")) {
        return Err(DbError::BadUrl("it does not start with postgres:// or postgresql://".into()));
    }
    let options = PgConnectOptions::from_str(url).map_err(|e| {
        DbError::BadUrl(match e {
            sqlx::Error::Configuration(reason) => reason.to_string(),
            other => other.to_string(),
        })
    })?;
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
        .map_err(|error| DbError::connect(target.clone(), error))?
        .close()
        .await
        .ok();
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .map_err(|error| DbError::connect(target, error))
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
    // On a connection of its own with the pool's options (TLS included) but without the slow-statement
    // warning: a migration is one long statement by nature, and the warning would print all of its SQL.
    let options = pool.connect_options().as_ref().clone().disable_statement_logging();
    let mut conn =
        PgConnection::connect_with(&options).await.map_err(|error| DbError::connect(describe(&options), error))?;
    let applied = MIGRATOR.run(&mut conn).await;
    conn.close().await.ok();
    applied?;
    Ok(())
}

/// `host:port/database` for messages (never the password).
pub fn describe(options: &PgConnectOptions) -> String {
    format!("{}:{}/{}", options.get_host(), options.get_port(), options.get_database().unwrap_or("postgres"))
}

/// How long to wait between tries to reach the database again: exponential with jitter, 100 ms doubling to
/// 10 s, forever (`backon`).
pub fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}

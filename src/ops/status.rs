//! `smartscheduler outbox status`.

use sqlx::PgPool;

/// Prints the status (a table, or JSON with `json`).
pub async fn print(_pool: &PgPool, _json: bool) -> anyhow::Result<()> {
    anyhow::bail!("outbox status is not implemented yet")
}

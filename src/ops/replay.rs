//! `smartscheduler replay`.

use crate::cli::ReplayArgs;
use sqlx::PgPool;

pub async fn run(_pool: &PgPool, _args: ReplayArgs) -> anyhow::Result<()> {
    anyhow::bail!("replay is not implemented yet")
}

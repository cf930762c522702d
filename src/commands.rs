//! What each command does: thin glue from the command line to the library.

use crate::cli::{Cli, Command};
use crate::outbox::RelayWaker;
use crate::relay::{Relay, RelayConfig};
use anyhow::Context;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// A mistake in how the command was called (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let url = || {
        cli.database_url.clone().ok_or_else(|| {
            UsageError("DATABASE_URL is not set: set it or pass --database-url postgres://user@host:port/db".into())
        })
    };
    match cli.command {
        Command::Migrate => {
            let pool = connect(&url()?).await?;
            crate::db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Relay => {
            let pool = connect(&url()?).await?;
            crate::db::migrate(&pool).await?;
            let shutdown = shutdown_on_signal();
            Relay::new(pool, RelayConfig::default(), RelayWaker::new(), uuid::Uuid::new_v4()).run(shutdown).await;
            Ok(())
        }
        other => anyhow::bail!("{other:?}: not implemented yet"),
    }
}

pub(crate) async fn connect(url: &str) -> anyhow::Result<PgPool> {
    Ok(crate::db::connect(url, 8).await?)
}

/// A token cancelled at the first SIGTERM or SIGINT.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        trigger.cancel();
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await.context("installing the Ctrl-C handler");
        }
    }
}

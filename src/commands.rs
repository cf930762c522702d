//! What each command does: thin glue from the command line to the library.

use crate::auth::{self, AuthSecret};
use crate::cli::{Cli, Command, DispatcherCommand, OutboxCommand, ServeArgs};
use crate::outbox::RelayWaker;
use crate::relay::Relay;
use crate::server::{Server, ServerConfig};
use anyhow::Context;
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A mistake in how the command was called (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let url = cli.database_url.clone().ok_or_else(|| {
        UsageError("DATABASE_URL is not set: set it or pass --database-url postgres://user@host:port/db".into())
    });
    match cli.command {
        Command::Migrate => {
            let pool = connect(&url?).await?;
            crate::db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Relay(relay) => {
            let pool = connect_and_migrate(&url?).await?;
            let shutdown = shutdown_on_signal();
            Relay::new(pool, relay.config(), RelayWaker::new(), uuid::Uuid::new_v4()).run(shutdown).await;
            Ok(())
        }
        Command::Serve(args) => serve(&url?, args).await,
        Command::Seed { demo: _ } => {
            let pool = connect_and_migrate(&url?).await?;
            let report = crate::seed::seed_demo(&pool).await?;
            println!("{report}");
            Ok(())
        }
        Command::Dispatcher(command) => dispatcher(&connect(&url?).await?, command).await,
        Command::Token { dispatcher, ttl } => {
            let secret = AuthSecret::from_env()?;
            let pool = connect(&url?).await?;
            auth::dispatcher(&pool, &dispatcher).await?.with_context(|| format!("no dispatcher {dispatcher:?}"))?;
            println!("{}", secret.issue(&dispatcher, ttl)?);
            Ok(())
        }
        Command::Outbox(OutboxCommand::Status { json }) => {
            crate::ops::status::print(&connect(&url?).await?, json).await
        }
        Command::Replay(args) => crate::ops::replay::run(&connect(&url?).await?, args).await,
        Command::Retention { dry_run } => {
            let pool = connect(&url?).await?;
            let report = crate::ops::retention::run_once(&pool, dry_run).await?;
            let verb = if dry_run { "would drop" } else { "dropped" };
            println!(
                "{verb} {} partition(s) {:?}; positions through seq {} have expired",
                report.dropped_partitions.len(),
                report.dropped_partitions,
                report.expired_through_seq
            );
            Ok(())
        }
    }
}

async fn serve(url: &str, args: ServeArgs) -> anyhow::Result<()> {
    let secret = match AuthSecret::from_env() {
        Ok(secret) => secret,
        Err(auth::AuthError::MissingSecret) if args.dev => {
            eprintln!(
                "serve --dev: generated an ephemeral demo auth secret at start-up (tokens die with this process); \
                 set SMARTSCHEDULER_AUTH_SECRET for a real one"
            );
            AuthSecret::ephemeral()
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(dir) = &args.static_dir {
        anyhow::ensure!(dir.join("index.html").is_file(), "--static-dir {}: no index.html there", dir.display());
    }
    let pool = connect_with_patience(url).await?;
    crate::db::migrate(&pool).await?;
    let mut config = ServerConfig::new(args.addr);
    config.dev = args.dev;
    config.run_relay = !args.no_relay;
    config.static_dir = args.static_dir;
    config.relay = args.relay.config();
    let shutdown = shutdown_on_signal();
    let server = Server::start(pool, config, secret, shutdown).await?;
    let addr = server.local_addr()?;
    println!("smartscheduler listening on http://{addr}");
    if args.dev {
        println!("dev mode: open http://{addr}/ and sign in as alice, bob, carol or dana");
    }
    server.run().await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn dispatcher(pool: &PgPool, command: DispatcherCommand) -> anyhow::Result<()> {
    match command {
        DispatcherCommand::Add { id, name, groups } => {
            let d = auth::add_dispatcher(pool, &id, &name, &groups).await?;
            println!("{} ({}): {}", d.dispatcher_id, d.name, d.groups.join(", "));
        }
        DispatcherCommand::Groups { id, add, remove } => {
            if add.is_empty() && remove.is_empty() {
                let d = auth::dispatcher(pool, &id).await?.with_context(|| format!("no dispatcher {id:?}"))?;
                println!("{}", d.groups.join("\n"));
            } else {
                let d = auth::set_groups(pool, &id, &add, &remove).await?;
                println!("{}: {}", d.dispatcher_id, d.groups.join(", "));
            }
        }
        DispatcherCommand::List { json } => {
            let all = auth::list_dispatchers(pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                let width = all.iter().map(|d| d.dispatcher_id.len()).max().unwrap_or(2).max(2);
                let name_width = all.iter().map(|d| d.name.len()).max().unwrap_or(4).max(4);
                println!("{:width$}  {:name_width$}  GROUPS", "ID", "NAME");
                for d in all {
                    println!("{:width$}  {:name_width$}  {}", d.dispatcher_id, d.name, d.groups.join(", "));
                }
            }
        }
    }
    Ok(())
}

pub(crate) async fn connect(url: &str) -> anyhow::Result<PgPool> {
    Ok(crate::db::connect(url, 8).await?)
}

async fn connect_and_migrate(url: &str) -> anyhow::Result<PgPool> {
    let pool = connect(url).await?;
    crate::db::migrate(&pool).await?;
    Ok(pool)
}

/// serve may start together with its database: retry for a few seconds before giving up.
async fn connect_with_patience(url: &str) -> anyhow::Result<PgPool> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match crate::db::connect(url, 32).await {
            Ok(pool) => return Ok(pool),
            Err(e @ crate::db::DbError::BadUrl(_)) => return Err(e.into()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, "database not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// A token cancelled at the first SIGTERM or SIGINT.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received: ending streams, finishing the relay batch in flight");
        trigger.cancel();
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

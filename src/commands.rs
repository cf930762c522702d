//! What each command does: thin glue from the command line to the library.

use crate::auth::{self, AuthSecret};
use crate::cli::{Cli, Command, DispatcherCommand, OutboxCommand, ReplayArgs, ServeArgs};
use crate::ops::replay::{ReplayError, ReplayInput, ReplayRequest};
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

/// Runs the command `cli` names. Errors: a [`UsageError`] for a mistake in how it was called (the binary
/// exits with 2), anything else for a failure (exit code 1).
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
            let supervisor = crate::supervisor::Supervisor::new();
            let mut relay_task =
                Relay::new(pool.clone(), relay.relay.config(), RelayWaker::new(), uuid::Uuid::new_v4());
            let mut publisher_task = None;
            if let Some(broker) = relay.broker.config() {
                let client = crate::broker::connect(&broker.urls).await.map_err(|e| UsageError(e.to_string()))?;
                let publisher = crate::broker::Publisher::new(pool, client, broker.publisher);
                relay_task = relay_task.on_published(publisher.waker_for_batches());
                publisher_task = Some(publisher.spawn_supervised(&supervisor, shutdown.clone()));
            }
            let _ = relay_task.spawn_supervised(&supervisor, shutdown).await;
            if let Some(task) = publisher_task {
                let _ = task.await;
            }
            Ok(())
        }
        Command::Serve(args) => serve(&url?, *args).await,
        Command::Seed { demo: _ } => {
            let pool = connect_and_migrate(&url?).await?;
            let report = crate::recommendations::seed::seed_demo(&pool).await?;
            println!("{report}");
            Ok(())
        }
        Command::Dispatcher(command) => dispatcher(&connect(&url?).await?, command).await,
        Command::Token { dispatcher, ttl } => {
            let secret = AuthSecret::from_env()?;
            // Arguments outside their domains are usage errors, found before anything is looked up.
            crate::validate::dispatcher_id("--dispatcher", &dispatcher).map_err(|e| UsageError(e.to_string()))?;
            if ttl < Duration::from_secs(1) {
                // exp is in whole seconds: a shorter lifetime would print a token that is already expired.
                return Err(UsageError(format!("--ttl {ttl:?}: a token must live at least 1s")).into());
            }
            // Checked before the database is asked, so that a lifetime no token can have is a usage error.
            secret.issue(&dispatcher, 0, ttl).map_err(|e| match e {
                auth::AuthError::BadTtl(_) => anyhow::Error::new(UsageError(format!("--ttl: {e}"))),
                other => other.into(),
            })?;
            let pool = connect(&url?).await?;
            let record = auth::dispatchers_by_id(&pool, std::slice::from_ref(&dispatcher))
                .await?
                .remove(&dispatcher)
                .with_context(|| format!("no dispatcher {dispatcher:?}"))?;
            anyhow::ensure!(
                !record.access.disabled,
                "dispatcher {dispatcher:?} is disabled: its tokens would be refused (dispatcher enable {dispatcher})"
            );
            // Bound to the dispatcher's generation: revoke-tokens (or removing the dispatcher) ends it.
            println!("{}", secret.issue(&dispatcher, record.access.token_generation, ttl)?);
            Ok(())
        }
        Command::Outbox(OutboxCommand::Status { json }) => {
            crate::ops::status::print(&connect(&url?).await?, json).await
        }
        Command::Replay(args) => replay(&connect(&url?).await?, args).await,
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
    let security = crate::http::security::SecurityConfig::from_flags(
        &args.allowed_origins,
        &args.frame_ancestors,
        args.trust_proxy,
        args.public_url.as_deref(),
    )
    .map_err(|e| UsageError(e.to_string()))?;
    let jwks = args.identity.config().map_err(UsageError)?;
    let secret = match AuthSecret::from_env() {
        Ok(secret) => Some(secret),
        Err(auth::AuthError::MissingSecret) if args.dev => {
            eprintln!(
                "serve --dev: generated an ephemeral demo auth secret at start-up (tokens die with this process); \
                 set SMARTSCHEDULER_AUTH_SECRET for a real one"
            );
            Some(AuthSecret::ephemeral())
        }
        // With the identity provider configured, this server's own HS256 tokens are optional.
        Err(auth::AuthError::MissingSecret) if jwks.is_some() => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(dir) = &args.static_dir {
        anyhow::ensure!(dir.join("index.html").is_file(), "--static-dir {}: no index.html there", dir.display());
    }
    if args.catchup_reads >= args.db_pool_size {
        return Err(UsageError(format!(
            "--catchup-reads ({}) must be below --db-pool-size ({}): API requests need connections too",
            args.catchup_reads, args.db_pool_size
        ))
        .into());
    }
    // An edge node (broker-fed, no relay) needs PostgreSQL only for sign-in, membership and resumes older
    // than JetStream keeps: two connections, one of them for catch-up reads.
    let edge = !args.broker.urls.is_empty() && args.no_relay;
    let (pool_size, catchup_reads) = if edge { (2, 1) } else { (args.db_pool_size, args.catchup_reads) };
    if edge {
        tracing::info!("broker-fed edge node: 2 PostgreSQL connections, no LISTEN, events from JetStream");
    }
    // Bind first: a taken port is found before migrations run or a relay starts.
    let listener = crate::server::bind(args.addr)?;
    let pool = connect_with_patience(url, pool_size).await?;
    crate::db::migrate(&pool).await?;
    let mut config = ServerConfig::new(args.addr);
    config.streams_per_dispatcher = args.max_streams_per_dispatcher as usize;
    config.security = security;
    config.hub.catchup_reads = catchup_reads as usize;
    config.hub.window_events = args.resume_window_events;
    config.hub.window_bytes = (args.resume_window_mib as usize) << 20;
    if args.bench_only_without_storm_protection {
        config.hub = config.hub.without_storm_protection();
    }
    config.dev = args.dev;
    config.run_relay = !args.no_relay;
    let has_console = args.static_dir.is_some() || crate::console::is_embedded();
    config.static_dir = args.static_dir;
    config.relay = args.relay.config();
    config.broker = args.broker.config();
    config.jwks = jwks;
    let shutdown = shutdown_on_signal();
    let server = Server::start_on(listener, pool, config, secret, shutdown).await?;
    let addr = server.local_addr()?;
    println!("smartscheduler listening on http://{addr}");
    if !has_console {
        tracing::warn!(
            "this binary was built without the browser console (frontend/dist did not exist at build time): \
             / says how to get it; build it with `make frontend` and rebuild, or pass --static-dir"
        );
    }
    if args.dev {
        println!("dev mode: open http://{addr}/ and sign in as alice, bob, carol or dana");
    }
    server.run().await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Arguments outside their domains (id, name, group keys) are usage errors (exit 2), like clap's own.
fn usage_if_invalid(error: auth::DispatcherError) -> anyhow::Error {
    match error {
        auth::DispatcherError::BadId(_) | auth::DispatcherError::BadName(_) | auth::DispatcherError::BadGroup(_) => {
            UsageError(error.to_string()).into()
        }
        other => other.into(),
    }
}

/// The `replay` command's arguments as the replay's request. Every error is a usage error
/// ([`ReplayError::is_usage`]): a malformed position, time or group, or an empty or mixed range.
impl TryFrom<&ReplayArgs> for ReplayRequest {
    type Error = ReplayError;

    fn try_from(args: &ReplayArgs) -> Result<Self, ReplayError> {
        ReplayRequest::parse(&ReplayInput {
            from: args.from.clone(),
            to: args.to.clone(),
            since: args.since.clone(),
            until: args.until.clone(),
            groups: args.groups.clone(),
            job: args.job,
        })
    }
}

/// The `replay` command: arguments that do not make a request are usage errors (exit code 2); then the
/// replay runs and reports on stdout (see [`crate::ops::replay_report::run`]).
pub async fn replay(pool: &PgPool, args: ReplayArgs) -> anyhow::Result<()> {
    let request = ReplayRequest::try_from(&args).map_err(|e| UsageError(e.to_string()))?;
    crate::ops::replay_report::run(pool, &request, args.dry_run).await
}

async fn dispatcher(pool: &PgPool, command: DispatcherCommand) -> anyhow::Result<()> {
    match command {
        DispatcherCommand::Add { id, name, groups } => {
            let d = auth::add_dispatcher(pool, &id, &name, &groups).await.map_err(usage_if_invalid)?;
            println!("{} ({}): {}", d.dispatcher_id, d.name, d.groups.join(", "));
        }
        DispatcherCommand::Groups { id, add, remove } => {
            if add.is_empty() && remove.is_empty() {
                crate::validate::dispatcher_id("ID", &id).map_err(|e| UsageError(e.to_string()))?;
                let d = auth::dispatcher(pool, &id).await?.with_context(|| format!("no dispatcher {id:?}"))?;
                println!("{}", d.groups.join("\n"));
            } else {
                let d = auth::set_groups(pool, &id, &add, &remove).await.map_err(usage_if_invalid)?;
                println!("{}: {}", d.dispatcher_id, d.groups.join(", "));
            }
        }
        DispatcherCommand::Disable { id } => {
            auth::disable_dispatcher(pool, &id).await.map_err(usage_if_invalid)?;
            println!("{id}: disabled (open streams end within 5 s; enable restores access)");
        }
        DispatcherCommand::Enable { id } => {
            auth::enable_dispatcher(pool, &id).await.map_err(usage_if_invalid)?;
            println!("{id}: enabled");
        }
        DispatcherCommand::RevokeTokens { id } => {
            auth::revoke_tokens(pool, &id).await.map_err(usage_if_invalid)?;
            println!("{id}: every token issued so far is revoked (open streams end within 5 s)");
        }
        DispatcherCommand::Remove { id } => {
            auth::remove_dispatcher(pool, &id).await.map_err(usage_if_invalid)?;
            println!("{id}: removed");
        }
        DispatcherCommand::List { json } => {
            let all = auth::list_dispatchers(pool).await?;
            if json {
                #[derive(serde::Serialize)]
                #[serde(rename_all = "camelCase")]
                struct Listed<'a> {
                    #[serde(flatten)]
                    dispatcher: &'a auth::Dispatcher,
                    disabled: bool,
                }
                let listed: Vec<Listed> =
                    all.iter().map(|d| Listed { dispatcher: &d.dispatcher, disabled: d.access.disabled }).collect();
                println!("{}", serde_json::to_string_pretty(&listed)?);
            } else {
                let width = all.iter().map(|d| d.dispatcher.dispatcher_id.len()).max().unwrap_or(2).max(2);
                let name_width = all.iter().map(|d| d.dispatcher.name.len()).max().unwrap_or(4).max(4);
                println!("{:width$}  {:name_width$}  GROUPS", "ID", "NAME");
                for record in all {
                    let status = if record.access.disabled { "  (disabled)" } else { "" };
                    let d = &record.dispatcher;
                    println!("{:width$}  {:name_width$}  {}{status}", d.dispatcher_id, d.name, d.groups.join(", "));
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

/// How long `serve` waits for a database that is not reachable yet.
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);

/// serve may start together with its database: retry what may pass (refused, starting up, no free slot) for
/// a few seconds, each retry saying why; fail at once on what waiting cannot fix (no such database or role,
/// wrong password, refused certificate, malformed URL).
async fn connect_with_patience(url: &str, pool_size: u32) -> anyhow::Result<PgPool> {
    let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
    let pause = Duration::from_millis(500);
    loop {
        match crate::db::connect(url, pool_size).await {
            Ok(pool) => return Ok(pool),
            Err(e) if !e.is_transient() || tokio::time::Instant::now() + pause >= deadline => return Err(e.into()),
            Err(e) => {
                tracing::warn!(
                    "{e}; retrying every {} ms for up to {} s",
                    pause.as_millis(),
                    CONNECT_PATIENCE.as_secs()
                );
                tokio::time::sleep(pause).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::replay::ReplayRange;

    fn args() -> ReplayArgs {
        ReplayArgs { from: None, to: None, since: None, until: None, groups: vec![], job: None, dry_run: false }
    }

    #[test]
    fn positions_parse_and_must_be_ordered() {
        let a = ReplayArgs { from: Some("7f3a9c21-10".into()), to: Some("7f3a9c21-20".into()), ..args() };
        let r = ReplayRequest::try_from(&a).unwrap();
        assert!(
            matches!(r.range, ReplayRange::Positions { after, through: Some(t) } if after.seq == 10 && t.seq == 20)
        );

        let a = ReplayArgs { from: Some("7f3a9c21-20".into()), to: Some("7f3a9c21-10".into()), ..args() };
        let e = ReplayRequest::try_from(&a).unwrap_err();
        assert!(e.is_usage() && e.to_string().contains("before"), "{e}");

        let a = ReplayArgs { from: Some("nope".into()), ..args() };
        assert!(matches!(ReplayRequest::try_from(&a), Err(ReplayError::BadPosition { flag: "--from", .. })));
    }

    #[test]
    fn times_and_groups_are_validated() {
        let a =
            ReplayArgs { since: Some("2026-11-25T08:00:00Z".into()), groups: vec!["region:north".into()], ..args() };
        let r = ReplayRequest::try_from(&a).unwrap();
        assert_eq!(r.groups.len(), 1);
        let a = ReplayArgs { since: Some("yesterday".into()), ..args() };
        assert!(matches!(ReplayRequest::try_from(&a), Err(ReplayError::BadTime { flag: "--since", .. })));
        let a = ReplayArgs { since: Some("2026-11-25T08:00:00Z".into()), groups: vec!["North".into()], ..args() };
        assert!(matches!(ReplayRequest::try_from(&a), Err(ReplayError::BadGroup(_))));
    }
}

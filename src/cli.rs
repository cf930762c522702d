//! The command line. Every flag can also come from the environment where the contract says so; flags win.

use crate::telemetry::LogFormat;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// SmartScheduler realtime: recommendations for dispatch, delivered live to dispatchers' browsers.
#[derive(Debug, Parser)]
#[command(name = "smartscheduler", version, propagate_version = true)]
pub struct Cli {
    /// PostgreSQL connection string.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Log output format.
    #[arg(long, env = "SMARTSCHEDULER_LOG_FORMAT", global = true, value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands (each variant's doc is its `--help` line).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// HTTP API, event stream, relay and retention in one process.
    Serve(Box<ServeArgs>),
    /// Run only the relay (outbox → event_log, and on to JetStream with --broker), for deployments that split roles.
    Relay(RelayCommandArgs),
    /// Apply the database migrations (serve and relay also do this at start-up).
    Migrate,
    /// Load demo data (regions, contractors, jobs, dispatchers alice, bob, carol, dana). Idempotent.
    Seed {
        /// Load the demo data set (the only data set so far).
        #[arg(long, required = true)]
        demo: bool,
    },
    /// Manage dispatchers and their group membership.
    #[command(subcommand)]
    Dispatcher(DispatcherCommand),
    /// Print a signed token for a dispatcher (needs SMARTSCHEDULER_AUTH_SECRET).
    Token {
        /// The dispatcher id (its `sub`).
        #[arg(long)]
        dispatcher: String,
        /// How long the token is valid, for example 30m, 8h, 2d.
        #[arg(long, default_value = "8h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Inspect the outbox and the relay.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Publish copies of past events again (each copy a new event whose replayOf names the original).
    Replay(ReplayArgs),
    /// Drop event_log partitions older than the retention window and create upcoming ones.
    Retention {
        /// Show what would be dropped without dropping it.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `serve`'s flags: the HTTP server, the stream hub and the relay it runs.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// HTTP listen address.
    #[arg(long, env = "SMARTSCHEDULER_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Development mode: demo login endpoint and, if no secret is set, an ephemeral auth secret.
    #[arg(long)]
    pub dev: bool,
    /// Do not run a relay in this process (another process publishes).
    #[arg(long)]
    pub no_relay: bool,
    /// Serve the browser console from this directory instead of the one embedded in the binary at build
    /// time (for frontend development: `npm run build` output shows without rebuilding the binary).
    #[arg(long)]
    pub static_dir: Option<PathBuf>,
    /// Other origins whose pages may send the console's writes with the session cookie, comma-separated
    /// (for example https://intranet.example). The server's own origin is always allowed.
    #[arg(long, env = "SMARTSCHEDULER_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// The pages that may embed the console in a frame: a CSP frame-ancestors source list, for example
    /// "'self' https://intranet.example". The default 'none' allows no page.
    #[arg(long, env = "SMARTSCHEDULER_FRAME_ANCESTORS", default_value = crate::http::security::DEFAULT_FRAME_ANCESTORS)]
    pub frame_ancestors: String,
    /// Believe X-Forwarded-Proto and X-Forwarded-Host: set it when a proxy in front (deploy/nginx) sets them
    /// and clients cannot reach this server around it.
    #[arg(long, env = "SMARTSCHEDULER_TRUST_PROXY", value_parser = clap::builder::BoolishValueParser::new())]
    pub trust_proxy: bool,
    /// The URL browsers open the console at, for example https://dispatch.example.com: with https, the
    /// session cookie is Secure; its origin may always send writes.
    #[arg(long, env = "SMARTSCHEDULER_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The relay's flags (serve runs a relay unless `--no-relay`).
    #[command(flatten)]
    pub relay: RelayArgs,
    /// NATS JetStream between the relay and the SSE nodes (off unless --broker is given).
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Connections to PostgreSQL this process may open.
    #[arg(long, env = "SMARTSCHEDULER_DB_POOL_SIZE", default_value_t = 32, value_parser = clap::value_parser!(u32).range(4..))]
    pub db_pool_size: u32,
    /// Catch-up reads of the event log (resuming streams) running at once; the others wait their turn. Must
    /// be below --db-pool-size, so that API requests always find a connection.
    #[arg(long, env = "SMARTSCHEDULER_CATCHUP_READS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub catchup_reads: u32,
    /// Most recent events each process keeps in memory to serve resumes without a query (0: none; every
    /// resume then reads the event log).
    #[arg(long, env = "SMARTSCHEDULER_RESUME_WINDOW_EVENTS", default_value_t = 10_000)]
    pub resume_window_events: usize,
    /// Most memory the resume window may hold, in MiB (the oldest events go first).
    #[arg(long, env = "SMARTSCHEDULER_RESUME_WINDOW_MIB", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub resume_window_mib: u32,
    /// Event streams one dispatcher may hold on this instance; more get 429 `too_many_streams`. The
    /// console shares one stream between the tabs of a browser, so this allows many browsers and devices.
    #[arg(long, env = "SMARTSCHEDULER_MAX_STREAMS_PER_DISPATCHER", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_streams_per_dispatcher: u32,
    /// Identity-provider tokens (JWKS, issuer, audience).
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// For the benchmark's comparison only: the stream design before issue 14 (no resume window, no
    /// catch-up queue, a catch-up read that finds the pool busy ends the stream).
    #[arg(long, hide = true)]
    pub bench_only_without_storm_protection: bool,
}

/// `serve`'s identity-provider flags: tokens signed by the company's identity provider (RS256, ES256,
/// EdDSA), checked against its JWKS. With a JWKS, `--token-issuer` and `--token-audience` are required (a
/// key set alone would accept any token its provider signs for any application). HS256 tokens keep working
/// when `SMARTSCHEDULER_AUTH_SECRET` is set too.
#[derive(Debug, Clone, Args)]
pub struct IdentityArgs {
    /// URL of the identity provider's JWKS document (https; http only to a loopback host).
    #[arg(long, env = "SMARTSCHEDULER_JWKS_URL", conflicts_with = "jwks_file")]
    pub jwks_url: Option<String>,
    /// File holding the identity provider's JWKS document (re-read at every refresh).
    #[arg(long, env = "SMARTSCHEDULER_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// The `iss` identity-provider tokens must carry (exactly).
    #[arg(long, env = "SMARTSCHEDULER_TOKEN_ISSUER")]
    pub token_issuer: Option<String>,
    /// A value identity-provider tokens' `aud` must hold.
    #[arg(long, env = "SMARTSCHEDULER_TOKEN_AUDIENCE")]
    pub token_audience: Option<String>,
    /// How often the JWKS is read again (an unknown `kid` also triggers a read, at most every 30 s).
    #[arg(long, env = "SMARTSCHEDULER_JWKS_REFRESH", default_value = "5m", value_parser = jwks_refresh)]
    pub jwks_refresh: std::time::Duration,
}

/// A JWKS refresh interval: at least 30 s (a provider is not to be polled like a local file).
fn jwks_refresh(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_secs(30) {
        return Err("must be at least 30s".into());
    }
    Ok(d)
}

impl IdentityArgs {
    /// The identity-provider configuration these flags describe, `None` without a JWKS. Errors (usage
    /// errors): a JWKS without issuer or audience, an issuer or audience without a JWKS, an empty value.
    pub fn config(&self) -> Result<Option<crate::auth::JwksConfig>, String> {
        use crate::auth::{JwksConfig, JwksSource};
        let source = match (&self.jwks_url, &self.jwks_file) {
            (Some(url), _) => Some(JwksSource::Url(url.clone())),
            (None, Some(file)) => Some(JwksSource::File(file.clone())),
            (None, None) => None,
        };
        let nonempty =
            |value: &Option<String>| value.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
        match (source, nonempty(&self.token_issuer), nonempty(&self.token_audience)) {
            (None, None, None) => Ok(None),
            (Some(source), Some(issuer), Some(audience)) => {
                let mut config = JwksConfig::new(source, issuer, audience);
                config.refresh_every = self.jwks_refresh;
                Ok(Some(config))
            }
            (Some(_), _, _) => Err("--jwks-url/--jwks-file need both --token-issuer and --token-audience \
                                    (SMARTSCHEDULER_TOKEN_ISSUER, SMARTSCHEDULER_TOKEN_AUDIENCE)"
                .into()),
            (None, _, _) => Err("--token-issuer and --token-audience apply to identity-provider tokens: \
                                 also set --jwks-url or --jwks-file"
                .into()),
        }
    }
}

/// `relay`'s flags.
#[derive(Debug, Clone, Args)]
pub struct RelayCommandArgs {
    /// How the relay polls.
    #[command(flatten)]
    pub relay: RelayArgs,
    /// Where it publishes on to (off unless --broker is given).
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// The broker: NATS JetStream (nats-server 2.9 or later, JetStream enabled).
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// NATS server URL (nats://host:4222); repeat it or separate with commas for a cluster. With it, the
    /// relay of this process also publishes every event to JetStream (stream SS_EVENTS_<epoch>).
    #[arg(long = "broker", env = "SMARTSCHEDULER_BROKER", value_delimiter = ',', value_name = "URL")]
    pub urls: Vec<String>,
    /// Replicas of the JetStream stream, when this process creates it (3 on a three-node cluster).
    #[arg(long, env = "SMARTSCHEDULER_BROKER_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub broker_replicas: u8,
    /// How long JetStream keeps an event (resumes from older positions read PostgreSQL).
    #[arg(long, env = "SMARTSCHEDULER_BROKER_MAX_AGE", default_value = "24h", value_parser = broker_max_age)]
    pub broker_max_age: std::time::Duration,
}

impl BrokerArgs {
    /// The broker configuration, or `None` without `--broker`.
    pub fn config(&self) -> Option<crate::broker::BrokerConfig> {
        if self.urls.is_empty() {
            return None;
        }
        Some(crate::broker::BrokerConfig {
            urls: self.urls.clone(),
            publisher: crate::broker::PublisherConfig {
                replicas: self.broker_replicas as usize,
                max_age: self.broker_max_age,
                ..crate::broker::PublisherConfig::default()
            },
        })
    }
}

/// A stream age limit: at least a minute (JetStream would expire events before slow nodes read them).
fn broker_max_age(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_secs(60) {
        return Err("must be at least 1m".into());
    }
    Ok(d)
}

/// How often the relay looks for events from writers that do not wake it (a plain SQL `INSERT INTO outbox`).
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// Poll interval of an idle relay: the most the first event after a quiet spell waits.
    #[arg(long, env = "SMARTSCHEDULER_RELAY_POLL", default_value = "20ms", value_parser = poll_interval)]
    pub relay_poll: std::time::Duration,
    /// Poll interval while events keep arriving (see --relay-busy-for).
    #[arg(long, env = "SMARTSCHEDULER_RELAY_BUSY_POLL", default_value = "2ms", value_parser = poll_interval)]
    pub relay_busy_poll: std::time::Duration,
    /// How long after its last published batch the relay keeps to the busy poll interval (0s: never).
    #[arg(long, env = "SMARTSCHEDULER_RELAY_BUSY_FOR", default_value = "1s", value_parser = humantime::parse_duration)]
    pub relay_busy_for: std::time::Duration,
}

/// A poll interval: a duration of at least 1 ms (zero would make the relay query without pause).
fn poll_interval(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_millis(1) {
        return Err("must be at least 1ms".into());
    }
    Ok(d)
}

impl RelayArgs {
    /// The relay configuration these flags describe (other settings at their defaults).
    pub fn config(&self) -> crate::relay::RelayConfig {
        crate::relay::RelayConfig {
            poll_interval: self.relay_poll,
            busy_poll_interval: self.relay_busy_poll,
            busy_for: self.relay_busy_for,
            ..crate::relay::RelayConfig::default()
        }
    }
}

/// `dispatcher`'s subcommands: manage who may sign in and their groups.
#[derive(Debug, Subcommand)]
pub enum DispatcherCommand {
    /// Add a dispatcher (or update the name of an existing one) with optional groups.
    Add {
        /// Login id, for example alice.
        id: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Group key such as region:north (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Change the groups of a dispatcher. Open streams apply it within 5 seconds.
    Groups {
        id: String,
        /// Group to add (repeatable).
        #[arg(long = "add")]
        add: Vec<String>,
        /// Group to remove (repeatable).
        #[arg(long = "remove")]
        remove: Vec<String>,
    },
    /// List dispatchers and their groups.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Disable a dispatcher: every request is refused (403) and open streams end within 5 seconds. Their
    /// tokens are kept: `enable` makes them work again.
    Disable { id: String },
    /// Enable a disabled dispatcher again.
    Enable { id: String },
    /// Revoke every token this server issued for a dispatcher so far (requests with them are 401, streams
    /// opened with them end within 5 seconds). Identity-provider tokens are withdrawn with `disable`.
    RevokeTokens { id: String },
    /// Remove a dispatcher and their groups. Their tokens stay invalid if the id is added again.
    Remove { id: String },
}

/// `outbox`'s subcommands.
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Pending rows, oldest pending age, last position, publish rate, retention, relay and listener health.
    Status {
        /// Stable JSON output (documented in docs/operations.md).
        #[arg(long)]
        json: bool,
    },
}

/// `replay`'s flags: which published events to copy again (commands.rs maps them onto
/// [`crate::ops::replay::ReplayRequest`]).
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("range").required(true).args(["from", "since"])))]
pub struct ReplayArgs {
    /// Replay events after this position (exclusive, like Last-Event-ID), for example 7f3a9c21-1000.
    #[arg(long, conflicts_with_all = ["since", "until"])]
    pub from: Option<String>,
    /// Last position to replay (inclusive).
    #[arg(long, requires = "from")]
    pub to: Option<String>,
    /// Replay events published at or after this time: RFC 3339 (for example 2026-11-25T08:00:00Z), or a
    /// duration before now (1h, 30m, 1h30m, 2days).
    #[arg(long)]
    pub since: Option<String>,
    /// Replay events published before this time (RFC 3339, or a duration before now such as 30m).
    #[arg(long, requires = "since")]
    pub until: Option<String>,
    /// Only events for this group (repeatable).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Only events about this job id.
    #[arg(long)]
    pub job: Option<uuid::Uuid>,
    /// Print what would be replayed and publish nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_poll_flags_parse_durations_and_refuse_a_zero_interval() {
        let cli = Cli::try_parse_from(["smartscheduler", "relay", "--relay-poll", "50ms", "--relay-busy-for", "0s"])
            .expect("valid flags");
        let Command::Relay(relay) = cli.command else { panic!("not the relay command") };
        let config = relay.relay.config();
        assert_eq!(config.poll_interval, std::time::Duration::from_millis(50));
        assert_eq!(config.busy_for, std::time::Duration::ZERO);
        assert_eq!(config.busy_poll_interval, crate::relay::RelayConfig::default().busy_poll_interval);
        assert!(Cli::try_parse_from(["smartscheduler", "serve", "--relay-busy-poll", "0ms"]).is_err());
    }

    #[test]
    fn broker_flags_take_a_cluster_and_refuse_what_jetstream_cannot_do() {
        let cli = Cli::try_parse_from([
            "smartscheduler",
            "relay",
            "--broker",
            "nats://a:4222,nats://b:4222",
            "--broker",
            "nats://c:4222",
            "--broker-replicas",
            "3",
        ])
        .expect("valid flags");
        let Command::Relay(relay) = cli.command else { panic!("not the relay command") };
        let broker = relay.broker.config().expect("a broker");
        assert_eq!(broker.urls, ["nats://a:4222", "nats://b:4222", "nats://c:4222"]);
        assert_eq!(broker.publisher.replicas, 3);
        let Command::Relay(plain) = Cli::try_parse_from(["smartscheduler", "relay"]).unwrap().command else {
            panic!("not the relay command")
        };
        assert!(plain.broker.config().is_none(), "no --broker: no broker (make run needs no NATS)");
        for bad in [["--broker-replicas", "0"], ["--broker-replicas", "6"], ["--broker-max-age", "10s"]] {
            assert!(Cli::try_parse_from(["smartscheduler", "serve", bad[0], bad[1]]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn browser_security_flags_parse() {
        let cli = Cli::try_parse_from([
            "smartscheduler",
            "serve",
            "--allowed-origins",
            "https://a.example,https://b.example",
            "--trust-proxy",
            "--frame-ancestors",
            "'self'",
        ])
        .expect("valid flags");
        let Command::Serve(serve) = cli.command else { panic!("not serve") };
        assert_eq!(serve.allowed_origins, ["https://a.example", "https://b.example"]);
        assert!(serve.trust_proxy);
        assert_eq!(serve.frame_ancestors, "'self'");
        assert_eq!(serve.public_url, None);
    }
}

//! `serve`: wires the pool, hub, relay, retention and HTTP router into one process, and shuts it down
//! cleanly: stop accepting, end open streams (clients resume elsewhere), finish the relay batch in flight.

use crate::auth::{AuthSecret, Jwks, JwksConfig, TokenVerifier};
use crate::http::admission::{Admission, ConnectionLimits};
use crate::http::{AppState, AppStateInner, connection, router};
use crate::outbox::RelayWaker;
use crate::relay::{Relay, RelayConfig};
use crate::stream::{Hub, HubConfig};
use crate::supervisor::Supervisor;
use anyhow::Context;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Everything `serve` needs to know.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// HTTP listen address (port 0: any free port; see [`Server::local_addr`]).
    pub addr: SocketAddr,
    /// Development mode: the demo login routes (`/api/dev/*`).
    pub dev: bool,
    /// Whether this process runs a relay (off: another process publishes).
    pub run_relay: bool,
    /// NATS JetStream, if this deployment runs one: the relay's events are published on to it.
    pub broker: Option<crate::broker::BrokerConfig>,
    /// Serve the browser console from this directory instead of the embedded one.
    pub static_dir: Option<PathBuf>,
    /// The stream hub's tuning.
    pub hub: HubConfig,
    /// The relay's tuning.
    pub relay: RelayConfig,
    /// How consoles' receipts are gathered into batches.
    pub receipts: crate::receipts::BatchConfig,
    /// Lifetime of the tokens `POST /api/dev/session` signs.
    pub dev_token_ttl: Duration,
    /// How often retention runs inside serve.
    pub retention_interval: Duration,
    /// How often the number of open event streams is checked; it is logged when it changed.
    pub stream_count_interval: Duration,
    /// Event streams one dispatcher may hold on this instance (`--max-streams-per-dispatcher`).
    pub streams_per_dispatcher: usize,
    /// Connection and stream budgets. `None`: derived from the descriptor limit, which `serve` raises to
    /// its hard limit first ([`ConnectionLimits::from_descriptors`]).
    pub connection_limits: Option<ConnectionLimits>,
    /// How browsers reach this server (origin check, security headers, `Secure` cookies).
    pub security: crate::http::security::SecurityConfig,
    /// Identity-provider tokens: where its JWKS is and which `iss`/`aud` tokens must carry (`None`: only
    /// this server's HS256 tokens are accepted).
    pub jwks: Option<JwksConfig>,
    /// BENCHMARK ONLY (`smartscheduler-bench --only 10`, its baseline): `EventWrite::BenchOnlySkip` makes
    /// `POST /api/jobs/{id}/recommendations` store sets without their event. `serve` never sets it.
    #[doc(hidden)]
    pub bench_only_event_write: crate::recommendations::EventWrite,
}

impl ServerConfig {
    /// The defaults of `serve` (relay on, dev off), listening on `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            dev: false,
            run_relay: true,
            broker: None,
            static_dir: None,
            hub: HubConfig::default(),
            relay: RelayConfig::default(),
            receipts: crate::receipts::BatchConfig::default(),
            dev_token_ttl: Duration::from_secs(8 * 3600),
            retention_interval: Duration::from_secs(3600),
            stream_count_interval: Duration::from_secs(10),
            streams_per_dispatcher: crate::stream::DEFAULT_STREAMS_PER_DISPATCHER,
            connection_limits: None,
            security: crate::http::security::SecurityConfig::default(),
            jwks: None,
            bench_only_event_write: crate::recommendations::EventWrite::Write,
        }
    }
}

/// A started server: bound, hub listening, relay running.
pub struct Server {
    listener: TcpListener,
    admission: Arc<Admission>,
    waker: RelayWaker,
    app: axum::Router,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shutdown: CancellationToken,
}

impl Server {
    /// Binds `config.addr`, then starts the background work; see [`Server::start_on`].
    pub async fn start(
        pool: PgPool,
        config: ServerConfig,
        secret: impl Into<Option<AuthSecret>>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let listener = bind(config.addr)?;
        Self::start_on(listener, pool, config, secret, shutdown).await
    }

    /// Starts the background work and serves on `listener` (from [`bind`], done before anything else so
    /// that a taken port is found before migrations run or a relay starts). `pool` must be migrated.
    /// `secret` checks (and, under `dev`, issues) HS256 tokens; `None` accepts only the identity
    /// provider's tokens, which then must be configured (`config.jwks`). Errors: neither kind of token
    /// configured, the JWKS cannot be read, the hub cannot start.
    pub async fn start_on(
        listener: TcpListener,
        pool: PgPool,
        config: ServerConfig,
        secret: impl Into<Option<AuthSecret>>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let secret = secret.into();
        anyhow::ensure!(
            secret.is_some() || config.jwks.is_some(),
            "no way to check tokens: set SMARTSCHEDULER_AUTH_SECRET, or configure the identity provider (--jwks-url or --jwks-file)"
        );
        let jwks = match config.jwks.clone() {
            Some(jwks) => Some(Jwks::load(jwks).await?),
            None => None,
        };
        let limits = config.connection_limits.unwrap_or_else(|| {
            let descriptors = crate::http::admission::raise_descriptor_limit().unwrap_or(1024);
            ConnectionLimits::from_descriptors(descriptors, pool.options().get_max_connections())
        });
        tracing::info!(
            connections = limits.max_connections,
            streams = limits.max_streams,
            streams_per_dispatcher = config.streams_per_dispatcher,
            pending_heads = limits.max_pending_heads,
            "connection limits"
        );
        let node_id = Uuid::new_v4();
        let waker = RelayWaker::new();
        // Every background task runs under the supervisor: restarted after a panic, and reported by /readyz
        // while it makes no progress.
        let supervisor = Supervisor::new();
        // A broker-fed node takes its events from JetStream: no LISTEN, no reads of event_log per event.
        let broker_client = match &config.broker {
            Some(broker) => Some(crate::broker::connect(&broker.urls).await.context("--broker")?),
            None => None,
        };
        let hub_config = HubConfig { listen: broker_client.is_none(), ..config.hub.clone() };
        let hub = Hub::start(pool.clone(), hub_config, node_id, &supervisor, shutdown.clone())
            .await
            .context("starting the stream hub")?;
        let mut tasks = Vec::new();
        let mut receipt_announcer: Option<crate::receipts::batch::Announce> = None;
        if let Some(client) = &broker_client {
            let target: Arc<dyn crate::event_log::FeedTarget> = Arc::new(hub.clone());
            tasks.push(crate::broker::feed::spawn_supervised(client.clone(), target, &supervisor, shutdown.clone()));
            // Receipt hints travel over NATS between broker-fed nodes, which hear no NOTIFY.
            receipt_announcer = Some(crate::broker::receipts::announcer(client.clone()));
            let (client, receipts_hub, receipts_shutdown) = (client.clone(), hub.clone(), shutdown.clone());
            tasks.push(supervisor.spawn("receipt-hints", Duration::from_secs(30), shutdown.clone(), move |progress| {
                let hub = receipts_hub.clone();
                crate::broker::receipts::subscribe(
                    client.clone(),
                    move |hint| hub.deliver_receipt(hint),
                    receipts_shutdown.clone(),
                    progress,
                )
            }));
        }
        if config.run_relay {
            let local_hub = hub.clone();
            // With a broker, the relay's batches also ring the broker publisher, which copies them on to
            // JetStream (from event_log, so that nothing depends on this hand-over arriving).
            let ring_broker = match (&config.broker, &broker_client) {
                (Some(broker), Some(client)) => {
                    // Receipts stored by PostgreSQL-fed nodes reach broker-fed ones through this process.
                    let (bridge_pool, bridge_client, bridge_shutdown) =
                        (pool.clone(), client.clone(), shutdown.clone());
                    tasks.push(supervisor.spawn(
                        "receipt-bridge",
                        Duration::from_secs(30),
                        shutdown.clone(),
                        move |progress| {
                            crate::broker::receipts::bridge(
                                bridge_pool.clone(),
                                bridge_client.clone(),
                                bridge_shutdown.clone(),
                                progress,
                            )
                        },
                    ));
                    let publisher =
                        crate::broker::Publisher::new(pool.clone(), client.clone(), broker.publisher.clone());
                    let ring = publisher.waker();
                    tasks.push(publisher.spawn_supervised(&supervisor, shutdown.clone()));
                    Some(ring)
                }
                _ => None,
            };
            let relay =
                Relay::new(pool.clone(), config.relay.clone(), waker.clone(), node_id).on_published(move |batch| {
                    local_hub.deliver_published(batch);
                    if let Some(ring) = &ring_broker {
                        ring();
                    }
                });
            tasks.push(relay.spawn_supervised(&supervisor, shutdown.clone()));
        }
        let (receipts, receipts_task) = crate::receipts::ReceiptBatcher::start(
            pool.clone(),
            config.receipts.clone(),
            receipt_announcer,
            &supervisor,
            shutdown.clone(),
        );
        tasks.push(receipts_task);
        let (retention_pool, retention_every) = (pool.clone(), config.retention_interval);
        let retention_shutdown = shutdown.clone();
        tasks.push(supervisor.spawn(
            "retention",
            retention_every * 2 + Duration::from_secs(60),
            shutdown.clone(),
            move |progress| {
                crate::ops::retention::run_periodically(
                    retention_pool.clone(),
                    retention_every,
                    retention_shutdown.clone(),
                    progress,
                )
            },
        ));
        tasks.push(tokio::spawn(log_stream_count(hub.clone(), config.stream_count_interval, shutdown.clone())));
        if let Some(jwks) = &jwks {
            tasks.push(tokio::spawn(jwks.clone().refresh_periodically(shutdown.clone())));
        }
        let state = AppState::new(AppStateInner {
            dispatchers: crate::auth::dispatcher_lookup(pool.clone()),
            pool,
            hub,
            tokens: TokenVerifier::new(secret, jwks),
            waker: waker.clone(),
            dev: config.dev,
            metrics: crate::metrics::install(),
            dev_token_ttl: config.dev_token_ttl,
            supervisor,
            event_write: config.bench_only_event_write,
            stream_limits: crate::stream::StreamLimits::new(config.streams_per_dispatcher, limits.max_streams),
            security: config.security.clone(),
            receipts,
        });
        let app = router(state, config.static_dir.clone());
        Ok(Self { listener, admission: Admission::new(limits), waker, app, tasks, shutdown })
    }

    /// The doorbell of this server's relay, for writers in the same process (as the API's own writers use).
    pub fn relay_waker(&self) -> RelayWaker {
        self.waker.clone()
    }

    /// The address the server listens on (the port the kernel picked, when configured with port 0).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until the shutdown token is cancelled, then waits for streams and the relay to finish.
    ///
    /// HTTP/1.1 only: browsers speak HTTP/1.1 to a plain-HTTP origin anyway, and the HTTP/1 + HTTP/2
    /// auto-detecting connection that `axum::serve` uses costs more memory per idle connection, which
    /// matters for thousands of open event streams. A connection that opens with the event stream is
    /// served by [`crate::http::stream_connection`] (smaller still); every other one by hyper's HTTP/1 connection.
    pub async fn run(self) -> anyhow::Result<()> {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        // Every connection's task, so that shutdown can wait for the streams to end.
        let connections = tokio_util::task::TaskTracker::new();
        connection::accept_loop(
            &self.listener,
            self.admission.clone(),
            self.app.clone(),
            &graceful,
            &connections,
            &self.shutdown,
        )
        .await;
        // Open streams end on the same token; idle keep-alive connections are closed here.
        graceful.shutdown().await;
        connections.close();
        connections.wait().await;
        for task in self.tasks {
            let _ = task.await;
        }
        Ok(())
    }
}

/// Connections the kernel may hold for us before we accept them. When an instance dies, its browsers come
/// back here within seconds; with tokio's default of 1,024, a burst beyond it is dropped and each dropped
/// client waits for its SYN to be resent (1 s, then 3 s, 7 s, ...): the reconnect storm benchmark measured
/// 70,000 drops and 35 s for 9,500 clients. Linux caps this at `net.core.somaxconn` (4,096 by default).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` for HTTP. Errors: the address is taken (said in words that name the flag to change) or
/// cannot be bound.
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    listen(addr).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::AddrInUse {
            "the address is in use (another server listens there); pick another with --addr or SMARTSCHEDULER_ADDR"
                .to_owned()
        } else {
            e.to_string()
        };
        anyhow::anyhow!("cannot listen on {addr}: {why}")
    })
}

/// Binds `addr` for HTTP with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as `TcpListener::bind` sets it, so
/// that a restart does not wait for the old connections' TIME_WAIT).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// One info line when the number of open event streams changed since the last look: what an operator
/// wants to see (is anyone connected, did they all drop) without a line per connection or per event.
async fn log_stream_count(hub: Hub, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let now = hub.stream_count();
        if now != last {
            tracing::info!(streams = now, was = last, "event streams open");
            last = now;
        }
    }
}

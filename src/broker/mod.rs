//! The broker between the relay and edge SSE nodes: NATS JetStream.
//!
//! A deployment that outgrows one database puts JetStream between the relay and the SSE nodes: the relay
//! publishes each committed event once more, to JetStream, and broker-fed SSE nodes read events from there
//! instead of from `event_log`, so that adding nodes costs PostgreSQL nothing per event.
//!
//! # The stream
//! One JetStream stream per epoch of the log, `SS_EVENTS_<epoch>`, with one subject `ss.events.<epoch>`.
//! Each event is one message whose JetStream sequence equals its `seq`: the relay publishes with
//! `Nats-Expected-Last-Sequence = seq - 1`, so a stale or second relay cannot publish out of order, and with
//! `Nats-Msg-Id = <epoch>-<seq>`, so a retry inside the duplicate window is dropped by the server. A new
//! epoch (a recreated or restored log) gets a new stream: its seqs name other events.
//!
//! The wire format of a message is [`wire`]; everything else knows the broker only through this module.

pub mod feed;
pub mod publisher;
pub mod receipts;
pub mod wire;

pub use publisher::{Publisher, PublisherConfig, StepOutcome};

use std::time::Duration;

/// Bound on one JetStream API call or publish ack (the client's default is 10 s). When a cluster member
/// dies, the streams and consumers it led get new leaders within a few seconds; a call sent to the dead
/// leader meanwhile is never answered, so a short bound is what lets the retry reach the new one soon.
/// A retry costs nothing: publishes carry `Nats-Msg-Id` and the expected last sequence, and the feed
/// restarts from its hub's head. Measured by `killing_the_nats_node_that_hosts_the_edge_nodes_consumer`
/// in `tests/api/broker_node.rs`: 16 s to deliver again with the default, see that test for the bound.
pub const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// A JetStream context on `client` whose calls are bounded by [`JETSTREAM_TIMEOUT`].
pub fn jetstream(client: async_nats::Client) -> async_nats::jetstream::Context {
    let mut context = async_nats::jetstream::new(client);
    context.set_timeout(JETSTREAM_TIMEOUT);
    context
}

/// Where the broker is and how this process uses it (`--broker`, `--broker-replicas`, `--broker-max-age`).
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// NATS server URLs (`nats://host:port`), one or a cluster's.
    pub urls: Vec<String>,
    /// How the publisher (in a process that runs a relay) behaves.
    pub publisher: PublisherConfig,
}

/// Why the broker could not be reached or configured.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No URL was given, or one is not a NATS URL.
    #[error("--broker: {0}")]
    Url(String),
    /// The client could not be created.
    #[error("NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
}

/// Connects to a NATS server or cluster (`urls`, each `nats://host:port`; the client fails over between
/// them and to the servers the cluster announces). Returns at once even when no server answers, after
/// saying so in one line: the client keeps trying in the background, and what depends on it (`/readyz`
/// through the `broker` task) reports the outage until it connects.
///
/// # Errors
/// [`BrokerError::Url`] for an empty list or a URL that is not `nats://` (or `tls://`).
pub async fn connect(urls: &[String]) -> Result<async_nats::Client, BrokerError> {
    if urls.is_empty() {
        return Err(BrokerError::Url("no NATS URL given".into()));
    }
    let mut addresses = Vec::with_capacity(urls.len());
    for url in urls {
        let address: async_nats::ServerAddr =
            url.parse().map_err(|e| BrokerError::Url(format!("{url:?} is not a NATS URL ({e})")))?;
        addresses.push(address);
    }
    let joined = urls.join(",");
    let events_for = joined.clone();
    let client = async_nats::ConnectOptions::new()
        .name("smartscheduler")
        .connection_timeout(Duration::from_secs(2))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let urls = events_for.clone();
            async move {
                match event {
                    async_nats::Event::Connected => tracing::info!(%urls, "connected to NATS"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!(%urls, "lost NATS; reconnecting (readyz is 503 meanwhile)")
                    }
                    other => tracing::debug!(%urls, event = %other, "NATS client event"),
                }
            }
        })
        .connect(addresses)
        .await?;
    if !wait_connected(&client, Duration::from_secs(2)).await {
        tracing::error!(urls = %joined, "cannot reach NATS; retrying in the background (readyz is 503 until it connects)");
    }
    Ok(client)
}

/// Waits up to `timeout` for `client` to be connected; true if it is.
pub async fn wait_connected(client: &async_nats::Client, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if client.connection_state() == async_nats::connection::State::Connected {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

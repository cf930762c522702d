//! The broker feed: a broker-fed SSE node's one JetStream consumer, which hands every event to the node's
//! hub in seq order, instead of a LISTEN and reads of `event_log`.
//!
//! One ordered consumer per node (never per browser: JetStream's API slows down at tens of thousands of
//! consumers), ephemeral, starting at the sequence after the hub's head, which is the seq after it since
//! the publisher keeps JetStream's sequence equal to `seq`. An ordered consumer notices a missed message
//! itself and recreates itself after the last one it delivered; on any other failure the feed recreates it
//! from the hub's head, so a NATS node killed, a whole-NATS outage or a slow node never makes it skip or
//! repeat an event. If the stream no longer holds the next event (it expired from JetStream while the node
//! was away), the hub ends its streams and their clients resume from the log, as after any gap.

use super::wire;
use crate::event_log::{EventRow, FeedTarget, PublishedBatch};
use crate::position::Epoch;
use crate::supervisor::{Progress, Supervisor};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Counter: events this node received from JetStream.
pub const BROKER_RECEIVED: &str = "smartscheduler_broker_received_total";

/// Counter: JetStream messages this node could not read as events (skipped; see `deliver`).
pub const BROKER_BAD_MESSAGES: &str = "smartscheduler_broker_bad_messages_total";

/// Most messages handed to the hub as one batch.
const BATCH: usize = 512;

/// How long the feed may go without delivering or confirming its connection before it counts as stalled.
pub const FEED_STALL_AFTER: Duration = Duration::from_secs(10);

/// How long the feed waits without a delivery before it asks JetStream whether the stream holds more than
/// the hub has: an ordered consumer has one replica, and when the NATS node hosting it dies the client
/// library may go on waiting for it without an error (seen with nats-server 2.9 and async-nats 0.52 after
/// `kill -9` of the consumer's host). One stream-info call per idle period, none while events flow.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(3);

/// Why the feed (re)starts its consumer.
#[derive(Debug, thiserror::Error)]
enum FeedError {
    #[error("not connected to NATS")]
    Disconnected,
    #[error("JetStream stream {0} not found (has a relay with --broker run yet?)")]
    NoStream(String),
    #[error("JetStream: {0}")]
    Api(String),
    #[error(
        "the consumer delivered nothing for {idle:?} while the stream holds seq {last} and it delivered through {delivered_through}"
    )]
    Stalled { idle: Duration, last: u64, delivered_through: u64 },
}

/// Runs the feed under `supervisor` as the task `broker-feed` until `shutdown`.
pub fn spawn_supervised(
    client: async_nats::Client,
    target: Arc<dyn FeedTarget>,
    supervisor: &Supervisor,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    supervisor.spawn("broker-feed", FEED_STALL_AFTER, shutdown.clone(), move |progress| {
        run(client.clone(), target.clone(), shutdown.clone(), progress)
    })
}

/// The feed's loop: a consumer from the head, delivered until it fails, then again from the head.
pub async fn run(
    client: async_nats::Client,
    target: Arc<dyn FeedTarget>,
    shutdown: CancellationToken,
    progress: Progress,
) {
    let js = super::jetstream(client.clone());
    let mut backoff = crate::db::reconnect_backoff();
    let mut reported = false;
    while !shutdown.is_cancelled() && target.is_open() {
        let result = tokio::select! {
            result = follow(&js, &client, target.as_ref(), &progress) => result,
            _ = shutdown.cancelled() => break,
        };
        target.set_live(false);
        if let Err(error) = result {
            if !reported {
                tracing::error!(%error, "broker feed: cut off from JetStream; retrying (readyz is 503 meanwhile)");
                reported = true;
            } else {
                tracing::debug!(%error, "broker feed: still cut off");
            }
        }
        let delay = backoff.next().unwrap_or(Duration::from_secs(5)).min(Duration::from_secs(2));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    target.set_live(false);
}

/// Creates an ordered consumer after the hub's head and delivers until something fails.
async fn follow(
    js: &jetstream::Context,
    client: &async_nats::Client,
    target: &dyn FeedTarget,
    progress: &Progress,
) -> Result<(), FeedError> {
    if client.connection_state() != async_nats::connection::State::Connected {
        return Err(FeedError::Disconnected);
    }
    let (epoch, head) = target.head();
    let name = wire::stream_name(epoch);
    let mut stream = js.get_stream(&name).await.map_err(|e| match e.kind() {
        jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
        {
            FeedError::NoStream(name.clone())
        }
        _ => FeedError::Api(e.to_string()),
    })?;
    let state = stream.info().await.map_err(|e| FeedError::Api(e.to_string()))?.state.clone();
    let mut start = head as u64 + 1;
    if state.messages > 0 && start < state.first_sequence {
        // JetStream no longer holds what follows the head: the clients must resume from the log.
        target.skip_to(epoch, state.first_sequence as i64);
        start = state.first_sequence;
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: wire::subject(epoch),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: start },
            ..Default::default()
        })
        .await
        .map_err(|e| FeedError::Api(e.to_string()))?;
    let mut messages = consumer.messages().await.map_err(|e| FeedError::Api(e.to_string()))?.ready_chunks(BATCH);
    target.set_live(true);
    progress.tick();
    tracing::info!(stream = %name, start, "broker feed: following JetStream");
    let mut alive = tokio::time::interval(Duration::from_secs(1));
    let mut last_delivery = tokio::time::Instant::now();
    let mut delivered_through = start - 1; // the stream sequence of the last message seen, placeholders too
    loop {
        tokio::select! {
            chunk = messages.next() => {
                let Some(chunk) = chunk else { return Err(FeedError::Api("the consumer ended".into())) };
                delivered_through = delivered_through.max(deliver(target, epoch, chunk)?);
                last_delivery = tokio::time::Instant::now();
                progress.tick();
            }
            _ = alive.tick() => {
                // An idle stream delivers nothing: the connection's state is what shows the feed is alive.
                if client.connection_state() != async_nats::connection::State::Connected {
                    return Err(FeedError::Disconnected);
                }
                if last_delivery.elapsed() >= IDLE_CHECK_AFTER {
                    check_not_stalled(&mut stream, delivered_through, last_delivery.elapsed()).await?;
                    last_delivery = tokio::time::Instant::now(); // the next check after another idle period
                }
                progress.tick();
            }
        }
    }
}

/// An idle consumer is fine while the stream holds nothing past what it delivered; if it holds more, the
/// consumer is stuck and must be recreated from the hub's head (see `IDLE_CHECK_AFTER`).
async fn check_not_stalled(
    stream: &mut jetstream::stream::Stream,
    delivered_through: u64,
    idle: Duration,
) -> Result<(), FeedError> {
    // Bounded by the context's `JETSTREAM_TIMEOUT`: a stream leader that died answers nothing.
    let info = stream.info().await.map_err(|e| FeedError::Api(e.to_string()))?;
    let last = info.state.last_sequence;
    // A purged stream (only expired placeholders were there) keeps its last sequence but holds nothing.
    if info.state.messages > 0 && last > delivered_through {
        return Err(FeedError::Stalled { idle, last, delivered_through });
    }
    Ok(())
}

/// Hands one chunk of messages to the hub and returns the highest stream sequence among them (0 for
/// none); an error (a failed fetch, a batch that does not follow the head) restarts the consumer from the
/// head.
fn deliver(
    target: &dyn FeedTarget,
    epoch: Epoch,
    chunk: Vec<Result<jetstream::Message, consumer::pull::OrderedError>>,
) -> Result<u64, FeedError> {
    let mut events: Vec<EventRow> = Vec::with_capacity(chunk.len());
    let mut highest = 0;
    let mut failure = None;
    for message in chunk {
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                failure = Some(FeedError::Api(error.to_string()));
                break;
            }
        };
        let sequence = message.info().map(|i| i.stream_sequence).unwrap_or_default();
        highest = highest.max(sequence);
        let placeholder = message.headers.as_ref().is_some_and(|h| h.get(wire::EXPIRED_HEADER).is_some());
        if placeholder {
            continue; // stands for an expired event; the next real one shows the jump
        }
        match wire::decode(&message.payload) {
            Ok(row) => events.push(row),
            // Only the publisher writes this subject, so this is damage, not traffic. Skipped, not waited
            // on: the next event then does not follow the head, so the hub ends its streams and their
            // clients read the event from the log. Loud, since it costs every client a resume.
            Err(error) => {
                metrics::counter!(BROKER_BAD_MESSAGES).increment(1);
                tracing::error!(%epoch, sequence, %error, "broker feed: a JetStream message is not an event; skipping it");
            }
        }
    }
    if !events.is_empty() {
        metrics::counter!(BROKER_RECEIVED).increment(events.len() as u64);
        let first = events[0].seq;
        let (_, head) = target.head();
        if first > head + 1 {
            target.skip_to(epoch, first);
        }
        if !target.deliver(PublishedBatch { epoch: epoch.to_string(), events }) {
            return Err(FeedError::Api(format!("events from seq {first} do not follow the hub's head {head}")));
        }
    }
    failure.map_or(Ok(highest), Err)
}

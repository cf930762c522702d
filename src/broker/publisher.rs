//! The broker publisher: copies every committed event of `event_log` to JetStream, in `seq` order, with
//! nothing missing and nothing twice.
//!
//! # Why it cannot lose an event
//! The publisher does not take events from the relay's hands; it reads `event_log` after the last sequence
//! JetStream holds. So a relay (or publisher) killed between the PostgreSQL commit and the JetStream ack
//! loses nothing: the next publisher to run starts again after JetStream's last sequence.
//!
//! # Why JetStream's sequence is the event's `seq`
//! Each message is published with `Nats-Expected-Last-Sequence = seq - 1`: JetStream refuses it unless it is
//! the very next one, so a stale publisher (one that read an old cursor) cannot append out of order, and a
//! message's stream sequence is its event's `seq`. `Nats-Msg-Id = <epoch>-<seq>` makes a retry inside the
//! duplicate window a no-op too. A stream that starts after the first event (a broker added to a log that
//! already has events) is made to start at the right sequence by purging it up to there while it is empty.
//!
//! # One publisher at a time
//! Each publish step holds the row lock on the epoch's `broker_cursor` row (`FOR UPDATE SKIP LOCKED`), so
//! when several relays run with a broker, one publishes and the others find the row taken and wait for the
//! next step. The row's `published_seq` is advanced after the acks: what operators watch (lag, cursor age).

use super::wire;
use crate::event_log::{EventRow, fetch_after};
use crate::position::Epoch;
use crate::supervisor::{Progress, Supervisor};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Counter: events this process published to JetStream (acknowledged).
pub const BROKER_PUBLISHED: &str = "smartscheduler_broker_published_total";
/// Gauge: events committed to `event_log` but not yet acknowledged by JetStream, as this publisher last saw.
pub const BROKER_LAG: &str = "smartscheduler_broker_lag_events";

/// How the broker publisher behaves.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// Events per publish step (all published before the acks are awaited).
    pub batch_size: i64,
    /// How often the publisher looks for events when nobody wakes it (a relay in another process).
    pub poll_interval: Duration,
    /// Replicas of the JetStream stream (1, or 3 on a three-node cluster).
    pub replicas: usize,
    /// How long JetStream keeps an event; older resumes are served from PostgreSQL.
    pub max_age: Duration,
    /// Not ready (`/readyz`) after this long without a publish step that reached both PostgreSQL and NATS.
    pub stall_after: Duration,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            poll_interval: Duration::from_millis(250),
            replicas: 1,
            max_age: Duration::from_secs(24 * 3600),
            stall_after: Duration::from_secs(15),
        }
    }
}

/// Why a publish step did not complete. Every kind is retried; none loses an event.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// PostgreSQL failed (reading the log or the cursor).
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// JetStream refused or did not acknowledge a message.
    #[error("JetStream publish of {position}: {source}")]
    Publish {
        /// The event's position.
        position: String,
        /// async-nats' error.
        source: jetstream::context::PublishError,
    },
    /// The NATS client is not connected (it reconnects by itself).
    #[error("not connected to NATS")]
    Disconnected,
    /// A JetStream API call (stream create, info, purge) failed.
    #[error("JetStream: {0}")]
    Api(String),
    /// JetStream holds more of this epoch than `event_log` does: the stream belongs to another log.
    #[error("JetStream stream {stream} holds seq {stream_last} but the log ends at {log_last}")]
    StreamAhead {
        /// The stream's name.
        stream: String,
        /// The stream's last sequence.
        stream_last: u64,
        /// The log's last seq.
        log_last: i64,
    },
    /// Retention removed events before they reached JetStream (the broker was away longer than retention).
    #[error("events {from}..{to} expired from event_log before they reached JetStream")]
    Expired {
        /// First missing seq.
        from: i64,
        /// Last missing seq.
        to: i64,
    },
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Events up to this seq are in JetStream (this step published some).
    Published(i64),
    /// JetStream already held everything committed.
    UpToDate,
    /// Another publisher holds the cursor.
    Busy,
}

/// Copies `event_log` to JetStream. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    pool: PgPool,
    js: jetstream::Context,
    config: PublisherConfig,
    wake: Arc<Notify>,
}

impl Publisher {
    /// A publisher from `pool`'s log to the JetStream of `client`.
    pub fn new(pool: PgPool, client: async_nats::Client, config: PublisherConfig) -> Self {
        Self { pool, js: super::jetstream(client), config, wake: Arc::default() }
    }

    /// A doorbell for this process's relay: call after each committed batch so that it goes out at once.
    pub fn waker(&self) -> impl Fn() + Send + Sync + 'static {
        let wake = self.wake.clone();
        move || wake.notify_one()
    }

    /// The same doorbell as a relay's batch sink (`Relay::on_published`): rung for each committed batch.
    pub fn waker_for_batches(&self) -> impl Fn(crate::event_log::PublishedBatch) + Send + Sync + 'static {
        let wake = self.waker();
        move |_batch| wake()
    }

    /// Runs under `supervisor` as the task `broker-publisher` until `shutdown`.
    pub fn spawn_supervised(self, supervisor: &Supervisor, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        supervisor.spawn("broker-publisher", self.config.stall_after, shutdown.clone(), move |progress| {
            self.clone().run(shutdown.clone(), progress)
        })
    }

    /// The loop: a step whenever woken or polled; ticks `progress` after each step that reached both sides.
    pub async fn run(self, shutdown: CancellationToken, progress: Progress) {
        let mut backoff = crate::db::reconnect_backoff();
        let mut reported_down = false;
        tracing::info!(replicas = self.config.replicas, "broker publisher started");
        while !shutdown.is_cancelled() {
            match self.step().await {
                Ok(outcome) => {
                    progress.tick();
                    backoff = crate::db::reconnect_backoff();
                    if reported_down {
                        tracing::info!("broker publisher: JetStream reachable again, publishing");
                        reported_down = false;
                    }
                    if matches!(outcome, StepOutcome::Published(_)) {
                        continue; // more may be waiting
                    }
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                Err(error) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    if !reported_down {
                        tracing::error!(%error, "broker publisher: step failed; retrying (readyz names `broker-publisher` if it lasts)");
                        reported_down = true;
                    } else {
                        tracing::debug!(%error, "broker publisher: step failed again");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
        }
        tracing::info!("broker publisher stopped");
    }

    /// One step: under the cursor's row lock, publishes the events after JetStream's last sequence (at most
    /// `batch_size`), waits for every ack, then advances the cursor.
    ///
    /// # Errors
    /// [`PublishError`]; nothing is lost by one: the next step starts again from JetStream's last sequence.
    pub async fn step(&self) -> Result<StepOutcome, PublishError> {
        // An idle publisher does not talk to NATS, so it asks its client whether it is cut off: a publisher
        // that could not publish the next event is not ready, busy or idle.
        if self.js.client().connection_state() != async_nats::connection::State::Connected {
            return Err(PublishError::Disconnected);
        }
        let (epoch, log_last, cursor): (String, i64, Option<i64>) = sqlx::query_as(
            "SELECT m.epoch, m.last_seq, c.published_seq FROM stream_meta m
             LEFT JOIN broker_cursor c ON c.epoch = m.epoch WHERE m.stream = 'main'",
        )
        .fetch_one(&self.pool)
        .await?;
        let epoch: Epoch = epoch.parse().map_err(|e| PublishError::Database(sqlx::Error::Decode(Box::new(e))))?;
        if cursor.is_some_and(|c| c >= log_last) {
            metrics::gauge!(BROKER_LAG).set(0.0);
            return Ok(StepOutcome::UpToDate);
        }
        let stream = self.ensure_stream(epoch).await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO broker_cursor (epoch, stream, published_seq) VALUES ($1, $2, 0) ON CONFLICT (epoch) DO NOTHING",
        )
        .bind(epoch.to_string())
        .bind(wire::stream_name(epoch))
        .execute(&mut *tx)
        .await?;
        let locked: Option<i64> =
            sqlx::query_scalar("SELECT published_seq FROM broker_cursor WHERE epoch = $1 FOR UPDATE SKIP LOCKED")
                .bind(epoch.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        if locked.is_none() {
            return Ok(StepOutcome::Busy);
        }
        // JetStream's own last sequence is the truth: a publisher killed after the acks but before its
        // cursor update left the cursor behind, and the messages are there.
        let mut after = self.stream_last(&stream, epoch, log_last).await?;
        let events = fetch_after(&self.pool, after, self.config.batch_size).await?;
        if let Some(first) = events.first()
            && first.seq != after + 1
        {
            // Only retention removes events; stream_last moved past what it removed, so this is a race with
            // retention's own step: the next step sees the new expired_through_seq.
            return Err(PublishError::Expired { from: after + 1, to: first.seq - 1 });
        }
        if !events.is_empty() {
            after = self.publish(epoch, &events).await?;
            metrics::counter!(BROKER_PUBLISHED).increment(events.len() as u64);
        }
        sqlx::query(
            "UPDATE broker_cursor SET published_seq = $2, updated_at = now() WHERE epoch = $1 AND published_seq <> $2",
        )
        .bind(epoch.to_string())
        .bind(after)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        metrics::gauge!(BROKER_LAG).set((log_last - after).max(0) as f64);
        Ok(if events.is_empty() { StepOutcome::UpToDate } else { StepOutcome::Published(after) })
    }

    /// Publishes `events` (dense, in seq order) back to back, then awaits every ack in order. Returns the
    /// last seq JetStream acknowledged.
    async fn publish(&self, epoch: Epoch, events: &[EventRow]) -> Result<i64, PublishError> {
        let subject = wire::subject(epoch);
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let position = wire::msg_id(epoch, event.seq);
            let failed = |source| PublishError::Publish { position: position.clone(), source };
            let body = wire::encode(event).map_err(|e| PublishError::Api(e.to_string()))?;
            let mut headers = HeaderMap::new();
            headers.insert(wire::GROUPS_HEADER, wire::groups_header(&event.groups).as_str());
            let message = jetstream::message::PublishMessage::build()
                .payload(body.into())
                .headers(headers)
                .message_id(&position)
                .expected_last_sequence((event.seq - 1) as u64);
            let ack = self.js.send_publish(subject.clone(), message).await.map_err(failed)?;
            acks.push((event.seq, position, ack));
        }
        let mut last = events[0].seq - 1;
        for (seq, position, ack) in acks {
            match ack.await {
                Ok(ack) if ack.sequence == seq as u64 => last = seq,
                Ok(ack) => {
                    return Err(PublishError::Api(format!(
                        "{position} was stored at stream sequence {} (expected {seq})",
                        ack.sequence
                    )));
                }
                Err(source) => return Err(PublishError::Publish { position, source }),
            }
        }
        Ok(last)
    }

    /// The epoch's stream, created on first use with this publisher's replicas and age limit.
    async fn ensure_stream(&self, epoch: Epoch) -> Result<stream::Stream, PublishError> {
        let config = stream_config(epoch, &self.config);
        self.js.get_or_create_stream(config).await.map_err(|e| PublishError::Api(e.to_string()))
    }

    /// The stream's last sequence, after moving it up to the log's first retained event where it stands
    /// below (a broker added to a log that already expired events, or one away for longer than retention).
    async fn stream_last(&self, stream: &stream::Stream, epoch: Epoch, log_last: i64) -> Result<i64, PublishError> {
        let mut last = stream.get_info().await.map_err(|e| PublishError::Api(e.to_string()))?.state.last_sequence;
        if last > log_last as u64 {
            return Err(PublishError::StreamAhead { stream: wire::stream_name(epoch), stream_last: last, log_last });
        }
        let expired: i64 = sqlx::query_scalar("SELECT expired_through_seq FROM stream_meta WHERE stream = 'main'")
            .fetch_one(&self.pool)
            .await?;
        if last < expired as u64 {
            last = self.start_stream_after(stream, epoch, last, expired).await?;
        }
        Ok(last as i64)
    }

    /// Makes `stream`'s next sequence `expired + 1`, for events that retention removed before they reached
    /// JetStream. nats-server 2.9 moves a stream's sequence only by storing messages (a purge keeps its last
    /// sequence, and `first_seq` in a stream's configuration is 2.10's), so each missing seq gets a
    /// placeholder ([`wire::EXPIRED_HEADER`], empty body), published under the same fence as events, and
    /// the placeholders are then purged: a reader starting there finds the stream starting at the first
    /// retained event and treats the positions below as expired (a reset), as a PostgreSQL-fed node does.
    async fn start_stream_after(
        &self,
        stream: &stream::Stream,
        epoch: Epoch,
        last: u64,
        expired: i64,
    ) -> Result<u64, PublishError> {
        let name = wire::stream_name(epoch);
        if last > 0 {
            tracing::error!(
                stream = %name, from = last + 1, to = expired,
                "events expired from event_log before they reached JetStream; broker-fed streams resuming there get a reset"
            );
        }
        let api = |e: &dyn std::fmt::Display| PublishError::Api(format!("starting {name} at {}: {e}", expired + 1));
        let mut next = last + 1;
        while next <= expired as u64 {
            let through = (next + PLACEHOLDER_CHUNK - 1).min(expired as u64);
            let mut acks = Vec::new();
            for seq in next..=through {
                let mut headers = HeaderMap::new();
                headers.insert(wire::EXPIRED_HEADER, "true");
                let placeholder = jetstream::message::PublishMessage::build()
                    .headers(headers)
                    .message_id(wire::msg_id(epoch, seq as i64))
                    .expected_last_sequence(seq - 1);
                acks.push(self.js.send_publish(wire::subject(epoch), placeholder).await.map_err(|e| api(&e))?);
            }
            for ack in acks {
                ack.await.map_err(|e| api(&e))?;
            }
            next = through + 1;
        }
        stream.purge().sequence(expired as u64 + 1).await.map_err(|e| api(&e))?;
        Ok(expired as u64)
    }
}

/// Placeholders published before their acks are awaited.
const PLACEHOLDER_CHUNK: u64 = 1000;

/// The JetStream configuration of an epoch's stream: one subject, file storage, kept for `max_age`, with a
/// two-minute duplicate window (JetStream's default).
pub fn stream_config(epoch: Epoch, config: &PublisherConfig) -> stream::Config {
    stream::Config {
        name: wire::stream_name(epoch),
        subjects: vec![wire::subject(epoch)],
        num_replicas: config.replicas,
        max_age: config.max_age,
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        duplicate_window: Duration::from_secs(120),
        allow_direct: true,
        ..Default::default()
    }
}

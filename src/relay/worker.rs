//! The relay loop: publish while there is work, then sleep until woken (in-process doorbell, a NOTIFY on
//! the wake channel, or the poll timer), and reconnect forever with backoff when the database goes away.
//!
//! # Writers that do not ring
//! The contract lets any application publish with a plain `INSERT INTO outbox` and nothing else, so the
//! poll timer is on the path of every such event, and it decides their latency. An idle relay looks
//! every [`RelayConfig::poll_interval`] (one cheap `EXISTS` probe); once rows have been found it looks every
//! [`RelayConfig::busy_poll_interval`] for [`RelayConfig::busy_for`], since a writer that just wrote
//! usually writes again soon. Measured in docs/performance.md (section 9): a plain SQL writer's event reaches
//! its clients in a few milliseconds at 100-200 events/s, at an idle cost of ~50 probes/s.

use super::WAKE_CHANNEL;
use super::publish::{BatchOutcome, publish_batch, publish_batch_now, publish_batch_parking};
use crate::db::reconnect_backoff;
use crate::event_log::PublishedBatch;
use crate::metrics as m;
use crate::node::beat;
use crate::outbox::RelayWaker;
use crate::supervisor::{Progress, Supervisor};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How the relay behaves. Defaults suit one `serve` process.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows per committed batch.
    pub batch_size: i64,
    /// How often an idle relay looks for rows from writers that do not ring (a plain SQL `INSERT INTO
    /// outbox`). The first event after a quiet spell waits up to this long.
    pub poll_interval: Duration,
    /// How often the relay looks while rows keep arriving (within [`Self::busy_for`] of the last batch).
    pub busy_poll_interval: Duration,
    /// How long after the last published batch the relay keeps to [`Self::busy_poll_interval`].
    pub busy_for: Duration,
    /// How often the relay records that it is alive in `node_heartbeats`.
    pub heartbeat_interval: Duration,
    /// A relay whose publish steps have not reached the database for this long is stalled: the process
    /// is not ready (`/readyz` names it).
    pub stall_after: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            poll_interval: Duration::from_millis(20),
            busy_poll_interval: Duration::from_millis(2),
            busy_for: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(5),
            stall_after: Duration::from_secs(15),
        }
    }
}

impl RelayConfig {
    /// How long to wait before the next probe, given when a batch was last published.
    pub fn next_poll(&self, last_published: Option<Instant>, now: Instant) -> Duration {
        match last_published {
            Some(at) if now.saturating_duration_since(at) < self.busy_for => {
                self.busy_poll_interval.min(self.poll_interval)
            }
            _ => self.poll_interval,
        }
    }
}

/// A relay bound to one database. Several may run at once (one per process): the fence serialises them.
#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    config: RelayConfig,
    waker: RelayWaker,
    node_id: Uuid,
    /// Handed each committed batch in this process (`server.rs` gives the stream hub's), so that it is fanned
    /// out at once instead of after the NOTIFY came back from PostgreSQL and the rows were read again.
    on_published: Option<PublishedSink>,
}

/// Takes each batch this relay committed. Called on the relay's task: it must not wait.
pub type PublishedSink = std::sync::Arc<dyn Fn(PublishedBatch) + Send + Sync>;

impl Relay {
    /// A relay over `pool`; `waker` is the doorbell the process's writers ring after their commits, `node_id`
    /// names this process in `node_heartbeats`.
    pub fn new(pool: PgPool, config: RelayConfig, waker: RelayWaker, node_id: Uuid) -> Self {
        Self { pool, config, waker, node_id, on_published: None }
    }

    /// Also hands each committed batch to `sink` (in `serve`: the same process's stream hub).
    pub fn on_published(mut self, sink: impl Fn(PublishedBatch) + Send + Sync + 'static) -> Self {
        self.on_published = Some(std::sync::Arc::new(sink));
        self
    }

    /// Runs until `shutdown` is cancelled, without supervision. A batch in flight is always finished first.
    pub async fn run(self, shutdown: CancellationToken) {
        self.run_reporting(shutdown, Progress::detached("relay")).await
    }

    /// Runs under `supervisor` until `shutdown`: restarted after a panic, and reported as stalled (process
    /// not ready) when no publish step has reached the database for `stall_after`.
    pub fn spawn_supervised(self, supervisor: &Supervisor, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        supervisor.spawn("relay", self.config.stall_after, shutdown.clone(), move |progress| {
            self.clone().run_reporting(shutdown.clone(), progress)
        })
    }

    /// The relay loop. Ticks `progress` after every publish step that reached the database, whatever it
    /// found; a step that fails on a row is retried row by row, parking what cannot be published.
    pub async fn run_reporting(self, shutdown: CancellationToken, progress: Progress) {
        // Aborted when this future ends or unwinds, so that a restarted relay does not leave a listener behind.
        let _wake_task = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(forward_wake_notifications(
            self.pool.clone(),
            self.waker.clone(),
            shutdown.clone(),
        )));
        let mut backoff = reconnect_backoff();
        let mut last_heartbeat: Option<Instant> = None;
        // Rung by a writer (or a full batch just went out): skip the idle peek, there is work.
        let mut rung = false;
        // When a batch last went out: the relay probes faster for a while after it (see the module docs).
        let mut last_published: Option<Instant> = None;
        tracing::info!(
            node = %self.node_id,
            batch_size = self.config.batch_size,
            poll_ms = self.config.poll_interval.as_secs_f64() * 1e3,
            busy_poll_ms = self.config.busy_poll_interval.as_secs_f64() * 1e3,
            "relay started"
        );

        // The relay's row in node_heartbeats (what `outbox status` reads) is written only after a publish step
        // worked, so a relay that fails every step is not reported alive.
        let mut stepped_since_beat = false;
        while !shutdown.is_cancelled() {
            let beat_due = last_heartbeat.is_none_or(|t| t.elapsed() >= self.config.heartbeat_interval);
            if beat_due && stepped_since_beat {
                match beat(&self.pool, self.node_id, "relay").await {
                    Ok(()) => (last_heartbeat, stepped_since_beat) = (Some(Instant::now()), false),
                    Err(e) => tracing::warn!(error = %e, "relay heartbeat failed"),
                }
            }
            let published = if rung {
                publish_batch_now(&self.pool, self.config.batch_size).await
            } else {
                publish_batch(&self.pool, self.config.batch_size).await
            };
            let published = match published {
                Err(error) if is_refused_row(&error) => self.publish_parking(error).await,
                other => other,
            };
            if published.is_ok() {
                progress.tick();
                stepped_since_beat = true;
            }
            match published {
                Ok(outcome @ BatchOutcome::Published { .. }) => {
                    backoff = reconnect_backoff();
                    last_published = Some(Instant::now());
                    record(&outcome);
                    // A full batch means more may be waiting: go again at once.
                    rung = outcome.count() == self.config.batch_size;
                    if let (Some(sink), BatchOutcome::Published { epoch, events, .. }) = (&self.on_published, outcome) {
                        sink(PublishedBatch { epoch, events });
                    }
                    if !rung {
                        self.idle(&shutdown, Duration::ZERO).await;
                    }
                }
                Ok(BatchOutcome::Empty) => {
                    backoff = reconnect_backoff();
                    let wait = self.config.next_poll(last_published, Instant::now());
                    rung = self.idle(&shutdown, wait).await;
                }
                Err(error) => {
                    rung = false;
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "relay publish failed; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
        }
        tracing::info!(node = %self.node_id, "relay stopped");
    }

    /// After a publish step failed on a row: publishes the batch row by row, parking each row that fails in
    /// `outbox_dead_letter`, so that one bad row never holds back the events after it.
    async fn publish_parking(&self, error: sqlx::Error) -> Result<BatchOutcome, sqlx::Error> {
        tracing::error!(%error, "a publish step failed on a row; publishing row by row and parking what fails");
        let parked_before = parked_count(&self.pool).await?;
        let outcome = publish_batch_parking(&self.pool, self.config.batch_size).await?;
        let parked = parked_count(&self.pool).await? - parked_before;
        if parked > 0 {
            metrics::counter!(m::OUTBOX_PARKED).increment(parked as u64);
            tracing::error!(parked, "outbox rows parked in outbox_dead_letter (see sql/08_dead_letters.sql)");
        }
        Ok(outcome)
    }

    /// Waits for a wake-up, the poll timer, or shutdown; true if woken. With a zero timeout it only yields.
    async fn idle(&self, shutdown: &CancellationToken, timeout: Duration) -> bool {
        if timeout.is_zero() {
            tokio::task::yield_now().await;
            return false;
        }
        tokio::select! {
            _ = self.waker.woken() => true,
            _ = tokio::time::sleep(timeout) => false,
            _ = shutdown.cancelled() => false,
        }
    }
}

/// True when PostgreSQL refused the publish step because of what a row holds (data exception, integrity
/// constraint, invalid text), as opposed to the connection, a lock or the server going away, which retrying
/// fixes. SQLSTATE classes 22 and 23; see the PostgreSQL manual, appendix A.
fn is_refused_row(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = error else { return false };
    db.code().is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
}

async fn parked_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM outbox_dead_letter").fetch_one(pool).await
}

fn record(outcome: &BatchOutcome) {
    if let BatchOutcome::Published { last_seq, .. } = outcome {
        metrics::counter!(m::EVENTS_PUBLISHED).increment(outcome.count() as u64);
        let histogram = metrics::histogram!(m::PUBLISH_LAG);
        outcome.lags().for_each(|lag| histogram.record(lag));
        tracing::debug!(count = outcome.count(), last_seq, "published batch");
    }
}

/// LISTENs on the wake channel and rings the doorbell for each notification. After a lost connection it
/// rings once too, since pings sent while away are gone (the poll would catch them, this is just faster).
async fn forward_wake_notifications(pool: PgPool, waker: RelayWaker, shutdown: CancellationToken) {
    let mut backoff = reconnect_backoff();
    while !shutdown.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(error) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(%error, "relay wake listener cannot connect; retrying");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        if let Err(error) = listener.listen(WAKE_CHANNEL).await {
            tracing::warn!(%error, "LISTEN on the wake channel failed; retrying");
            tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(10))).await;
            continue;
        }
        backoff = reconnect_backoff();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                received = listener.try_recv() => match received {
                    Ok(Some(_)) => waker.wake(),
                    Ok(None) => waker.wake(), // reconnected: anything sent meanwhile was dropped
                    Err(error) => {
                        tracing::warn!(%error, "relay wake listener failed; reconnecting");
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_polls_fast_for_a_while_after_a_batch_then_slows_down() {
        let config = RelayConfig::default();
        let now = Instant::now();
        assert_eq!(config.next_poll(None, now), config.poll_interval, "never published: idle interval");
        assert_eq!(config.next_poll(Some(now), now), config.busy_poll_interval);
        let long_ago = now - config.busy_for - Duration::from_millis(1);
        assert_eq!(config.next_poll(Some(long_ago), now), config.poll_interval);
    }

    #[test]
    fn a_busy_interval_longer_than_the_idle_one_never_slows_the_relay() {
        let config = RelayConfig { busy_poll_interval: Duration::from_secs(1), ..RelayConfig::default() };
        let now = Instant::now();
        assert_eq!(config.next_poll(Some(now), now), config.poll_interval);
    }
}

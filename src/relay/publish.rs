//! One publish step: fence, move a batch, advance the counter, notify. All inside PostgreSQL, in one call
//! of `ss_publish_batch` (migration 0006): rows travel from `outbox` to `event_log` in one statement, and
//! the relay pays one round trip per batch. The published rows come back so that this process's hub can
//! fan them out without reading them again.

use crate::event_log::{EVENTS_CHANNEL, EventRow};
use sqlx::{PgConnection, PgExecutor, PgPool};

/// What one publish step did.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchOutcome {
    /// Events `first_seq..=last_seq` are now in `event_log` (once the step's transaction commits).
    Published {
        /// The log's epoch the batch was numbered in.
        epoch: String,
        /// The batch's first position.
        first_seq: i64,
        /// The batch's last position (the log's new `last_seq`).
        last_seq: i64,
        /// The events, in seq order, as the hub reads them from `event_log`.
        events: Vec<EventRow>,
    },
    /// Nothing committed was waiting.
    Empty,
}

impl BatchOutcome {
    /// Events published (0 when empty).
    pub fn count(&self) -> i64 {
        match self {
            BatchOutcome::Published { first_seq, last_seq, .. } => last_seq - first_seq + 1,
            BatchOutcome::Empty => 0,
        }
    }

    /// Seconds from each row's creation to its publish, for the lag histogram.
    pub fn lags(&self) -> impl Iterator<Item = f64> + '_ {
        let events = match self {
            BatchOutcome::Published { events, .. } => events.as_slice(),
            BatchOutcome::Empty => &[],
        };
        events.iter().map(|e| (e.published_at - e.occurred_at).as_seconds_f64().max(0.0))
    }
}

/// Publishes up to `batch_size` events in its own transaction, if any are waiting.
pub async fn publish_batch(pool: &PgPool, batch_size: i64) -> Result<BatchOutcome, sqlx::Error> {
    // Cheap unlocked peek first, so that an idle poll costs one index probe and takes no row lock.
    let pending: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM outbox)").fetch_one(pool).await?;
    if !pending {
        return Ok(BatchOutcome::Empty);
    }
    publish_batch_now(pool, batch_size).await
}

/// Publishes up to `batch_size` events in its own transaction, without peeking first: for when a writer
/// just rang the doorbell, so that the peek's round trip is not added to every event's latency. The call
/// is one statement outside any transaction block, so PostgreSQL commits it before answering.
pub async fn publish_batch_now(pool: &PgPool, batch_size: i64) -> Result<BatchOutcome, sqlx::Error> {
    publish_step(pool, batch_size).await
}

/// Publishes every committed outbox row, batch after batch. Returns how many were published.
/// Tests and benchmarks use it to drive the relay deterministically instead of waiting for it.
pub async fn publish_all_pending(pool: &PgPool, batch_size: i64) -> Result<i64, sqlx::Error> {
    let mut total = 0;
    loop {
        match publish_batch(pool, batch_size).await? {
            BatchOutcome::Empty => return Ok(total),
            published => total += published.count(),
        }
    }
}

/// The publish step inside the caller's transaction (exposed so that tests can kill a relay between the
/// move and the commit). The NOTIFY is delivered only if the transaction commits.
pub async fn publish_batch_uncommitted(tx: &mut PgConnection, batch_size: i64) -> Result<BatchOutcome, sqlx::Error> {
    publish_step(tx, batch_size).await
}

/// The careful publish step (`ss_publish_batch_parking`, migration 0007): row by row, each row that fails
/// is moved to `outbox_dead_letter` with its error and the rows after it are published. Slower; for after a
/// batch failed on a row.
pub async fn publish_batch_parking(pool: &PgPool, batch_size: i64) -> Result<BatchOutcome, sqlx::Error> {
    let rows: Vec<PublishedRow> = sqlx::query_as("SELECT * FROM ss_publish_batch_parking($1, $2)")
        .bind(batch_size)
        .bind(EVENTS_CHANNEL)
        .fetch_all(pool)
        .await?;
    Ok(outcome_of(rows))
}

#[derive(sqlx::FromRow)]
struct PublishedRow {
    epoch: String,
    #[sqlx(flatten)]
    event: EventRow,
}

async fn publish_step<'c>(executor: impl PgExecutor<'c>, batch_size: i64) -> Result<BatchOutcome, sqlx::Error> {
    let rows: Vec<PublishedRow> = sqlx::query_as("SELECT * FROM ss_publish_batch($1, $2)")
        .bind(batch_size)
        .bind(EVENTS_CHANNEL)
        .fetch_all(executor)
        .await?;
    Ok(outcome_of(rows))
}

fn outcome_of(rows: Vec<PublishedRow>) -> BatchOutcome {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return BatchOutcome::Empty;
    };
    let (epoch, first_seq, last_seq) = (first.epoch.clone(), first.event.seq, last.event.seq);
    let events = rows.into_iter().map(|row| row.event).collect();
    BatchOutcome::Published { epoch, first_seq, last_seq, events }
}

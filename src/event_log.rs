//! The event log as both of its sides see it: the relay appends to `event_log` (and NOTIFYs), the stream
//! reads from it. What they share lives here, so that neither names the other (they meet only in
//! PostgreSQL, and in this process through the hand-over `server.rs` wires): the published row, the
//! channel, the log's state in `stream_meta`, its daily partitions and the reads.

use crate::position::Epoch;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Channel the relay NOTIFYs after each batch, with the new last position (`<epoch>-<seq>`) as payload.
/// Only a wake-up hint: a listener that was away misses notifications, and readers go by `seq`.
pub const EVENTS_CHANNEL: &str = "ss_events";

/// A batch the relay just committed, as it hands it to the same process's stream hub.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedBatch {
    /// The log's epoch (8 hex digits) the batch was numbered in.
    pub epoch: String,
    /// The events, in seq order, with dense seqs.
    pub events: Vec<EventRow>,
}

/// Where a feed other than the process's own LISTEN (the broker's consumer) hands events: the stream hub,
/// seen only as this. The feed asks where to start and delivers batches in seq order.
pub trait FeedTarget: Send + Sync + 'static {
    /// The log's epoch and the last seq fanned out: a feed starts after it.
    fn head(&self) -> (Epoch, i64);
    /// Fans out a batch that follows the head; false (nothing done) if it does not follow it.
    fn deliver(&self, batch: PublishedBatch) -> bool;
    /// The feed's events jump from the head to `next_seq` (the ones between expired before they reached
    /// the feed): every open stream ends, so that its client resumes from the log and is told what it
    /// missed (`event: reset`), and the head moves to `next_seq - 1`.
    fn skip_to(&self, epoch: Epoch, next_seq: i64);
    /// Whether the target still wants events (false after shutdown).
    fn is_open(&self) -> bool;
    /// Whether the feed is connected and following (what `/readyz` reports as `listener`).
    fn set_live(&self, live: bool);
}

/// The state of the log that decides how a client may resume.
#[derive(Debug, Clone, Copy)]
pub struct StreamMeta {
    /// Names this event log; changes only if the log is recreated or restored.
    pub epoch: Epoch,
    /// The last position published (0 before the first event).
    pub last_seq: i64,
    /// Highest seq retention removed: a resume from below it would miss events.
    pub expired_through_seq: i64,
}

impl StreamMeta {
    /// Reads the log's state (one row of `stream_meta`).
    ///
    /// # Errors
    /// The database's, or a decode error if the stored epoch is not 8 hex digits.
    pub async fn read(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let (epoch, last_seq, expired_through_seq): (String, i64, i64) =
            sqlx::query_as("SELECT epoch, last_seq, expired_through_seq FROM stream_meta WHERE stream = 'main'")
                .fetch_one(pool)
                .await?;
        let epoch = epoch.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        Ok(Self { epoch, last_seq, expired_through_seq })
    }
}

/// An event as stored in `event_log`, as the hub reads it and as the relay's publish step returns it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EventRow {
    /// The event's position in the log (dense, in commit order).
    pub seq: i64,
    /// Stable id of the event, for clients that drop repeats.
    pub event_id: Uuid,
    /// The SSE event name.
    pub event_type: String,
    /// The groups whose dispatchers receive it.
    pub groups: Vec<String>,
    /// `payload::text`: jsonb's one-line text form of the object.
    pub payload: String,
    /// For a replayed copy: the position of the original.
    pub replay_of: Option<String>,
    /// When the writer's outbox row was created.
    pub occurred_at: DateTime<Utc>,
    /// When the relay published it (the database's clock; never used for order).
    pub published_at: DateTime<Utc>,
}

/// The hub's read: everything after a seq (`$1`), at most `$2` rows. By `seq` alone, with no bound on
/// `published_at`: correctness never rests on wall-clock order (a batch stamped while the database's clock
/// stood behind must not be skipped).
const LIVE_SQL: &str =
    "SELECT e.seq, e.event_id, e.event_type, e.groups, e.payload::text AS payload, e.replay_of, e.occurred_at,
        e.published_at
 FROM event_log e
 WHERE e.seq > $1
 ORDER BY e.seq LIMIT $2";

/// A resuming client's read: the events of groups `$1` in `($2, $3]`, at most `$4`, in seq order.
/// Walks `event_log_groups (group_key, seq)` once per group, each walk bounded by the limit.
/// Public so that a test can EXPLAIN exactly this statement.
pub const BACKLOG_SQL: &str = "WITH wanted AS (
     SELECT DISTINCT x.seq, x.published_at
     FROM unnest($1::text[]) AS g(key)
     CROSS JOIN LATERAL (
         SELECT lg.seq, lg.published_at FROM event_log_groups lg
         WHERE lg.group_key = g.key AND lg.seq > $2 AND lg.seq <= $3
         ORDER BY lg.seq LIMIT $4
     ) AS x
     ORDER BY x.seq LIMIT $4
 )
 SELECT e.seq, e.event_id, e.event_type, e.groups, e.payload::text AS payload, e.replay_of, e.occurred_at, e.published_at
 FROM wanted w
 CROSS JOIN LATERAL (
     -- A lookup per wanted row (index probe; published_at prunes to one partition at run time). A plain
     -- join lets the planner hash-join against whole partitions, scanning the busy hour after all.
     SELECT * FROM event_log e WHERE e.seq = w.seq AND e.published_at = w.published_at LIMIT 1
 ) AS e
 ORDER BY e.seq";

/// Everything after `after_seq`, for the hub, at most `limit` rows in seq order.
pub async fn fetch_after(pool: &PgPool, after_seq: i64, limit: i64) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as(LIVE_SQL).bind(after_seq).bind(limit).fetch_all(pool).await
}

/// The rows of `groups` in `(after_seq, through_seq]`, at most `limit`, in seq order ([`BACKLOG_SQL`]).
pub async fn fetch_for_groups(
    pool: &PgPool,
    groups: &[String],
    after_seq: i64,
    through_seq: i64,
    limit: i64,
) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as(BACKLOG_SQL).bind(groups).bind(after_seq).bind(through_seq).bind(limit).fetch_all(pool).await
}

/// Makes sure daily partitions exist from yesterday to a week ahead (UTC): for retention, under its own
/// fence. `ss_publish_batch` (migration 0006) keeps the same window ahead when it publishes.
pub async fn ensure_partitions(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT ss_ensure_partitions((now() AT TIME ZONE 'UTC')::date - 1, (now() AT TIME ZONE 'UTC')::date + 8)",
    )
    .execute(conn)
    .await?;
    Ok(())
}

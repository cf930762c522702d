//! Events as the stream sends them, and the two queries that read them: the hub's read of everything
//! after its head, and a resuming client's read of its groups only.

use super::frame::Frame;
use crate::position::{Epoch, Position};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// An event encoded once, ready to be written to any number of streams.
#[derive(Debug)]
pub struct StreamEvent {
    pub seq: i64,
    pub published_at: DateTime<Utc>,
    pub groups: Vec<String>,
    /// The SSE frame (`id:`, `event:`, `data:`), shared by every stream that sends it.
    pub frame: Bytes,
    /// Approximate bytes this event holds in memory (its encoded data and groups): what the hub's resume
    /// window counts against its byte bound.
    pub size: usize,
}

/// The state of the log that decides how a client may resume.
#[derive(Debug, Clone, Copy)]
pub struct StreamMeta {
    pub epoch: Epoch,
    pub last_seq: i64,
    pub expired_through_seq: i64,
}

impl StreamMeta {
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
    pub seq: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub groups: Vec<String>,
    /// `payload::text`: jsonb's one-line text form of the object.
    pub payload: String,
    pub replay_of: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub published_at: DateTime<Utc>,
}

impl EventRow {
    /// The SSE frame: `id:` position, `event:` type, `data:` the envelope merged with the payload, one line.
    ///
    /// The payload arrives as jsonb's text form, which is a JSON object on one line (control characters
    /// in strings are escaped), so the envelope is spliced in front of its members instead of parsing and
    /// re-serialising every payload: a resuming client pays for this once per event it reads. The outbox
    /// refuses payloads that carry envelope keys, so no key appears twice.
    pub(crate) fn encode(self, epoch: Epoch) -> StreamEvent {
        let position = Position::new(epoch, self.seq).to_string();
        let json_string = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
        let members = self.payload.trim().strip_prefix('{').and_then(|p| p.strip_suffix('}')).unwrap_or("").trim();
        let mut data = String::with_capacity(256 + self.payload.len());
        data.push_str("{\"eventId\":\"");
        data.push_str(&self.event_id.to_string());
        data.push_str("\",\"type\":");
        data.push_str(&json_string(&self.event_type));
        data.push_str(",\"position\":\"");
        data.push_str(&position);
        data.push_str("\",\"groups\":");
        data.push_str(&serde_json::to_string(&self.groups).unwrap_or_else(|_| "[]".to_owned()));
        data.push_str(",\"occurredAt\":\"");
        data.push_str(&self.occurred_at.to_rfc3339_opts(SecondsFormat::Millis, true));
        data.push_str("\",\"replayOf\":");
        data.push_str(&self.replay_of.as_deref().map_or_else(|| "null".to_owned(), json_string));
        if !members.is_empty() {
            data.push(',');
            data.push_str(members);
        }
        data.push('}');
        let size = data.len()
            + position.len()
            + self.event_type.len()
            + self.groups.iter().map(|g| g.len() + 24).sum::<usize>()
            + 128;
        let frame = Frame { id: Some(&position), event: Some(&self.event_type), data: Some(&data), ..Frame::default() };
        StreamEvent { seq: self.seq, published_at: self.published_at, groups: self.groups, frame: frame.encode(), size }
    }
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
pub(crate) async fn fetch_after(pool: &PgPool, after_seq: i64, limit: i64) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as(LIVE_SQL).bind(after_seq).bind(limit).fetch_all(pool).await
}

/// The events of `groups` in `(after_seq, through_seq]`, at most `limit`, in seq order.
///
/// Walks `event_log_groups (group_key, seq)` once per group, each walk bounded by the limit, so a client of
/// a quiet group pays for its own events, not for everything the busy groups got meanwhile.
pub async fn fetch_for_groups(
    pool: &PgPool,
    epoch: Epoch,
    groups: &[String],
    after_seq: i64,
    through_seq: i64,
    limit: i64,
) -> Result<Vec<StreamEvent>, sqlx::Error> {
    let rows: Vec<EventRow> =
        sqlx::query_as(BACKLOG_SQL).bind(groups).bind(after_seq).bind(through_seq).bind(limit).fetch_all(pool).await?;
    Ok(rows.into_iter().map(|row| row.encode(epoch)).collect())
}

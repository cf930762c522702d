//! Events as the stream sends them: each row of the log encoded once into its SSE frame.

use super::frame::Frame;
use crate::event_log::{self, EventRow};
use crate::position::{Epoch, Position};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::PgPool;

/// An event as streams share it: one allocation, whatever the number of streams it reaches.
pub(crate) type Delivery = std::sync::Arc<StreamEvent>;

/// An event encoded once, ready to be written to any number of streams.
#[derive(Debug)]
pub struct StreamEvent {
    /// The event's position in the log.
    pub seq: i64,
    /// When the relay published it (for the lag metric only; never for order).
    pub published_at: DateTime<Utc>,
    /// The groups whose streams receive it.
    pub groups: Vec<String>,
    /// The SSE frame (`id:`, `event:`, `data:`), shared by every stream that sends it.
    pub frame: Bytes,
    /// Approximate bytes this event holds in memory (its encoded data and groups): what the hub's resume
    /// window counts against its byte bound.
    pub size: usize,
}

impl StreamEvent {
    /// The SSE frame: `id:` position, `event:` type, `data:` the envelope merged with the payload, one line.
    ///
    /// The payload arrives as jsonb's text form, which is a JSON object on one line (control characters
    /// in strings are escaped), so the envelope is spliced in front of its members instead of parsing and
    /// re-serialising every payload: a resuming client pays for this once per event it reads. The outbox
    /// refuses payloads that carry envelope keys, so no key appears twice.
    pub(crate) fn encode(row: EventRow, epoch: Epoch) -> StreamEvent {
        let position = Position::new(epoch, row.seq).to_string();
        let json_string = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
        let members = row.payload.trim().strip_prefix('{').and_then(|p| p.strip_suffix('}')).unwrap_or("").trim();
        let mut data = String::with_capacity(256 + row.payload.len());
        data.push_str("{\"eventId\":\"");
        data.push_str(&row.event_id.to_string());
        data.push_str("\",\"type\":");
        data.push_str(&json_string(&row.event_type));
        data.push_str(",\"position\":\"");
        data.push_str(&position);
        data.push_str("\",\"groups\":");
        data.push_str(&serde_json::to_string(&row.groups).unwrap_or_else(|_| "[]".to_owned()));
        data.push_str(",\"occurredAt\":\"");
        data.push_str(&row.occurred_at.to_rfc3339_opts(SecondsFormat::Millis, true));
        data.push_str("\",\"replayOf\":");
        data.push_str(&row.replay_of.as_deref().map_or_else(|| "null".to_owned(), json_string));
        if !members.is_empty() {
            data.push(',');
            data.push_str(members);
        }
        data.push('}');
        let size = data.len()
            + position.len()
            + row.event_type.len()
            + row.groups.iter().map(|g| g.len() + 24).sum::<usize>()
            + 128;
        let frame = Frame { id: Some(&position), event: Some(&row.event_type), data: Some(&data), ..Frame::default() };
        StreamEvent { seq: row.seq, published_at: row.published_at, groups: row.groups, frame: frame.encode(), size }
    }
}

/// The events of `groups` in `(after_seq, through_seq]`, at most `limit`, in seq order, encoded.
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
    let rows = event_log::fetch_for_groups(pool, groups, after_seq, through_seq, limit).await?;
    Ok(rows.into_iter().map(|row| StreamEvent::encode(row, epoch)).collect())
}

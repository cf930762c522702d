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
    /// The SSE frame (`id:`, `event:`, `data:`), shared by every stream that holds all of its groups;
    /// see [`StreamEvent::frame_for`].
    pub frame: Bytes,
    /// Where the envelope's `groups` array (`[...]`) lies in `frame`.
    pub(crate) groups_array: std::ops::Range<usize>,
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
        let frame =
            Frame { id: Some(&position), event: Some(&row.event_type), data: Some(&data), ..Frame::default() }.encode();
        let groups_array = groups_array_in(&frame);
        StreamEvent { seq: row.seq, published_at: row.published_at, groups: row.groups, frame, groups_array, size }
    }

    /// The frame for a stream that delivers `stream_groups` (asked for only when needed): an event's
    /// envelope names only the groups of the stream it reaches, so that a dispatcher never reads the names
    /// of groups it is not in. An event of one group (most are) reaches only streams of that group and is
    /// sent as encoded; one of several groups is copied, with its `groups` narrowed, for a stream that
    /// holds only some of them.
    pub(crate) fn frame_for(&self, stream_groups: impl FnOnce() -> Vec<String>) -> Bytes {
        if self.groups.len() <= 1 {
            return self.frame.clone();
        }
        let held = stream_groups();
        let shown: Vec<&String> = self.groups.iter().filter(|g| held.contains(g)).collect();
        if shown.len() == self.groups.len() || self.groups_array.is_empty() {
            return self.frame.clone();
        }
        let shown = serde_json::to_string(&shown).unwrap_or_else(|_| "[]".to_owned());
        let mut narrowed = Vec::with_capacity(self.frame.len());
        narrowed.extend_from_slice(&self.frame[..self.groups_array.start]);
        narrowed.extend_from_slice(shown.as_bytes());
        narrowed.extend_from_slice(&self.frame[self.groups_array.end..]);
        Bytes::from(narrowed)
    }
}

/// The byte range of the envelope's `groups` array in an encoded frame. The envelope comes first in
/// `data:`, and nothing before `groups` can hold `"groups":` (an event id is a UUID, a type and a position
/// have no quotes), nor can a group key hold `]`. Empty if not found (never, for frames of
/// [`StreamEvent::encode`]).
fn groups_array_in(frame: &[u8]) -> std::ops::Range<usize> {
    const KEY: &[u8] = b"\"groups\":";
    let Some(key) = memchr::memmem::find(frame, KEY) else { return 0..0 };
    let start = key + KEY.len();
    match memchr::memchr(b']', &frame[start..]) {
        Some(close) => start..start + close + 1,
        None => 0..0,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(groups: &[&str]) -> StreamEvent {
        let row = EventRow {
            seq: 7,
            event_id: uuid::Uuid::nil(),
            event_type: "RecommendationReady".to_owned(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            payload: r#"{"groups_note": "x]", "n": 1}"#.to_owned(),
            occurred_at: Utc::now(),
            published_at: Utc::now(),
            replay_of: None,
        };
        StreamEvent::encode(row, Epoch(10))
    }

    fn data_of(frame: &Bytes) -> serde_json::Value {
        let text = std::str::from_utf8(frame).unwrap();
        let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        serde_json::from_str(data).unwrap()
    }

    #[test]
    fn a_stream_sees_only_the_groups_it_holds_in_the_envelope() {
        let event = encoded(&["region:north", "team:secret-hr-investigation"]);
        let narrowed = event.frame_for(|| vec!["region:north".to_owned(), "team:hvac".to_owned()]);
        let data = data_of(&narrowed);
        assert_eq!(data["groups"], serde_json::json!(["region:north"]));
        assert_eq!(data["n"], 1, "the payload is untouched");
        assert_eq!(data["groups_note"], "x]");
        let both = event.frame_for(|| vec!["region:north".to_owned(), "team:secret-hr-investigation".to_owned()]);
        assert_eq!(both, event.frame, "a stream holding every group gets the shared frame");
    }

    #[test]
    fn an_event_of_one_group_is_sent_as_encoded_without_asking_for_the_stream_groups() {
        let event = encoded(&["region:north"]);
        let frame = event.frame_for(|| unreachable!("one group: the stream holds it"));
        assert_eq!(frame, event.frame);
        assert_eq!(data_of(&frame)["groups"], serde_json::json!(["region:north"]));
    }
}

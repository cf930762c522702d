//! One event as a JetStream message: names of the stream and subject, the headers and the body.
//!
//! The body is JSON (one object, camelCase) holding exactly what `event_log` holds for the event, so that a
//! broker-fed node encodes the same SSE frame as a PostgreSQL-fed one (same `id:`, same `data`):
//! `{"seq":1042,"eventId":"<uuid>","eventType":"RecommendationReady","groups":["region:north"],
//!   "payload":{...},"replayOf":null,"occurredAt":"<RFC 3339>","publishedAt":"<RFC 3339>"}`.
//! The groups are also in the header [`GROUPS_HEADER`] (comma-separated) so that a node or an operator's
//! `nats` tool can tell whom an event targets without parsing the body.

use crate::event_log::EventRow;
use crate::position::{Epoch, Position};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Header naming the event's groups, comma-separated (group keys never hold a comma).
pub const GROUPS_HEADER: &str = "Ss-Groups";
/// Header of a placeholder: a message with no body holding the place of an event that expired from
/// `event_log` before it reached JetStream (see `publisher`). Purged at once; a reader that still meets one
/// treats its position as expired.
pub const EXPIRED_HEADER: &str = "Ss-Expired";
/// JetStream's de-duplication header: the event's position `<epoch>-<seq>`.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// JetStream's optimistic-concurrency header: the publish fails unless the stream's last sequence is this.
pub const EXPECTED_LAST_SEQUENCE_HEADER: &str = "Nats-Expected-Last-Sequence";

/// The JetStream stream of an epoch: `SS_EVENTS_<epoch>` (8 lowercase hex digits).
pub fn stream_name(epoch: Epoch) -> String {
    format!("SS_EVENTS_{epoch}")
}

/// The one subject of an epoch's stream: `ss.events.<epoch>`.
pub fn subject(epoch: Epoch) -> String {
    format!("ss.events.{epoch}")
}

/// The `Nats-Msg-Id` of an event: its position.
pub fn msg_id(epoch: Epoch, seq: i64) -> String {
    Position::new(epoch, seq).to_string()
}

/// The body of one message (see the module's documentation for its shape).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WireEvent {
    seq: i64,
    event_id: Uuid,
    event_type: String,
    groups: Vec<String>,
    payload: Box<serde_json::value::RawValue>,
    replay_of: Option<String>,
    occurred_at: DateTime<Utc>,
    published_at: DateTime<Utc>,
}

/// Why a message could not be read as an event.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The body is not the JSON object of [`encode`].
    #[error("a broker message body is not an event: {0}")]
    Body(#[from] serde_json::Error),
}

/// The message body of an event (JSON, see the module's documentation).
///
/// # Errors
/// Only if the stored payload is not JSON, which `event_log`'s `jsonb` column rules out.
pub fn encode(row: &EventRow) -> Result<Vec<u8>, WireError> {
    let wire = WireEvent {
        seq: row.seq,
        event_id: row.event_id,
        event_type: row.event_type.clone(),
        groups: row.groups.clone(),
        payload: serde_json::value::RawValue::from_string(row.payload.clone())?,
        replay_of: row.replay_of.clone(),
        occurred_at: row.occurred_at,
        published_at: row.published_at,
    };
    Ok(serde_json::to_vec(&wire)?)
}

/// The event a message body holds, as `event_log` would return it.
///
/// # Errors
/// [`WireError::Body`] when the bytes are not a body [`encode`] wrote.
pub fn decode(body: &[u8]) -> Result<EventRow, WireError> {
    let wire: WireEvent = serde_json::from_slice(body)?;
    Ok(EventRow {
        seq: wire.seq,
        event_id: wire.event_id,
        event_type: wire.event_type,
        groups: wire.groups,
        payload: wire.payload.get().to_owned(),
        replay_of: wire.replay_of,
        occurred_at: wire.occurred_at,
        published_at: wire.published_at,
    })
}

/// The value of [`GROUPS_HEADER`] for an event's groups.
pub fn groups_header(groups: &[String]) -> String {
    groups.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> EventRow {
        EventRow {
            seq: 1042,
            event_id: Uuid::from_u128(7),
            event_type: "RecommendationReady".into(),
            groups: vec!["region:north".into(), "team:hvac".into()],
            payload: r#"{"jobId": "x", "summary": {"count": 2, "top": [{"score": 0.91}]}}"#.into(),
            replay_of: Some("7f3a9c21-17".into()),
            occurred_at: DateTime::from_timestamp(1_700_000_000, 123_456_000).expect("in range"),
            published_at: DateTime::from_timestamp(1_700_000_001, 0).expect("in range"),
        }
    }

    #[test]
    fn an_event_comes_back_as_it_was_stored_payload_text_included() {
        let original = row();
        let decoded = decode(&encode(&original).expect("encodes")).expect("decodes");
        assert_eq!(decoded, original);
    }

    #[test]
    fn names_follow_the_epoch() {
        let epoch: Epoch = "7f3a9c21".parse().expect("epoch");
        assert_eq!(stream_name(epoch), "SS_EVENTS_7f3a9c21");
        assert_eq!(subject(epoch), "ss.events.7f3a9c21");
        assert_eq!(msg_id(epoch, 1042), "7f3a9c21-1042");
        assert_eq!(groups_header(&row().groups), "region:north,team:hvac");
    }

    #[test]
    fn a_foreign_body_is_an_error_not_a_panic() {
        for body in [&b""[..], b"null", b"{}", b"{\"seq\":1}", b"\xff\xfe", b"[1,2]"] {
            assert!(decode(body).is_err(), "{body:?}");
        }
    }
}

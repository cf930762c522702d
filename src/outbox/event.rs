//! Validated outbox events. Validation happens here, at the edge, so that a bad event is refused with a
//! clear message before it reaches the database (the table's CHECK constraints say the same for writers
//! that use plain SQL).

use crate::position::Position;
use serde_json::{Map, Value};
use std::fmt;
use uuid::Uuid;

/// Largest payload accepted, in bytes of its JSON text as PostgreSQL's jsonb prints it (what goes on the
/// wire, and what the outbox's CHECK measures with `octet_length(payload::text)`).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Most groups one event may target.
pub const MAX_GROUPS: usize = 32;
/// Payload keys that the envelope owns; a payload may not carry them.
pub const ENVELOPE_KEYS: [&str; 6] = ["eventId", "type", "position", "groups", "occurredAt", "replayOf"];

/// Why an event cannot be written: the `Group*`, `EventType` and `Payload*` variants are refused input
/// (found before the database), `Database` a failed write.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// Not a group key (`^[a-z0-9][a-z0-9:_-]{0,63}$`); the text as given.
    #[error("invalid group key {}: expected ^[a-z0-9][a-z0-9:_-]{{0,63}}$, for example region:north", crate::validate::echo(.0))]
    GroupKey(String),
    /// No groups, or more than `MAX_GROUPS` (32); how many were given.
    #[error("an event needs between 1 and {MAX_GROUPS} groups, got {0}")]
    GroupCount(usize),
    /// Not an event type name (`^[A-Za-z][A-Za-z0-9_.-]{0,63}$`); the text as given.
    #[error("invalid event type {}: expected ^[A-Za-z][A-Za-z0-9_.-]{{0,63}}$", crate::validate::echo(.0))]
    EventType(String),
    /// The payload is not a JSON object.
    #[error("the payload must be a JSON object")]
    PayloadNotObject,
    /// The payload is larger than [`MAX_PAYLOAD_BYTES`]; its size in bytes (an upper bound of jsonb's text).
    #[error("the payload is {0} bytes; the limit is {MAX_PAYLOAD_BYTES}")]
    PayloadTooLarge(usize),
    /// The payload has a top-level key the envelope owns (`ENVELOPE_KEYS`, for example `position`); that key.
    #[error("the payload may not contain the envelope field {}", crate::validate::echo(.0))]
    PayloadEnvelopeKey(String),
    /// A string or key of the payload holds U+0000.
    #[error("the payload contains the NUL character (U+0000), which PostgreSQL's jsonb cannot store")]
    PayloadNul,
    /// The insert failed (connection, or a CHECK of the table).
    #[error("database error while writing the outbox")]
    Database(#[from] sqlx::Error),
}

/// A dispatcher group such as `region:north` or `team:hvac`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct GroupKey(String);

impl GroupKey {
    /// `s` as a group key, or [`OutboxError::GroupKey`] when it is not one (`^[a-z0-9][a-z0-9:_-]{0,63}$`).
    pub fn parse(s: &str) -> Result<Self, OutboxError> {
        if is_group_key(s) { Ok(Self(s.to_owned())) } else { Err(OutboxError::GroupKey(s.to_owned())) }
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for GroupKey {
    type Err = OutboxError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// `^[a-z0-9][a-z0-9:_-]{0,63}$`
fn is_group_key(s: &str) -> bool {
    let b = s.as_bytes();
    let first_ok = b.first().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = b.iter().skip(1).all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b":_-".contains(c));
    first_ok && rest_ok && b.len() <= 64
}

/// The SSE event name, for example `RecommendationReady`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventType(String);

impl EventType {
    /// `s` as an event type, or [`OutboxError::EventType`] when it is not one
    /// (`^[A-Za-z][A-Za-z0-9_.-]{0,63}$`).
    pub fn parse(s: &str) -> Result<Self, OutboxError> {
        let b = s.as_bytes();
        let ok = b.first().is_some_and(u8::is_ascii_alphabetic)
            && b.len() <= 64
            && b.iter().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c));
        if ok { Ok(Self(s.to_owned())) } else { Err(OutboxError::EventType(s.to_owned())) }
    }

    /// The name's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An upper bound of the length of `value` as jsonb's text output prints it, so that a payload that passes
/// here is never refused by the outbox's size CHECK. jsonb puts a space after every `:` and `,`, and prints
/// numbers as `numeric` does, without exponent (`1e300` becomes 301 digits): a number counts its digits
/// plus the magnitude of its exponent, plus room for a sign, a point and a leading zero. Strings are escaped
/// as serde_json escapes them, which is the same set jsonb escapes.
fn jsonb_text_bound(value: &Value) -> usize {
    let separators = |n: usize| 2 * n.saturating_sub(1);
    match value {
        Value::Null | Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(number) => {
            let text = number.to_string();
            let (mantissa, exponent) = text.split_once(['e', 'E']).unwrap_or((text.as_str(), "0"));
            let exponent: usize = exponent.trim_start_matches(['+', '-']).parse().unwrap_or(usize::MAX / 4);
            mantissa.len().saturating_add(exponent).saturating_add(3)
        }
        Value::String(s) => serde_json::to_string(s).map_or(usize::MAX / 4, |t| t.len()),
        Value::Array(items) => {
            2 + items.iter().map(jsonb_text_bound).fold(0usize, usize::saturating_add) + separators(items.len())
        }
        Value::Object(map) => {
            let members = map.iter().map(|(key, value)| {
                serde_json::to_string(key).map_or(usize::MAX / 4, |k| k.len()) + 2 + jsonb_text_bound(value)
            });
            2 + members.fold(0usize, usize::saturating_add) + separators(map.len())
        }
    }
}

/// True if a string or key anywhere in `value` holds U+0000 (jsonb refuses `\u0000`).
fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(key, value)| key.contains('\0') || contains_nul(value)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// An event ready to be written to the outbox. Construct with [`NewEvent::new`], which validates.
#[derive(Debug, Clone)]
pub struct NewEvent {
    event_type: EventType,
    aggregate_id: Uuid,
    groups: Vec<GroupKey>,
    payload: Map<String, Value>,
    replay_of: Option<Position>,
}

impl NewEvent {
    /// Validates an event of `event_type` about the aggregate (for example the job) `aggregate_id`, for
    /// `groups` (1 to `MAX_GROUPS`, 32), with `payload`, a JSON object of at most [`MAX_PAYLOAD_BYTES`] that
    /// holds no NUL and no key of the envelope (`eventId`, `type`, `position`, ...). Errors: the
    /// [`OutboxError`] variant that names the first problem found.
    pub fn new(
        event_type: &str,
        aggregate_id: Uuid,
        groups: Vec<GroupKey>,
        payload: Value,
    ) -> Result<Self, OutboxError> {
        let event_type = EventType::parse(event_type)?;
        if groups.is_empty() || groups.len() > MAX_GROUPS {
            return Err(OutboxError::GroupCount(groups.len()));
        }
        let Value::Object(payload) = payload else {
            return Err(OutboxError::PayloadNotObject);
        };
        if let Some(key) = ENVELOPE_KEYS.iter().find(|k| payload.contains_key(**k)) {
            return Err(OutboxError::PayloadEnvelopeKey((*key).to_owned()));
        }
        if payload.iter().any(|(key, value)| key.contains('\0') || contains_nul(value)) {
            return Err(OutboxError::PayloadNul);
        }
        let size = jsonb_text_bound(&Value::Object(payload.clone()));
        if size > MAX_PAYLOAD_BYTES {
            return Err(OutboxError::PayloadTooLarge(size));
        }
        Ok(Self { event_type, aggregate_id, groups, payload, replay_of: None })
    }

    /// Marks this event as a replayed copy of the event at `original`.
    pub fn replaying(mut self, original: Position) -> Self {
        self.replay_of = Some(original);
        self
    }

    /// This event without its groups: a row the outbox's CHECK refuses, for tests that need a writer's
    /// statement to fail in its outbox part ([`NewEvent::new`] refuses it before the database).
    pub(crate) fn refused_by_the_database(mut self) -> Self {
        self.groups.clear();
        self
    }

    /// The event type (the SSE event name).
    pub fn event_type(&self) -> &EventType {
        &self.event_type
    }
    /// The id of what the event is about (for example the job).
    pub fn aggregate_id(&self) -> Uuid {
        self.aggregate_id
    }
    /// The groups whose dispatchers receive it.
    pub fn groups(&self) -> &[GroupKey] {
        &self.groups
    }
    /// The payload object (merged into the envelope on the wire).
    pub fn payload(&self) -> &Map<String, Value> {
        &self.payload
    }
    /// The original's position when this is a replayed copy ([`NewEvent::replaying`]).
    pub fn replay_of(&self) -> Option<Position> {
        self.replay_of
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn groups(keys: &[&str]) -> Vec<GroupKey> {
        keys.iter().map(|k| GroupKey::parse(k).unwrap()).collect()
    }

    #[test]
    fn group_keys_follow_the_contract_pattern() {
        for ok in ["region:north", "team:hvac", "a", "0", "a-b_c:d", &"a".repeat(64)] {
            assert!(GroupKey::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Region:north", ":north", "-a", "a b", "région", &"a".repeat(65), "a/b"] {
            assert!(matches!(GroupKey::parse(bad), Err(OutboxError::GroupKey(_))), "{bad}");
        }
    }

    #[test]
    fn a_payload_must_be_an_object() {
        let err = NewEvent::new("X", Uuid::nil(), groups(&["g"]), json!([1, 2])).unwrap_err();
        assert!(matches!(err, OutboxError::PayloadNotObject));
    }

    #[test]
    fn a_payload_may_not_shadow_the_envelope() {
        let err = NewEvent::new("X", Uuid::nil(), groups(&["g"]), json!({"position": 1})).unwrap_err();
        assert_eq!(err.to_string(), "the payload may not contain the envelope field \"position\"");
    }

    #[test]
    fn a_payload_over_the_limit_is_refused_with_its_size() {
        let big = "x".repeat(MAX_PAYLOAD_BYTES);
        let err = NewEvent::new("X", Uuid::nil(), groups(&["g"]), json!({ "big": big })).unwrap_err();
        assert!(matches!(err, OutboxError::PayloadTooLarge(n) if n > MAX_PAYLOAD_BYTES));
    }

    #[test]
    fn the_size_counts_what_jsonb_prints_not_the_compact_form() {
        // Compact: 62,701 bytes; as jsonb prints it, 2 more per member (": " and ", "): 69,299.
        let members: Map<String, Value> = (0..3300).map(|i| (format!("k{i:05}"), json!(123_456_789))).collect();
        let compact = serde_json::to_vec(&members).unwrap().len();
        assert!(compact <= MAX_PAYLOAD_BYTES, "{compact}");
        let err = NewEvent::new("X", Uuid::nil(), groups(&["g"]), Value::Object(members)).unwrap_err();
        assert!(matches!(err, OutboxError::PayloadTooLarge(n) if n > MAX_PAYLOAD_BYTES), "{err}");
        // A number that numeric prints in full.
        let err =
            NewEvent::new("X", Uuid::nil(), groups(&["g"]), json!({"n": 1e300, "m": vec![1e-300; 300]})).unwrap_err();
        assert!(matches!(err, OutboxError::PayloadTooLarge(_)), "{err}");
        assert_eq!(jsonb_text_bound(&json!({"a": [1, "x"], "b": null})), r#"{"a": [1, "x"], "b": null}"#.len() + 3);
    }

    #[test]
    fn a_payload_with_a_nul_character_is_refused_before_the_database() {
        for payload in [json!({"title": "Fix\u{0}boiler"}), json!({"a": [{"k\u{0}": 1}]}), json!({"\u{0}": 1})] {
            let err = NewEvent::new("X", Uuid::nil(), groups(&["g"]), payload).unwrap_err();
            assert!(matches!(err, OutboxError::PayloadNul), "{err}");
        }
    }

    #[test]
    fn an_event_needs_groups() {
        let err = NewEvent::new("X", Uuid::nil(), vec![], json!({})).unwrap_err();
        assert!(matches!(err, OutboxError::GroupCount(0)));
    }

    #[test]
    fn event_types_are_names() {
        assert!(EventType::parse("RecommendationReady").is_ok());
        assert!(EventType::parse("job.updated").is_ok());
        assert!(EventType::parse("9lives").is_err());
        assert!(EventType::parse("has space").is_err());
    }
}

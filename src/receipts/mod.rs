//! Delivery receipts (issue 24, part 1): which dispatchers' consoles have applied a job's latest
//! recommendations, and since when.
//!
//! A console reports the last position it applied (after its sheet re-rendered), at most once every few
//! seconds and at once when it is hidden or closed. Positions are dense and a console applies the events of
//! its groups in order, so "applied through P" says it has every event of its groups up to P: one number per
//! dispatcher answers for every event. A report is stored only when it moves its dispatcher further than before
//! (table `console_receipts`, migration 0018), so PostgreSQL's cost is bounded by the reports, not the
//! events: at most one row per dispatcher per report interval, and none from a console that is behind
//! another of the same dispatcher. Each server stores its reports in batches, one transaction per second at
//! most ([`batch`], migration 0019).
//!
//! A stored report is NOTIFYd on [`RECEIPTS_CHANNEL`]; each process's hub passes it to its open streams of the
//! dispatcher's region groups as an `event: receipt` without `id:` ([`ReceiptHint`]), so that open sheets
//! update without polling. Hints are best-effort (a NOTIFY is a hint, and a listener that reconnects has
//! missed some): the hub then sends `{"stale": true}` and consoles read [`job_receipts`] again.

pub mod batch;

pub use batch::{BatchConfig, ReceiptBatcher, RecordError};

use crate::position::{Epoch, Position};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

/// The NOTIFY channel of stored receipts (payload: see [`ReceiptHint::from_notify`]).
pub const RECEIPTS_CHANNEL: &str = "ss_receipts";

/// A stored receipt: `dispatcher_id`'s consoles have applied everything of their groups through `seq`,
/// first reached at `reached_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reached {
    pub seq: i64,
    pub reached_at: DateTime<Utc>,
}

/// Deletes the receipts that can no longer answer anything: those of other epochs than the log's, and those
/// at or below `expired_through` (positions retention dropped) that are not their dispatcher's latest (which
/// still says how far they are). Returns how many rows went.
///
/// # Errors
/// The database's.
pub async fn prune(pool: &PgPool, expired_through: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM console_receipts r
         USING stream_meta m
         WHERE r.epoch <> m.epoch
            OR (r.seq <= $1 AND EXISTS (SELECT 1 FROM console_receipts later
                                        WHERE later.dispatcher_id = r.dispatcher_id AND later.epoch = r.epoch
                                          AND later.seq > r.seq))",
    )
    .bind(expired_through)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Who of a job's region has seen its latest recommendation set: `GET /api/jobs/{id}/receipts`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobReceipts {
    pub job_id: Uuid,
    /// The job's latest set; `None` when it has none yet.
    pub recommendation_set_id: Option<Uuid>,
    /// Where the set's `RecommendationReady` event is in the log (`<epoch>-<seq>`); `None` while it is not
    /// published yet (or has expired from the log).
    pub position: Option<String>,
    /// The job's region group (`region:<region>`).
    pub group: String,
    /// The group's current, enabled members, by name.
    pub dispatchers: Vec<DispatcherReceipt>,
    /// Members whose consoles have applied the set.
    pub seen_count: usize,
    /// Members in all.
    pub total: usize,
}

/// One member of the job's group and whether a console of theirs has applied the set.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DispatcherReceipt {
    pub dispatcher_id: String,
    pub name: String,
    /// When a console of theirs first reported a position at or after the set's (server time, RFC 3339
    /// UTC); `None`: not yet.
    #[serde(serialize_with = "millis_opt")]
    pub seen_at: Option<DateTime<Utc>>,
}

fn millis_opt<S: serde::Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true)),
        None => s.serialize_none(),
    }
}

/// The receipts of `job_id`'s latest set among the members of `region:<region>`. The set's position comes
/// from the log (index `event_log_recommendation_ready`); each member's "seen at" is one probe of their
/// receipts (their first row at or after that position).
///
/// # Errors
/// The database's.
pub async fn job_receipts(pool: &PgPool, job_id: Uuid, region: &str) -> Result<JobReceipts, sqlx::Error> {
    let group = format!("region:{region}"); // the group its events target (recommendations::region_group)
    let latest = crate::recommendations::latest_set_id(pool, job_id).await?;
    let (epoch, set_seq) = match latest {
        Some(set_id) => set_position(pool, job_id, set_id).await?.map_or((None, None), |(e, s)| (Some(e), Some(s))),
        None => (None, None),
    };
    let rows: Vec<(String, String, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT d.id, d.name,
                (SELECT r.reached_at FROM console_receipts r
                 WHERE r.dispatcher_id = d.id AND r.epoch = $2 AND r.seq >= $3
                 ORDER BY r.seq LIMIT 1)
         FROM dispatchers d JOIN dispatcher_groups g ON g.dispatcher_id = d.id
         WHERE g.group_key = $1 AND d.disabled_at IS NULL
         ORDER BY d.name, d.id",
    )
    .bind(&group)
    .bind(epoch.map(|e: Epoch| e.to_string()))
    .bind(set_seq)
    .fetch_all(pool)
    .await?;
    let dispatchers: Vec<DispatcherReceipt> = rows
        .into_iter()
        .map(|(dispatcher_id, name, seen_at)| DispatcherReceipt { dispatcher_id, name, seen_at })
        .collect();
    let seen_count = dispatchers.iter().filter(|d| d.seen_at.is_some()).count();
    Ok(JobReceipts {
        job_id,
        recommendation_set_id: latest,
        position: epoch.zip(set_seq).map(|(e, s)| Position::new(e, s).to_string()),
        group,
        total: dispatchers.len(),
        seen_count,
        dispatchers,
    })
}

/// The epoch and seq of the original `RecommendationReady` event of `set_id`, if it is in the log.
async fn set_position(pool: &PgPool, job_id: Uuid, set_id: Uuid) -> Result<Option<(Epoch, i64)>, sqlx::Error> {
    let row: Option<(String, i64)> = sqlx::query_as(
        "SELECT m.epoch, l.seq FROM event_log l, stream_meta m
         WHERE l.aggregate_id = $1 AND l.event_type = 'RecommendationReady' AND l.replay_of IS NULL
           AND l.payload -> 'summary' ->> 'recommendationSetId' = $2::text
         ORDER BY l.seq DESC LIMIT 1",
    )
    .bind(job_id)
    .bind(set_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(epoch, seq)| Some((epoch.parse().ok()?, seq))))
}

/// A receipt as open streams get it (`event: receipt`, no `id:`, so it moves no one's position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptHint {
    /// `dispatcher_id` has applied everything of their groups through `position`, first at `reached_at`.
    Reached {
        dispatcher_id: String,
        position: Position,
        reached_at: String,
        /// The streams that get it: those holding one of these groups; `None`: every stream.
        groups: Option<Vec<String>>,
    },
    /// Hints may have been missed (this process's listener reconnected): read the receipts again.
    Stale,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NotifyPayload {
    dispatcher_id: String,
    epoch: String,
    seq: i64,
    reached_at: String,
    groups: Option<Vec<String>>,
}

impl ReceiptHint {
    /// Parses the NOTIFY payload `ss_record_receipts` sends:
    /// `{"dispatcherId", "epoch", "seq", "reachedAt", "groups": [...] | null}`. `None` if malformed.
    pub fn from_notify(payload: &str) -> Option<ReceiptHint> {
        let p: NotifyPayload = serde_json::from_str(payload).ok()?;
        let epoch: Epoch = p.epoch.parse().ok()?;
        Some(ReceiptHint::Reached {
            dispatcher_id: p.dispatcher_id,
            position: Position::new(epoch, p.seq),
            reached_at: p.reached_at,
            groups: p.groups,
        })
    }

    /// The hint of a receipt [`ReceiptBatcher`] just stored, for `dispatcher_id`, to the streams of `groups`
    /// (the dispatcher's region groups as `ss_record_receipts` read them; `None`, for more than 80 of them:
    /// every stream, which is harmless, as a hint only says how far a dispatcher has applied the log).
    pub fn stored(dispatcher_id: &str, epoch: Epoch, reached: &Reached, groups: Option<Vec<String>>) -> ReceiptHint {
        ReceiptHint::Reached {
            dispatcher_id: dispatcher_id.to_owned(),
            position: Position::new(epoch, reached.seq),
            reached_at: reached.reached_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            groups,
        }
    }

    /// The payload [`ReceiptHint::from_notify`] reads (what `ss_record_receipts` NOTIFYs); `None` for
    /// [`ReceiptHint::Stale`], which is never sent between processes.
    pub fn notify_payload(&self) -> Option<String> {
        match self {
            ReceiptHint::Reached { dispatcher_id, position, reached_at, groups } => Some(
                serde_json::json!({
                    "dispatcherId": dispatcher_id,
                    "epoch": position.epoch.to_string(),
                    "seq": position.seq,
                    "reachedAt": reached_at,
                    "groups": groups,
                })
                .to_string(),
            ),
            ReceiptHint::Stale => None,
        }
    }

    /// Whether a stream holding `stream_groups` gets this hint.
    pub fn reaches(&self, stream_groups: &[String]) -> bool {
        match self {
            ReceiptHint::Reached { groups: Some(groups), .. } => groups.iter().any(|g| stream_groups.contains(g)),
            _ => true,
        }
    }

    /// The SSE `data:` of `event: receipt`: `{"dispatcherId","position","seenAt"}` or `{"stale":true}`.
    pub fn data(&self) -> String {
        match self {
            ReceiptHint::Reached { dispatcher_id, position, reached_at, .. } => serde_json::json!({
                "dispatcherId": dispatcher_id,
                "position": position.to_string(),
                "seenAt": reached_at,
            })
            .to_string(),
            ReceiptHint::Stale => "{\"stale\":true}".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notify_payload_becomes_a_hint_for_its_groups() {
        let hint = ReceiptHint::from_notify(
            r#"{"dispatcherId":"bob","epoch":"0a0b0c0d","seq":42,"reachedAt":"2026-12-07T10:00:00.000Z","groups":["region:north"]}"#,
        )
        .expect("parses");
        assert!(hint.reaches(&["region:north".to_owned(), "team:hvac".to_owned()]));
        assert!(!hint.reaches(&["region:south".to_owned()]));
        assert_eq!(
            hint.data(),
            r#"{"dispatcherId":"bob","position":"0a0b0c0d-42","seenAt":"2026-12-07T10:00:00.000Z"}"#
        );
    }

    #[test]
    fn a_hint_without_groups_or_a_stale_one_reaches_every_stream() {
        let all = ReceiptHint::from_notify(
            r#"{"dispatcherId":"bob","epoch":"0a0b0c0d","seq":1,"reachedAt":"x","groups":null}"#,
        )
        .expect("parses");
        assert!(all.reaches(&["region:south".to_owned()]));
        assert!(ReceiptHint::Stale.reaches(&[]));
        assert_eq!(ReceiptHint::Stale.data(), r#"{"stale":true}"#);
    }

    #[test]
    fn a_stored_receipts_hint_survives_the_trip_between_processes() {
        let reached = Reached { seq: 7, reached_at: "2026-12-07T10:00:00.123Z".parse().expect("an instant") };
        let hint = ReceiptHint::stored("bob", Epoch(0x0a0b0c0d), &reached, Some(vec!["region:north".to_owned()]));
        let payload = hint.notify_payload().expect("a payload");
        assert_eq!(ReceiptHint::from_notify(&payload), Some(hint.clone()));
        assert!(hint.reaches(&["region:north".to_owned()]) && !hint.reaches(&["team:hvac".to_owned()]));
        assert_eq!(ReceiptHint::Stale.notify_payload(), None);
    }

    #[test]
    fn a_malformed_payload_is_no_hint() {
        for payload in ["", "{}", "not json", r#"{"dispatcherId":"b","epoch":"XYZ","seq":1,"reachedAt":"x"}"#] {
            assert_eq!(ReceiptHint::from_notify(payload), None, "{payload}");
        }
    }
}

//! The writer side of the stream: application code adds an event to the `outbox` inside its own
//! transaction, so the event commits (or rolls back) together with the data it describes.
//!
//! Nothing else is needed for the event to be published: the relay picks committed rows up. After the
//! transaction commits, call [`RelayWaker::wake`] so that a relay in this process publishes at once
//! instead of at its next poll (writers never NOTIFY: a NOTIFY takes a cluster-wide lock at commit).

mod event;

pub use event::{EventType, GroupKey, MAX_PAYLOAD_BYTES, NewEvent, OutboxError};

use std::sync::Arc;
use tokio::sync::Notify;
use uuid::Uuid;

/// Adds `event` to the outbox in the caller's open transaction. Returns the event id.
pub async fn enqueue(conn: &mut sqlx::PgConnection, event: &NewEvent) -> Result<Uuid, OutboxError> {
    let groups: Vec<&str> = event.groups().iter().map(GroupKey::as_str).collect();
    let event_id: Uuid = sqlx::query_scalar(
        "INSERT INTO outbox (event_type, aggregate_id, groups, payload, replay_of)
         VALUES ($1, $2, $3, $4, $5)
         RETURNING event_id",
    )
    .bind(event.event_type().as_str())
    .bind(event.aggregate_id())
    .bind(&groups)
    .bind(sqlx::types::Json(event.payload()))
    .bind(event.replay_of().map(|p| p.to_string()))
    .fetch_one(conn)
    .await?;
    Ok(event_id)
}

/// An in-process doorbell from writers to the relay: "something committed, publish now".
///
/// A wake that arrives while the relay is busy is remembered (one permit), so none is lost; a relay
/// in another process is woken by its poll or by a NOTIFY on [`crate::relay::WAKE_CHANNEL`].
#[derive(Clone, Default, Debug)]
pub struct RelayWaker(Arc<Notify>);

impl RelayWaker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Call after the transaction that wrote outbox rows has committed.
    pub fn wake(&self) {
        self.0.notify_one();
    }

    /// Resolves at the next wake (or at once if one is pending).
    pub async fn woken(&self) {
        self.0.notified().await;
    }
}

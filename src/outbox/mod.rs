//! The writer side of the stream: application code adds an event to the `outbox` inside its own
//! transaction, so the event commits (or rolls back) together with the data it describes.
//!
//! Nothing else is needed for the event to be published: the relay picks committed rows up. After the
//! transaction commits, call [`RelayWaker::wake`] so that a relay in this process publishes at once
//! instead of at its next poll (writers never NOTIFY: a NOTIFY takes a cluster-wide lock at commit).

mod event;

pub use event::{EventType, GroupKey, MAX_PAYLOAD_BYTES, NewEvent, OutboxError};

use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use std::sync::{Arc, LazyLock};
use tokio::sync::Notify;
use uuid::Uuid;

/// Adds `event` to the outbox in the caller's open transaction. Returns the event id.
///
/// This is one more round trip in the writer's transaction; a writer that already sends a statement
/// can fold the row into it instead (see [`insert_sql`]).
pub async fn enqueue(conn: &mut sqlx::PgConnection, event: &NewEvent) -> Result<Uuid, OutboxError> {
    static SQL: LazyLock<String> = LazyLock::new(|| insert_sql(1));
    let (event_id,): (Uuid,) = bind_event(sqlx::query_as(SQL.as_str()), event).fetch_one(conn).await?;
    Ok(event_id)
}

/// The outbox row's `INSERT INTO outbox (...) VALUES (...) RETURNING event_id`, with its five parameters
/// numbered from `$first`; bind them with [`bind_event`].
///
/// For a writer that puts the outbox row in the statement that writes its own data (a data-modifying
/// CTE, `WITH data AS (INSERT ...), event AS (<this>) SELECT ...`): the row then costs no round trip of
/// its own, and commits or rolls back with the rest of the statement. It is still a plain INSERT into
/// `outbox`, so the relay publishes it like any other.
pub fn insert_sql(first: usize) -> String {
    let [a, b, c, d, e] = [first, first + 1, first + 2, first + 3, first + 4];
    format!(
        "INSERT INTO outbox (event_type, aggregate_id, groups, payload, replay_of) \
         VALUES (${a}, ${b}, ${c}::text[], ${d}, ${e}) RETURNING event_id"
    )
}

/// A set-based write of many outbox rows in one statement: `INSERT INTO outbox (...) SELECT ... FROM <rows>
/// ORDER BY ordinal RETURNING event_id`, for use as a data-modifying CTE of the writer's own statement (like
/// [`insert_sql`]).
///
/// `rows` names a relation of the statement (a CTE, or a parenthesised query with an alias) with the columns
/// `ordinal` (any orderable type: outbox ids, and so the order in which the relay publishes the rows, follow
/// it), `event_type` (text), `aggregate_id` (uuid), `groups` (text[]), `payload` (jsonb) and `replay_of`
/// (text, a position, or NULL). The rows bypass [`NewEvent`]'s checks, so they must be events that passed
/// them already (`replay` copies published events); the table's CHECK constraints still apply.
pub fn insert_rows_sql(rows: &str) -> String {
    format!(
        "INSERT INTO outbox (event_type, aggregate_id, groups, payload, replay_of) \
         SELECT event_type, aggregate_id, groups, payload, replay_of FROM {rows} ORDER BY ordinal \
         RETURNING event_id"
    )
}

/// `SELECT replay_of FROM outbox WHERE replay_of LIKE $<pattern>`: the positions of the originals whose
/// replayed copies are still waiting in the outbox (written, not yet published), among those that match the
/// `LIKE` pattern bound as parameter `$<pattern>` (for example `7f3a9c21-%`: copies of one epoch's events).
pub fn waiting_copies_sql(pattern: usize) -> String {
    format!("SELECT replay_of FROM outbox WHERE replay_of LIKE ${pattern}")
}

/// Binds `event`'s five values in the order [`insert_sql`] numbers them, after the parameters already
/// bound to `query`.
pub fn bind_event<'q, O>(
    query: QueryAs<'q, Postgres, O, PgArguments>,
    event: &'q NewEvent,
) -> QueryAs<'q, Postgres, O, PgArguments> {
    let groups: Vec<&str> = event.groups().iter().map(GroupKey::as_str).collect();
    query
        .bind(event.event_type().as_str())
        .bind(event.aggregate_id())
        .bind(groups)
        .bind(sqlx::types::Json(event.payload()))
        .bind(event.replay_of().map(|p| p.to_string()))
}

/// An in-process doorbell from writers to the relay: "something committed, publish now".
///
/// A wake that arrives while the relay is busy is remembered (one permit), so none is lost; a relay
/// in another process is woken by its poll or by a NOTIFY on [`crate::relay::WAKE_CHANNEL`].
#[derive(Clone, Default, Debug)]
pub struct RelayWaker(Arc<Notify>);

impl RelayWaker {
    /// A doorbell with no wake pending; clones ring the same one.
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

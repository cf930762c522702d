//! Writers: application transactions that insert outbox rows with plain SQL, and the exact ledger of what
//! committed. A COMMIT that fails (its connection was killed during it) has an unknown outcome: the event
//! ids go to `unknown` and are looked up in the database afterwards, never guessed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlx::{Connection, PgConnection};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const REGIONS: [&str; 4] = ["region:north", "region:south", "region:east", "region:west"];

/// Where an event came from (lost events are reported with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    Writer,
    /// Published by hand with `published_at` in the past (the clock-step fault).
    ClockStep,
    /// The poison row (`created_at = 'infinity'`).
    Poison,
    /// The last event of a run, in every group, that every client waits for.
    Fence,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::Writer => "writer",
            Origin::ClockStep => "clock-step",
            Origin::Poison => "poison",
            Origin::Fence => "fence",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LedgerEvent {
    pub id: Uuid,
    pub groups: Vec<String>,
    pub origin: Origin,
}

/// Every event the harness tried to commit, by outcome.
#[derive(Debug, Default)]
pub struct Ledger {
    pub committed: Vec<LedgerEvent>,
    /// COMMIT failed: resolved against event_log and outbox once the run is over.
    pub unknown: Vec<LedgerEvent>,
    /// Unknown outcomes that turned out committed / not committed.
    pub unknown_committed: usize,
    pub unknown_aborted: usize,
    /// Poison inserts that the database refused.
    pub poison_refused: usize,
}

pub type SharedLedger = Arc<Mutex<Ledger>>;

/// One event for the outbox.
pub fn new_event(rng: &mut StdRng, origin: Origin) -> LedgerEvent {
    let first = rng.random_range(0..REGIONS.len());
    let mut groups = vec![REGIONS[first].to_owned()];
    if rng.random_bool(0.25) {
        let second = (first + rng.random_range(1..REGIONS.len())) % REGIONS.len();
        groups.push(REGIONS[second].to_owned());
    }
    LedgerEvent { id: Uuid::new_v4(), groups, origin }
}

/// Inserts `event` into the outbox in the caller's transaction, the way an application does.
pub async fn insert(conn: &mut PgConnection, event: &LedgerEvent, payload: serde_json::Value) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, aggregate_id, groups, payload) VALUES ($1, 'ChaosEvent', $2, $3, $4)",
    )
    .bind(event.id)
    .bind(Uuid::new_v4())
    .bind(&event.groups)
    .bind(payload)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Runs one writer until `stop`: transactions of 1 to 3 events at `tx_per_sec`.
pub async fn writer(
    n: usize,
    url: String,
    seed: u64,
    tx_per_sec: f64,
    ledger: SharedLedger,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let options = smartscheduler::db::connect_options(&url)?.application_name("smartscheduler-chaos-writer");
    let mut conn: Option<PgConnection> = None;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / tx_per_sec));
    // After a stall (a killed connection), go on at the normal pace instead of bursting to catch up.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if conn.is_none() {
            match PgConnection::connect_with(&options).await {
                Ok(c) => conn = Some(c),
                Err(_) => continue, // the database is refusing us for now; try again next tick
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let count = match rng.random_range(0..10) {
            0..=6 => 1,
            7..=8 => 2,
            _ => 3,
        };
        let events: Vec<LedgerEvent> = (0..count).map(|_| new_event(&mut rng, Origin::Writer)).collect();
        let payloads: Vec<_> = events
            .iter()
            .map(|_| {
                seq += 1;
                json!({ "writer": n, "n": seq })
            })
            .collect();
        if !transaction(c, &events, payloads, &ledger).await {
            conn = None; // broken (or in doubt): start over on a new connection
        }
    }
}

/// One transaction; returns false when the connection must be replaced. Only the COMMIT itself can leave
/// the outcome unknown: an error before it means nothing was committed.
async fn transaction(
    conn: &mut PgConnection,
    events: &[LedgerEvent],
    payloads: Vec<serde_json::Value>,
    ledger: &SharedLedger,
) -> bool {
    let Ok(mut tx) = conn.begin().await else { return false };
    for (event, payload) in events.iter().zip(payloads) {
        if insert(&mut tx, event, payload).await.is_err() {
            return false;
        }
    }
    match tx.commit().await {
        Ok(()) => {
            ledger.lock().unwrap().committed.extend_from_slice(events);
            true
        }
        Err(_) => {
            ledger.lock().unwrap().unknown.extend_from_slice(events);
            false
        }
    }
}

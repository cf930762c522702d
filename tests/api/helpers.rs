//! Test support: a fresh database per test, and ways to await the relay instead of sleeping.

#![allow(dead_code)]

use serde_json::json;
use smartscheduler::outbox::{self, GroupKey, NewEvent};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use std::time::Duration;
use uuid::Uuid;

/// The server tests may create databases on (set by the Makefile from scripts/postgres.sh).
pub fn admin_url() -> String {
    std::env::var("SMARTSCHEDULER_TEST_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn server_url() -> String {
    let admin = admin_url();
    match admin.rsplit_once('/') {
        Some((server, _db)) if server.contains("://") && !server.ends_with('/') => server.to_owned(),
        _ => admin,
    }
}

/// A migrated database of its own, dropped when the test ends (also when it panics).
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> Self {
        let db = Self::empty().await;
        smartscheduler::db::migrate(&db.pool).await.expect("migrate");
        db
    }

    /// A database of its own with nothing in it (not migrated).
    pub async fn empty() -> Self {
        let name = format!("ss_test_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url()).await.expect("connect to the admin database");
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.expect("create db");
        let url = format!("{}/{}", server_url(), name);
        let pool = PgPoolOptions::new().max_connections(20).connect(&url).await.expect("connect to test db");
        Self { name, url, pool }
    }

    /// Another pool on the same database, named so that tests can find (and kill) its connections.
    pub async fn pool_named(&self, application_name: &str, max: u32) -> PgPool {
        let options = smartscheduler::db::connect_options(&self.url).unwrap().application_name(application_name);
        PgPoolOptions::new().max_connections(max).connect_with(options).await.expect("named pool")
    }

    /// Waits until a backend named `application_name` is blocked on a lock (PostgreSQL offers no event for
    /// this, so it polls `pg_stat_activity`), or panics after `timeout`.
    pub async fn until_waiting_for_a_lock(&self, application_name: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let waiting: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                                WHERE datname = current_database() AND application_name = $1
                                  AND wait_event_type = 'Lock')",
            )
            .bind(application_name)
            .fetch_one(&self.pool)
            .await
            .expect("read pg_stat_activity");
            if waiting {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{application_name} never waited for a lock");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Terminates every backend of this database whose application_name is `application_name`.
    pub async fn terminate(&self, application_name: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid()",
        )
        .bind(application_name)
        .fetch_one(&self.pool)
        .await
        .expect("terminate backends")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop needs async work: do it on a thread of its own so it also runs while a test unwinds.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let mut admin = PgConnection::connect(&admin_url()).await.ok()?;
                sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                    .execute(&mut admin)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

pub fn group(key: &str) -> GroupKey {
    GroupKey::parse(key).expect("valid group key")
}

/// Writes one event in its own transaction and returns its event id.
/// The log's epoch (`stream_meta.epoch`, 8 hex digits).
pub async fn epoch(db: &TestDb) -> String {
    sqlx::query_scalar("SELECT epoch FROM stream_meta").fetch_one(&db.pool).await.unwrap()
}

pub async fn write_event(pool: &PgPool, groups: &[&str], payload: serde_json::Value) -> Uuid {
    let mut tx = pool.begin().await.expect("begin");
    let event = NewEvent::new("TestEvent", Uuid::new_v4(), groups.iter().map(|g| group(g)).collect(), payload)
        .expect("valid event");
    let id = outbox::enqueue(&mut tx, &event).await.expect("enqueue");
    tx.commit().await.expect("commit");
    id
}

/// Writes `n` events in one transaction.
pub async fn write_events(pool: &PgPool, n: usize, groups: &[&str]) -> Vec<Uuid> {
    let mut tx = pool.begin().await.expect("begin");
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let event =
            NewEvent::new("TestEvent", Uuid::new_v4(), groups.iter().map(|g| group(g)).collect(), json!({"i": i}))
                .expect("valid event");
        ids.push(outbox::enqueue(&mut tx, &event).await.expect("enqueue"));
    }
    tx.commit().await.expect("commit");
    ids
}

/// A LISTEN on the relay's channel, to await publishes instead of sleeping.
pub struct PublishWatcher(PgListener);

impl PublishWatcher {
    pub async fn new(db: &TestDb) -> Self {
        let mut listener = PgListener::connect(&db.url).await.expect("listener");
        listener.listen(smartscheduler::event_log::EVENTS_CHANNEL).await.expect("LISTEN");
        Self(listener)
    }

    /// Waits until a publish notification reports `seq >= target`, or panics after `timeout`.
    pub async fn until_seq(&mut self, db: &TestDb, target: i64, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // The state may already be there (the notification may predate our LISTEN).
            let last: i64 = sqlx::query_scalar("SELECT last_seq FROM stream_meta").fetch_one(&db.pool).await.unwrap();
            if last >= target {
                return;
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(remaining, self.0.recv()).await {
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => panic!("listener failed: {e}"),
                Err(_) => panic!("seq {target} was not published within {timeout:?} (last_seq = {last})"),
            }
        }
    }
}

/// (seq, event_id) of the whole log in seq order.
pub async fn log_entries(pool: &PgPool) -> Vec<(i64, Uuid)> {
    sqlx::query_as("SELECT seq, event_id FROM event_log ORDER BY seq").fetch_all(pool).await.expect("read log")
}

/// Asserts seq runs 1..=n without holes or repeats.
pub fn assert_dense(entries: &[(i64, Uuid)]) {
    for (i, (seq, _)) in entries.iter().enumerate() {
        assert_eq!(*seq, i as i64 + 1, "positions must be dense and start at 1");
    }
}

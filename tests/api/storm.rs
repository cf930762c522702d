//! Reconnect storms: resumes inside the hub's window of recent events are served from memory, older ones
//! from the log, and a storm of resumes through a small pool waits its turn instead of ending streams.
//!
//! "No read of the log" is shown by holding `event_log` and `event_log_groups` under an ACCESS EXCLUSIVE
//! lock: any read of them waits for it, so a client served while it is held was served from memory.

use crate::app::*;
use crate::helpers::*;
use futures::future::join_all;
use serde_json::json;
use sqlx::Connection;
use sqlx::postgres::PgPoolOptions;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// Writes `n` events alternating region:north and region:south (odd seqs north, when the log starts empty).
async fn write_alternating(db: &TestDb, n: usize) {
    for i in 0..n {
        let group = if i % 2 == 0 { "region:north" } else { "region:south" };
        write_event(&db.pool, &[group], json!({ "n": i })).await;
    }
}

/// A transaction holding the event log's tables so that any read of them waits; rolled back on drop.
struct LogLock(sqlx::PgConnection);

impl LogLock {
    async fn take(db: &TestDb) -> Self {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("lock connection");
        sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
        sqlx::query("LOCK TABLE event_log, event_log_groups IN ACCESS EXCLUSIVE MODE")
            .execute(&mut conn)
            .await
            .unwrap();
        Self(conn)
    }

    async fn release(mut self) {
        sqlx::query("ROLLBACK").execute(&mut self.0).await.unwrap();
    }
}

/// The north seqs in `(after, through]` of a log written by [`write_alternating`].
fn north_between(after: i64, through: i64) -> Vec<i64> {
    ((after + 1)..=through).filter(|seq| seq % 2 == 1).collect()
}

/// Waits until a live stream of alice's, opened before the log was written, received the north events
/// through `through`: the hub has then fanned out (and kept in its window) everything up to there.
async fn until_fanned_out(live: &mut SseClient, through: i64) {
    let seqs: Vec<i64> = live.take(north_between(0, through).len(), WAIT).await.iter().map(seq_of).collect();
    assert_eq!(seqs, north_between(0, through));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resume_inside_the_window_is_served_from_memory_with_no_gap_or_duplicate_at_the_seam() {
    let db = TestDb::new().await;
    let app = TestApp::spawn_with(&db, |config| config.hub.window_events = 20).await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let mut live = Connect::new(&alice).open(&app.base).await;
    write_alternating(&db, 30).await;
    until_fanned_out(&mut live, 30).await;
    let e = epoch(&db).await;

    // The window holds seqs 11..=30: a resume from 10 (its first seq - 1) is inside it, from 9 is not.
    let lock = LogLock::take(&db).await;
    let mut inside = Connect::new(&alice).header(&format!("{e}-10")).open(&app.base).await;
    let served: Vec<i64> = inside.take(north_between(10, 30).len(), WAIT).await.iter().map(seq_of).collect();
    assert_eq!(served, north_between(10, 30), "served from memory, while the log could not be read");
    let mut older = Connect::new(&alice).header(&format!("{e}-9")).open(&app.base).await;
    lock.release().await;
    let from_log: Vec<i64> = older.take(north_between(9, 30).len(), WAIT).await.iter().map(seq_of).collect();
    assert_eq!(from_log, north_between(9, 30), "a resume older than the window reads the log");

    // The seam: what comes next arrives once, right after the backlog.
    write_alternating(&db, 4).await; // seqs 31..=34, north 31 and 33
    for client in [&mut inside, &mut older] {
        let next: Vec<i64> = client.take(2, WAIT).await.iter().map(seq_of).collect();
        assert_eq!(next, vec![31, 33]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resume_older_than_the_window_waits_for_the_log_and_then_gets_everything() {
    let db = TestDb::new().await;
    let app = TestApp::spawn_with(&db, |config| config.hub.window_events = 4).await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let mut live = Connect::new(&alice).open(&app.base).await;
    write_alternating(&db, 20).await;
    until_fanned_out(&mut live, 20).await;
    let e = epoch(&db).await;

    let lock = LogLock::take(&db).await;
    let mut client = Connect::new(&alice).header(&format!("{e}-2")).open(&app.base).await;
    // It reads the log, which is locked: the backlog waits (the window holds only 17..=20).
    db.until_waiting_for_a_lock("server-app", WAIT).await;
    lock.release().await;
    let seqs: Vec<i64> = client.take(north_between(2, 20).len(), WAIT).await.iter().map(seq_of).collect();
    assert_eq!(seqs, north_between(2, 20));
    write_alternating(&db, 2).await;
    assert_eq!(seq_of(&client.next_data(WAIT).await), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_of_resumes_through_a_tiny_pool_ends_no_stream_and_every_client_catches_up_exactly() {
    const CLIENTS: i64 = 60;
    const LOG: i64 = 120;
    let db = TestDb::new().await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    write_alternating(&db, LOG as usize).await;
    smartscheduler::relay::publish_all_pending(&db.pool, 1000).await.unwrap();
    // Four connections (one of them the hub's LISTEN, one a blocked catch-up read) that give up after 2 s:
    // the old design ended every stream whose backlog read found no connection in time. (Two are left for
    // the 60 connects' own reads, which are not queued, so that they find one even on a loaded machine.)
    let options = smartscheduler::db::connect_options(&db.url).unwrap().application_name("server-app");
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(options)
        .await
        .unwrap();
    let app = TestApp::spawn_pool(pool, |config| {
        // Every resume reads the log here: this test is about the queue, not the window.
        config.hub.window_events = 0;
        config.hub.catchup_reads = 1;
        // The log is published already; a relay would wait on the lock below with a connection of its own.
        config.run_relay = false;
        config.streams_per_dispatcher = CLIENTS as usize; // one dispatcher, many streams
    })
    .await;
    let e = epoch(&db).await;

    // The log is held while everyone resumes: reads pile up for longer than the pool's acquire timeout.
    let lock = LogLock::take(&db).await;
    let froms: Vec<i64> = (0..CLIENTS).map(|i| (i * 7) % LOG).collect();
    let positions: Vec<String> = froms.iter().map(|from| format!("{e}-{from}")).collect();
    let mut clients = join_all(positions.iter().map(|p| Connect::new(&alice).header(p).open(&app.base))).await;
    db.until_waiting_for_a_lock("server-app", WAIT).await;
    // Longer than the acquire timeout, so that reads waiting for a connection would have timed out.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    lock.release().await;

    let caught_up = join_all(clients.iter_mut().zip(&froms).map(|(client, from)| async move {
        let expected = north_between(*from, LOG);
        let seqs: Vec<i64> = client.take(expected.len(), WAIT).await.iter().map(seq_of).collect();
        assert_eq!(seqs, expected, "client resuming from {from}");
    }));
    caught_up.await;
    // No duplicate and no gap at the seam: the next event is the next one, once, for everyone.
    write_alternating(&db, 1).await;
    smartscheduler::relay::publish_all_pending(&db.pool, 1000).await.unwrap();
    for client in &mut clients {
        assert_eq!(seq_of(&client.next_data(WAIT).await), LOG + 1);
    }
}

//! Overlapping catch-up reads are shared: streams of the same groups resuming from nearby positions older
//! than the resume window cost one read of the log per page of seqs, not one per stream and page.
//!
//! A binary of its own, so that the process's metrics (which count the reads of the log) hold this test's
//! server only.

#[path = "api/app.rs"]
mod app;
#[path = "api/helpers.rs"]
mod helpers;

use app::*;
use futures::future::join_all;
use helpers::*;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
const CLIENTS: i64 = 40;
const LOG: i64 = 200;
const PAGE: i64 = 50;

/// The reads of the log this process made so far, from its `/metrics`.
async fn backlog_reads(app: &TestApp) -> f64 {
    let text = reqwest::get(format!("{}/metrics", app.base)).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("smartscheduler_sse_backlog_db_reads_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_resuming_from_nearby_positions_share_each_read_of_the_log() {
    let db = TestDb::new().await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    for i in 0..LOG {
        write_event(&db.pool, &["region:north"], json!({ "n": i })).await;
    }
    smartscheduler::relay::publish_all_pending(&db.pool, 1000).await.unwrap();
    let app = TestApp::spawn_with(&db, |config| {
        config.hub.window_events = 0; // every resume reads the log
        config.hub.page_size = PAGE;
        config.run_relay = false;
        config.streams_per_dispatcher = 10_000; // one dispatcher, many streams
    })
    .await;
    let epoch: String = sqlx::query_scalar("SELECT epoch FROM stream_meta").fetch_one(&db.pool).await.unwrap();
    let before = backlog_reads(&app).await;

    // Forty streams resuming from positions 0..100: together they need pages (0, 50], (50, 100], (100, 150]
    // and (150, 200] of the log, each of which one read serves for all of them.
    let froms: Vec<i64> = (0..CLIENTS).map(|i| (i * 5) % 100).collect();
    let positions: Vec<String> = froms.iter().map(|from| format!("{epoch}-{from}")).collect();
    let mut clients = join_all(positions.iter().map(|p| Connect::new(&alice).header(p).open(&app.base))).await;
    let caught_up = join_all(clients.iter_mut().zip(&froms).map(|(client, from)| async move {
        let want = (LOG - from) as usize;
        let seqs: Vec<i64> = client.take(want, WAIT).await.iter().map(seq_of).collect();
        assert_eq!(seqs, ((from + 1)..=LOG).collect::<Vec<_>>(), "client resuming from {from}");
    }));
    tokio::time::timeout(WAIT * 2, caught_up).await.expect("every client caught up");

    let reads = backlog_reads(&app).await - before;
    assert_eq!(reads, (LOG / PAGE) as f64, "one read per page of the log, shared by the {CLIENTS} streams");
}

//! A writer that knows nothing of this product: one plain SQL `INSERT INTO outbox` in its own transaction,
//! no NOTIFY, no doorbell. The contract says that is all it takes to publish; this checks it is also fast.

use crate::app::*;
use crate::helpers::*;
use smartscheduler::relay::RelayConfig;
use sqlx::{Connection, PgConnection};
use std::time::{Duration, Instant};

/// Events written one after another, each once the previous one reached the client.
const EVENTS: usize = 20;
/// The bound this test states: the median time from a plain SQL writer's COMMIT to the client's receipt.
/// A relay that only polls every 200 ms fails it by far: written right after the previous event went
/// out, each event waits for the whole poll interval (about 200 ms).
const MEDIAN_BOUND: Duration = Duration::from_millis(50);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_sql_insert_reaches_a_live_client_within_50_ms_median_without_any_wake_up() {
    let db = TestDb::new().await;
    // The relay settings users get, not the faster ones other tests use.
    let app = TestApp::spawn_with(&db, |config| config.relay = RelayConfig::default()).await;
    let token = dispatcher_token(&db, "uma", &["region:north"]).await;
    let mut client = Connect::new(&token).open(&app.base).await;
    // Its own connection, outside the server: nothing rings the server's doorbell or the wake channel.
    let mut writer = PgConnection::connect(&db.url).await.unwrap();

    let mut latencies = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        let mut tx = writer.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO outbox (event_type, aggregate_id, groups, payload)
             VALUES ('PlainSqlEvent', gen_random_uuid(), ARRAY['region:north'], jsonb_build_object('i', $1::int))",
        )
        .bind(i as i32)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let committed = Instant::now();
        let event = client.next_data(Duration::from_secs(5)).await;
        latencies.push(committed.elapsed());
        assert_eq!(event.event, "PlainSqlEvent");
        assert_eq!(data_json(&event)["i"], i, "events arrive in order, each once");
    }

    latencies.sort();
    let median = latencies[EVENTS / 2];
    assert!(
        median <= MEDIAN_BOUND,
        "median COMMIT → receipt {median:?} > {MEDIAN_BOUND:?} for a plain SQL writer (all, sorted: {latencies:?})"
    );
    app.stop().await;
}

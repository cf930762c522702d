//! The broker publisher: every committed event reaches JetStream once, in seq order, with JetStream's
//! sequence equal to the event's seq, across NATS outages, publishers killed between commit and ack, and
//! two publishers at once.

use crate::helpers::*;
use crate::nats::NatsServer;
use smartscheduler::broker::{self, Publisher, PublisherConfig, StepOutcome, wire};
use smartscheduler::position::Epoch;
use smartscheduler::relay;
use smartscheduler::supervisor::Progress;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn config() -> PublisherConfig {
    PublisherConfig { batch_size: 50, poll_interval: Duration::from_millis(20), ..PublisherConfig::default() }
}

async fn publisher(db: &TestDb, nats: &NatsServer) -> Publisher {
    let client = broker::connect(&[nats.url()]).await.expect("client");
    assert!(broker::wait_connected(&client, Duration::from_secs(5)).await, "connects to the test's nats-server");
    Publisher::new(db.pool.clone(), client, config())
}

/// Steps until JetStream holds the whole log (or panics after 20 s).
async fn drain(publisher: &Publisher) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match publisher.step().await {
            Ok(StepOutcome::UpToDate) => return,
            Ok(_) => {}
            Err(error) => {
                assert!(tokio::time::Instant::now() < deadline, "publisher never caught up: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("publisher never caught up");
        }
    }
}

/// What JetStream holds for the log's epoch: (stream sequence, decoded event) for every message, checked
/// against its headers.
async fn stream_contents(db: &TestDb, nats: &NatsServer) -> Vec<(u64, smartscheduler::event_log::EventRow)> {
    let epoch: Epoch = epoch(db).await.parse().unwrap();
    let client = async_nats::connect(nats.url()).await.expect("client");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(wire::stream_name(epoch)).await.expect("the epoch's stream exists");
    let state = stream.info().await.expect("info").state.clone();
    let mut out = Vec::new();
    for sequence in state.first_sequence..=state.last_sequence {
        if state.messages == 0 {
            break;
        }
        let Ok(message) = stream.get_raw_message(sequence).await else {
            continue; // purged (placeholders of expired events)
        };
        let row = wire::decode(&message.payload).expect("a body the publisher wrote");
        let headers = message.headers;
        assert_eq!(headers.get(wire::MSG_ID_HEADER).map(|v| v.as_str()), Some(wire::msg_id(epoch, row.seq).as_str()));
        assert_eq!(
            headers.get(wire::GROUPS_HEADER).map(|v| v.as_str().to_owned()),
            Some(wire::groups_header(&row.groups))
        );
        out.push((message.sequence, row));
    }
    out
}

/// JetStream holds exactly the log: same events, same order, stream sequence = seq.
async fn assert_stream_is_the_log(db: &TestDb, nats: &NatsServer) {
    let log = log_entries(&db.pool).await;
    let stream = stream_contents(db, nats).await;
    let in_stream: Vec<(i64, uuid::Uuid)> = stream.iter().map(|(_, row)| (row.seq, row.event_id)).collect();
    assert_eq!(in_stream, log, "JetStream holds every committed event once, in seq order");
    for (sequence, row) in &stream {
        assert_eq!(*sequence, row.seq as u64, "the JetStream sequence is the event's seq");
    }
}

#[tokio::test]
async fn every_committed_event_reaches_jetstream_once_in_seq_order_with_its_headers() {
    let db = TestDb::new().await;
    let nats = NatsServer::start().await;
    write_events(&db.pool, 120, &["region:north", "team:hvac"]).await;
    relay::publish_all_pending(&db.pool, 40).await.unwrap();
    let publisher = publisher(&db, &nats).await;
    drain(&publisher).await;
    assert_stream_is_the_log(&db, &nats).await;
    let cursor: i64 = sqlx::query_scalar("SELECT published_seq FROM broker_cursor").fetch_one(&db.pool).await.unwrap();
    assert_eq!(cursor, 120, "the cursor row says how far JetStream has acknowledged");
    let original = log_entries(&db.pool).await;
    let stored = stream_contents(&db, &nats).await;
    let row: smartscheduler::event_log::EventRow = sqlx::query_as(
        "SELECT seq, event_id, event_type, groups, payload::text AS payload, replay_of, occurred_at, published_at
         FROM event_log WHERE seq = 7",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(stored[6].1, row, "the message body is the event_log row");
    assert_eq!(original.len(), stored.len());
}

#[tokio::test]
async fn a_publisher_killed_between_the_ack_and_its_cursor_update_neither_loses_nor_repeats() {
    let db = TestDb::new().await;
    let nats = NatsServer::start().await;
    write_events(&db.pool, 30, &["region:north"]).await;
    relay::publish_all_pending(&db.pool, 100).await.unwrap();
    let publisher = publisher(&db, &nats).await;
    drain(&publisher).await;
    // As if the process died after JetStream acknowledged but before the cursor's transaction committed.
    sqlx::query("UPDATE broker_cursor SET published_seq = 10").execute(&db.pool).await.unwrap();
    write_events(&db.pool, 5, &["region:north"]).await;
    relay::publish_all_pending(&db.pool, 100).await.unwrap();
    let restarted = publisher_again(&db, &nats).await;
    drain(&restarted).await;
    assert_stream_is_the_log(&db, &nats).await;
}

async fn publisher_again(db: &TestDb, nats: &NatsServer) -> Publisher {
    publisher(db, nats).await
}

#[tokio::test]
async fn events_committed_while_nats_is_down_reach_it_when_it_returns_and_readiness_follows() {
    let db = TestDb::new().await;
    let mut nats = NatsServer::start().await;
    write_events(&db.pool, 10, &["region:north"]).await;
    relay::publish_all_pending(&db.pool, 100).await.unwrap();
    let publisher = publisher(&db, &nats).await;
    drain(&publisher).await;

    nats.kill();
    write_events(&db.pool, 25, &["region:north"]).await;
    relay::publish_all_pending(&db.pool, 100).await.unwrap();
    let client_down = wait_for(|| async { publisher.step().await.is_err() }).await;
    assert!(client_down, "a publisher cut off from NATS fails its steps (so the `broker` task stalls)");

    nats.restart().await;
    drain(&publisher).await;
    assert_stream_is_the_log(&db, &nats).await;
}

/// Polls `check` for up to 10 s; true once it held.
async fn wait_for<F, Fut>(check: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn two_publishers_at_once_publish_each_event_once() {
    let db = TestDb::new().await;
    let nats = NatsServer::start().await;
    let (first, second) = (publisher(&db, &nats).await, publisher(&db, &nats).await);
    let shutdown = CancellationToken::new();
    let a = tokio::spawn(first.clone().run(shutdown.clone(), Progress::detached("broker")));
    let b = tokio::spawn(second.clone().run(shutdown.clone(), Progress::detached("broker")));
    for _ in 0..20 {
        write_events(&db.pool, 10, &["region:south"]).await;
        relay::publish_all_pending(&db.pool, 7).await.unwrap();
        (first.waker())();
        (second.waker())();
    }
    let caught_up = wait_for(|| async {
        sqlx::query_scalar::<_, i64>("SELECT published_seq FROM broker_cursor").fetch_optional(&db.pool).await.unwrap()
            == Some(200)
    })
    .await;
    shutdown.cancel();
    let _ = tokio::join!(a, b);
    assert!(caught_up, "the cursor reached the log's end");
    assert_stream_is_the_log(&db, &nats).await;
}

#[tokio::test]
async fn a_broker_added_to_a_log_whose_start_expired_starts_its_stream_at_the_first_retained_seq() {
    let db = TestDb::new().await;
    let nats = NatsServer::start().await;
    write_events(&db.pool, 12, &["region:east"]).await;
    relay::publish_all_pending(&db.pool, 100).await.unwrap();
    expire_through(&db, 4).await;
    let publisher = publisher(&db, &nats).await;
    drain(&publisher).await;
    assert_stream_is_the_log(&db, &nats).await;
    assert_eq!(stream_contents(&db, &nats).await.first().map(|(s, _)| *s), Some(5));
}

#[tokio::test]
async fn a_broker_away_longer_than_retention_goes_on_after_the_expired_events_with_aligned_seqs() {
    let db = TestDb::new().await;
    let nats = NatsServer::start().await;
    write_events(&db.pool, 12, &["region:east"]).await;
    relay::publish_all_pending(&db.pool, 100).await.unwrap();
    let publisher = publisher(&db, &nats).await;
    drain(&publisher).await;
    write_events(&db.pool, 8, &["region:east"]).await; // 13..=20 expire before they reach JetStream
    relay::publish_all_pending(&db.pool, 100).await.unwrap();
    expire_through(&db, 20).await;
    write_events(&db.pool, 5, &["region:east"]).await;
    relay::publish_all_pending(&db.pool, 100).await.unwrap();
    drain(&publisher).await;
    let seqs: Vec<(u64, i64)> = stream_contents(&db, &nats).await.iter().map(|(s, row)| (*s, row.seq)).collect();
    // 1..=12 expired from the log as well: the stream, like the log, holds only what is retained.
    let expected: Vec<(u64, i64)> = (21..=25).map(|s| (s as u64, s)).collect();
    assert_eq!(seqs, expected, "the stream goes on at 21 with its sequences still the events' seqs");
}

/// What retention does to the oldest events (without waiting a day for a partition to age out).
async fn expire_through(db: &TestDb, seq: i64) {
    sqlx::query("DELETE FROM event_log WHERE seq <= $1").bind(seq).execute(&db.pool).await.unwrap();
    sqlx::query("UPDATE stream_meta SET expired_through_seq = $1").bind(seq).execute(&db.pool).await.unwrap();
}

#[tokio::test]
async fn serve_with_a_broker_publishes_what_its_relay_commits_and_is_not_ready_while_nats_is_away() {
    let db = TestDb::new().await;
    let mut nats = NatsServer::start().await;
    let url = nats.url();
    let app = crate::app::TestApp::spawn_with(&db, move |c| {
        let publisher = PublisherConfig { stall_after: Duration::from_millis(600), ..config() };
        c.broker = Some(broker::BrokerConfig { urls: vec![url], publisher });
    })
    .await;
    crate::faults::until_ready(&app, true).await;
    write_events(&db.pool, 20, &["region:north"]).await;
    assert!(wait_for(|| cursor_at(&db, 20)).await, "the server's publisher reached JetStream");

    nats.kill();
    let body = crate::faults::until_ready(&app, false).await;
    let stalled = body["stalled"].as_array().expect("stalled tasks").clone();
    assert!(stalled.contains(&serde_json::json!("broker-publisher")), "readyz names the publisher: {body}");
    write_events(&db.pool, 15, &["region:north"]).await; // committed while NATS is away

    nats.restart().await;
    crate::faults::until_ready(&app, true).await;
    assert!(wait_for(|| cursor_at(&db, 35)).await, "what committed meanwhile reached JetStream");
    assert_stream_is_the_log(&db, &nats).await;
}

async fn cursor_at(db: &TestDb, seq: i64) -> bool {
    sqlx::query_scalar::<_, i64>("SELECT published_seq FROM broker_cursor").fetch_optional(&db.pool).await.unwrap()
        == Some(seq)
}

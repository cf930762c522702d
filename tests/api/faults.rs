//! Faults that once lost events silently: a stream opened during a membership refresh, a row the relay
//! could not publish, a database clock that steps back, an empty group list. Each test is the input that
//! showed the fault.

use crate::app::*;
use crate::helpers::*;
use futures::FutureExt;
use serde_json::json;
use smartscheduler::stream::MembershipSource;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(10);

/// Told when a held read begins; the read waits for the release.
type Hold = (oneshot::Sender<()>, oneshot::Receiver<()>);

/// A membership source that holds its next read at a chosen moment: it reports that the read began, and
/// queries only when released.
#[derive(Clone, Default)]
struct HeldMembershipRead {
    armed: Arc<Mutex<Option<Hold>>>,
}

impl HeldMembershipRead {
    /// Arms the hold: returns (began, release).
    fn arm(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (began_tx, began_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        *self.armed.lock().unwrap() = Some((began_tx, release_rx));
        (began_rx, release_tx)
    }

    fn source(&self) -> MembershipSource {
        let armed = self.armed.clone();
        MembershipSource(Arc::new(move |pool, ids| {
            let hold = armed.lock().unwrap().take();
            async move {
                if let Some((began, release)) = hold {
                    let _ = began.send(());
                    let _ = release.await;
                }
                smartscheduler::auth::current_access(&pool, &ids).await
            }
            .boxed()
        }))
    }
}

#[tokio::test]
async fn a_stream_opened_while_a_membership_read_is_in_flight_keeps_its_groups() {
    let db = TestDb::new().await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let bob = dispatcher_token(&db, "bob", &["region:south"]).await;
    let held = HeldMembershipRead::default();
    let source = held.source();
    let app = TestApp::spawn_with(&db, |c| c.hub.membership_source = Some(source)).await;
    let _alice_stream = Connect::new(&alice).open(&app.base).await; // so that refreshes have someone to ask about

    // A refresh begins (it asks about alice only), and bob's stream opens while it is in flight.
    let (began, release) = held.arm();
    began.await.expect("a membership refresh began");
    let mut bob_stream = Connect::new(&bob).open(&app.base).await;
    let opening = bob_stream.next(WAIT).await;
    assert!(opening.id.ends_with("-0"), "bob starts at the empty log: {opening:?}");
    release.send(()).expect("the refresh is waiting");

    // Let that refresh finish and one more run, then publish for bob's group.
    let (began_again, release_again) = held.arm();
    began_again.await.expect("the next refresh began, so the held one was applied");
    release_again.send(()).unwrap();
    write_event(&db.pool, &["region:south"], json!({"for": "bob"})).await;
    let event = bob_stream.next_data(WAIT).await;
    assert_eq!(data_json(&event)["for"], "bob", "bob's stream lost its groups to a read that did not know it");
    assert_eq!(seq_of(&event), 1);
}

#[tokio::test]
async fn a_stream_whose_dispatcher_loses_every_group_ends_with_a_reason_and_never_moves_past_events() {
    let db = TestDb::new().await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let app = TestApp::spawn(&db).await;
    let mut stream = Connect::new(&alice).open(&app.base).await;
    write_event(&db.pool, &["region:north"], json!({"n": 1})).await;
    let first = stream.next_data(WAIT).await;
    assert_eq!(seq_of(&first), 1);

    smartscheduler::auth::set_groups(&db.pool, "alice", &[], &["region:north".to_owned()]).await.unwrap();
    let mut last_id = first.id.clone();
    let revoked = loop {
        let event = stream.next(WAIT).await;
        if event.event == "access-revoked" {
            break event;
        }
        if !event.id.is_empty() {
            last_id = event.id.clone();
        }
    };
    assert_eq!(data_json(&revoked)["reason"], "no_groups");
    assert!(last_id.ends_with("-1"), "the position moved without events to check: {last_id}");
    assert_eq!(data_json(&revoked)["position"], last_id.as_str(), "access-revoked names what the client has");
    assert!(stream.ends_within(WAIT).await, "the stream ends after access-revoked");

    let refused = Connect::new(&alice).send(&app.base).await;
    assert_eq!(refused.status(), 403);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
}

#[tokio::test]
async fn an_empty_or_blank_group_list_is_refused_in_the_error_shape() {
    let db = TestDb::new().await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let app = TestApp::spawn(&db).await;
    for groups in ["", ",", ",,,", "%20", "region:north,"] {
        let response =
            http().get(app.url(&format!("/api/events?groups={groups}"))).bearer_auth(&alice).send().await.unwrap();
        assert_eq!(response.status(), 400, "groups={groups}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_groups", "groups={groups}");
    }
}

#[tokio::test]
async fn the_outbox_refuses_rows_that_cannot_be_sent() {
    let db = TestDb::new().await;
    let insert = |created_at: &'static str| {
        sqlx::query(
            "INSERT INTO outbox (event_type, aggregate_id, groups, payload, created_at)
             VALUES ('TestEvent', gen_random_uuid(), '{region:north}', '{\"n\":2}', $1::timestamptz)",
        )
        .bind(created_at)
        .execute(&db.pool)
    };
    for bad in ["infinity", "-infinity", "10000-01-01 00:00:00+00"] {
        let error = insert(bad).await.expect_err(bad);
        assert_eq!(error.as_database_error().and_then(|e| e.code()).as_deref(), Some("23514"), "{bad}");
    }
    insert("2026-01-01 00:00:00+00").await.expect("a normal instant is accepted");

    // 2 MB of JSON that PostgreSQL stores compressed in a few KB: the limit is what goes on the wire.
    let error = sqlx::query(
        "INSERT INTO outbox (event_type, aggregate_id, groups, payload)
         SELECT 'TestEvent', gen_random_uuid(), '{region:north}', jsonb_build_object('text', repeat('abcd', 500000))",
    )
    .execute(&db.pool)
    .await
    .expect_err("a 2 MB payload is refused");
    assert_eq!(error.as_database_error().and_then(|e| e.code()).as_deref(), Some("23514"));
    sqlx::raw_sql("CREATE TABLE scratch AS SELECT jsonb_build_object('text', repeat('abcd', 500000)) AS j")
        .execute(&db.pool)
        .await
        .unwrap();
    let stored: i32 = sqlx::query_scalar("SELECT pg_column_size(j) FROM scratch").fetch_one(&db.pool).await.unwrap();
    assert!(stored < 65536, "the input is one that a stored-size check lets through ({stored} bytes stored)");
}

#[tokio::test]
async fn a_row_the_relay_cannot_publish_is_parked_and_the_rows_after_it_flow() {
    let db = TestDb::new().await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    // A DBA dropped the outbox's check: the relay is then the last line.
    sqlx::query("ALTER TABLE outbox DROP CONSTRAINT outbox_created_at_sendable").execute(&db.pool).await.unwrap();
    let app = TestApp::spawn(&db).await;
    let mut stream = Connect::new(&alice).open(&app.base).await;

    write_event(&db.pool, &["region:north"], json!({"n": 1})).await;
    sqlx::query(
        "INSERT INTO outbox (event_type, aggregate_id, groups, payload, created_at)
         VALUES ('TestEvent', gen_random_uuid(), '{region:north}', '{\"n\":2}', 'infinity')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    write_event(&db.pool, &["region:north"], json!({"n": 3})).await;

    let events = tokio::time::timeout(WAIT, stream.take(2, WAIT)).await.expect("the events around the bad row arrive");
    let received: Vec<i64> = events.iter().map(|e| data_json(e)["n"].as_i64().unwrap()).collect();
    assert_eq!(received, vec![1, 3], "the events around the bad row are delivered");
    let (parked, error): (i64, String) =
        sqlx::query_as("SELECT count(*), string_agg(error, '; ') FROM outbox_dead_letter")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(parked, 1);
    assert!(error.contains("event_log_occurred_at_sendable"), "the error names the check: {error}");
    assert_dense(&log_entries(&db.pool).await);

    let metrics = http().get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("smartscheduler_outbox_dead_letters 1"), "{metrics}");
    let status = smartscheduler::ops::status::gather(&db.pool).await.unwrap();
    assert_eq!(status.dead_letters, 1);
    assert!(!status.healthy && status.reasons.iter().any(|r| r.contains("outbox_dead_letter")), "{:?}", status.reasons);
    let ready = http().get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "the relay keeps making progress: {:?}", ready.text().await);
}

#[tokio::test]
async fn a_relay_that_makes_no_progress_makes_the_process_not_ready_and_says_which() {
    let db = TestDb::new().await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let app = TestApp::spawn_with(&db, |c| c.relay.stall_after = Duration::from_millis(500)).await;
    let mut stream = Connect::new(&alice).open(&app.base).await;
    until_ready(&app, true).await;

    // Hold the fence: the relay's publish step waits on it and makes no progress.
    let mut fence = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM stream_meta FOR UPDATE").execute(&mut *fence).await.unwrap();
    write_event(&db.pool, &["region:north"], json!({"n": 1})).await;
    let body = until_ready(&app, false).await;
    assert_eq!(body["stalled"], json!(["relay"]), "{body}");

    fence.rollback().await.unwrap();
    assert_eq!(data_json(&stream.next_data(WAIT).await)["n"], 1);
    until_ready(&app, true).await;
}

/// Polls `/readyz` until it says `ready` (there is no event for readiness), and returns its body.
pub async fn until_ready(app: &TestApp, ready: bool) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let response = http().get(app.url("/readyz")).send().await.unwrap();
        let is_ready = response.status() == 200;
        let body: serde_json::Value = response.json().await.unwrap();
        if is_ready == ready {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "readyz never became {ready}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes what is in the outbox the way `ss_publish_batch` does, but stamped `published_at` 10 s before
/// the database's clock: what a publish looks like after the clock stepped back.
async fn publish_by_hand_ten_seconds_early(db: &TestDb) {
    sqlx::raw_sql(
        "BEGIN;
         SELECT 1 FROM stream_meta WHERE stream = 'main' FOR UPDATE;
         WITH moved AS (DELETE FROM outbox RETURNING *),
         numbered AS (
             SELECT moved.*, (SELECT last_seq FROM stream_meta) + row_number() OVER (ORDER BY id) AS seq FROM moved
         ),
         logged AS (
             INSERT INTO event_log (seq, event_id, event_type, aggregate_id, groups, payload, replay_of, occurred_at, published_at)
             SELECT seq, event_id, event_type, aggregate_id, groups, payload, replay_of, created_at,
                    clock_timestamp() - interval '10 seconds'
             FROM numbered RETURNING seq, groups, published_at
         ),
         indexed AS (
             INSERT INTO event_log_groups (group_key, seq, published_at)
             SELECT g, l.seq, l.published_at FROM logged l, unnest(l.groups) g
         )
         UPDATE stream_meta SET last_seq = last_seq + (SELECT count(*) FROM logged),
                                last_published_at = clock_timestamp() - interval '10 seconds';
         SELECT pg_notify('ss_events', epoch || '-' || last_seq) FROM stream_meta;
         COMMIT;",
    )
    .execute(&db.pool)
    .await
    .expect("publish by hand");
}

#[tokio::test]
async fn a_batch_stamped_before_the_previous_one_still_reaches_live_streams() {
    let db = TestDb::new().await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let app = TestApp::spawn_with(&db, |c| c.run_relay = false).await;
    let mut stream = Connect::new(&alice).open(&app.base).await;

    write_event(&db.pool, &["region:north"], json!({"n": 1})).await;
    smartscheduler::relay::publish_all_pending(&db.pool, 100).await.unwrap();
    assert_eq!(seq_of(&stream.next_data(WAIT).await), 1);

    write_event(&db.pool, &["region:north"], json!({"n": 2})).await;
    publish_by_hand_ten_seconds_early(&db).await;
    write_event(&db.pool, &["region:north"], json!({"n": 3})).await;
    smartscheduler::relay::publish_all_pending(&db.pool, 100).await.unwrap();

    // Heartbeats keep the stream busy: bound the whole wait, not each read.
    let events = tokio::time::timeout(WAIT, stream.take(2, WAIT)).await.expect("seq 2 and 3 arrive in time");
    let seqs: Vec<i64> = events.iter().map(seq_of).collect();
    assert_eq!(seqs, vec![2, 3], "the live stream skipped the batch stamped earlier");

    // And the publish step itself never stamps a batch before the previous one.
    let stamps: Vec<(i64, bool)> = sqlx::query_as(
        "SELECT seq, published_at >= lag(published_at, 1, '-infinity') OVER (ORDER BY seq) FROM event_log ORDER BY seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(stamps.last(), Some(&(3, true)), "seq 3 was stamped before seq 2: {stamps:?}");
}

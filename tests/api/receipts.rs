//! Delivery receipts: a console's report of how far it applied the log, "seen by" for a job's latest set,
//! the live `event: receipt` hints, and what a report may and may not change.

use crate::app::*;
use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use smartscheduler::recommendations::seed::demo_uuid;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

async fn report(app: &TestApp, token: &str, position: &str) -> StatusCode {
    let body = json!({ "position": position });
    http().post(app.url("/api/receipts")).bearer_auth(token).json(&body).send().await.unwrap().status()
}

async fn receipts(app: &TestApp, token: &str, job: &str) -> Value {
    let response = http().get(app.url(&format!("/api/jobs/{job}/receipts"))).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

fn seen_at<'a>(receipts: &'a Value, dispatcher: &str) -> &'a Value {
    let members = receipts["dispatchers"].as_array().expect("dispatchers");
    &members.iter().find(|d| d["dispatcherId"] == dispatcher).unwrap_or_else(|| panic!("{dispatcher} listed"))["seenAt"]
}

/// Generates a set for `job` and waits on `stream` for its RecommendationReady: (set id, event position).
async fn generate(app: &TestApp, token: &str, job: &str, stream: &mut SseClient) -> (String, String) {
    let response = http()
        .post(app.url(&format!("/api/jobs/{job}/recommendations")))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let set: Value = response.json().await.unwrap();
    let set_id = set["recommendationSetId"].as_str().unwrap().to_owned();
    let found = async {
        loop {
            let event = stream.next_data(WAIT).await;
            if event.event == "RecommendationReady" && data_json(&event)["summary"]["recommendationSetId"] == set_id {
                return event.id;
            }
        }
    };
    let position = tokio::time::timeout(WAIT, found).await.expect("the set's event arrives");
    (set_id, position)
}

/// The next `event: receipt` on `stream` (skipping other events).
async fn next_receipt(stream: &mut SseClient) -> Value {
    data_json(&stream.next_named("receipt", WAIT).await)
}

fn seq(position: &str) -> i64 {
    position.rsplit_once('-').and_then(|(_, s)| s.parse().ok()).expect("a position")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seen_by_names_the_members_whose_consoles_applied_the_latest_set_and_updates_open_streams() {
    let (db, app) = seeded_app().await;
    let (alice, carol, dana) =
        (hour_token(&db, "alice").await, hour_token(&db, "carol").await, hour_token(&db, "dana").await);
    let job = demo_uuid("north/job/0").to_string();
    let mut supervisor = Connect::new(&dana).open(&app.base).await;
    write_events(&db.pool, 1, &["region:north"]).await; // something before the set to have applied
    supervisor.next_data(WAIT).await;
    let (set_id, position) = generate(&app, &alice, &job, &mut supervisor).await;
    let epoch = position.split_once('-').unwrap().0.to_owned();

    let before = receipts(&app, &dana, &job).await;
    assert_eq!(before["recommendationSetId"], set_id);
    assert_eq!(before["position"], position);
    assert_eq!(before["group"], "region:north");
    let members: Vec<&str> =
        before["dispatchers"].as_array().unwrap().iter().map(|d| d["dispatcherId"].as_str().unwrap()).collect();
    assert_eq!(members, ["alice", "carol", "dana"], "the group's members, by name");
    assert_eq!((before["seenCount"].as_u64(), before["total"].as_u64()), (Some(0), Some(3)));

    // A console that has applied everything before the set has not seen it.
    let just_before = format!("{epoch}-{}", seq(&position) - 1);
    assert_eq!(report(&app, &alice, &just_before).await, StatusCode::NO_CONTENT);
    let hint = next_receipt(&mut supervisor).await;
    assert_eq!(hint["dispatcherId"], "alice");
    assert_eq!(hint["position"], just_before);
    assert!(seen_at(&receipts(&app, &dana, &job).await, "alice").is_null());

    assert_eq!(report(&app, &alice, &position).await, StatusCode::NO_CONTENT);
    let hint = next_receipt(&mut supervisor).await;
    assert_eq!((hint["dispatcherId"].as_str(), hint["position"].as_str()), (Some("alice"), Some(position.as_str())));
    let after = receipts(&app, &dana, &job).await;
    assert_eq!(seen_at(&after, "alice"), &hint["seenAt"], "the hint carries the stored time");
    assert!(seen_at(&after, "alice").as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(after["seenCount"], 1);

    // Another tab of alice's at the same position (or behind it) writes nothing and announces nothing.
    assert_eq!(report(&app, &alice, &position).await, StatusCode::NO_CONTENT);
    assert_eq!(report(&app, &alice, &just_before).await, StatusCode::NO_CONTENT);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM console_receipts WHERE dispatcher_id = 'alice'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 2, "one row per report that moved alice further");
    assert_eq!(seen_at(&receipts(&app, &dana, &job).await, "alice"), &hint["seenAt"], "first seen stays first");

    // A position beyond the log's head is clamped to it; one of another epoch changes nothing.
    assert_eq!(report(&app, &carol, &format!("{epoch}-{}", seq(&position) + 1_000_000)).await, StatusCode::NO_CONTENT);
    let hint = next_receipt(&mut supervisor).await;
    assert_eq!(hint["dispatcherId"], "carol");
    let head: i64 = sqlx::query_scalar("SELECT last_seq FROM stream_meta").fetch_one(&db.pool).await.unwrap();
    assert_eq!(hint["position"], format!("{epoch}-{head}"));
    let other_epoch = if epoch == "00000000" { "00000001" } else { "00000000" };
    assert_eq!(report(&app, &dana, &format!("{other_epoch}-{}", head + 5)).await, StatusCode::NO_CONTENT);
    let now = receipts(&app, &dana, &job).await;
    assert!(seen_at(&now, "dana").is_null(), "a report of another epoch is no receipt");
    assert_eq!(now["seenCount"], 2);

    // A new set is news again: nobody has seen it yet.
    let (newer, newer_position) = generate(&app, &alice, &job, &mut supervisor).await;
    let fresh = receipts(&app, &dana, &job).await;
    assert_eq!(
        (fresh["recommendationSetId"].as_str(), fresh["position"].as_str()),
        (Some(newer.as_str()), Some(newer_position.as_str()))
    );
    assert_eq!(fresh["seenCount"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_reaches_only_streams_of_the_reporters_regions_and_moves_no_position() {
    let (db, app) = seeded_app().await;
    let (alice, bob) = (hour_token(&db, "alice").await, hour_token(&db, "bob").await);
    let mut north = Connect::new(&alice).open(&app.base).await;
    let mut south = Connect::new(&bob).open(&app.base).await;
    let opening = north.next(WAIT).await.id; // the `id:` of the log's current position
    write_events(&db.pool, 1, &["region:south"]).await;
    let published = south.next_data(WAIT).await.id;
    let (epoch, head) = (published.split_once('-').unwrap().0.to_owned(), seq(&published));
    assert_eq!(report(&app, &bob, &format!("{epoch}-{head}")).await, StatusCode::NO_CONTENT);
    let hint = next_receipt(&mut south).await;
    assert_eq!(hint["dispatcherId"], "bob");
    // Bob is not in north: alice's stream gets only her own hint, which carries no `id:` (the parser keeps
    // the last id it saw, so the event's id is still the opening one).
    assert_eq!(report(&app, &alice, &format!("{epoch}-{head}")).await, StatusCode::NO_CONTENT);
    let event = north.next_named("receipt", WAIT).await;
    assert_eq!(data_json(&event)["dispatcherId"], "alice", "bob's hint did not reach north");
    assert_eq!(event.id, opening, "a receipt moves no stream position");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_reconnects_tells_open_streams_their_receipts_may_be_stale() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let mut client = Connect::new(&alice).open(&app.base).await;
    assert!(db.terminate("server-app").await >= 1, "expected to kill the server's connections");
    assert_eq!(next_receipt(&mut client).await, json!({ "stale": true }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_receipt_is_refused_in_the_contracts_shape_and_stores_nothing() {
    let (db, app) = seeded_app().await;
    let alice = hour_token(&db, "alice").await;
    let send = |body: &'static str, content_type: &'static str| {
        http().post(app.url("/api/receipts")).bearer_auth(&alice).header("content-type", content_type).body(body).send()
    };
    for (body, code) in [
        (r#"{"position": "nope"}"#, "bad_position"),
        (r#"{"position": "0a0b0c0d--1"}"#, "bad_position"),
        (r#"{"position": "0a0b0c0d-99999999999999999999"}"#, "bad_position"),
        (r#"{"position": "0a0b0c0d-1\u0000"}"#, "bad_position"),
        (r#"{"position": 5}"#, "invalid_json"),
        (r#"{"position": "0a0b0c0d-1", "extra": 1}"#, "invalid_json"),
        ("not json", "invalid_json"),
    ] {
        let response = send(body, "application/json").await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{body}");
    }
    let anonymous =
        http().post(app.url("/api/receipts")).json(&json!({"position": "0a0b0c0d-1"})).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM console_receipts").fetch_one(&db.pool).await.unwrap();
    assert_eq!(rows, 0);

    // What `navigator.sendBeacon` sends (a text/plain string) is a receipt like any other.
    let current = format!("{}-1", epoch(&db).await);
    let beacon = http()
        .post(app.url("/api/receipts"))
        .bearer_auth(&alice)
        .header("content-type", "text/plain;charset=UTF-8")
        .body(json!({ "position": current }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(beacon.status(), StatusCode::NO_CONTENT);

    let south = demo_uuid("south/job/0");
    let refused = http().get(app.url(&format!("/api/jobs/{south}/receipts"))).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let unknown = uuid::Uuid::new_v4();
    let missing =
        http().get(app.url(&format!("/api/jobs/{unknown}/receipts"))).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_each_dispatchers_latest_receipt_and_those_not_expired() {
    // No server: its own retention pass at start-up would prune these rows first.
    let db = TestDb::new().await;
    smartscheduler::recommendations::seed::seed_demo(&db.pool).await.unwrap();
    let epoch = epoch(&db).await;
    sqlx::query(
        "INSERT INTO console_receipts (dispatcher_id, epoch, seq) VALUES
           ('alice', $1, 1), ('alice', $1, 5), ('alice', $1, 9), ('carol', $1, 2), ('dana', 'ffffffff', 3)",
    )
    .bind(&epoch)
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(smartscheduler::receipts::prune(&db.pool, 5).await.unwrap(), 3);
    let left: Vec<(String, i64)> = sqlx::query_as("SELECT dispatcher_id, seq FROM console_receipts ORDER BY 1, 2")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, [("alice".to_owned(), 9), ("carol".to_owned(), 2)]);
}

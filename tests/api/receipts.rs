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
    let db = TestDb::new().await;
    smartscheduler::recommendations::seed::seed_demo(&db.pool).await.expect("seed");
    // Reports stored at once: a heartbeat's `id:` (every second here) would move the parser's last id while
    // alice's report waited for its batch.
    let app = TestApp::spawn_with(&db, |c| c.receipts.flush_interval = Duration::ZERO).await;
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

/// Moves the log's head to `seq` without events (reports are clamped to the head; these tests need room
/// above it and no events), and returns the log's epoch.
async fn set_head(db: &TestDb, seq: i64) -> String {
    sqlx::query_scalar("UPDATE stream_meta SET last_seq = $1 RETURNING epoch")
        .bind(seq)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Adds `n` north dispatchers `d0..` and returns their tokens.
async fn north_dispatchers(db: &TestDb, n: usize) -> Vec<String> {
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        tokens.push(dispatcher_token(db, &format!("d{i}"), &["region:north"]).await);
    }
    tokens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reports_of_many_consoles_are_stored_in_a_few_transactions_not_one_each() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let tokens = north_dispatchers(&db, 60).await;
    let head = 3;
    let epoch = set_head(&db, head).await;
    // The first report is stored at once (nothing was stored within the interval); the rest arrive while
    // the batcher waits out its interval, and go in together.
    assert_eq!(report(&app, &tokens[0], &format!("{epoch}-{head}")).await, StatusCode::NO_CONTENT);
    let position = format!("{epoch}-{head}");
    let statuses = futures::future::join_all(tokens[1..].iter().map(|t| report(&app, t, &position))).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::NO_CONTENT), "{statuses:?}");

    let (rows, transactions): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT xmin::text) FROM console_receipts WHERE seq = $1")
            .bind(head)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows, 60, "every console's report is stored before its 204");
    assert!(transactions <= 4, "60 reports in {transactions} transactions: they are not batched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_row_in_a_batch_fails_alone_and_the_others_are_stored() {
    use smartscheduler::position::Position;
    use smartscheduler::receipts::{BatchConfig, ReceiptBatcher, RecordError};
    let db = TestDb::new().await;
    north_dispatchers(&db, 20).await;
    let epoch = set_head(&db, 1).await;
    let position: Position = format!("{epoch}-1").parse().unwrap();
    let supervisor = smartscheduler::supervisor::Supervisor::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = BatchConfig { flush_interval: Duration::from_millis(300), ..BatchConfig::default() };
    let (batcher, _task) = ReceiptBatcher::start(db.pool.clone(), config, None, &supervisor, shutdown.clone());
    batcher.record("d0", None, position).await.expect("the first report is stored");

    // The database refuses d7's row (a trigger stands for any bad row); a dispatcher deleted since sign-in
    // ("ghost") is refused on its own.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_d7() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.dispatcher_id = 'd7' THEN RAISE EXCEPTION 'd7 is refused'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER refuse_d7 BEFORE INSERT ON console_receipts FOR EACH ROW EXECUTE FUNCTION refuse_d7();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let ids: Vec<String> = (1..20).map(|i| format!("d{i}")).chain(["ghost".to_owned()]).collect();
    let results = futures::future::join_all(ids.iter().map(|id| batcher.record(id, None, position))).await;
    for (id, result) in ids.iter().zip(&results) {
        match id.as_str() {
            "d7" => assert!(matches!(result, Err(RecordError::Database(_))), "{id}: {result:?}"),
            "ghost" => assert!(matches!(result, Err(RecordError::UnknownDispatcher)), "{id}: {result:?}"),
            _ => assert!(result.is_ok(), "{id}: {result:?}"),
        }
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM console_receipts").fetch_one(&db.pool).await.unwrap();
    assert_eq!(stored, 19, "d0 to d19 but d7");
    assert!(supervisor.all_healthy(), "a bad row does not stall the batcher: {:?}", supervisor.report());
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_batches_keep_each_dispatchers_receipts_rising() {
    // Two servers batch at once for the same dispatchers, each with positions the other has passed: the
    // receipts' lock keeps every dispatcher's rows a step function (seq rises with each row) and no batch
    // deadlocks on the other.
    let db = TestDb::new().await;
    let (a, b) = (TestApp::spawn(&db).await, TestApp::spawn(&db).await);
    let tokens = north_dispatchers(&db, 30).await;
    let head = 40;
    let epoch = set_head(&db, head).await;
    let mut sends = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        for k in 0..4_i64 {
            let (app, seq) = if (i as i64 + k) % 2 == 0 { (&a, head - 10 + k) } else { (&b, head - 5 - k) };
            sends.push((app, token, format!("{epoch}-{seq}")));
        }
    }
    let statuses =
        futures::future::join_all(sends.iter().map(|(app, token, position)| report(app, token, position))).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::NO_CONTENT));
    let out_of_order: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT seq, reached_at, lag(seq) OVER w AS prev_seq, lag(reached_at) OVER w AS prev_at
                               FROM console_receipts WINDOW w AS (PARTITION BY dispatcher_id ORDER BY xmin::text::bigint, seq)) r
         WHERE r.seq <= r.prev_seq OR r.reached_at < r.prev_at",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(out_of_order, 0, "a dispatcher's rows rise in the order they were written");
    let reached: i64 = sqlx::query_scalar("SELECT count(DISTINCT dispatcher_id) FROM console_receipts")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(reached, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_is_refused_like_any_request_when_its_token_is_revoked_or_its_dispatcher_disabled() {
    // The access check moved from the request into the batch: it must still refuse what every request does.
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let tokens = north_dispatchers(&db, 3).await;
    let epoch = set_head(&db, 5).await;
    let position = format!("{epoch}-5");
    smartscheduler::auth::revoke_tokens(&db.pool, "d1").await.unwrap();
    smartscheduler::auth::disable_dispatcher(&db.pool, "d2").await.unwrap();
    let fresh_d1 = hour_token(&db, "d1").await;
    let send = |token: String| {
        let (app, position) = (&app, position.clone());
        async move {
            let body = json!({ "position": position });
            let response = http().post(app.url("/api/receipts")).bearer_auth(token).json(&body).send().await.unwrap();
            let status = response.status();
            let code = response.json::<Value>().await.ok().map(|e| e["error"]["code"].clone());
            (status, code)
        }
    };
    let answers = futures::future::join_all(
        [tokens[0].clone(), tokens[1].clone(), tokens[2].clone(), fresh_d1].into_iter().map(send),
    )
    .await;
    assert_eq!(answers[0].0, StatusCode::NO_CONTENT);
    assert_eq!((answers[1].0, answers[1].1.clone()), (StatusCode::UNAUTHORIZED, Some(json!("token_revoked"))));
    assert_eq!((answers[2].0, answers[2].1.clone()), (StatusCode::FORBIDDEN, Some(json!("dispatcher_disabled"))));
    assert_eq!(answers[3].0, StatusCode::NO_CONTENT, "d1's new token (another tab of d1) is honoured");
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT dispatcher_id FROM console_receipts ORDER BY 1").fetch_all(&db.pool).await.unwrap();
    assert_eq!(stored, ["d0", "d1"]);
}

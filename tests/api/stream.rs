//! The event stream as a browser sees it: targeting, resume, seam, resets, membership, expiry, slow
//! clients, lost LISTEN connections, restarts and moving between servers.

use crate::app::*;
use crate::helpers::*;
use futures::StreamExt;
use serde_json::json;
use smartscheduler::auth;
use std::collections::HashSet;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// A server over a log of `n` published region:north events, alice (region:north) and the log's epoch.
async fn north_log_of(n: usize) -> (TestDb, TestApp, String, String) {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    write_events(&db.pool, n, &["region:north"]).await;
    smartscheduler::relay::publish_all_pending(&db.pool, 100).await.unwrap();
    let e = epoch(&db).await;
    (db, app, alice, e)
}

/// Writes `n` events for `group`, each in its own transaction, payload {"n": i}.
async fn write_numbered(db: &TestDb, group: &str, range: std::ops::Range<usize>) {
    for i in range {
        write_event(&db.pool, &[group], json!({ "n": i })).await;
    }
}

#[tokio::test]
async fn events_reach_only_their_groups_and_foreign_groups_are_forbidden() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let bob = dispatcher_token(&db, "bob", &["region:south"]).await;

    let refused = Connect::new(&bob).groups("region:north").send(&app.base).await;
    assert_eq!(refused.status(), 403);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    let anonymous = http().get(app.url("/api/events")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    let mut north = Connect::new(&alice).open(&app.base).await;
    let mut south = Connect::new(&bob).groups("region:south").open(&app.base).await;
    write_event(&db.pool, &["region:north"], json!({"for": "north"})).await;
    write_event(&db.pool, &["region:south"], json!({"for": "south"})).await;

    assert_eq!(data_json(&north.next_data(WAIT).await)["for"], "north");
    // Bob's first event is the south one: the north event, published before it, never reached him.
    let first_for_bob = south.next_data(WAIT).await;
    assert_eq!(data_json(&first_for_bob)["for"], "south");
    assert_eq!(seq_of(&first_for_bob), 2);
}

#[tokio::test]
async fn the_stream_opens_with_retry_and_the_current_position_and_the_contract_headers() {
    let (_db, app, alice, e) = north_log_of(3).await;

    let response = Connect::new(&alice).send(&app.base).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert!(headers.get("content-encoding").is_none(), "the stream must never be compressed");

    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&first);
    let retry: u64 = text
        .strip_prefix("retry: ")
        .and_then(|rest| rest.split_once('\n'))
        .and_then(|(ms, _)| ms.parse().ok())
        .unwrap_or_else(|| panic!("opening block starts with retry: {text:?}"));
    assert!((2000..=5000).contains(&retry), "retry {retry} ms is outside the contract's 2000..=5000");
    assert!(text.contains(&format!("id: {e}-3\n")), "opening block was {text:?}");
}

#[tokio::test]
async fn a_client_resumes_by_header_by_query_and_the_header_wins() {
    let (_db, app, alice, e) = north_log_of(10).await;

    let mut by_header = Connect::new(&alice).header(&format!("{e}-4")).open(&app.base).await;
    assert_eq!(by_header.take(6, WAIT).await.iter().map(seq_of).collect::<Vec<_>>(), (5..=10).collect::<Vec<_>>());

    let mut by_query = Connect::new(&alice).query(&format!("{e}-7")).open(&app.base).await;
    assert_eq!(by_query.take(3, WAIT).await.iter().map(seq_of).collect::<Vec<_>>(), vec![8, 9, 10]);

    let mut both = Connect::new(&alice).header(&format!("{e}-8")).query(&format!("{e}-2")).open(&app.base).await;
    assert_eq!(both.take(2, WAIT).await.iter().map(seq_of).collect::<Vec<_>>(), vec![9, 10]);
}

#[tokio::test]
async fn an_empty_or_blank_last_event_id_header_names_no_position_so_the_query_is_used() {
    // Some EventSource polyfills send `Last-Event-ID:` empty on their first connect; taking that as "no
    // position" and opening at the head skipped events 2..=5 without a word.
    let (_db, app, alice, e) = north_log_of(5).await;
    let query = format!("{e}-1");
    for header in ["", " ", "\t"] {
        let mut client = Connect::new(&alice).header(header).query(&query).open(&app.base).await;
        let seqs: Vec<i64> = client.take(4, WAIT).await.iter().map(seq_of).collect();
        assert_eq!(seqs, vec![2, 3, 4, 5], "Last-Event-ID: {header:?} with ?lastEventId={query}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seam_between_backlog_and_live_has_no_gap_and_no_duplicate_while_events_keep_arriving() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    write_numbered(&db, "region:north", 0..200).await;
    let e = epoch(&db).await;

    // A writer keeps writing while the client resumes from an early position.
    let writer_pool = db.pool.clone();
    let writer = tokio::spawn(async move {
        for i in 200..600 {
            write_event(&writer_pool, &["region:north"], json!({ "n": i })).await;
        }
    });
    let mut client = Connect::new(&alice).header(&format!("{e}-0")).open(&app.base).await;
    let events = client.take(600, WAIT).await;
    writer.await.unwrap();

    let seqs: Vec<i64> = events.iter().map(seq_of).collect();
    assert_eq!(seqs, (1..=600).collect::<Vec<_>>(), "gap or duplicate at the seam");
    let ns: Vec<i64> = events.iter().map(|e| data_json(e)["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, (0..600).collect::<Vec<_>>());
}

#[tokio::test]
async fn foreign_epochs_and_expired_positions_get_a_reset_and_malformed_ones_a_400() {
    let (db, app, alice, e) = north_log_of(10).await;
    let other_epoch = if e == "00000000" { "00000001" } else { "00000000" };

    let mut foreign = Connect::new(&alice).header(&format!("{other_epoch}-3")).open(&app.base).await;
    let reset = foreign.next_data(WAIT).await;
    assert_eq!(reset.event, "reset");
    assert_eq!(data_json(&reset), json!({"reason": "epoch", "position": format!("{e}-10")}));

    sqlx::query("UPDATE stream_meta SET expired_through_seq = 5").execute(&db.pool).await.unwrap();
    let mut expired = Connect::new(&alice).query(&format!("{e}-2")).open(&app.base).await;
    let reset = expired.next_data(WAIT).await;
    assert_eq!(reset.event, "reset");
    assert_eq!(data_json(&reset)["reason"], "expired");
    // After the reset the client is live: the next event is a new one.
    write_event(&db.pool, &["region:north"], json!({})).await;
    assert_eq!(seq_of(&expired.next_data(WAIT).await), 11);

    for bad in ["banana", "7f3a9c21", "7F3A9C21-1", "7f3a9c21--1"] {
        let response = Connect::new(&alice).header(bad).send(&app.base).await;
        assert_eq!(response.status(), 400, "{bad}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_last_event_id", "{bad}");
    }
}

#[tokio::test]
async fn events_written_with_plain_sql_arrive_with_the_envelope_merged_into_the_payload() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let alice = dispatcher_token(&db, "alice", &["team:hvac"]).await;
    let mut client = Connect::new(&alice).open(&app.base).await;
    let aggregate = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO outbox (event_type, aggregate_id, groups, payload)
         VALUES ('JobUpdated', $1, '{team:hvac}', '{\"status\": \"assigned\", \"note\": \"line1\\nline2\"}')",
    )
    .bind(aggregate)
    .execute(&db.pool)
    .await
    .unwrap();

    let event = client.next_data(WAIT).await;
    assert_eq!(event.event, "JobUpdated");
    let data = data_json(&event);
    assert_eq!(data["type"], "JobUpdated");
    assert_eq!(data["status"], "assigned");
    assert_eq!(data["note"], "line1\nline2");
    assert_eq!(data["groups"], json!(["team:hvac"]));
    assert_eq!(data["position"], event.id);
    assert_eq!(data["replayOf"], serde_json::Value::Null);
    assert!(uuid::Uuid::parse_str(data["eventId"].as_str().unwrap()).is_ok());
    assert!(chrono::DateTime::parse_from_rfc3339(data["occurredAt"].as_str().unwrap()).is_ok());
}

#[tokio::test]
async fn a_membership_change_reaches_an_open_stream_within_five_seconds() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let carol = dispatcher_token(&db, "carol", &["region:north", "region:south"]).await;
    let mut client = Connect::new(&carol).open(&app.base).await;
    write_event(&db.pool, &["region:south"], json!({"probe": "before"})).await;
    assert_eq!(data_json(&client.next_data(WAIT).await)["probe"], "before");

    auth::set_groups(&db.pool, "carol", &[], &["region:south".into()]).await.unwrap();
    let removed_at = tokio::time::Instant::now();
    let mut round = 0;
    // Probe until a south probe no longer arrives before its north marker.
    while probe_south(&db, &mut client, &mut round).await {
        assert!(removed_at.elapsed() < Duration::from_secs(5), "a removed group still delivered after 5 s");
        tokio::time::sleep(Duration::from_millis(200)).await; // the probing cadence, not synchronisation
    }

    auth::set_groups(&db.pool, "carol", &["region:south".into()], &[]).await.unwrap();
    let added_at = tokio::time::Instant::now();
    while !probe_south(&db, &mut client, &mut round).await {
        assert!(added_at.elapsed() < Duration::from_secs(5), "an added group did not start within 5 s");
        tokio::time::sleep(Duration::from_millis(200)).await; // the probing cadence, not synchronisation
    }
}

/// Writes a south probe and then a north marker; reads up to the marker and says whether the probe came.
async fn probe_south(db: &TestDb, client: &mut SseClient, round: &mut u32) -> bool {
    *round += 1;
    let (south, north) = (format!("south-{round}"), format!("north-{round}"));
    write_event(&db.pool, &["region:south"], json!({ "probe": south })).await;
    write_event(&db.pool, &["region:north"], json!({ "probe": north })).await;
    let mut got_south = false;
    loop {
        let probe = data_json(&client.next_data(WAIT).await)["probe"].as_str().unwrap().to_owned();
        if probe == north {
            return got_south;
        }
        got_south |= probe == south;
    }
}

#[tokio::test]
async fn when_the_token_expires_the_stream_says_auth_expired_and_ends() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    dispatcher_token(&db, "alice", &["region:north"]).await;
    let short = token_for(&db, "alice", Duration::from_secs(2)).await;
    let mut client = Connect::new(&short).open(&app.base).await;
    let event = client.next_data(Duration::from_secs(5)).await;
    assert_eq!(event.event, "auth-expired");
    assert!(data_json(&event)["position"].is_string());
    assert!(client.ends_within(Duration::from_secs(2)).await, "the stream must end after auth-expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_client_catches_up_from_the_database_without_holding_back_others() {
    let db = TestDb::new().await;
    let app = TestApp::spawn_with(&db, |c| c.hub.client_queue = 16).await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let mut fast = Connect::new(&alice).open(&app.base).await;
    let mut slow = Connect::new(&alice).open(&app.base).await; // not read until the burst is over

    write_events(&db.pool, 3000, &["region:north"]).await;
    let fast_seqs: Vec<i64> = fast.take(3000, WAIT).await.iter().map(seq_of).collect();
    assert_eq!(fast_seqs, (1..=3000).collect::<Vec<_>>());

    let slow_seqs: Vec<i64> = slow.take(3000, WAIT).await.iter().map(seq_of).collect();
    assert_eq!(slow_seqs, (1..=3000).collect::<Vec<_>>(), "the slow client missed or repeated events");

    let metrics = http().get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let catchups = metrics
        .lines()
        .find(|l| l.starts_with("smartscheduler_sse_catchup_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(catchups >= 1.0, "expected a database catch-up to be counted:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_listen_connection_loses_nothing() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let mut client = Connect::new(&alice).open(&app.base).await;
    write_numbered(&db, "region:north", 0..5).await;
    assert_eq!(client.take(5, WAIT).await.len(), 5);

    assert!(db.terminate("server-app").await >= 1, "expected to kill the server's connections");
    write_numbered(&db, "region:north", 5..20).await;
    let seqs: Vec<i64> = client.take(15, WAIT).await.iter().map(seq_of).collect();
    assert_eq!(seqs, (6..=20).collect::<Vec<_>>());
}

/// A server whose hub learns of publishes only from NOTIFYs and its relay's hand-overs (the safety poll is an
/// hour away), so that a test can tell which path delivered what.
async fn server_without_safety_poll(db: &TestDb) -> TestApp {
    TestApp::spawn_with(db, |config| config.hub.safety_poll = Duration::from_secs(3600)).await
}

/// The server's relay hands each batch it publishes straight to its own hub. A batch that does not follow the
/// hub's head must not be fanned out over the hole: here the event before it was published by someone else,
/// whose NOTIFY went where this hub does not listen (and the safety poll is an hour away). The hub reads the
/// log from its head instead, so the client gets both, in order.
#[tokio::test]
async fn a_handed_over_batch_that_skips_an_unheard_one_is_read_from_the_log_in_order() {
    let db = TestDb::new().await;
    let app = server_without_safety_poll(&db).await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let mut client = Connect::new(&alice).open(&app.base).await;

    // Written and published in one transaction, so the server's relay never sees it in the outbox.
    let mut tx = db.pool.begin().await.unwrap();
    let event = smartscheduler::outbox::NewEvent::new(
        "TestEvent",
        uuid::Uuid::new_v4(),
        vec![group("region:north")],
        json!({"n": "unheard"}),
    )
    .unwrap();
    smartscheduler::outbox::enqueue(&mut tx, &event).await.unwrap();
    let published: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM ss_publish_batch(10, 'nobody_listens')").fetch_all(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(published, vec![1]);

    write_event(&db.pool, &["region:north"], json!({"n": "handed over"})).await;
    let events = client.take(2, WAIT).await;
    assert_eq!(events.iter().map(seq_of).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(data_json(&events[0])["n"], "unheard");
    assert_eq!(data_json(&events[1])["n"], "handed over");
}

/// A new client starts at the log's committed position even when this server's hub has not caught up with
/// it yet (here it never heard of the last publish), and is not sent the events before it.
#[tokio::test]
async fn a_new_client_starts_at_the_committed_position_even_before_the_hub_has_caught_up() {
    let db = TestDb::new().await;
    let app = server_without_safety_poll(&db).await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    // Written and published in one transaction, so that the server's relay (which polls every few ms)
    // cannot publish them first.
    let mut tx = db.pool.begin().await.unwrap();
    for n in 0..3 {
        let event = smartscheduler::outbox::NewEvent::new(
            "TestEvent",
            uuid::Uuid::new_v4(),
            vec![group("region:north")],
            json!({ "n": n }),
        )
        .unwrap();
        smartscheduler::outbox::enqueue(&mut tx, &event).await.unwrap();
    }
    let published: i64 = sqlx::query_scalar("SELECT count(*) FROM ss_publish_batch(10, 'nobody_listens')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(published, 3);
    let e = epoch(&db).await;

    // The opening block carries no data, so an SSE parser does not surface it: read it raw.
    let raw = Connect::new(&alice).send(&app.base).await;
    let opening = raw.bytes_stream().next().await.unwrap().unwrap();
    let opening = String::from_utf8_lossy(&opening);
    assert!(opening.contains(&format!("\nid: {e}-3\n")), "opening block was {opening:?}");

    let mut client = Connect::new(&alice).open(&app.base).await;
    write_event(&db.pool, &["region:north"], json!({"n": "new"})).await;
    let first = client.next_data(WAIT).await;
    assert_eq!((seq_of(&first), data_json(&first)["n"].clone()), (4, json!("new")));
}

/// The log recreated under a running server (a restore, say): the next publish, in the new epoch, ends
/// the open streams at once (not at the next safety poll, here an hour away), and the client that
/// comes back with its old position is told to reset.
#[tokio::test]
async fn open_streams_end_when_the_log_gets_a_new_epoch_and_the_client_is_told_to_reset() {
    let db = TestDb::new().await;
    let app = server_without_safety_poll(&db).await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let mut client = Connect::new(&alice).open(&app.base).await;
    write_event(&db.pool, &["region:north"], json!({"n": "old log"})).await;
    let old_position = client.next_data(WAIT).await.id;

    let old_epoch = epoch(&db).await;
    let new_epoch = if old_epoch == "0000000a" { "0000000b" } else { "0000000a" };
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("DELETE FROM event_log_groups").execute(&mut *tx).await.unwrap();
    sqlx::query("DELETE FROM event_log").execute(&mut *tx).await.unwrap();
    sqlx::query("UPDATE stream_meta SET epoch = $1, last_seq = 0").bind(new_epoch).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    write_event(&db.pool, &["region:north"], json!({"n": "new log"})).await;

    assert!(client.ends_within(WAIT).await, "the stream outlived its epoch");
    let mut resumed = Connect::new(&alice).header(&old_position).open(&app.base).await;
    let reset = resumed.next_data(WAIT).await;
    assert_eq!(reset.event, "reset");
    assert_eq!(data_json(&reset), json!({"reason": "epoch", "position": format!("{new_epoch}-1")}));
    write_event(&db.pool, &["region:north"], json!({"n": "after the reset"})).await;
    assert_eq!(resumed.next_data(WAIT).await.id, format!("{new_epoch}-2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_moves_between_two_servers_on_one_database_without_loss() {
    let db = TestDb::new().await;
    let a = TestApp::spawn_named(&db, "server-a", |_| {}).await;
    let b = TestApp::spawn_named(&db, "server-b", |_| {}).await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let writer_pool = db.pool.clone();
    let writer = tokio::spawn(async move { write_numbered_pool(&writer_pool, 0..300).await });

    let mut on_a = Connect::new(&alice).header(&format!("{}-0", epoch(&db).await)).open(&a.base).await;
    let mut received = on_a.take(120, WAIT).await;
    drop(on_a); // the browser loses server A
    let last = received.last().unwrap().id.clone();
    let mut on_b = Connect::new(&alice).header(&last).open(&b.base).await;
    received.extend(on_b.take(180, WAIT).await);
    writer.await.unwrap();

    let seqs: Vec<i64> = received.iter().map(seq_of).collect();
    assert_eq!(seqs, (1..=300).collect::<Vec<_>>());
    let ids: HashSet<String> = received.iter().map(|e| data_json(e)["eventId"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 300);
}

async fn write_numbered_pool(pool: &sqlx::PgPool, range: std::ops::Range<usize>) {
    for i in range {
        write_event(pool, &["region:north"], json!({ "n": i })).await;
    }
}

/// The real binary, killed with SIGKILL mid-stream and started again: the client resumes with no loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_killed_and_restarted_mid_stream_loses_nothing() {
    let db = TestDb::new().await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = ServerProcess::start_on(&db, port).await;
    let base = server.base.clone();
    let mut client = Connect::new(&alice).header(&format!("{}-0", epoch(&db).await)).open(&base).await;
    write_numbered(&db, "region:north", 0..50).await;
    let mut received = client.take(50, WAIT).await;

    server.child.kill().await.unwrap(); // SIGKILL: no goodbye
    assert!(client.ends_within(WAIT).await);
    write_numbered(&db, "region:north", 50..100).await; // committed while no relay runs

    let mut server = ServerProcess::start_on(&db, port).await;
    let last = received.last().unwrap().id.clone();
    let mut resumed = Connect::new(&alice).header(&last).open(&base).await;
    received.extend(resumed.take(50, WAIT).await);
    server.child.kill().await.unwrap();

    let ns: Vec<i64> = received.iter().map(|e| data_json(e)["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, (0..100).collect::<Vec<_>>());
    assert_eq!(received.iter().map(seq_of).collect::<Vec<_>>(), (1..=100).collect::<Vec<_>>());
}

#[tokio::test]
async fn sigterm_ends_open_streams_and_the_server_exits_zero() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let mut client = Connect::new(&alice).open(&app.base).await;
    write_event(&db.pool, &["region:north"], json!({})).await;
    client.next_data(WAIT).await;
    let stopping = tokio::spawn(app.stop());
    assert!(client.ends_within(WAIT).await, "open streams must end on shutdown");
    stopping.await.unwrap();
}

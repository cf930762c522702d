//! Withdrawing access from the command line: `dispatcher disable` / `enable`, `dispatcher revoke-tokens`,
//! and `dispatcher remove` followed by `add`, each against a real server with open streams.

use crate::app::*;
use crate::helpers::*;
use serde_json::{Value, json};
use std::process::Output;
use std::time::Duration;

/// The contract: a withdrawn access reaches open streams within 5 s.
const REVOKED_WITHIN: Duration = Duration::from_secs(5);

/// Runs the real binary with `args` on `db` (off the async runtime's threads).
async fn smartscheduler(db: &TestDb, args: &[&str]) -> Output {
    let (url, args): (String, Vec<String>) = (db.url.clone(), args.iter().map(|a| a.to_string()).collect());
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_smartscheduler"))
            .args(&args)
            .env("DATABASE_URL", url)
            .env("SMARTSCHEDULER_AUTH_SECRET", std::str::from_utf8(SECRET).unwrap())
            .env("RUST_LOG", "warn")
            .output()
            .expect("run smartscheduler")
    })
    .await
    .unwrap()
}

/// Runs a command that must succeed; its stdout.
async fn ok(db: &TestDb, args: &[&str]) -> String {
    let out = smartscheduler(db, args).await;
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `GET /api/me` with `token`: (status, error code if any).
async fn me(app: &TestApp, token: &str) -> (u16, Option<String>) {
    let response = http().get(app.url("/api/me")).bearer_auth(token).send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, body["error"]["code"].as_str().map(str::to_owned))
}

/// Reads `stream` until its `access-revoked` event, which must come within [`REVOKED_WITHIN`] of `since`;
/// returns its data, after checking that the stream then ends.
async fn access_revoked(stream: &mut SseClient, since: tokio::time::Instant) -> Value {
    loop {
        let left = REVOKED_WITHIN.saturating_sub(since.elapsed());
        let event = stream.next(left).await;
        if event.event == "access-revoked" {
            assert!(since.elapsed() <= REVOKED_WITHIN, "access-revoked after {:?}", since.elapsed());
            assert!(stream.ends_within(Duration::from_secs(2)).await, "the stream ends after access-revoked");
            return data_json(&event);
        }
    }
}

/// A stream's opening is through (the server registered it) once its first frame arrived.
async fn open_stream(app: &TestApp, token: &str) -> SseClient {
    let mut stream = Connect::new(token).open(&app.base).await;
    let opening = stream.next(Duration::from_secs(5)).await;
    assert!(!opening.id.is_empty(), "the stream opens with its position");
    stream
}

#[tokio::test]
async fn a_disabled_dispatcher_is_refused_everywhere_its_streams_end_and_enable_restores_access() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let carol = dispatcher_token(&db, "carol", &["region:north"]).await;
    let mut stream = open_stream(&app, &carol).await;

    let disabled_at = tokio::time::Instant::now();
    ok(&db, &["dispatcher", "disable", "carol"]).await;
    let revoked = access_revoked(&mut stream, disabled_at).await;
    assert_eq!(revoked["reason"], "disabled");
    assert!(revoked["position"].is_string());

    assert_eq!(me(&app, &carol).await, (403, Some("dispatcher_disabled".to_owned())));
    let refused = Connect::new(&carol).send(&app.base).await;
    assert_eq!(refused.status(), 403, "a disabled dispatcher opens no stream");
    let session = http().post(app.url("/api/session")).json(&json!({"token": carol})).send().await.unwrap();
    assert_eq!(session.status(), 403, "nor gets a session");
    let demo = http().post(app.url("/api/dev/session")).json(&json!({"dispatcherId": "carol"})).send().await.unwrap();
    assert_eq!(demo.status(), 403, "nor signs in with the demo login");
    let token = smartscheduler(&db, &["token", "--dispatcher", "carol"]).await;
    assert_eq!(token.status.code(), Some(1), "no token is issued for a disabled dispatcher");

    let listed: Value = serde_json::from_str(&ok(&db, &["dispatcher", "list", "--json"]).await).unwrap();
    assert_eq!(listed[0]["disabled"], true, "{listed}");
    assert!(ok(&db, &["dispatcher", "list"]).await.contains("(disabled)"));
    let offered: Value = http().get(app.url("/api/dev/dispatchers")).send().await.unwrap().json().await.unwrap();
    assert_eq!(offered, json!([]), "the demo login offers no disabled dispatcher");

    // Disable again: idempotent. Enable: the same, unrevoked token works again, streams too.
    ok(&db, &["dispatcher", "disable", "carol"]).await;
    ok(&db, &["dispatcher", "enable", "carol"]).await;
    assert_eq!(me(&app, &carol).await, (200, None));
    let mut again = open_stream(&app, &carol).await;
    write_event(&db.pool, &["region:north"], json!({"n": 1})).await;
    assert_eq!(data_json(&again.next_data(Duration::from_secs(10)).await)["n"], 1);
}

#[tokio::test]
async fn revoked_tokens_are_refused_and_their_streams_end_while_a_new_token_works() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let old = dispatcher_token(&db, "carol", &["region:north"]).await;
    let bob = dispatcher_token(&db, "bob", &["region:north"]).await;
    let mut carol_stream = open_stream(&app, &old).await;
    let mut bob_stream = open_stream(&app, &bob).await;

    let revoked_at = tokio::time::Instant::now();
    ok(&db, &["dispatcher", "revoke-tokens", "carol"]).await;
    assert_eq!(access_revoked(&mut carol_stream, revoked_at).await["reason"], "token_revoked");
    assert_eq!(me(&app, &old).await, (401, Some("token_revoked".to_owned())));

    let new = ok(&db, &["token", "--dispatcher", "carol", "--ttl", "10m"]).await;
    assert_eq!(me(&app, &new).await, (200, None));
    let mut new_stream = open_stream(&app, &new).await;
    // Another dispatcher's stream was not touched, and the new one delivers.
    write_event(&db.pool, &["region:north"], json!({"n": 1})).await;
    assert_eq!(data_json(&bob_stream.next_data(Duration::from_secs(10)).await)["n"], 1);
    assert_eq!(data_json(&new_stream.next_data(Duration::from_secs(10)).await)["n"], 1);

    // Revoking again revokes the token issued in between.
    ok(&db, &["dispatcher", "revoke-tokens", "carol"]).await;
    assert_eq!(me(&app, &new).await, (401, Some("token_revoked".to_owned())));
}

#[tokio::test]
async fn removing_and_adding_a_dispatcher_again_does_not_revive_old_tokens() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    ok(&db, &["dispatcher", "add", "carol", "--name", "Carol", "--group", "region:north"]).await;
    let old = ok(&db, &["token", "--dispatcher", "carol"]).await;
    assert_eq!(me(&app, &old).await, (200, None));
    let mut stream = open_stream(&app, &old).await;

    ok(&db, &["dispatcher", "remove", "carol"]).await;
    ok(&db, &["dispatcher", "add", "carol", "--name", "Carol", "--group", "region:north"]).await;
    let re_added_at = tokio::time::Instant::now();
    assert_eq!(me(&app, &old).await, (401, Some("token_revoked".to_owned())));
    // The open stream ends too, even if the membership poll never saw carol missing.
    let reason = access_revoked(&mut stream, re_added_at).await["reason"].as_str().unwrap().to_owned();
    assert!(reason == "token_revoked" || reason == "no_groups", "{reason}");

    let new = ok(&db, &["token", "--dispatcher", "carol"]).await;
    assert_eq!(me(&app, &new).await, (200, None));
}

#[tokio::test]
async fn the_access_commands_name_an_existing_dispatcher_or_fail_with_the_usual_exit_codes() {
    let db = TestDb::new().await;
    for command in ["disable", "enable", "revoke-tokens", "remove"] {
        let unknown = smartscheduler(&db, &["dispatcher", command, "nobody"]).await;
        assert_eq!(unknown.status.code(), Some(1), "{command} of an unknown dispatcher fails");
        let stderr = String::from_utf8_lossy(&unknown.stderr);
        assert!(stderr.starts_with("error: no dispatcher") && stderr.trim_end().lines().count() == 1, "{stderr}");
        let bad = smartscheduler(&db, &["dispatcher", command, "not an id"]).await;
        assert_eq!(bad.status.code(), Some(2), "{command} of a malformed id is a usage error");
        let missing = smartscheduler(&db, &["dispatcher", command]).await;
        assert_eq!(missing.status.code(), Some(2), "{command} without an id is a usage error");
    }
}

#[tokio::test]
async fn a_token_without_a_generation_counts_as_generation_zero() {
    // Tokens issued before migration 0011 carry no `gen`: they stay valid for the dispatchers that existed
    // then (generation 0) and for no dispatcher added since.
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    dispatcher_token(&db, "erin", &["region:east"]).await;
    let now = chrono::Utc::now().timestamp();
    let legacy = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "erin", "iat": now, "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    assert_eq!(me(&app, &legacy).await, (401, Some("token_revoked".to_owned())), "erin was added after 0011");
    sqlx::query("UPDATE dispatchers SET token_generation = 0 WHERE id = 'erin'").execute(&db.pool).await.unwrap();
    assert_eq!(me(&app, &legacy).await, (200, None), "as a dispatcher from before 0011");
    ok(&db, &["dispatcher", "revoke-tokens", "erin"]).await;
    assert_eq!(me(&app, &legacy).await, (401, Some("token_revoked".to_owned())));
}

//! Bad input from outside is a 4xx in the contract's shape, never a 500 and never a `text/plain` answer:
//! values PostgreSQL would refuse are refused at the edge first, and the framework's own rejections
//! (query string, path, method, body) use the error shape too.

use crate::app::*;
use crate::helpers::*;
use serde_json::{Value, json};
use std::time::Duration;

fn new_job() -> Value {
    json!({
        "title": "Fix boiler",
        "region": "north",
        "requiredSkills": ["hvac"],
        "location": {"lat": 47.7, "lon": -122.3},
        "windowStart": "2030-01-01T09:00:00Z",
        "windowEnd": "2030-01-01T13:00:00Z",
    })
}

/// Status and body of a response that must be in the error shape (content type included).
async fn refusal(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let text = response.text().await.unwrap();
    assert!(content_type.starts_with("application/json"), "{status} {content_type}: {text}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    let code = body["error"]["code"].as_str().unwrap_or_else(|| panic!("not the error shape: {body}")).to_owned();
    let message = body["error"]["message"].as_str().unwrap_or_else(|| panic!("no message: {body}")).to_owned();
    assert!(!message.is_empty(), "{body}");
    (status, code, message)
}

#[tokio::test]
async fn values_postgresql_would_refuse_are_400s_in_the_error_shape_and_write_nothing() {
    let (db, app) = seeded_app().await;
    let alice = hour_token(&db, "alice").await;
    let jobs = app.url("/api/jobs");
    let post = |body: Value| http().post(&jobs).bearer_auth(&alice).json(&body).send();
    let count_jobs = || sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs").fetch_one(&db.pool);
    let jobs_before = count_jobs().await.unwrap();

    // The input: a valid JSON escape that PostgreSQL's text cannot store.
    let mut nul = new_job();
    nul["title"] = json!("Fix\u{0}boiler");
    let (status, code, message) = refusal(post(nul).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (400, "invalid_input"), "{message}");
    assert!(message.contains("title") && message.contains("NUL"), "{message}");

    // Timestamps outside PostgreSQL's range (4713 BC) but inside chrono's, and beyond RFC 3339's years.
    for (field, value) in [
        ("windowStart", "-5000-01-01T09:00:00Z"),
        ("windowStart", "+200000-01-01T09:00:00Z"),
        ("windowEnd", "+10000-01-01T13:00:00Z"),
    ] {
        let mut body = new_job();
        body[field] = json!(value);
        if field == "windowStart" {
            body["windowEnd"] = json!(value.replace("T09", "T13"));
        }
        let (status, code, message) = refusal(post(body).await.unwrap()).await;
        assert_eq!(status, 400, "{field}={value}: {code} {message}");
        assert!(code == "invalid_input" || code == "invalid_json", "{field}={value}: {code} {message}");
    }

    // An end a few nanoseconds after the start is the same microsecond in PostgreSQL, whose CHECK
    // (window_end > window_start) would refuse it.
    let mut same_microsecond = new_job();
    same_microsecond["windowStart"] = json!("2030-01-01T09:00:00.000000100Z");
    same_microsecond["windowEnd"] = json!("2030-01-01T09:00:00.000000900Z");
    let (status, code, message) = refusal(post(same_microsecond).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (400, "invalid_input"), "{message}");

    // Nanoseconds that survive as microseconds are kept to the microsecond, not refused.
    let mut precise = new_job();
    precise["windowStart"] = json!("2030-01-01T09:00:00.123456789Z");
    let created = post(precise).await.unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["windowStart"], "2030-01-01T09:00:00.123456Z");
    sqlx::query("DELETE FROM jobs WHERE id = $1::uuid")
        .bind(created["id"].as_str().unwrap())
        .execute(&db.pool)
        .await
        .unwrap();

    // The edges of the range are accepted, and generating recommendations for them works (no overflow in
    // the day arithmetic of scoring and candidate loading).
    for (start, end) in
        [("0001-01-01T00:00:00Z", "0001-01-01T04:00:00Z"), ("9999-12-31T20:00:00Z", "9999-12-31T23:59:59.999999Z")]
    {
        let mut edge = new_job();
        edge["windowStart"] = json!(start);
        edge["windowEnd"] = json!(end);
        let created = post(edge).await.unwrap();
        assert_eq!(created.status(), 201, "{start}..{end}");
        let id = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
        let generated =
            http().post(app.url(&format!("/api/jobs/{id}/recommendations"))).bearer_auth(&alice).send().await.unwrap();
        assert_eq!(generated.status(), 201, "{start}..{end}: {}", generated.text().await.unwrap());
        sqlx::query("DELETE FROM recommendation_sets WHERE job_id = $1::uuid")
            .bind(&id)
            .execute(&db.pool)
            .await
            .unwrap();
        sqlx::query("DELETE FROM jobs WHERE id = $1::uuid").bind(&id).execute(&db.pool).await.unwrap();
    }

    // The demo login's id, and a region in the query string.
    let dev = http().post(app.url("/api/dev/session")).json(&json!({"dispatcherId": "al\u{0}ice"})).send();
    assert_eq!(refusal(dev.await.unwrap()).await.0, 400);
    let region = http().get(app.url("/api/jobs?region=nor%00th")).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(refusal(region).await.0, 400);

    assert_eq!(count_jobs().await.unwrap(), jobs_before, "no refused job was written");
}

#[tokio::test]
async fn a_signed_token_whose_claims_are_outside_their_domains_is_a_401_not_a_500() {
    let (db, app) = seeded_app().await;
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
    // The generation alice's tokens must carry (migration 0011), so that only the claims under test differ.
    let generation = smartscheduler::auth::token_generation(&db.pool, "alice").await.unwrap();
    let forge = |sub: &str, exp: i64| {
        let claims = json!({ "sub": sub, "iat": 0, "exp": exp, "gen": generation });
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    let in_an_hour = chrono::Utc::now().timestamp() + 3600;
    for token in [forge("al\u{0}ice", in_an_hour), forge(&"a".repeat(10_000), in_an_hour), forge("alice", i64::MAX)] {
        let me = http().get(app.url("/api/me")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(refusal(me).await, (401, "invalid_token".into(), "the token is not valid".into()));
        let session = http().post(app.url("/api/session")).json(&json!({ "token": token })).send().await.unwrap();
        assert_eq!(refusal(session).await.1, "invalid_token");
    }
    let me = http().get(app.url("/api/me")).bearer_auth(forge("alice", in_an_hour)).send().await.unwrap();
    assert_eq!(me.status(), 200, "the forging itself is right");
}

#[tokio::test]
async fn a_token_not_yet_valid_or_for_another_audience_is_a_401_invalid_token() {
    let (db, app) = seeded_app().await;
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
    let now = chrono::Utc::now().timestamp();
    let generation = smartscheduler::auth::token_generation(&db.pool, "alice").await.unwrap();
    let forge = |extra: serde_json::Value| {
        let mut claims = json!({ "sub": "alice", "iat": now, "exp": now + 7200, "gen": generation });
        claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    for extra in [json!({"nbf": now + 3600}), json!({"iat": now + 3600}), json!({"aud": "payroll"})] {
        let me = http().get(app.url("/api/me")).bearer_auth(forge(extra.clone())).send().await.unwrap();
        assert_eq!(refusal(me).await.0, 401, "{extra}");
        let me = http().get(app.url("/api/me")).bearer_auth(forge(extra.clone())).send().await.unwrap();
        assert_eq!(refusal(me).await.1, "invalid_token", "{extra}");
    }
    let me = http().get(app.url("/api/me")).bearer_auth(forge(json!({"nbf": now - 10}))).send().await.unwrap();
    assert_eq!(me.status(), 200, "an nbf in the past is fine");
}

#[tokio::test]
async fn a_refused_value_is_echoed_bounded_not_whole() {
    let (db, app) = seeded_app().await;
    let alice = hour_token(&db, "alice").await;
    let long = "x".repeat(60_000);
    let mut job = new_job();
    job["requiredSkills"] = json!([long]);
    let refusals = [
        http().post(app.url("/api/jobs")).bearer_auth(&alice).json(&job).send().await.unwrap(),
        http().post(app.url("/api/dev/session")).json(&json!({"dispatcherId": long})).send().await.unwrap(),
        http().get(app.url(&format!("/api/jobs/{}", &long[..6000]))).bearer_auth(&alice).send().await.unwrap(),
        http().get(app.url(&format!("/api/jobs?region={}", &long[..6000]))).bearer_auth(&alice).send().await.unwrap(),
    ];
    for response in refusals {
        let (status, code, message) = refusal(response).await;
        assert!((400..500).contains(&status), "{status} {code}");
        assert!(message.chars().count() < 300, "{status} {code}: a {}-character message", message.chars().count());
        assert!(message.contains("more characters"), "{message}");
    }
}

#[tokio::test]
async fn framework_rejections_come_in_the_error_shape_with_stable_codes() {
    let (db, app) = seeded_app().await;
    let alice = hour_token(&db, "alice").await;
    let get = |path: &str| http().get(app.url(path)).bearer_auth(&alice).send();

    // The input: a list the way many HTTP clients send one.
    let (status, code, message) =
        refusal(get("/api/events?groups=region:north&groups=region:north").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (400, "invalid_query"), "{message}");
    assert!(message.contains("groups"), "{message}");
    let (status, code, _) = refusal(get("/api/jobs?region=north&region=north").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (400, "invalid_query"));
    // Not UTF-8: decoded lossily, then not a region key.
    let (status, code, _) = refusal(get("/api/jobs?region=%FF").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (400, "invalid_input"));

    // A path segment that is not UTF-8 once decoded.
    let (status, code, _) = refusal(get("/api/jobs/%FF").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (400, "invalid_path"));

    // A method a route does not take, outside /api too; the Allow header survives.
    let post_health = http().post(app.url("/healthz")).send().await.unwrap();
    assert!(post_health.headers().contains_key("allow"));
    assert_eq!(refusal(post_health).await.0, 405);
    let (status, code, _) = refusal(http().put(app.url("/api/me")).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (405, "method_not_allowed"));

    // The same refusal through the lean stream transport (a connection that opens with the stream).
    let mut socket = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://")).await.unwrap();
    let request = format!(
        "GET /api/events?groups=region:north&groups=region:north HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {alice}\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut socket, request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut response))
        .await
        .expect("the refusal ends the connection")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("content-type: application/json"), "{response}");
    assert!(response.contains("\"code\":\"invalid_query\""), "{response}");
}

/// Runs the real binary against `database_url` (argv cannot carry a NUL, so the command line's domains
/// are ids, names, group keys, lifetimes and times).
fn command(args: &[&str], database_url: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_smartscheduler"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("SMARTSCHEDULER_AUTH_SECRET", std::str::from_utf8(SECRET).unwrap())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run smartscheduler")
}

#[tokio::test]
async fn command_line_values_outside_their_domains_are_usage_errors_before_any_write() {
    let db = TestDb::new().await;
    let url = db.url.clone();
    let outputs = tokio::task::spawn_blocking(move || {
        let long_name = "n".repeat(201);
        let cases: Vec<Vec<&str>> = vec![
            vec!["dispatcher", "add", "erin", "--name", "   "],
            vec!["dispatcher", "add", "erin", "--name", &long_name],
            vec!["dispatcher", "add", "not an id", "--name", "Erin"],
            vec!["dispatcher", "add", "erin", "--name", "Erin", "--group", "Region:East"],
            vec!["dispatcher", "groups", "not an id", "--add", "region:east"],
            vec!["dispatcher", "groups", "not an id"],
            vec!["token", "--dispatcher", "not an id"],
            vec!["token", "--dispatcher", "alice", "--ttl", "20000years"],
            vec!["token", "--dispatcher", "alice", "--ttl", "500ms"],
            vec!["replay", "--since", "0000-01-01T00:30:00+01:00"],
            vec!["replay", "--from", "00000001-99999999999999999999"],
        ];
        cases
            .into_iter()
            .map(|args| {
                let out = command(&args, &url);
                (args.join(" "), out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (args, code, stderr) in outputs {
        assert_eq!(code, Some(2), "{args}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args}: one line, got {stderr:?}");
        assert!(!stderr.contains("database"), "{args}: refused before the database: {stderr}");
    }
    let dispatchers: i64 = sqlx::query_scalar("SELECT count(*) FROM dispatchers").fetch_one(&db.pool).await.unwrap();
    assert_eq!(dispatchers, 0);
}

//! What the server does for browsers: cross-origin writes with the session cookie are refused (CSRF, login
//! CSRF), JSON bodies need their content type, every response carries the security headers, the session
//! cookie is `Secure` and `__Host-` over HTTPS, and paths under /api always answer JSON.

use crate::app::*;
use crate::helpers::*;
use reqwest::header::{HeaderMap, SET_COOKIE};
use serde_json::{Value, json};
use smartscheduler::http::security::SecurityConfig;
use std::time::Duration;

const EVIL: &str = "https://evil.example";

async fn seeded_with(configure: impl FnOnce(&mut smartscheduler::server::ServerConfig)) -> (TestDb, TestApp) {
    let db = TestDb::new().await;
    smartscheduler::recommendations::seed::seed_demo(&db.pool).await.expect("seed");
    let app = TestApp::spawn_with(&db, configure).await;
    (db, app)
}

async fn token(db: &TestDb, id: &str) -> String {
    token_for(db, id, Duration::from_secs(3600)).await
}

async fn north_job(db: &TestDb) -> String {
    sqlx::query_scalar("SELECT id::text FROM jobs WHERE region = 'north' LIMIT 1").fetch_one(&db.pool).await.unwrap()
}

async fn sets(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM recommendation_sets").fetch_one(&db.pool).await.unwrap()
}

/// Status and error code of a response (code empty when the body is not an error).
async fn outcome(request: reqwest::RequestBuilder) -> (u16, String, HeaderMap) {
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().unwrap_or_default().to_owned(), headers)
}

fn new_job() -> Value {
    let day = chrono::Utc::now().date_naive() + chrono::Days::new(1);
    json!({
        "title": "Boiler service",
        "region": "north",
        "requiredSkills": ["hvac"],
        "location": {"lat": 47.70, "lon": -122.33},
        "windowStart": day.and_hms_opt(9, 0, 0).unwrap().and_utc().to_rfc3339(),
        "windowEnd": day.and_hms_opt(13, 0, 0).unwrap().and_utc().to_rfc3339(),
    })
}

#[tokio::test]
async fn cross_origin_writes_with_the_session_cookie_are_refused_and_nothing_is_written() {
    let (db, app) = seeded_with(|c| {
        c.security = SecurityConfig::from_flags(&["https://intranet.example".into()], "'none'", false, None).unwrap();
    })
    .await;
    let job = north_job(&db).await;
    let cookie = format!("ss_session={}", token(&db, "alice").await);
    let generate = app.url(&format!("/api/jobs/{job}/recommendations"));
    let refused = |(status, code, _): (u16, String, HeaderMap)| {
        assert_eq!((status, code.as_str()), (403, "cross_origin_request"));
    };

    // The attacks of the issue: a form post of a text/plain body, a JSON-shaped form body, a forced login.
    let forged = http().post(&generate).header("cookie", &cookie).header("origin", EVIL);
    refused(outcome(forged.header("content-type", "text/plain").body("x=1")).await);
    let form_job = format!("{}=", new_job());
    let forged_job = http().post(app.url("/api/jobs")).header("cookie", &cookie).header("origin", EVIL);
    refused(outcome(forged_job.header("content-type", "text/plain").body(form_job)).await);
    let login = json!({ "token": token(&db, "bob").await });
    let (status, code, headers) =
        outcome(http().post(app.url("/api/session")).header("origin", EVIL).json(&login)).await;
    assert_eq!((status, code.as_str()), (403, "cross_origin_request"));
    assert!(headers.get(SET_COOKIE).is_none(), "a refused sign-in set a cookie");
    let dev = http().post(app.url("/api/dev/session")).header("origin", EVIL);
    refused(outcome(dev.json(&json!({"dispatcherId": "bob"}))).await);
    refused(outcome(http().delete(app.url("/api/session")).header("cookie", &cookie).header("origin", EVIL)).await);
    // `Origin: null`, and browsers that send only Sec-Fetch-Site or a Referer.
    refused(outcome(http().post(&generate).header("cookie", &cookie).header("origin", "null")).await);
    let site = |value: &str| http().post(&generate).header("cookie", &cookie).header("sec-fetch-site", value);
    refused(outcome(site("cross-site")).await);
    refused(outcome(site("same-site")).await);
    refused(
        outcome(http().post(&generate).header("cookie", &cookie).header("referer", "https://evil.example/a")).await,
    );
    assert_eq!(sets(&db).await, 0, "a refused request wrote a set");

    // Our own origin (as Host names it), an allowed one, a same-origin fetch, a bearer client, a non-browser.
    let ok = |request: reqwest::RequestBuilder| async move { outcome(request).await.0 };
    let own = app.base.clone();
    assert_eq!(ok(http().post(&generate).header("cookie", &cookie).header("origin", &own)).await, 201);
    let allowed = http().post(&generate).header("cookie", &cookie).header("origin", "https://intranet.example");
    assert_eq!(ok(allowed).await, 201);
    assert_eq!(ok(site("same-origin")).await, 201);
    let referer = http().post(&generate).header("cookie", &cookie).header("referer", format!("{own}/jobs"));
    assert_eq!(ok(referer).await, 201);
    let bearer =
        http().post(&generate).bearer_auth(token(&db, "alice").await).header("cookie", &cookie).header("origin", EVIL);
    assert_eq!(ok(bearer).await, 201);
    assert_eq!(ok(http().post(&generate).header("cookie", &cookie)).await, 201);
    assert_eq!(ok(http().post(app.url("/api/session")).header("origin", &own).json(&login)).await, 200);
    assert_eq!(sets(&db).await, 6);
}

#[tokio::test]
async fn every_json_body_needs_the_json_content_type() {
    let (db, app) = seeded_with(|_| {}).await;
    let alice = token(&db, "alice").await;
    let bodies = [
        ("/api/session", json!({ "token": token(&db, "alice").await }), 200),
        ("/api/dev/session", json!({ "dispatcherId": "alice" }), 200),
        ("/api/jobs", new_job(), 201),
    ];
    for (path, body, success) in bodies {
        let post = || http().post(app.url(path)).bearer_auth(&alice);
        for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("text/json")] {
            let mut request = post().body(body.to_string());
            if let Some(t) = content_type {
                request = request.header("content-type", t);
            }
            let (status, code, _) = outcome(request).await;
            assert_eq!((status, code.as_str()), (415, "unsupported_media_type"), "{path} as {content_type:?}");
        }
        for content_type in ["application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8"] {
            let request = post().header("content-type", content_type).body(body.to_string());
            assert_eq!(outcome(request).await.0, success, "{path} as {content_type}");
        }
    }
}

fn assert_security_headers(headers: &HeaderMap, what: &str) {
    assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(headers["referrer-policy"], "strict-origin-when-cross-origin", "{what}");
    let csp = headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{what}: {csp}");
    }
    assert!(!csp.contains("unsafe"), "{what}: {csp}");
    assert_eq!(headers["x-frame-options"], "DENY", "{what}");
}

#[tokio::test]
async fn every_response_carries_the_security_headers_and_framing_is_configurable() {
    let db = TestDb::new().await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let app = TestApp::spawn(&db).await;
    for path in ["/", "/assets/nothing.js", "/api/me", "/api/openapi.json", "/api/nope", "/healthz", "/metrics"] {
        let response = http().get(app.url(path)).send().await.unwrap();
        assert_security_headers(response.headers(), path);
    }
    let error = http().post(app.url("/api/jobs")).bearer_auth(&alice).body("{").send().await.unwrap();
    assert_security_headers(error.headers(), "a 415");
    // The event stream, on its own transport, and that transport's own refusal of a malformed request.
    let stream = Connect::new(&alice).open(&app.base).await;
    assert_security_headers(&stream.response_headers, "GET /api/events");
    drop(stream);
    let raw = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socket = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://")).await.unwrap();
        socket.write_all(b"GET /api/events HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut out)).await.unwrap().unwrap();
        String::from_utf8_lossy(&out).to_lowercase()
    };
    assert!(raw.starts_with("http/1.1 400"), "{raw}");
    assert!(raw.contains("x-content-type-options: nosniff") && raw.contains("referrer-policy: "), "{raw}");

    let framed = TestApp::spawn_with(&db, |c| {
        c.security = SecurityConfig::from_flags(&[], "'self' https://intranet.example", false, None).unwrap();
    })
    .await;
    let headers = http().get(framed.url("/")).send().await.unwrap().headers().clone();
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.ends_with("frame-ancestors 'self' https://intranet.example"), "{csp}");
    assert!(headers.get("x-frame-options").is_none(), "X-Frame-Options cannot say 'self' plus another origin");
}

/// The Set-Cookie headers of a response.
fn set_cookies(headers: &HeaderMap) -> Vec<String> {
    headers.get_all(SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn the_session_cookie_is_secure_with_the_host_prefix_over_https_and_read_under_both_names() {
    let (db, proxied) = seeded_with(|c| c.security.trust_proxy = true).await;
    let dev_login = |app: &TestApp, https: bool| {
        let request = http().post(app.url("/api/dev/session")).json(&json!({"dispatcherId": "alice"}));
        if https { request.header("x-forwarded-proto", "https") } else { request }
    };
    let cookies = set_cookies(dev_login(&proxied, true).send().await.unwrap().headers());
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let cookie = &cookies[0];
    assert!(cookie.starts_with("__Host-ss_session="), "{cookie}");
    for attribute in ["Secure", "HttpOnly", "Path=/", "SameSite=Lax"] {
        assert!(cookie.split("; ").any(|a| a == attribute), "{cookie} lacks {attribute}");
    }
    assert!(!cookie.contains("Domain"), "{cookie}");
    let value = cookie.split(';').next().unwrap().to_owned();
    // Signing in over https with a plain cookie left over from http drops the plain one.
    let over = http().post(proxied.url("/api/session")).header("x-forwarded-proto", "https");
    let over = over.header("cookie", "ss_session=old").json(&json!({"token": token(&db, "bob").await}));
    let cookies = set_cookies(over.send().await.unwrap().headers());
    assert!(cookies.iter().any(|c| c.starts_with("__Host-ss_session=") && c.contains("Secure")), "{cookies:?}");
    assert!(cookies.iter().any(|c| c.starts_with("ss_session=;") && c.contains("Max-Age=0")), "{cookies:?}");

    // Plain HTTP, and a proxy header from a client when no proxy is trusted: the plain cookie.
    let cookies = set_cookies(dev_login(&proxied, false).send().await.unwrap().headers());
    assert!(cookies[0].starts_with("ss_session=") && !cookies[0].contains("Secure"), "{cookies:?}");
    let direct = TestApp::spawn(&db).await;
    let cookies = set_cookies(dev_login(&direct, true).send().await.unwrap().headers());
    assert!(cookies[0].starts_with("ss_session=") && !cookies[0].contains("Secure"), "{cookies:?}");
    // A configured https public URL makes it Secure without any proxy header.
    let public = TestApp::spawn_with(&db, |c| {
        c.security = SecurityConfig::from_flags(&[], "'none'", false, Some("https://dispatch.example")).unwrap();
    })
    .await;
    let cookies = set_cookies(dev_login(&public, false).send().await.unwrap().headers());
    assert!(cookies[0].starts_with("__Host-ss_session=") && cookies[0].contains("Secure"), "{cookies:?}");

    // Both names sign in; sign-out clears both.
    let me = |cookie: String| http().get(direct.url("/api/me")).header("cookie", cookie).send();
    assert_eq!(me(value.clone()).await.unwrap().status(), 200, "the __Host- cookie");
    assert_eq!(
        me(format!("ss_session={}", token(&db, "alice").await)).await.unwrap().status(),
        200,
        "the plain cookie"
    );
    let out = http().delete(direct.url("/api/session")).header("cookie", value).send().await.unwrap();
    assert_eq!(out.status(), 204);
    let cleared = set_cookies(out.headers());
    for name in ["ss_session=;", "__Host-ss_session=;"] {
        assert!(
            cleared.iter().any(|c| c.starts_with(name) && c.contains("Max-Age=0") && c.contains("Path=/")),
            "{cleared:?}"
        );
    }
    assert!(cleared.iter().any(|c| c.starts_with("__Host-") && c.contains("Secure")), "{cleared:?}");
}

#[tokio::test]
async fn every_path_under_api_answers_json_and_the_console_says_its_charset() {
    let db = TestDb::new().await;
    let console = tempfile::tempdir().unwrap();
    std::fs::create_dir(console.path().join("assets")).unwrap();
    std::fs::write(console.path().join("index.html"), "<!doctype html><title>é</title>").unwrap();
    std::fs::write(console.path().join("assets/app.js"), "console.log('é')").unwrap();
    std::fs::write(console.path().join("assets/app.css"), "body{}").unwrap();
    let dir = console.path().to_path_buf();
    let app = TestApp::spawn_with(&db, |c| c.static_dir = Some(dir)).await;
    for path in ["/api/", "/api/nothing", "/api/jobs/", "/api/jobs/x/y/z", "/api//", "/api/events/extra"] {
        let response = http().get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(response.headers()["content-type"], "application/json", "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/jobs/some-client-route", "text/html; charset=utf-8"),
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/app.css", "text/css; charset=utf-8"),
    ] {
        let response = http().get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], content_type, "{path}");
    }
}

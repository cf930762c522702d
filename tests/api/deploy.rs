//! Running where users run it: TLS to PostgreSQL, the console embedded in the binary, start-up that fails at
//! once on what retrying cannot fix, logs without colour codes when they go to a file.

use crate::app::{ServerProcess, http};
use crate::helpers::TestDb;
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// (connections, encrypted ones, LISTEN connections) of the backends named `application_name`.
async fn ssl_of(db: &TestDb, application_name: &str) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE a.query ILIKE 'LISTEN%')
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.datname = current_database() AND a.application_name = $1",
    )
    .bind(application_name)
    .fetch_one(&db.pool)
    .await
    .expect("read pg_stat_ssl")
}

#[tokio::test]
async fn serve_with_sslmode_require_encrypts_every_connection_including_the_listener() {
    let db = TestDb::new().await;
    let ssl: String = sqlx::query_scalar("SHOW ssl").fetch_one(&db.pool).await.unwrap();
    assert_eq!(
        ssl, "on",
        "this test needs a PostgreSQL server with TLS on (Debian's cluster has it; scripts/postgres.sh turns it on for the private one)"
    );

    let require = format!("{}?sslmode=require&application_name=ss-tls-require", db.url);
    let server = ServerProcess::start_with(&require, free_port(), |_| {}).await;
    // /readyz answered 200, so the hub's LISTEN connection is up; the relay's LISTEN is up once it has
    // run; both show in pg_stat_activity as backends whose last statement is LISTEN.
    let (connections, encrypted, listening) = ssl_of(&db, "ss-tls-require").await;
    assert!(connections >= 2, "the server's pool and its listener are connected ({connections})");
    assert!(listening >= 1, "the LISTEN connection carries the same options (application_name)");
    assert_eq!(encrypted, connections, "every connection of the server is encrypted");
    drop(server);

    // The same check sees plain connections as such, so it is not vacuous.
    let disable = format!("{}?sslmode=disable&application_name=ss-tls-disable", db.url);
    let plain = ServerProcess::start_with(&disable, free_port(), |_| {}).await;
    let (connections, encrypted, listening) = ssl_of(&db, "ss-tls-disable").await;
    assert!(connections >= 2 && listening >= 1, "({connections}, {listening})");
    assert_eq!(encrypted, 0, "sslmode=disable connects without TLS");
    drop(plain);
}

/// Runs `serve` on `database_url` to its end; returns (exit code, stderr, how long it took).
fn serve_until_exit(database_url: &str) -> (Option<i32>, String, Duration) {
    let started = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smartscheduler"))
        .args(["serve", "--addr", &format!("127.0.0.1:{}", free_port())])
        .env("DATABASE_URL", database_url)
        .env("SMARTSCHEDULER_AUTH_SECRET", std::str::from_utf8(crate::app::SECRET).unwrap())
        .env("RUST_LOG", "info")
        .output()
        .expect("run smartscheduler serve");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned(), started.elapsed())
}

#[tokio::test]
async fn serve_fails_at_once_with_one_line_on_what_retrying_cannot_fix() {
    let db = TestDb::new().await;
    let server = db.url.rsplit_once('/').unwrap().0.to_owned();
    let (_, rest) = server.split_once("://").unwrap();
    let cases = [
        (format!("{server}/ss_no_such_database"), r#"database "ss_no_such_database" does not exist"#),
        (
            format!("postgres://ss_no_such_role@{}/{}", rest.rsplit_once('@').map_or(rest, |(_, h)| h), db.name),
            r#"role "ss_no_such_role" does not exist"#,
        ),
        ("localhost:5432/smartscheduler".to_owned(), "not a valid PostgreSQL connection string"),
        ("postgres://postgres@127.0.0.1:5432/x?sslmode=bogus".to_owned(), "not a valid PostgreSQL connection string"),
        // The server's certificate is not signed by a public CA and no sslrootcert names its CA.
        (format!("{}?sslmode=verify-ca", db.url), "invalid peer certificate"),
    ];
    for (url, cause) in cases {
        let (code, stderr, took) = tokio::task::spawn_blocking(move || serve_until_exit(&url)).await.unwrap();
        assert_eq!(code, Some(1), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line, no retries: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(cause), "{cause:?} not in {stderr:?}");
        assert!(!stderr.contains(" at line "), "no PostgreSQL source line numbers: {stderr}");
        // It used to retry for 10 s; at once means well under the first retry's pause.
        assert!(took < Duration::from_secs(3), "took {took:?}: {stderr}");
    }
}

#[tokio::test]
async fn serve_retries_an_unreachable_server_saying_why() {
    use tokio::io::AsyncBufReadExt;
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_smartscheduler"))
        .args(["serve", "--addr", &format!("127.0.0.1:{}", free_port())])
        .env("DATABASE_URL", format!("postgres://postgres@127.0.0.1:{port}/x"))
        .env("SMARTSCHEDULER_AUTH_SECRET", std::str::from_utf8(crate::app::SECRET).unwrap())
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start serve");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await.expect("a retry line").unwrap();
    let first = first.expect("serve wrote a line");
    assert!(first.contains("WARN"), "{first}");
    assert!(
        first.contains(&format!("cannot connect to PostgreSQL at 127.0.0.1:{port}/x: Connection refused")),
        "{first}"
    );
    assert!(first.contains("retrying"), "{first}");
    assert!(!first.contains('\u{1b}'), "no colour codes in a pipe: {first:?}");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn a_log_redirected_to_a_file_has_no_colour_codes_and_says_what_an_operator_needs() {
    let db = TestDb::new().await;
    let token = crate::app::dispatcher_token(&db, "erin", &["region:north"]).await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let file = log.reopen().unwrap();
    let mut server = ServerProcess::start_with(&db.url, free_port(), |command| {
        command.env("RUST_LOG", "info").stderr(file);
    })
    .await;
    let signed_in = http()
        .post(format!("{}/api/session", server.base))
        .json(&serde_json::json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 200);
    server.child.kill().await.unwrap();

    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(!text.contains('\u{1b}'), "ANSI escape codes in a redirected log: {text:?}");
    assert!(text.contains("INFO") && text.contains("relay started"), "{text}");
    assert!(text.contains("signed in") && text.contains("erin"), "{text}");
}

#[tokio::test]
async fn the_binary_serves_the_console_it_was_built_with_from_any_working_directory() {
    let db = TestDb::new().await;
    let elsewhere = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(&db.url, free_port(), |command| {
        command.current_dir(elsewhere.path());
    })
    .await;
    let get = |path: &str| http().get(format!("{}{path}", server.base)).send();

    let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("frontend/dist");
    let index = get("/").await.unwrap();
    match std::fs::read(dist.join("index.html")) {
        // The build embeds what frontend/dist holds (cargo reruns build.rs when it changes).
        Ok(built) => {
            assert_eq!(index.status(), 200);
            assert_eq!(index.headers()["content-type"], "text/html; charset=utf-8");
            assert_eq!(index.bytes().await.unwrap(), built, "/ is the index.html of frontend/dist");
            // A client-side route gets the same page; every built asset is served with its type.
            assert_eq!(get("/jobs/anything").await.unwrap().bytes().await.unwrap(), built);
            for entry in std::fs::read_dir(dist.join("assets")).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                let asset = get(&format!("/assets/{name}")).await.unwrap();
                assert_eq!(asset.status(), 200, "{name}");
                if name.ends_with(".js") {
                    assert_eq!(asset.headers()["content-type"], "text/javascript; charset=utf-8", "{name}");
                    assert!(asset.headers()["cache-control"].to_str().unwrap().contains("immutable"));
                }
                let on_disk = std::fs::read(dist.join("assets").join(&name)).unwrap();
                assert_eq!(asset.bytes().await.unwrap(), on_disk, "{name}");
            }
            assert_eq!(get("/assets/no-such-file.js").await.unwrap().status(), 404);
        }
        // A fresh clone before `make frontend`: the API works and / says how to get the console.
        Err(_) => {
            assert_eq!(index.status(), 404);
            assert!(index.text().await.unwrap().contains("built without the browser console"));
        }
    }
    // The API is not shadowed by the console's fallback.
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/api/nope").await.unwrap().headers()["content-type"], "application/json");
}

#[tokio::test]
async fn serve_on_a_taken_port_says_how_to_pick_another() {
    let db = TestDb::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let url = db.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_smartscheduler"))
            .args(["serve", "--addr", &addr])
            .env("DATABASE_URL", url)
            .env("SMARTSCHEDULER_AUTH_SECRET", std::str::from_utf8(crate::app::SECRET).unwrap())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the address is in use") && stderr.contains("--addr"), "{stderr}");
    drop(taken);
}

//! The command line as an operator uses it: exit codes 0/1/2, one-line causes, the dispatcher and token
//! commands, idempotent seeding.

use crate::app::{SECRET, secret};
use crate::helpers::TestDb;
use std::process::{Command, Output};

fn smartscheduler(args: &[&str], database_url: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_smartscheduler"));
    command.args(args).env_remove("DATABASE_URL").env("RUST_LOG", "warn");
    command.env("SMARTSCHEDULER_AUTH_SECRET", std::str::from_utf8(SECRET).unwrap());
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url);
    }
    command.output().expect("run smartscheduler")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_usage_errors_and_a_missing_database_url() {
    let help = smartscheduler(&["--help"], None);
    assert_eq!(help.status.code(), Some(0));
    for command in ["serve", "relay", "migrate", "seed", "dispatcher", "token", "outbox", "replay"] {
        assert!(stdout(&help).contains(command), "--help does not list {command}");
    }
    assert_eq!(smartscheduler(&["frobnicate"], None).status.code(), Some(2));
    assert_eq!(smartscheduler(&["replay"], Some("postgres://x@127.0.0.1:1/x")).status.code(), Some(2));

    let missing = smartscheduler(&["migrate"], None);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("DATABASE_URL"), "{}", stderr(&missing));
}

#[test]
fn an_unreachable_database_fails_with_exit_1_and_one_line() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = smartscheduler(&["outbox", "status"], Some(&format!("postgres://postgres@127.0.0.1:{port}/nope")));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "one line on stderr, got {err:?}");
    assert!(err.starts_with("error: cannot connect to PostgreSQL at 127.0.0.1:"), "{err}");
}

#[tokio::test]
async fn dispatchers_tokens_and_seeding_from_the_command_line() {
    let db = TestDb::new().await;
    let url = db.url.clone();
    let run = move |args: Vec<&'static str>| {
        let url = url.clone();
        std::thread::spawn(move || smartscheduler(&args, Some(&url))).join().unwrap()
    };

    let added = run(vec!["dispatcher", "add", "erin", "--name", "Erin East", "--group", "region:east"]);
    assert_eq!(added.status.code(), Some(0), "{}", stderr(&added));
    let changed = run(vec!["dispatcher", "groups", "erin", "--add", "team:hvac", "--remove", "region:east"]);
    assert_eq!(changed.status.code(), Some(0), "{}", stderr(&changed));
    let listed = run(vec!["dispatcher", "list", "--json"]);
    let all: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(all[0]["dispatcherId"], "erin");
    assert_eq!(all[0]["groups"], serde_json::json!(["team:hvac"]));

    // A value outside its domain is a usage error (exit 2), as `replay --group` has it.
    let bad_group = run(vec!["dispatcher", "groups", "erin", "--add", "Not A Group"]);
    assert_eq!(bad_group.status.code(), Some(2));
    assert!(stderr(&bad_group).contains("invalid group key"), "{}", stderr(&bad_group));

    let token = run(vec!["token", "--dispatcher", "erin", "--ttl", "30m"]);
    assert_eq!(token.status.code(), Some(0), "{}", stderr(&token));
    let claims = secret().verify(stdout(&token).trim()).expect("a valid token");
    assert_eq!(claims.sub, "erin");
    assert_eq!(claims.exp - claims.iat, 1800);
    assert_eq!(run(vec!["token", "--dispatcher", "nobody"]).status.code(), Some(1));

    let first = run(vec!["seed", "--demo"]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let second = run(vec!["seed", "--demo"]);
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    let counts: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM contractors), (SELECT count(*) FROM regions), (SELECT count(*) FROM dispatchers)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(counts.0 >= 200 && counts.1 == 4 && counts.2 == 5, "{counts:?}");
    let dana: Vec<String> =
        sqlx::query_scalar("SELECT group_key FROM dispatcher_groups WHERE dispatcher_id = 'dana' ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(dana, ["region:east", "region:north", "region:south", "region:west"]);
}

#[tokio::test]
async fn serve_on_a_taken_port_fails_before_it_migrates_or_starts_a_relay() {
    let db = TestDb::empty().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let url = db.url.clone();
    let out = std::thread::spawn(move || smartscheduler(&["serve", "--addr", &addr], Some(&url))).join().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("the address is in use"), "{}", stderr(&out));
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(tables, 0, "serve created tables before it found the port taken");
    drop(taken);
}

//! `make run` and `make test` on a machine without a PostgreSQL server start a project-private cluster.
//! Dev and CI machines always have one, so this test forces that path on a free port.

use std::process::Command;

#[test]
fn scripts_postgres_starts_a_private_cluster_when_forced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh");
    let run = |arg: &str| {
        Command::new("bash")
            .arg(script)
            .arg(arg)
            .env("SS_PG_MODE", "private")
            .env("SS_PG_DIR", dir.path())
            .env("SS_PG_PORT", port.to_string())
            .output()
            .expect("run scripts/postgres.sh")
    };

    let started = run("url");
    let stderr = String::from_utf8_lossy(&started.stderr);
    assert!(started.status.success(), "private cluster did not start: {stderr}");
    let url = String::from_utf8_lossy(&started.stdout).trim().to_owned();
    assert_eq!(url, format!("postgres://postgres@127.0.0.1:{port}"));
    // It says what it did, where, and how to stop it.
    assert!(stderr.contains("created a project-private PostgreSQL cluster in"), "{stderr}");
    assert!(stderr.contains(&format!("started the project-private PostgreSQL on 127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.contains("make pg-stop"), "{stderr}");

    // Idempotent: a second call reuses the running cluster.
    let again = run("url");
    assert!(again.status.success());
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), url);
    assert!(String::from_utf8_lossy(&again.stderr).contains("using the project-private PostgreSQL"));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (answer, encrypted): (i32, bool) = rt.block_on(async {
        use sqlx::Connection;
        // TLS is on, like on a managed server, so the test suite can check sslmode=require against it.
        let mut conn =
            sqlx::PgConnection::connect(&format!("{url}/postgres?sslmode=require")).await.expect("connect over TLS");
        sqlx::query_as("SELECT 41 + 1, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .expect("query")
    });
    assert_eq!((answer, encrypted), (42, true));

    let stopped = run("stop");
    assert!(stopped.status.success());
    assert!(String::from_utf8_lossy(&stopped.stderr).contains("stopped the project-private PostgreSQL"));
}

//! A database outage, made by cutting a TCP proxy between the server and PostgreSQL: the API answers 503,
//! `/readyz` says not ready, and when the database is back everything recovers with no event lost.

use crate::app::*;
use crate::helpers::*;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Forwards a local port to the PostgreSQL server until stopped.
struct Proxy {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(addr: SocketAddr, upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new(); // dropped (aborting every connection) when the task is aborted
            while let Ok((mut client, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self { addr, task }
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn upstream() -> SocketAddr {
    let options = smartscheduler::db::connect_options(&admin_url()).unwrap();
    let host = if options.get_host() == "localhost" { "127.0.0.1" } else { options.get_host() };
    format!("{host}:{}", options.get_port()).parse().expect("the test server is addressed by IP")
}

async fn get_status(url: String, token: &str) -> u16 {
    http().get(url).bearer_auth(token).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_the_database_is_unreachable_the_api_says_503_and_recovers_without_loss() {
    let db = TestDb::new().await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let proxy = Proxy::start("127.0.0.1:0".parse().unwrap(), upstream()).await;
    let proxied_url = db.url.replace(&format!("{}", upstream().port()), &proxy.addr.port().to_string());
    let app = TestApp::spawn_url(&proxied_url, |_| {}).await;
    let mut client = Connect::new(&alice).open(&app.base).await;
    write_event(&db.pool, &["region:north"], json!({"n": 0})).await;
    assert_eq!(seq_of(&client.next_data(Duration::from_secs(10)).await), 1);

    let proxy_addr = proxy.addr;
    proxy.stop().await;
    assert_eq!(get_status(app.url("/api/me"), &alice).await, 503);
    let body: serde_json::Value =
        http().get(app.url("/api/jobs")).bearer_auth(&alice).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["error"]["code"], "database_unavailable");
    assert_eq!(http().get(app.url("/readyz")).send().await.unwrap().status(), 503);
    assert_eq!(http().get(app.url("/healthz")).send().await.unwrap().status(), 200);

    // Events committed during the outage (directly, not through the proxy).
    for n in 1..=20 {
        write_event(&db.pool, &["region:north"], json!({ "n": n })).await;
    }

    let proxy = Proxy::start(proxy_addr, upstream()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while http().get(app.url("/readyz")).send().await.unwrap().status() != 200 {
        assert!(tokio::time::Instant::now() < deadline, "not ready again after the database came back");
        tokio::time::sleep(Duration::from_millis(100)).await; // readiness polling
    }
    assert_eq!(get_status(app.url("/api/me"), &alice).await, 200);

    // The stream opened before the outage either continues or has ended; resume it by position.
    let mut resumed = Connect::new(&alice).header(&client_last(&db, 1).await).open(&app.base).await;
    let seqs: Vec<i64> = resumed.take(20, Duration::from_secs(20)).await.iter().map(seq_of).collect();
    assert_eq!(seqs, (2..=21).collect::<Vec<_>>());
    drop(client);
    proxy.stop().await;
}

async fn client_last(db: &TestDb, seq: i64) -> String {
    let epoch: String = sqlx::query_scalar("SELECT epoch FROM stream_meta").fetch_one(&db.pool).await.unwrap();
    format!("{epoch}-{seq}")
}

//! A real server on a free port (in-process, or the real binary as a child process) and an SSE client.

#![allow(dead_code)]

use crate::helpers::TestDb;
use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use smartscheduler::auth::{self, AuthSecret};
use smartscheduler::server::{Server, ServerConfig};
use smartscheduler::stream::HubConfig;
use std::pin::Pin;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const SECRET: &[u8] = b"test-secret-test-secret-test-secret-0123456789";

pub fn secret() -> AuthSecret {
    AuthSecret::new(SECRET).unwrap()
}

/// Hub settings that make tests quick: fast membership polling and heartbeats.
pub fn test_hub_config() -> HubConfig {
    HubConfig {
        membership_poll: Duration::from_millis(300),
        heartbeat: Duration::from_secs(1),
        safety_poll: Duration::from_millis(500),
        ..HubConfig::default()
    }
}

pub struct TestApp {
    pub base: String,
    pub shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn(db: &TestDb) -> Self {
        Self::spawn_with(db, |_| {}).await
    }

    /// Starts a server; `configure` may change its config. Its pool is named `server-app` so tests can kill it.
    pub async fn spawn_with(db: &TestDb, configure: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::spawn_named(db, "server-app", configure).await
    }

    pub async fn spawn_named(db: &TestDb, pool_name: &str, configure: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::start(db.pool_named(pool_name, 16).await, configure).await
    }

    /// A server whose pool connects to `url` lazily (it may be unreachable at times).
    pub async fn spawn_url(url: &str, configure: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::start(smartscheduler::db::connect_lazy(url, 16).unwrap(), configure).await
    }

    /// A server over a pool the test built (its size and acquire timeout are the test's).
    pub async fn spawn_pool(pool: sqlx::PgPool, configure: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::start(pool, configure).await
    }

    async fn start(pool: sqlx::PgPool, configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap());
        config.dev = true;
        config.hub = test_hub_config();
        configure(&mut config);
        let shutdown = CancellationToken::new();
        let server = Server::start(pool, config, secret(), shutdown.clone()).await.expect("server starts");
        let base = format!("http://{}", server.local_addr().unwrap());
        let task = tokio::spawn(server.run());
        Self { base, shutdown, task: Some(task) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Graceful stop; returns once streams ended and the relay finished.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server ran cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Adds a dispatcher with groups and returns a token for them.
pub async fn dispatcher_token(db: &TestDb, id: &str, groups: &[&str]) -> String {
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    auth::add_dispatcher(&db.pool, id, &format!("Dispatcher {id}"), &groups).await.unwrap();
    token_for(db, id, Duration::from_secs(3600)).await
}

/// A token for the existing dispatcher `id`, at their current token generation, valid for `ttl`.
pub async fn token_for(db: &TestDb, id: &str, ttl: Duration) -> String {
    let generation = auth::token_generation(&db.pool, id).await.unwrap().expect("the dispatcher exists");
    secret().issue(id, generation, ttl).unwrap()
}

/// A fresh database with the demo data (`seed --demo`) and a server on it.
pub async fn seeded_app() -> (TestDb, TestApp) {
    let db = TestDb::new().await;
    smartscheduler::recommendations::seed::seed_demo(&db.pool).await.expect("seed");
    let app = TestApp::spawn(&db).await;
    (db, app)
}

/// A token for dispatcher `id`, valid for an hour.
pub async fn hour_token(db: &TestDb, id: &str) -> String {
    token_for(db, id, Duration::from_secs(3600)).await
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>;

/// An open SSE stream, read with timeouts so that a missing event fails the test instead of hanging it.
pub struct SseClient {
    pub response_headers: reqwest::header::HeaderMap,
    events: EventStream,
}

pub struct Connect<'a> {
    pub token: &'a str,
    pub groups: Option<&'a str>,
    pub last_event_id_header: Option<&'a str>,
    pub last_event_id_query: Option<&'a str>,
}

impl<'a> Connect<'a> {
    pub fn new(token: &'a str) -> Self {
        Self { token, groups: None, last_event_id_header: None, last_event_id_query: None }
    }
    pub fn groups(mut self, g: &'a str) -> Self {
        self.groups = Some(g);
        self
    }
    pub fn header(mut self, p: &'a str) -> Self {
        self.last_event_id_header = Some(p);
        self
    }
    pub fn query(mut self, p: &'a str) -> Self {
        self.last_event_id_query = Some(p);
        self
    }

    pub async fn send(self, base: &str) -> reqwest::Response {
        let mut url = reqwest::Url::parse(&format!("{base}/api/events")).unwrap();
        if let Some(g) = self.groups {
            url.query_pairs_mut().append_pair("groups", g);
        }
        if let Some(p) = self.last_event_id_query {
            url.query_pairs_mut().append_pair("lastEventId", p);
        }
        let mut request = http().get(url).bearer_auth(self.token).header("accept-encoding", "gzip, br");
        if let Some(p) = self.last_event_id_header {
            request = request.header("last-event-id", p);
        }
        request.send().await.expect("request sent")
    }

    pub async fn open(self, base: &str) -> SseClient {
        let response = self.send(base).await;
        assert_eq!(response.status(), 200, "stream refused: {:?}", response.text().await);
        let response_headers = response.headers().clone();
        let events = response.bytes_stream().eventsource().map(|r| r.map_err(|e| e.to_string())).boxed();
        SseClient { response_headers, events }
    }
}

impl SseClient {
    /// The next event (comments are skipped by the parser), or panics after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Event {
        match tokio::time::timeout(timeout, self.events.next()).await {
            Ok(Some(Ok(event))) => event,
            Ok(Some(Err(e))) => panic!("stream error: {e}"),
            Ok(None) => panic!("stream ended"),
            Err(_) => panic!("no event within {timeout:?}"),
        }
    }

    /// The next event that carries data (skips the opening `retry`/`id` block, heartbeats and receipt hints,
    /// which the server sends on its own, for example `{"stale": true}` after its listener reconnected).
    pub async fn next_data(&mut self, timeout: Duration) -> Event {
        loop {
            let event = self.next(timeout).await;
            if !event.data.is_empty() && event.event != "heartbeat" && event.event != "receipt" {
                return event;
            }
        }
    }

    /// The next event named `name` (`event: <name>`), skipping all others; panics after `timeout` in all.
    pub async fn next_named(&mut self, name: &str, timeout: Duration) -> Event {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next(left).await;
            if event.event == name {
                return event;
            }
        }
    }

    /// `n` data events.
    pub async fn take(&mut self, n: usize, timeout: Duration) -> Vec<Event> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next_data(timeout).await);
        }
        out
    }

    /// Whether the stream ends (None) within `timeout`, skipping events.
    pub async fn ends_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.next()).await {
                Ok(None) => return true,
                Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => continue,
                Err(_) => return false,
            }
        }
    }
}

pub fn seq_of(event: &Event) -> i64 {
    event.id.rsplit_once('-').and_then(|(_, s)| s.parse().ok()).expect("event id is a position")
}

pub fn data_json(event: &Event) -> serde_json::Value {
    serde_json::from_str(&event.data).expect("data is JSON")
}

/// `smartscheduler serve` as a child process on a free port, killed when dropped.
pub struct ServerProcess {
    pub base: String,
    pub child: tokio::process::Child,
}

impl ServerProcess {
    /// Starts the real binary on `db` and waits until `/readyz` answers 200.
    pub async fn start(db: &TestDb) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::start_on(db, port).await
    }

    pub async fn start_on(db: &TestDb, port: u16) -> Self {
        Self::start_with(&db.url, port, |_| {}).await
    }

    /// Starts `serve` on `database_url` and `port`; `configure` may add arguments, environment or a working
    /// directory to the command before it starts.
    pub async fn start_with(
        database_url: &str,
        port: u16,
        configure: impl FnOnce(&mut tokio::process::Command),
    ) -> Self {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_smartscheduler"));
        command
            .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", database_url)
            .env("SMARTSCHEDULER_AUTH_SECRET", std::str::from_utf8(SECRET).unwrap())
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null());
        configure(&mut command);
        let child = command.spawn().expect("start the server binary");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http().get(format!("{base}/readyz")).send().await
                && r.status() == 200
            {
                return Self { base, child };
            }
            assert!(tokio::time::Instant::now() < deadline, "server not ready");
            tokio::time::sleep(Duration::from_millis(50)).await; // readiness polling, nothing to await
        }
    }
}

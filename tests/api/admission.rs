//! No one locks the others out: per-dispatcher and instance stream limits, a bound on connections that
//! have not sent their request head, head and idle timeouts, the `Host` rule, half-closed clients, and
//! envelopes that name only the stream's own groups. Raw sockets where the bytes on the wire matter.

use crate::app::*;
use crate::helpers::*;
use smartscheduler::http::admission::ConnectionLimits;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://")).await.expect("connects")
}

/// Reads until the peer closes (or `WAIT` passes: then panics); returns what arrived.
async fn read_to_close(socket: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        loop {
            match socket.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    read.await.expect("the server closes the connection in time");
    String::from_utf8_lossy(&buf).into_owned()
}

fn limits(max_pending_heads: usize, head_timeout: Duration) -> ConnectionLimits {
    ConnectionLimits { max_connections: 10_000, max_streams: 9_000, max_pending_heads, head_timeout }
}

#[tokio::test]
async fn a_dispatcher_at_its_stream_limit_gets_a_429_while_others_stream_on() {
    let db = TestDb::new().await;
    let app = TestApp::spawn_with(&db, |c| c.streams_per_dispatcher = 3).await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let bob = dispatcher_token(&db, "bob", &["region:north"]).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Connect::new(&alice).open(&app.base).await);
    }
    let refused = Connect::new(&alice).send(&app.base).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "5");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("close other tabs"), "{body}");

    let mut bobs = Connect::new(&bob).open(&app.base).await;
    write_event(&db.pool, &["region:north"], serde_json::json!({ "n": 1 })).await;
    assert_eq!(data_json(&bobs.next_data(WAIT).await)["n"], 1, "another dispatcher is not affected");

    // A stream that ends frees its place (the server notices the closed connection).
    drop(open.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let again = Connect::new(&alice).send(&app.base).await;
        if again.status() == 200 {
            break;
        }
        assert_eq!(again.status(), 429);
        assert!(Instant::now() < deadline, "the closed stream's place was never freed");
        tokio::task::yield_now().await;
    }
}

/// The refusal is decided on the token alone: with the dispatchers table locked (every lookup would wait),
/// a stream over the limit is still refused at once. So a token flooding streams costs the database nothing
/// and the other dispatchers' lookups do not queue behind its own.
#[tokio::test]
async fn a_stream_over_the_limit_is_refused_before_the_dispatcher_is_read() {
    let db = TestDb::new().await;
    let app = TestApp::spawn_with(&db, |c| c.streams_per_dispatcher = 2).await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let _open = [Connect::new(&alice).open(&app.base).await, Connect::new(&alice).open(&app.base).await];

    let mut lock = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE dispatchers IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), Connect::new(&alice).send(&app.base))
        .await
        .expect("a stream over the limit waited for the dispatcher's record");
    assert_eq!(refused.status(), 429);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams", "{body}");
    lock.rollback().await.unwrap();
}

#[tokio::test]
async fn a_flood_of_half_sent_heads_evicts_itself_and_health_checks_still_answer() {
    let db = TestDb::new().await;
    let app = TestApp::spawn_with(&db, |c| c.connection_limits = Some(limits(16, Duration::from_secs(30)))).await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let mut flood = Vec::new();
    for i in 0..200 {
        let mut socket = connect(&app).await;
        let head: &[u8] = if i % 2 == 0 { b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a" } else { b"GET /api/events?g" };
        socket.write_all(head).await.unwrap();
        flood.push(socket);
    }
    let started = Instant::now();
    let health = http().get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let me = http().get(app.url("/api/me")).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(me.status(), 200);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "health and API took {took:?} under the flood");

    // All but the newest 16 half-sent heads were closed to make room (the two requests above took 2 places).
    let mut closed = 0;
    for socket in flood.iter_mut().take(180) {
        read_to_close(socket).await;
        closed += 1;
    }
    assert_eq!(closed, 180);
}

#[tokio::test]
async fn a_head_sent_a_byte_at_a_time_is_cut_off_at_the_head_timeout_on_both_transports() {
    let db = TestDb::new().await;
    let timeout = Duration::from_millis(800);
    let app = TestApp::spawn_with(&db, |c| c.connection_limits = Some(limits(1000, timeout))).await;
    for start in [&b"GET /healthz HTTP/1.1\r\nHost: x\r\n"[..], &b"GET /api/events HTTP/1.1\r\nHost: x\r\n"[..]] {
        let mut socket = connect(&app).await;
        socket.write_all(start).await.unwrap();
        let started = Instant::now();
        // Trickle one header byte every 100 ms: each byte is progress, but the head never completes.
        let trickle = async {
            while socket.write_all(b"a").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if started.elapsed() > WAIT {
                    break;
                }
            }
        };
        trickle.await;
        let took = started.elapsed();
        assert!(took < timeout * 4, "{:?}: the trickling head was allowed {took:?}", String::from_utf8_lossy(start));
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_head_timeout() {
    let db = TestDb::new().await;
    let timeout = Duration::from_millis(500);
    let app = TestApp::spawn_with(&db, |c| c.connection_limits = Some(limits(1000, timeout))).await;
    let mut socket = connect(&app).await;
    socket.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let started = Instant::now();
    let text = read_to_close(&mut socket).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(started.elapsed() < timeout * 6, "idle for {:?} before the server closed", started.elapsed());
}

/// CPU time this thread has used (utime + stime from /proc, in clock ticks of 10 ms).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("linux /proc");
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[tokio::test] // current-thread: the server's tasks run on this thread, so its CPU time is theirs
async fn connections_that_send_a_prefix_of_the_stream_request_cost_no_cpu_while_they_wait() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut prefixes = Vec::new();
    for _ in 0..250 {
        let mut socket = connect(&app).await;
        socket.write_all(b"GET /api/ev").await.unwrap();
        prefixes.push(socket);
    }
    tokio::task::yield_now().await;
    let before = thread_cpu();
    // The measuring window: the server is left alone with 250 undecided connections.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = thread_cpu() - before;
    assert!(used < Duration::from_millis(150), "250 undecided connections used {used:?} of CPU in 1 s");
    let health = http().get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_stream_request_still_gets_the_stream() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let mut socket = connect(&app).await;
    let request = format!("GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    socket.shutdown().await.unwrap(); // our sending side only
    let mut buf = Vec::new();
    let opened = tokio::time::timeout(WAIT, async {
        while !String::from_utf8_lossy(&buf).contains("retry: ") {
            assert!(socket.read_buf(&mut buf).await.unwrap() > 0, "closed: {}", String::from_utf8_lossy(&buf));
        }
    });
    opened.await.expect("the opening block arrives");
    write_event(&db.pool, &["region:north"], serde_json::json!({ "after": "half-close" })).await;
    let live = tokio::time::timeout(WAIT, async {
        while !String::from_utf8_lossy(&buf).contains("half-close") {
            assert!(socket.read_buf(&mut buf).await.unwrap() > 0, "closed: {}", String::from_utf8_lossy(&buf));
        }
    });
    live.await.expect("a live event arrives on the half-closed connection");
}

#[tokio::test]
async fn an_http_1_1_request_needs_exactly_one_host_and_http_1_0_needs_none() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let exchange = |request: String| {
        let app = &app;
        async move {
            let mut socket = connect(app).await;
            socket.write_all(request.as_bytes()).await.unwrap();
            read_to_close(&mut socket).await
        }
    };
    let no_host = exchange("GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n".to_owned()).await;
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    assert!(no_host.contains("\"code\":\"bad_request\""), "{no_host}");
    let two = exchange("GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n".to_owned()).await;
    assert!(two.starts_with("HTTP/1.1 400"), "{two}");
    let stream = exchange(format!("GET /api/events HTTP/1.1\r\nAuthorization: Bearer {alice}\r\n\r\n")).await;
    assert!(stream.starts_with("HTTP/1.1 400"), "the lean transport too: {stream}");
    let old = exchange("GET /healthz HTTP/1.0\r\n\r\n".to_owned()).await;
    assert!(old.starts_with("HTTP/1.1 200") || old.starts_with("HTTP/1.0 200"), "{old}");
}

#[tokio::test]
async fn an_envelope_names_only_the_groups_of_the_stream_it_reaches() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let hr = dispatcher_token(&db, "hana", &["region:north", "team:secret-hr-investigation"]).await;
    let mut north = Connect::new(&alice).open(&app.base).await;
    let mut both = Connect::new(&hr).open(&app.base).await;
    write_event(&db.pool, &["region:north", "team:secret-hr-investigation"], serde_json::json!({ "n": 1 })).await;
    assert_eq!(data_json(&north.next_data(WAIT).await)["groups"], serde_json::json!(["region:north"]));
    assert_eq!(
        data_json(&both.next_data(WAIT).await)["groups"],
        serde_json::json!(["region:north", "team:secret-hr-investigation"])
    );
    // A resume reads the same event from the log: narrowed the same way.
    let position = format!("{}-0", epoch(&db).await);
    let mut resumed = Connect::new(&alice).header(&position).open(&app.base).await;
    assert_eq!(data_json(&resumed.next_data(WAIT).await)["groups"], serde_json::json!(["region:north"]));
}

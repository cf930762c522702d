//! The two ways a stream reaches the wire: a connection that opens with `GET /api/events` is served by the
//! lean stream transport, a stream requested on a keep-alive connection that served something else first
//! stays on hyper. Both must look the same to a client. Raw sockets, so that which connection carries
//! which request is certain.

use crate::app::*;
use crate::helpers::*;
use memchr::memmem;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://")).await.expect("connects")
}

fn stream_request(token: &str) -> String {
    format!(
        "GET /api/events HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    )
}

/// Reads until `needle` has arrived (or fails after `WAIT`); returns everything read.
async fn read_until(socket: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) {
    let found = tokio::time::timeout(WAIT, async {
        while memmem::find(buf, needle).is_none() {
            let n = socket.read_buf(buf).await.expect("reads");
            assert!(n > 0, "connection closed before {:?}; got {:?}", String::from_utf8_lossy(needle), lossy(buf));
        }
    })
    .await;
    assert!(found.is_ok(), "no {:?} within {WAIT:?}; got {:?}", String::from_utf8_lossy(needle), lossy(buf));
}

fn lossy(buf: &[u8]) -> String {
    String::from_utf8_lossy(buf).into_owned()
}

/// Reads the whole response of a `connection: close` exchange.
async fn read_to_close(socket: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, socket.read_to_end(&mut buf)).await.expect("closes in time").expect("reads");
    lossy(&buf)
}

/// On a stream just requested on `socket`: waits for its opening block, publishes one event for north and
/// waits for it too. Everything read is in `buf`.
async fn expect_live_event(db: &TestDb, socket: &mut TcpStream, buf: &mut Vec<u8>) {
    read_until(socket, buf, b"retry: ").await;
    read_until(socket, buf, b"\n\n").await; // the opening block is complete, so the stream is attached
    write_event(&db.pool, &["region:north"], serde_json::json!({ "hello": "there" })).await;
    read_until(socket, buf, b"\"hello\": \"there\"").await;
}

/// A server and alice (region:north).
async fn server_and_alice() -> (TestDb, TestApp, String) {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    (db, app, alice)
}

/// Sends `request` on a new connection, expects a live event on it, returns everything read, lowercased.
async fn stream_text(db: &TestDb, app: &TestApp, request: &str) -> String {
    let mut socket = connect(app).await;
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    expect_live_event(db, &mut socket, &mut buf).await;
    lossy(&buf).to_ascii_lowercase()
}

/// Sends `request` on a new connection and returns the whole response (the server closes after it).
async fn exchange(app: &TestApp, request: &[u8]) -> String {
    let mut socket = connect(app).await;
    socket.write_all(request).await.unwrap();
    read_to_close(&mut socket).await
}

#[tokio::test]
async fn a_connection_that_opens_with_the_stream_gets_a_chunked_event_stream_with_the_contract_headers() {
    let (db, app, alice) = server_and_alice().await;
    let text = stream_text(&db, &app, &stream_request(&alice)).await;
    let head = &text[..text.find("\r\n\r\n").expect("a response head")];
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    for line in ["content-type: text/event-stream", "cache-control: no-cache", "x-accel-buffering: no"] {
        assert!(head.contains(line), "missing {line:?} in {head}");
    }
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("content-encoding"), "{head}");
    assert!(text.contains("\nevent: "), "{text}");
}

#[tokio::test]
async fn a_stream_on_a_keep_alive_connection_that_served_another_request_first_works_too() {
    let (db, app, alice) = server_and_alice().await;

    let mut socket = connect(&app).await;
    let me = format!("GET /api/me HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {alice}\r\n\r\n");
    socket.write_all(me.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    read_until(&mut socket, &mut buf, b"\"alice\"").await;
    assert!(lossy(&buf).starts_with("HTTP/1.1 200"), "{}", lossy(&buf));

    // Same connection, now the stream.
    buf.clear();
    socket.write_all(stream_request(&alice).as_bytes()).await.unwrap();
    expect_live_event(&db, &mut socket, &mut buf).await;
    let text = lossy(&buf).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
    assert!(text.contains("content-type: text/event-stream"), "{text}");
}

#[tokio::test]
async fn an_http_1_0_client_gets_the_stream_without_chunked_framing() {
    let (db, app, alice) = server_and_alice().await;
    let request = format!("GET /api/events HTTP/1.0\r\nAuthorization: Bearer {alice}\r\n\r\n");
    let text = stream_text(&db, &app, &request).await;
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(body.starts_with("retry: "), "the body is the event stream itself: {body:?}");
}

#[tokio::test]
async fn refusals_on_the_stream_transport_use_the_contract_error_shape() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;

    // No credentials: the router's own 401.
    let response = exchange(&app, b"GET /api/events HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    assert!(response.contains("\"error\":{\"code\":\""), "{response}");

    // A malformed head.
    let response = exchange(&app, b"GET /api/events HTTP/1.1\r\nno colon here\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("\"code\":\"bad_request\""), "{response}");

    // A head larger than 16 KiB.
    let huge = format!("GET /api/events HTTP/1.1\r\nHost: test\r\nCookie: {}\r\n\r\n", "x".repeat(20_000));
    let response = exchange(&app, huge.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");

    // A GET with a body.
    let response = exchange(&app, b"GET /api/events HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\n\r\nabc").await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
}

/// `smartscheduler_sse_connections` from a server's `/metrics`.
async fn open_streams(base: &str) -> f64 {
    let text = http().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("smartscheduler_sse_connections "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// The real binary (its own metrics registry, unlike the in-process servers that tests share).
#[tokio::test]
async fn a_client_that_hangs_up_is_removed_at_once() {
    let db = TestDb::new().await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let server = ServerProcess::start(&db).await;
    assert_eq!(open_streams(&server.base).await, 0.0);

    let mut socket = TcpStream::connect(server.base.trim_start_matches("http://")).await.unwrap();
    socket.write_all(stream_request(&alice).as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    read_until(&mut socket, &mut buf, b"retry: ").await;
    assert_eq!(open_streams(&server.base).await, 1.0);

    drop(socket);
    // No event and no heartbeat is due: only noticing the hang-up can remove it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while open_streams(&server.base).await > 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "the stream was not removed after its client left");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling /metrics: there is nothing to await
    }
}

#[tokio::test]
async fn shutdown_does_not_wait_for_connections_that_never_sent_a_request() {
    let (_db, app, alice) = server_and_alice().await;
    let _preconnect = connect(&app).await; // a browser's speculative connection: no bytes, ever
    let _half_sent = {
        let mut socket = connect(&app).await;
        socket.write_all(b"GET /api/events HTTP/1.1\r\nHost: te").await.unwrap();
        socket
    };
    let mut streaming = connect(&app).await;
    streaming.write_all(stream_request(&alice).as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    read_until(&mut streaming, &mut buf, b"retry: ").await;

    let stopped = tokio::time::timeout(Duration::from_secs(5), app.stop()).await;
    assert!(stopped.is_ok(), "the server waited for idle connections");
    // The open stream was ended cleanly: the last chunk, then the close.
    let rest = read_to_close(&mut streaming).await;
    assert!(rest.ends_with("0\r\n\r\n"), "{rest:?}");
}

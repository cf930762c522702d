//! A lean HTTP/1.1 transport for connections whose first request is `GET /api/events`.
//!
//! Why not hyper for these: hyper's HTTP/1 connection holds an 8 KiB read buffer and an 8 KiB write
//! buffer for as long as the connection lives, and an event stream lives for hours while it mostly idles.
//! At 10,000 idle dispatchers that is most of the server's memory. So the accept loop peeks at each new
//! connection: one that opens with the stream request is served here, everything else goes to hyper as
//! before. The request itself still goes through the same axum router (authentication, validation,
//! errors, metrics and tracing are shared); only the bytes on the wire are handled here: the request head
//! is parsed with `httparse` into a buffer that is freed before the stream starts, and each event is
//! written as one HTTP/1.1 chunk straight to the socket, with no buffer kept in between.
//!
//! The connection is not reused after the response (`connection: close`): an event stream only ends when
//! the server ends it. A stream opened on a connection that served other requests first (a browser may
//! reuse an idle keep-alive connection for it) stays on hyper, which handles it just as correctly.

use super::admission::Ticket;
use super::{ApiError, code_for_status};
use axum::Router;
use axum::body::{Body, HttpBody};
use axum::http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use axum::response::IntoResponse;
use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The request line prefix this transport takes (followed by a space or `?`).
pub(super) const STREAM_REQUEST: &[u8] = b"GET /api/events";
/// Largest request head accepted (cookies included), on this transport and on hyper's; larger gets 431.
pub(super) const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header lines in a request head, on both transports; more gets 431.
pub(super) const MAX_HEADERS: usize = 64;

/// Serves the connection's one request through `app` and streams the response. The stream itself ends on
/// the server's shutdown token; `shutdown` here only stops waiting for a request that has not arrived.
/// `first_bytes` are the bytes of the head that the caller read already.
pub(crate) async fn serve(
    mut stream: TcpStream,
    first_bytes: Vec<u8>,
    ticket: &Ticket,
    head_timeout: Duration,
    app: Router,
    shutdown: CancellationToken,
) {
    let head = tokio::select! {
        head = tokio::time::timeout(head_timeout, read_request(&mut stream, first_bytes)) => head,
        // Too slow to be anything but one of a flood of half-sent heads: closed to make room.
        _ = ticket.evicted() => return,
        _ = shutdown.cancelled() => return,
    };
    ticket.head_received();
    let request = match head {
        Ok(Ok(Some(request))) => request,
        Ok(Ok(None)) => return, // the client left before sending a whole request
        // The client started a request and did not finish it in time: say so before closing.
        Err(_) => {
            let timeout = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the request head did not arrive within {}s", head_timeout.as_secs()),
            );
            let _ = write_response(&mut stream, timeout.into_response(), true).await;
            return;
        }
        Ok(Err(status)) => {
            let _ = write_response(&mut stream, error_response(status), true).await;
            return drain_before_close(&mut stream).await;
        }
    };
    let chunked = request.version() == Version::HTTP_11;
    let response = match app.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if let Err(error) = write_response(&mut stream, response, chunked).await {
        tracing::debug!(%error, "event stream connection ended");
    }
}

/// Closing a socket with unread request bytes makes the kernel reset the connection, and the client may
/// then lose the response just written. So read (and drop) what the client still sends, briefly.
async fn drain_before_close(stream: &mut TcpStream) {
    let mut sink = [0u8; 1024];
    let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// Reads and parses the request head. `Err` is the status to answer with.
async fn read_request(stream: &mut TcpStream, mut head: Vec<u8>) -> Result<Option<Request<Body>>, StatusCode> {
    if let Some(request) = parse_head(&head)? {
        return Ok(Some(request));
    }
    loop {
        if head.len() == head.capacity() {
            head.reserve(head.capacity()); // double, so a large head is parsed a few times, not per 64 bytes
        }
        match stream.read_buf(&mut head).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
        if let Some(request) = parse_head(&head)? {
            return Ok(Some(request));
        }
    }
}

/// Parses the bytes received so far: `Ok(None)` while the head is incomplete (and under the size limit),
/// the request once it is complete, or the status to refuse it with. Pure, so that it can be fuzzed.
pub(super) fn parse_head(head: &[u8]) -> Result<Option<Request<Body>>, StatusCode> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(_)) => to_request(&parsed).map(Some),
        Ok(httparse::Status::Partial) if head.len() >= MAX_HEAD_BYTES => {
            Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(_) => Err(StatusCode::BAD_REQUEST),
    }
}

fn to_request(parsed: &httparse::Request<'_, '_>) -> Result<Request<Body>, StatusCode> {
    let path = parsed.path.ok_or(StatusCode::BAD_REQUEST)?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        // HTTP/1.0 clients (nginx proxies by default) get the same stream without chunked framing.
        Some(0) => Version::HTTP_10,
        _ => return Err(StatusCode::BAD_REQUEST),
    };
    if parsed.method != Some("GET") {
        return Err(StatusCode::BAD_REQUEST);
    }
    let mut request = Request::builder().method(Method::GET).uri(path).version(version);
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| StatusCode::BAD_REQUEST)?;
        // A request body on a GET would be read as the next request by a keep-alive server: refuse it.
        if name == header::CONTENT_LENGTH && h.value != b"0" || name == header::TRANSFER_ENCODING {
            return Err(StatusCode::BAD_REQUEST);
        }
        let value = HeaderValue::from_bytes(h.value).map_err(|_| StatusCode::BAD_REQUEST)?;
        request = request.header(name, value);
    }
    request.body(Body::empty()).map_err(|_| StatusCode::BAD_REQUEST)
}

/// A refusal of the transport itself, in the contract's error shape like the router's own.
pub(super) fn error_response(status: StatusCode) -> Response<Body> {
    let reason = status.canonical_reason().unwrap_or("error").to_lowercase();
    let message = match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            format!("the request head is over {} KiB or {MAX_HEADERS} headers", MAX_HEAD_BYTES / 1024)
        }
        _ => format!("malformed HTTP request: {reason}"),
    };
    ApiError::new(status, code_for_status(status), message).into_response()
}

/// Writes the head, then the body: with a length if it has one, else chunk by chunk (`chunked`; an
/// HTTP/1.0 client gets the bytes as they are, ended by the close) until it ends or the client goes away.
async fn write_response(stream: &mut TcpStream, response: Response<Body>, chunked: bool) -> std::io::Result<()> {
    let (mut parts, mut body) = response.into_parts();
    super::security::add_transport_headers(&mut parts.headers);
    let length = body.size_hint().exact();
    let chunked = chunked && length.is_none();
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONNECTION || name == header::TRANSFER_ENCODING || name == header::CONTENT_LENGTH {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        head.extend_from_slice(format!("date: {}\r\n", httpdate::fmt_http_date(SystemTime::now())).as_bytes());
    }
    if let Some(n) = length {
        head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
    } else if chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    stream.write_all(&head).await?;
    drop(head);

    let (mut reader, mut writer) = stream.split();
    let mut hangup = HangupWatch::new(chunked);
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            seen = hangup.wait(&mut reader) => {
                match seen {
                    Hangup::Gone => return Ok(()),
                    Hangup::SendProbe => hangup.send_probe(&mut writer).await?,
                    Hangup::Nothing => {}
                }
                continue;
            }
        };
        let first = match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue, // trailers (none are sent) or an empty frame
            },
            // The handler's body failed: end without the last chunk, so the client sees a broken stream.
            Some(Err(_)) => return Ok(()),
            None => break,
        };
        // A resume yields its backlog all at once: take every frame that is ready with this one and write
        // them with one system call instead of one per event (a reconnect storm is millions of events).
        let (burst, end) = ready_frames(&mut body, first);
        if let [only] = burst.as_slice() {
            if chunked {
                write_chunk(&mut writer, only.clone()).await?;
            } else {
                writer.write_all(only).await?;
            }
        } else {
            writer.write_all(&encode_burst(&burst, chunked)).await?;
        }
        match end {
            BurstEnd::More => {}
            BurstEnd::Failed => return Ok(()),
            BurstEnd::Finished => break,
        }
    }
    if chunked {
        writer.write_all(b"0\r\n\r\n").await?;
    }
    writer.shutdown().await
}

/// Tells a client that hung up from one that only half-closed (shut its sending side after the request,
/// as `curl` with a closed stdin or some proxies do) and still reads the stream.
///
/// A read returning end-of-file means either. So on end-of-file the stream sends a comment line (which
/// an EventSource ignores) at once and again [`HANGUP_PROBE_GAP`] later: a client that is gone answers
/// the first with a reset, which fails the second; a half-closed one takes both and gets the stream.
/// After that, heartbeats find out the same way if it goes later.
#[derive(Debug)]
struct HangupWatch {
    /// Whether the body is sent in HTTP/1.1 chunks (the probe must be one too).
    chunked: bool,
    /// End-of-file seen; how many probes were sent since.
    read_closed: Option<u8>,
}

/// Pause between the two probes of a half-closed connection: more than a round trip on any link a
/// browser uses, so a reset answering the first has arrived.
const HANGUP_PROBE_GAP: Duration = Duration::from_millis(500);
/// An SSE comment line: an EventSource ignores it.
const PROBE_COMMENT: &[u8] = b":\n\n";

/// What the watch saw.
#[derive(Debug, PartialEq)]
enum Hangup {
    /// The client is gone: end the stream.
    Gone,
    /// Send a probe now (outside any `select!`, so that a write is never cut in half), then call
    /// [`HangupWatch::probe_sent`].
    SendProbe,
    /// The client sent bytes a streaming GET has no use for; they were dropped.
    Nothing,
}

impl HangupWatch {
    fn new(chunked: bool) -> Self {
        Self { chunked, read_closed: None }
    }

    /// Waits for the next thing to do about the client's side of the connection; pending forever once
    /// the client proved to be half-closed and alive. Cancel-safe.
    async fn wait(&mut self, reader: &mut tokio::net::tcp::ReadHalf<'_>) -> Hangup {
        match self.read_closed {
            None => {
                let mut sink = [0u8; 16];
                match reader.read(&mut sink).await {
                    Ok(0) => {
                        self.read_closed = Some(0);
                        Hangup::SendProbe
                    }
                    Ok(_) => Hangup::Nothing,
                    Err(_) => Hangup::Gone,
                }
            }
            Some(1) => {
                tokio::time::sleep(HANGUP_PROBE_GAP).await;
                Hangup::SendProbe
            }
            Some(_) => std::future::pending().await,
        }
    }

    /// Writes the probe; `Err` when the client is gone.
    async fn send_probe(&mut self, writer: &mut tokio::net::tcp::WriteHalf<'_>) -> std::io::Result<()> {
        let probe = Bytes::from_static(PROBE_COMMENT);
        if self.chunked {
            write_chunk(writer, probe).await?
        } else {
            writer.write_all(&probe).await?
        }
        self.read_closed = self.read_closed.map(|sent| sent.saturating_add(1));
        Ok(())
    }
}

/// Most bytes gathered into one write.
const MAX_BURST_BYTES: usize = 64 * 1024;

/// How the body stood after a burst was gathered.
#[derive(Debug, PartialEq)]
enum BurstEnd {
    /// It may have more later.
    More,
    /// It ended: the last chunk follows.
    Finished,
    /// It failed: the connection ends without the last chunk.
    Failed,
}

/// `first` and the data frames the body has ready now, up to [`MAX_BURST_BYTES`]. Never waits.
fn ready_frames(body: &mut Body, first: Bytes) -> (Vec<Bytes>, BurstEnd) {
    use futures::FutureExt;
    let mut bytes = first.len();
    let mut burst = vec![first];
    while bytes < MAX_BURST_BYTES {
        match body.frame().now_or_never() {
            None => break,
            Some(None) => return (burst, BurstEnd::Finished),
            Some(Some(Err(_))) => return (burst, BurstEnd::Failed),
            Some(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data().map_err(drop)
                    && !data.is_empty()
                {
                    bytes += data.len();
                    burst.push(data);
                }
            }
        }
    }
    (burst, BurstEnd::More)
}

/// The bytes of several frames, each its own HTTP/1.1 chunk when `chunked`.
pub(super) fn encode_burst(burst: &[Bytes], chunked: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(burst.iter().map(|d| d.len() + 20).sum());
    for data in burst {
        if chunked {
            let mut size_line = [0u8; 18];
            out.extend_from_slice(chunk_size_line(data.len(), &mut size_line));
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(data);
        }
    }
    out
}

/// One HTTP/1.1 chunk, written with one vectored write: size line, data, CRLF. Runs per delivery, so
/// the size line is formatted on the stack.
async fn write_chunk(writer: &mut (impl AsyncWriteExt + Unpin), data: Bytes) -> std::io::Result<()> {
    let mut size_line = [0u8; 18]; // 16 hex digits + CRLF
    let size = chunk_size_line(data.len(), &mut size_line);
    let mut chunk = Buf::chain(Buf::chain(size, data), &b"\r\n"[..]);
    writer.write_all_buf(&mut chunk).await
}

/// `<len in hex>\r\n` into `buf` (always fits: 16 hex digits at most).
fn chunk_size_line(len: usize, buf: &mut [u8; 18]) -> &[u8] {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{len:x}\r\n");
    let end = cursor.position() as usize;
    &buf[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Request<Body>, StatusCode> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        assert!(parsed.parse(raw).expect("parses").is_complete());
        to_request(&parsed)
    }

    #[test]
    fn chunk_size_lines_are_lowercase_hex() {
        let mut buf = [0u8; 18];
        for len in [1usize, 9, 10, 255, 256, 700, 65_536, usize::MAX] {
            assert_eq!(chunk_size_line(len, &mut buf), format!("{len:x}\r\n").as_bytes());
        }
    }

    #[test]
    fn a_stream_request_keeps_its_path_query_and_headers() {
        let request = parse(b"GET /api/events?groups=region:north HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1-2\r\n\r\n")
            .expect("valid");
        assert_eq!(request.uri().path(), "/api/events");
        assert_eq!(request.uri().query(), Some("groups=region:north"));
        assert_eq!(request.headers()["last-event-id"], "1-2");
    }

    #[test]
    fn a_body_is_refused_and_http_1_0_is_taken() {
        assert!(parse(b"GET /api/events HTTP/1.1\r\nContent-Length: 5\r\n\r\n").is_err());
        assert!(parse(b"GET /api/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert_eq!(parse(b"GET /api/events HTTP/1.0\r\n\r\n").expect("valid").version(), Version::HTTP_10);
    }
}

//! The accept loop and each connection's first moments: admission, the choice between the lean stream
//! transport and hyper, and the timeouts that keep a slow or silent client from holding a descriptor.
//!
//! Every connection is admitted against [`Admission`] first. Its first bytes are then *read* (not peeked:
//! a peek returns the same bytes at once and would have to be retried on a timer, which burned a core
//! under hundreds of connections sending `GET /api/ev` and nothing more) until they show whether the request
//! is `GET /api/events`. What was read is handed on: to the lean transport as the start of its head, or to
//! hyper through [`Rewind`], which replays it before the socket.

use super::admission::{Admission, Ticket};
use super::stream_connection::{self, MAX_HEAD_BYTES, MAX_HEADERS, STREAM_REQUEST};
use axum::Router;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Accepts until `shutdown`, serving each connection on `connections`. Accept errors (out of descriptors,
/// out of memory) back off from 10 ms to 1 s instead of spinning, and are logged at most once per 5 s
/// with the number seen meanwhile.
pub(crate) async fn accept_loop(
    listener: &TcpListener,
    admission: Arc<Admission>,
    app: Router,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    connections: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let service = hyper_util::service::TowerToHyperService::new(app.clone());
    let head_timeout = admission.limits().head_timeout;
    let mut failures = AcceptFailures::default();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => { failures.succeeded(); stream }
                Err(error) => {
                    let pause = failures.failed(&error);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Some(ticket) = admission.admit() else {
            refuse_full(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, service, watcher, shutdown) = (app.clone(), service.clone(), graceful.watcher(), shutdown.clone());
        connections.spawn(async move {
            let (stream, first_bytes, opens_stream) = tokio::select! {
                decided = first_bytes(stream, head_timeout) => match decided {
                    Some(decided) => decided,
                    None => return, // closed, silent too long, or not a request at all
                },
                _ = ticket.evicted() => return,
                // A connection that has not sent a byte yet (a browser's preconnect) must not hold up shutdown.
                _ = shutdown.cancelled() => return,
            };
            if opens_stream {
                return stream_connection::serve(stream, first_bytes, &ticket, head_timeout, app, shutdown).await;
            }
            // Boxed, so that the lean transport's tasks are not sized for hyper's connection state.
            let io = Rewind::new(first_bytes, stream);
            Box::pin(serve_with_hyper(io, ticket, head_timeout, service, watcher)).await
        });
    }
}

/// hyper's HTTP/1 connection, with the same head limits as the lean transport and a timer, without
/// which hyper applies no timeout at all. `header_read_timeout` runs from when hyper starts waiting for a
/// head, so it also closes a keep-alive connection idle that long. Half-closed clients (that shut their
/// sending side after the request) still get their response.
async fn serve_with_hyper(
    io: Rewind,
    ticket: Ticket,
    head_timeout: Duration,
    service: hyper_util::service::TowerToHyperService<Router>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let ticket = Arc::new(ticket);
    let seen = ticket.clone();
    // The connection leaves the "waiting for a head" set with its first request.
    let service = hyper::service::service_fn(move |request| {
        seen.head_received();
        hyper::service::Service::call(&service, request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .half_close(true);
    let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::select! {
        ended = watcher.watch(connection) => if let Err(error) = ended {
            tracing::debug!(%error, "connection ended with an error");
        },
        // Evicted before its first head arrived (a head that took long enough to be the oldest waiting).
        _ = ticket.evicted() => {}
    }
}

/// Reads the connection's first bytes until they show whether its request is the event stream: the
/// stream, the bytes read, and the verdict; `None` when the client closed, errored, or sent nothing
/// conclusive within `head_timeout`. Each read waits for new bytes, so a client that trickles costs
/// nothing between its bytes.
async fn first_bytes(mut stream: TcpStream, head_timeout: Duration) -> Option<(TcpStream, Vec<u8>, bool)> {
    let decide = async {
        let mut seen = Vec::with_capacity(1024);
        loop {
            match stream.read_buf(&mut seen).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            if let Some(verdict) = opens_event_stream(&seen) {
                return Some((seen, verdict));
            }
        }
    };
    let (seen, verdict) = tokio::time::timeout(head_timeout, decide).await.ok()??;
    Some((stream, seen, verdict))
}

/// Whether a request starting with `seen` is `GET /api/events` (followed by a space or `?`), or `None`
/// while the bytes are a prefix of it and so cannot tell yet.
pub(super) fn opens_event_stream(seen: &[u8]) -> Option<bool> {
    let needed = STREAM_REQUEST.len() + 1;
    if seen.len() >= needed {
        return Some(seen.starts_with(STREAM_REQUEST) && matches!(seen[STREAM_REQUEST.len()], b' ' | b'?'));
    }
    if STREAM_REQUEST.starts_with(seen) { None } else { Some(false) }
}

/// Every connection is taken and none can be evicted: answer 503 if the socket takes it at once, and close.
fn refuse_full(stream: TcpStream) {
    metrics::counter!(crate::metrics::CONNECTIONS_REFUSED).increment(1);
    let _ = stream.try_write(busy_response());
}

/// The whole 503 answer to a connection there is no room for, written without a task or a buffer.
const fn busy_response() -> &'static [u8] {
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 5\r\n\
x-content-type-options: nosniff\r\nreferrer-policy: strict-origin-when-cross-origin\r\n\
connection: close\r\ncontent-length: 91\r\n\r\n\
{\"error\":{\"code\":\"server_busy\",\"message\":\"this server has no room for another connection\"}}"
}

/// Accept errors seen since the last log line, and the current pause.
#[derive(Debug, Default)]
struct AcceptFailures {
    pause: Option<Duration>,
    unlogged: u64,
    last_logged: Option<tokio::time::Instant>,
}

impl AcceptFailures {
    const FIRST_PAUSE: Duration = Duration::from_millis(10);
    const MAX_PAUSE: Duration = Duration::from_secs(1);
    const LOG_EVERY: Duration = Duration::from_secs(5);

    fn succeeded(&mut self) {
        self.pause = None;
    }

    /// How long to wait before the next accept, after `error`.
    fn failed(&mut self, error: &io::Error) -> Duration {
        let pause = self.pause.map_or(Self::FIRST_PAUSE, |p| (p * 2).min(Self::MAX_PAUSE));
        self.pause = Some(pause);
        self.unlogged += 1;
        let now = tokio::time::Instant::now();
        if self.last_logged.is_none_or(|at| now - at >= Self::LOG_EVERY) {
            tracing::warn!(%error, failures = self.unlogged, pause_ms = pause.as_millis() as u64,
                "accept failed; backing off (out of file descriptors? see docs/operations.md)");
            self.unlogged = 0;
            self.last_logged = Some(now);
        }
        pause
    }
}

/// A socket whose first bytes were already read: they are read again first.
pub(crate) struct Rewind {
    prefix: Vec<u8>,
    consumed: usize,
    inner: TcpStream,
}

impl Rewind {
    fn new(prefix: Vec<u8>, inner: TcpStream) -> Self {
        Self { prefix, consumed: 0, inner }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.consumed < this.prefix.len() {
            let rest = &this.prefix[this.consumed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.consumed += n;
            if this.consumed == this.prefix.len() {
                this.prefix = Vec::new(); // free the buffer for the connection's lifetime
                this.consumed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_request_is_told_from_its_first_sixteen_bytes() {
        assert_eq!(opens_event_stream(b""), None);
        assert_eq!(opens_event_stream(b"GET /api/ev"), None);
        assert_eq!(opens_event_stream(b"GET /api/events"), None);
        assert_eq!(opens_event_stream(b"GET /api/events?groups=x"), Some(true));
        assert_eq!(opens_event_stream(b"GET /api/events HTTP/1.1"), Some(true));
        assert_eq!(opens_event_stream(b"GET /api/eventsx"), Some(false));
        assert_eq!(opens_event_stream(b"GET /healthz"), Some(false));
        assert_eq!(opens_event_stream(b"POST"), Some(false));
    }

    #[test]
    fn the_busy_answer_is_a_well_formed_response_in_the_error_shape() {
        const BUSY: &[u8] = busy_response();
        let text = std::str::from_utf8(BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length: ")).unwrap().parse().unwrap();
        assert_eq!(body.len(), length);
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "server_busy");
        // Like every other response (security::add_transport_headers).
        assert!(head.contains("\r\nx-content-type-options: nosniff\r\n"), "{head}");
        assert!(head.contains("\r\nreferrer-policy: strict-origin-when-cross-origin\r\n"), "{head}");
    }

    #[test]
    fn accept_failures_back_off_and_reset() {
        let mut failures = AcceptFailures::default();
        let emfile = io::Error::from_raw_os_error(24);
        let pauses: Vec<Duration> = (0..10).map(|_| failures.failed(&emfile)).collect();
        assert_eq!(pauses[0], Duration::from_millis(10));
        assert_eq!(pauses[1], Duration::from_millis(20));
        assert_eq!(pauses[9], Duration::from_secs(1));
        failures.succeeded();
        assert_eq!(failures.failed(&emfile), Duration::from_millis(10));
    }
}

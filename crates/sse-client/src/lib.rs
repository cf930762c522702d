//! A lean SSE client for the load generator: one `TcpStream`, HTTP/1.1 chunked decoding and SSE framing
//! over one reusable buffer, no allocation per event.
//!
//! The load generator shares the machine's two cores with the server and PostgreSQL, so whatever each
//! delivery costs the client is taken from the server. A general-purpose client (reqwest's connection task
//! and body channel, then a parser that allocates strings per field) costs more per delivery than the
//! server's own write; this one reads a socket and looks at bytes. It understands what the server sends
//! (`id:`, `event:`, `data:` on one line each, comments, blank-line terminated), not all of SSE.
//!
//! The fault suite (`smartscheduler-chaos`) uses it too, for its `id:` lines and resume positions.

use memchr::memmem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether clients delay their ACKs (`TCP_QUICKACK` off after each read).
///
/// A Linux socket that only receives answers every read with an ACK segment of its own. Over loopback
/// each of those is sent and received on this machine, by the same two cores that run the server, so
/// at 50,000 deliveries/s the clients' ACKs cost about as much as the server's writes. A client on
/// another host would pay for its ACKs there; delaying them (as a receiver may, RFC 1122 4.2.3.2) keeps
/// the load generator's share of the machine small. The benchmark reports both ways.
static DELAYED_ACKS: AtomicBool = AtomicBool::new(true);

pub fn set_delayed_acks(on: bool) {
    DELAYED_ACKS.store(on, Ordering::Relaxed);
}

/// One SSE event, borrowed from the client's buffer. A frame with an `id:` and no `data:` (the opening
/// position) has empty `data`.
pub struct Frame<'a> {
    pub event: &'a [u8],
    pub data: &'a [u8],
    /// The `id:` line, if the frame has one (events, the opening line, a heartbeat that moves the position).
    /// The `id:` line, if any (the fault suite resumes from it; the benchmark does not read it).
    pub id: Option<&'a [u8]>,
}

enum Chunk {
    /// Reading the hex size line.
    Size(usize),
    /// Inside a chunk with this many bytes left.
    Data(usize),
    /// Expecting the CRLF after a chunk's data (bytes left of it).
    Trailer(usize),
    /// The zero-size chunk arrived: the body ended.
    Done,
    /// Not chunked: the body is every byte until the connection closes.
    Identity,
}

pub struct SseClient {
    stream: TcpStream,
    /// Raw bytes read but not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked body bytes not yet framed.
    body: Vec<u8>,
    chunk: Chunk,
    size_digits: usize,
    /// Body bytes arrived with the response head and were not looked at yet: the next read serves them
    /// first (a quiet stream may send nothing more for a while after its opening lines).
    unread: bool,
}

impl SseClient {
    /// Opens `GET /api/events` with a bearer token (and a resume position) and reads the response head.
    pub async fn connect(addr: &str, token: &str, last_event_id: Option<&str>) -> anyhow::Result<Self> {
        Self::connect_to(addr, "/api/events", Some(token), last_event_id).await
    }

    /// Opens `GET path` (with a bearer token if given). The body may be chunked, or (as a peer hub sends it)
    /// plain bytes until the connection closes.
    pub async fn connect_to(
        addr: &str,
        path: &str,
        token: Option<&str>,
        last_event_id: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Accept: text/event-stream\r\n{resume}\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::with_capacity(16 * 1024);
        let head_end = loop {
            if let Some(end) = memmem::find(&raw, b"\r\n\r\n") {
                break end + 4;
            }
            anyhow::ensure!(raw.len() < 64 * 1024, "no response head in 64 KiB");
            anyhow::ensure!(stream.read_buf(&mut raw).await? > 0, "connection closed before the response head");
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
        anyhow::ensure!(head.starts_with("http/1.1 200"), "{}", head.lines().next().unwrap_or(""));
        let chunk = if head.contains("transfer-encoding: chunked") {
            Chunk::Size(0)
        } else {
            anyhow::ensure!(!head.contains("content-length:"), "expected a streamed body: {head}");
            Chunk::Identity
        };
        raw.drain(..head_end);
        let unread = !raw.is_empty();
        Ok(Self { stream, raw, body: Vec::with_capacity(16 * 1024), chunk, size_digits: 0, unread })
    }

    /// Reads once from the socket and calls `on_frame` for every complete event. Returns false when the
    /// server ended the stream.
    pub async fn read_frames(&mut self, mut on_frame: impl FnMut(Frame<'_>)) -> anyhow::Result<bool> {
        if matches!(self.chunk, Chunk::Done) {
            return Ok(false);
        }
        if self.unread {
            self.unread = false;
        } else {
            if self.stream.read_buf(&mut self.raw).await? == 0 {
                return Ok(false);
            }
            if DELAYED_ACKS.load(Ordering::Relaxed) {
                // Not sticky in Linux: set again after each read.
                let _ = self.stream.set_quickack(false);
            }
        }
        self.dechunk()?;
        let mut start = 0;
        while let Some(end) = memmem::find(&self.body[start..], b"\n\n") {
            parse_frame(&self.body[start..start + end + 1], &mut on_frame);
            start += end + 2;
        }
        self.body.drain(..start);
        Ok(!matches!(self.chunk, Chunk::Done))
    }

    /// Reads until `deadline` or until the stream ends, calling `on_frame` for each event; `on_frame`
    /// returns false to stop early.
    pub async fn read_until(
        &mut self,
        timeout: Duration,
        mut on_frame: impl FnMut(Frame<'_>) -> bool,
    ) -> anyhow::Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut go_on = true;
        while go_on {
            let read = self.read_frames(|f| go_on &= on_frame(f));
            match tokio::time::timeout_at(deadline, read).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return Ok(false),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Moves the payload bytes of complete or partial chunks from `raw` to `body`.
    fn dechunk(&mut self) -> anyhow::Result<()> {
        let mut i = 0;
        let raw = &self.raw;
        while i < raw.len() {
            match self.chunk {
                Chunk::Size(size) => {
                    let b = raw[i];
                    i += 1;
                    match b {
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                            let digit = (b as char).to_digit(16).unwrap_or(0) as usize;
                            self.size_digits += 1;
                            anyhow::ensure!(self.size_digits <= 8, "chunk size too long");
                            self.chunk = Chunk::Size(size * 16 + digit);
                        }
                        b'\r' => {}
                        b'\n' => {
                            anyhow::ensure!(self.size_digits > 0, "empty chunk size line");
                            self.size_digits = 0;
                            self.chunk = if size == 0 { Chunk::Done } else { Chunk::Data(size) };
                        }
                        other => anyhow::bail!("unexpected byte {other:#x} in a chunk size line"),
                    }
                }
                Chunk::Data(left) => {
                    let take = left.min(raw.len() - i);
                    self.body.extend_from_slice(&raw[i..i + take]);
                    i += take;
                    self.chunk = if take == left { Chunk::Trailer(2) } else { Chunk::Data(left - take) };
                }
                Chunk::Trailer(left) => {
                    i += 1;
                    self.chunk = if left == 1 { Chunk::Size(0) } else { Chunk::Trailer(left - 1) };
                }
                Chunk::Done => break,
                Chunk::Identity => {
                    self.body.extend_from_slice(&raw[i..]);
                    i = raw.len();
                }
            }
        }
        self.raw.drain(..i);
        Ok(())
    }
}

/// Splits one event (its lines, each ending in `\n`) into `event:`, `data:` and `id:`; comments have none
/// and are skipped. Fields come in any order (a heartbeat writes its `id:` after its `data:`); `data:` is
/// one line, which the line search crosses once.
fn parse_frame(frame: &[u8], on_frame: &mut impl FnMut(Frame<'_>)) {
    let mut event: &[u8] = b"message";
    let mut data: Option<&[u8]> = None;
    let mut id: Option<&[u8]> = None;
    let mut rest = frame;
    while !rest.is_empty() {
        let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
        let line = &rest[..end];
        if let Some(v) = line.strip_prefix(b"event: ") {
            event = v;
        } else if let Some(v) = line.strip_prefix(b"data: ") {
            data = Some(v);
        } else if let Some(v) = line.strip_prefix(b"id: ") {
            id = Some(v);
        }
        rest = rest.get(end + 1..).unwrap_or_default();
    }
    if data.is_some() || id.is_some() {
        on_frame(Frame { event, data: data.unwrap_or_default(), id });
    }
}

/// `"key":<digits>` in a JSON text, found by byte search instead of parsing the document.
pub fn json_u64(data: &[u8], key: &memmem::Finder<'_>) -> Option<u64> {
    let start = key.find(data)? + key.needle().len();
    let digits = data[start..].trim_ascii_start(); // jsonb's text has a space after the colon
    let end = digits.iter().position(|b| !b.is_ascii_digit()).unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_give_their_event_and_data_and_comments_are_skipped() {
        let mut seen = Vec::new();
        let mut collect = |f: Frame<'_>| seen.push((f.event.to_vec(), f.data.to_vec(), f.id.map(<[u8]>::to_vec)));
        parse_frame(b"id: 1-2\nevent: BenchEvent\ndata: {\"n\": 1}\n", &mut collect);
        parse_frame(b": ping\n", &mut collect);
        parse_frame(b"data: plain\n", &mut collect);
        parse_frame(b"retry: 3000\nid: 1-5\n", &mut collect);
        parse_frame(b"event: heartbeat\ndata: {}\nid: 1-6\n", &mut collect);
        assert_eq!(
            seen,
            vec![
                (b"BenchEvent".to_vec(), b"{\"n\": 1}".to_vec(), Some(b"1-2".to_vec())),
                (b"message".to_vec(), b"plain".to_vec(), None),
                (b"message".to_vec(), Vec::new(), Some(b"1-5".to_vec())),
                (b"heartbeat".to_vec(), b"{}".to_vec(), Some(b"1-6".to_vec())),
            ]
        );
    }

    #[test]
    fn json_u64_reads_a_number_after_its_key() {
        let finder = memmem::Finder::new(b"\"n\":");
        assert_eq!(json_u64(br#"{"a":1,"n":42,"x":3}"#, &finder), Some(42));
        assert_eq!(json_u64(br#"{"a": 1, "n": 7}"#, &finder), Some(7));
        assert_eq!(json_u64(br#"{"a":1}"#, &finder), None);
    }
}

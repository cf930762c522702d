//! SSE frames as bytes, encoded once and shared.
//!
//! An event fanned out to a thousand streams is one allocation here, not a thousand: every stream writes
//! the same reference-counted [`Bytes`]. (axum's `sse::Event` is a growable buffer that each stream would
//! have to clone, a copy and an allocation per delivery, which a reconnect storm does millions of times.)
//! The format is the WHATWG `text/event-stream` one, byte for byte what axum's `Event` writes for the same
//! fields; a property test holds the two together and feeds the output to an independent SSE parser.

use bytes::Bytes;
use std::time::Duration;

/// The fields of one SSE frame, written in this order: `retry:`, `id:`, `event:`, `data:`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Frame<'a> {
    /// `retry:` — how long the client waits before it reconnects, in whole milliseconds.
    pub retry: Option<Duration>,
    /// `id:` — the position the client resumes from (its `Last-Event-ID`).
    pub id: Option<&'a str>,
    /// `event:` — the event's name (`message` when absent).
    pub event: Option<&'a str>,
    /// `data:` — one `data:` line per line of the text.
    pub data: Option<&'a str>,
}

impl Frame<'_> {
    /// The frame's bytes, ending with the blank line that dispatches it.
    ///
    /// Total: a line break inside `id` or `event` (the database never holds one, but a hand-written row
    /// could) becomes a space instead of starting a field of its own, and a line break in `data` (CR, LF or
    /// CRLF, as a client splits them) starts another `data:` line, so no value can forge another field.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(32 + self.data.map_or(0, str::len) + self.id.map_or(0, str::len));
        if let Some(retry) = self.retry {
            out.extend_from_slice(b"retry: ");
            out.extend_from_slice(retry.as_millis().to_string().as_bytes());
            out.push(b'\n');
        }
        for (name, value) in [(&b"id: "[..], self.id), (&b"event: "[..], self.event)] {
            if let Some(value) = value {
                out.extend_from_slice(name);
                out.extend(value.bytes().map(|b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
                out.push(b'\n');
            }
        }
        if let Some(data) = self.data {
            for line in lines(data) {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
        }
        out.push(b'\n');
        Bytes::from(out)
    }
}

/// The lines of `text` as an SSE client splits them (CRLF, LF or CR); an empty text is one empty line.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let text = rest?;
        match text.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(text)
            }
            Some(i) => {
                let skip = if text[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&text[i + skip..]);
                Some(&text[..i])
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use axum::response::sse::{Event, Sse};
    use futures::StreamExt;
    use proptest::prelude::*;

    /// What axum writes for the same fields, set in the same order.
    fn axum_bytes(frame: &Frame<'_>) -> Vec<u8> {
        let mut event = Event::default();
        if let Some(retry) = frame.retry {
            event = event.retry(retry);
        }
        if let Some(id) = frame.id {
            event = event.id(id);
        }
        if let Some(name) = frame.event {
            event = event.event(name);
        }
        if let Some(data) = frame.data {
            event = event.data(data);
        }
        let body = Sse::new(futures::stream::iter([Ok::<_, std::convert::Infallible>(event)])).into_response();
        let bytes = futures::executor::block_on(axum::body::to_bytes(body.into_body(), 1 << 20));
        bytes.expect("an in-memory body").to_vec()
    }

    /// The events an independent SSE parser reads from `bytes`.
    fn parsed(bytes: Bytes) -> Vec<eventsource_stream::Event> {
        let stream = futures::stream::iter([Ok::<_, std::convert::Infallible>(bytes)]);
        let events =
            futures::executor::block_on(eventsource_stream::Eventsource::eventsource(stream).collect::<Vec<_>>());
        events.into_iter().map(|e| e.expect("a well-formed stream")).collect()
    }

    // Field values as our streams send them: no line breaks in names and ids, any text in data.
    fn name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_.:{}\" -]{1,40}"
    }

    proptest! {
        // Non-empty data: for an empty one axum writes no `data:` line at all; ours writes an empty one (a
        // client then dispatches an event with empty data, where axum's would be dropped). No stream sends one.
        #[test]
        fn frames_are_byte_for_byte_what_axum_writes(
            retry in proptest::option::of(0u64..100_000), id in proptest::option::of(name()),
            event in proptest::option::of(name()), data in proptest::option::of("[^\r\n]{1,200}"),
        ) {
            let frame = Frame { retry: retry.map(Duration::from_millis), id: id.as_deref(), event: event.as_deref(), data: data.as_deref() };
            prop_assert_eq!(frame.encode().to_vec(), axum_bytes(&frame));
        }

        #[test]
        fn any_text_in_any_field_reads_back_as_one_event_with_those_fields(
            id in "\\PC{0,30}|[a-z\r\n]{0,10}", event in "[A-Za-z\r\n]{1,20}", data in "\\PC{0,100}|[a-z\r\n]{0,20}",
        ) {
            let frame = Frame { retry: None, id: Some(&id), event: Some(&event), data: Some(&data) };
            let events = parsed(frame.encode());
            prop_assert_eq!(events.len(), 1, "{:?}", events);
            let got = &events[0];
            let flat = |s: &str| s.replace(['\r', '\n'], " ");
            // A client keeps the last id it saw; one with a NUL it ignores (WHATWG), and the parser drops it.
            if !id.contains('\0') {
                prop_assert_eq!(&got.id, &flat(&id));
            }
            prop_assert_eq!(&got.event, &flat(&event));
            prop_assert_eq!(got.data.as_str(), lines(&data).collect::<Vec<_>>().join("\n"));
        }
    }

    #[test]
    fn the_opening_frame_carries_retry_and_position() {
        let frame = Frame { retry: Some(Duration::from_millis(3500)), id: Some("0000000a-5"), ..Frame::default() };
        assert_eq!(&frame.encode()[..], b"retry: 3500\nid: 0000000a-5\n\n");
    }
}

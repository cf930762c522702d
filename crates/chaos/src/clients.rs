//! SSE clients that behave like browsers under faults: each reconnects to a random running instance with
//! the last `id:` it saw as `Last-Event-ID`, and records everything it received, per connection, for the
//! verifier. Checks that need only one connection (positions strictly increasing, no repeat) are made here.

use crate::cluster::Cluster;
use crate::sse_client::SseClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Who a client is and what it must (and may) receive.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub name: String,
    pub dispatcher: String,
    pub token: String,
    /// `?groups=` when the client narrows its subscription.
    pub narrowed: Option<Vec<String>>,
    /// Every committed event of these groups must arrive; they are held for the whole run.
    pub required: Vec<String>,
    /// A group whose membership the membership fault adds and removes: its events may arrive, but only while
    /// the dispatcher holds it (plus the contract's 5 s to apply a change).
    pub toggled: Option<String>,
    /// A reconnect-burst client: resumes from this seq, and is done once its position reaches `until`.
    pub resume_from: Option<i64>,
    pub until: Option<i64>,
    /// Reconnect on its own every few seconds (regular clients), besides when its connection is cut.
    pub voluntary_reconnects: bool,
}

/// One connection of a client.
#[derive(Debug, Clone)]
pub struct ConnectionRecord {
    pub instance: usize,
    pub opened_at: Duration,
    /// The `id:` of its opening line.
    pub opening: Option<i64>,
    /// The last position it gave (any `id:` line).
    pub last: Option<i64>,
    pub events: u32,
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub event_id: Uuid,
    pub seq: i64,
    pub groups: Vec<String>,
    pub connection: usize,
    pub at: Duration,
}

/// What a client saw.
#[derive(Debug, Default)]
pub struct ClientRecord {
    pub epoch: Option<String>,
    /// Where the client started (its first opening `id:`, or its resume position).
    pub first: Option<i64>,
    /// Its current position: the last `id:` it saw, which it sends on its next connection.
    pub position: Option<i64>,
    pub deliveries: Vec<Delivery>,
    pub connections: Vec<ConnectionRecord>,
    pub failed_connects: u32,
    pub last_connect_error: Option<String>,
    pub reordered: usize,
    pub dup_in_connection: usize,
    /// Anything else a single connection showed that it must not (reset, auth-expired, a foreign epoch, an
    /// opening position other than the one asked for, undecodable data).
    pub other: usize,
    /// Human-readable details of the violations above, first few only.
    pub notes: Vec<String>,
}

impl ClientRecord {
    fn note(&mut self, text: String) {
        if self.notes.len() < 20 {
            self.notes.push(text);
        }
    }
}

pub struct Client {
    pub spec: ClientSpec,
    pub record: Mutex<ClientRecord>,
}

#[derive(Deserialize)]
struct EventData {
    #[serde(rename = "eventId")]
    event_id: Uuid,
    position: String,
    groups: Vec<String>,
}

/// The event types the suite commits (writers and clock step, poison row); anything else is a control event.
const DATA_EVENTS: [&str; 2] = ["ChaosEvent", "ChaosPoison"];

/// `<epoch>-<seq>` split in two.
pub fn parse_position(text: &str) -> Option<(&str, i64)> {
    let (epoch, seq) = text.split_once('-')?;
    Some((epoch, seq.parse().ok()?))
}

/// A frame copied out of the client's buffer.
enum Item {
    Id(String),
    Event { id: Option<String>, event: String, data: Vec<u8> },
}

/// Runs a client until `stop` (or, for a burst client, until it reached its target or `deadline`).
pub async fn run(
    client: Arc<Client>,
    cluster: Arc<Cluster>,
    seed: u64,
    started: Instant,
    stop: CancellationToken,
    deadline: Option<tokio::time::Instant>,
    epoch: String,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let spec = &client.spec;
    let path = match &spec.narrowed {
        Some(groups) => format!("/api/events?groups={}", groups.join(",")),
        None => "/api/events".to_owned(),
    };
    if let Some(from) = spec.resume_from {
        let mut record = client.record.lock().unwrap();
        record.first = Some(from);
        record.position = Some(from);
        record.epoch = Some(epoch.clone());
    }
    loop {
        if stop.is_cancelled() || deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return;
        }
        let (position, reached) = {
            let record = client.record.lock().unwrap();
            let reached = matches!((record.position, spec.until), (Some(p), Some(u)) if p >= u);
            (record.position.map(|seq| format!("{}-{seq}", record.epoch.as_deref().unwrap_or(&epoch))), reached)
        };
        if reached {
            return;
        }
        let up = cluster.up();
        if up.is_empty() {
            pause(&stop, Duration::from_millis(50)).await;
            continue;
        }
        let (instance, addr) = up[rng.random_range(0..up.len())].clone();
        let connect = SseClient::connect_to(&addr, &path, Some(&spec.token), position.as_deref());
        let mut sse = match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok(sse)) => sse,
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                };
                {
                    let mut record = client.record.lock().unwrap();
                    record.failed_connects += 1;
                    record.last_connect_error = Some(format!("instance {instance}: {error}"));
                }
                pause(&stop, Duration::from_millis(rng.random_range(50..300))).await;
                continue;
            }
        };
        let connection = {
            let mut record = client.record.lock().unwrap();
            record.connections.push(ConnectionRecord {
                instance,
                opened_at: started.elapsed(),
                opening: None,
                last: None,
                events: 0,
            });
            record.connections.len() - 1
        };
        let asked = position.as_deref().and_then(parse_position).map(|(_, seq)| seq);
        let lifetime = if spec.voluntary_reconnects {
            Duration::from_millis(rng.random_range(300..8_000))
        } else {
            Duration::from_secs(3600)
        };
        let hang_up = tokio::time::sleep(lifetime);
        tokio::pin!(hang_up);
        let mut seen = HashSet::new();
        loop {
            let mut items = Vec::new();
            let read = sse.read_frames(|f| {
                let id = f.id.map(|id| String::from_utf8_lossy(id).into_owned());
                if f.data.is_empty() && f.event == b"message" {
                    if let Some(id) = id {
                        items.push(Item::Id(id));
                    }
                } else {
                    items.push(Item::Event {
                        id,
                        event: String::from_utf8_lossy(f.event).into_owned(),
                        data: f.data.to_vec(),
                    });
                }
            });
            let open = tokio::select! {
                _ = stop.cancelled() => false,
                _ = &mut hang_up => false,
                read = read => matches!(read, Ok(true)),
            };
            let done = {
                let mut record = client.record.lock().unwrap();
                for item in items {
                    apply(&mut record, spec, connection, asked, &mut seen, item, started);
                }
                matches!((record.position, spec.until), (Some(p), Some(u)) if p >= u)
            };
            if !open || done {
                break;
            }
        }
        // A browser waits its `retry:` before reconnecting; a short random pause keeps reconnections many.
        pause(&stop, Duration::from_millis(rng.random_range(20..300))).await;
    }
}

async fn pause(stop: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

/// Records one frame and checks what one connection can check on its own.
fn apply(
    record: &mut ClientRecord,
    spec: &ClientSpec,
    connection: usize,
    asked: Option<i64>,
    seen: &mut HashSet<Uuid>,
    item: Item,
    started: Instant,
) {
    let name = &spec.name;
    let (id, event, data) = match item {
        Item::Id(id) => (Some(id), None, Vec::new()),
        Item::Event { id, event, data } => (id, Some(event), data),
    };
    let position = match id.as_deref().map(|id| (id, parse_position(id))) {
        None => None,
        Some((_, Some((epoch, seq)))) => {
            match &record.epoch {
                None => record.epoch = Some(epoch.to_owned()),
                Some(known) if known != epoch => {
                    record.other += 1;
                    record.note(format!("{name} conn #{connection}: id {epoch}-{seq} has another epoch than {known}"));
                }
                Some(_) => {}
            }
            Some(seq)
        }
        Some((raw, None)) => {
            record.other += 1;
            record.note(format!("{name} conn #{connection}: malformed id {raw:?}"));
            None
        }
    };
    let conn_last = record.connections[connection].last;
    match event.as_deref() {
        None => {
            // The opening line: the position the stream starts from.
            let Some(seq) = position else { return };
            let conn = &mut record.connections[connection];
            if conn.opening.is_none() && conn.last.is_none() {
                conn.opening = Some(seq);
                if record.first.is_none() {
                    record.first = Some(seq);
                }
                if let Some(asked) = asked
                    && seq != asked
                {
                    record.other += 1;
                    record.note(format!(
                        "{name} conn #{connection}: resumed with Last-Event-ID seq {asked} but the stream opened at {seq}"
                    ));
                }
            } else if conn_last.is_some_and(|last| seq < last) {
                record.reordered += 1;
                record.note(format!("{name} conn #{connection}: id {seq} after {conn_last:?}"));
            }
        }
        Some("heartbeat") => {
            if let (Some(seq), Some(last)) = (position, conn_last)
                && seq < last
            {
                record.reordered += 1;
                record.note(format!("{name} conn #{connection}: heartbeat id {seq} after position {last}"));
            }
        }
        Some(other @ ("reset" | "auth-expired")) => {
            record.other += 1;
            let text = String::from_utf8_lossy(&data).into_owned();
            record.note(format!("{name} conn #{connection}: event {other} {text}"));
        }
        Some(kind) if !DATA_EVENTS.contains(&kind) => {
            // A control event this suite does not know (the server may end or hold a stream with one): only
            // its position is checked.
            if let (Some(seq), Some(last)) = (position, conn_last)
                && seq < last
            {
                record.reordered += 1;
                record.note(format!("{name} conn #{connection}: {kind} id {seq} after position {last}"));
            }
        }
        Some(kind) => match serde_json::from_slice::<EventData>(&data) {
            Ok(event) => {
                let seq = position.or_else(|| parse_position(&event.position).map(|(_, s)| s)).unwrap_or(-1);
                if !seen.insert(event.event_id) {
                    record.dup_in_connection += 1;
                    record.note(format!("{name} conn #{connection}: event {} (seq {seq}) twice", event.event_id));
                } else if conn_last.is_some_and(|last| seq <= last) {
                    record.reordered += 1;
                    record.note(format!("{name} conn #{connection}: event seq {seq} after position {conn_last:?}"));
                }
                record.connections[connection].events += 1;
                let at = started.elapsed();
                record.deliveries.push(Delivery {
                    event_id: event.event_id,
                    seq,
                    groups: event.groups,
                    connection,
                    at,
                });
            }
            Err(error) => {
                record.other += 1;
                record.note(format!("{name} conn #{connection}: event {kind} with undecodable data: {error}"));
            }
        },
    }
    if let Some(seq) = position {
        let conn = &mut record.connections[connection];
        conn.last = Some(conn.last.map_or(seq, |l| l.max(seq)));
        // A browser sends exactly the last id it saw (even a lower one): so does this client.
        record.position = Some(seq);
    }
}

//! One client's stream: opening lines, optional reset, backlog from the database, then live events, with
//! heartbeats, membership changes, token expiry and the switch to database catch-up when it lags.

use super::event::Delivery;
use super::frame::Frame;
use super::hub::{Hub, Revocation};
use super::receipt_frame::ReceiptFrame;
use crate::event_log::StreamMeta;
use crate::metrics as m;
use crate::position::Position;
use crate::receipts::ReceiptHint;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::Stream;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};

/// Why a resuming client must reload its state instead of resuming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The position belongs to another event log (recreated or restored), or to none we know.
    Epoch,
    /// The position is older than the retention window.
    Expired,
}

impl ResetReason {
    fn as_str(self) -> &'static str {
        match self {
            ResetReason::Epoch => "epoch",
            ResetReason::Expired => "expired",
        }
    }
}

/// A validated, authorised request for a stream.
#[derive(Debug, Clone)]
pub struct StreamRequest {
    /// Whose stream it is (membership changes are tracked by this id).
    pub dispatcher_id: String,
    /// Groups named in `?groups=` (None: all of the dispatcher's groups).
    pub requested_groups: Option<Vec<String>>,
    /// The groups to deliver now (requested ∩ held).
    pub groups: Vec<String>,
    /// Where the client resumes (`Last-Event-ID`), or `None` for a fresh start at the current position.
    pub resume_from: Option<Position>,
    /// When the token expires: the stream then sends `auth-expired` and ends.
    pub token_expires_at: DateTime<Utc>,
    /// The generation of the stream's token if this server issued it (`None`: the identity provider's):
    /// the stream ends with `access-revoked` once it is no longer the dispatcher's.
    pub token_generation: Option<i64>,
}

/// Decides where a resuming client starts: its own seq, or a reset.
fn resume_point(meta: &StreamMeta, resume: Option<Position>) -> Result<Option<i64>, ResetReason> {
    match resume {
        None => Ok(None),
        Some(p) if p.epoch != meta.epoch => Err(ResetReason::Epoch),
        // A position this log never reached: the log was replaced under the same epoch.
        Some(p) if p.seq > meta.last_seq => Err(ResetReason::Epoch),
        Some(p) if p.seq < meta.expired_through_seq => Err(ResetReason::Expired),
        Some(p) => Ok(Some(p.seq)),
    }
}

/// The `retry:` a connection is told: uniform in 2000..=5000 ms, so that the browsers of an instance that dies
/// do not all come back in the same instant (the contract's range).
fn reconnect_delay() -> Duration {
    Duration::from_millis(rand::random_range(2000..=5000))
}

/// `event: access-revoked` with `data: {"reason", "position"}`: the stream ends because the dispatcher no
/// longer holds any group it delivers (`no_groups`; a reconnect with the same groups is 403 until membership
/// changes), was disabled (`disabled`; 403 `dispatcher_disabled` until enabled) or its token was revoked
/// (`token_revoked`; 401 until the client has a new token). The position is what the client has every
/// event of its groups up to.
fn access_revoked(position: Position, reason: Revocation) -> Bytes {
    let data = json!({ "reason": reason.as_str(), "position": position.to_string() }).to_string();
    named("access-revoked", &data, None)
}

/// `event: heartbeat` with the stream's position, as `id:` too when `with_id` (the client then has every event
/// of its groups up to it).
fn heartbeat_frame(position: Position, with_id: bool) -> Bytes {
    let position = position.to_string();
    let data = json!({ "position": position }).to_string();
    named("heartbeat", &data, with_id.then_some(position.as_str()))
}

/// A named event of the stream itself (not from the log): `event:` and one line of `data:`, and `id:` when given.
fn named(event: &str, data: &str, id: Option<&str>) -> Bytes {
    Frame { id, event: Some(event), data: Some(data), ..Frame::default() }.encode()
}

/// The next receipt hint, or never once the hub's channel closed.
async fn next_hint(
    receipts: &mut Option<broadcast::Receiver<Arc<ReceiptFrame>>>,
) -> Result<Arc<ReceiptFrame>, RecvError> {
    match receipts {
        Some(receipts) => receipts.recv().await,
        None => std::future::pending().await,
    }
}

/// The longest pause between two tries of a failed catch-up read.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Removes the client from the hub when the response body is dropped (client gone or stream ended).
struct ClientGuard {
    hub: Hub,
    id: u64,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.hub.remove_client(self.id);
    }
}

enum Step {
    Deliver(Delivery),
    Receipt(Result<Arc<ReceiptFrame>, RecvError>),
    QueueClosed,
    Heartbeat,
    TokenExpired,
    Shutdown,
}

/// The SSE event stream for one client. `meta` is read at connect time (fresh from the database).
pub fn open_stream(
    hub: Hub,
    request: StreamRequest,
    meta: StreamMeta,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    async_stream::stream! {
        let epoch = meta.epoch;
        let (id, shared) = hub.add_client(
            &request.dispatcher_id,
            request.requested_groups.clone(),
            request.groups.clone(),
            request.token_generation,
        );
        let _guard = ClientGuard { hub: hub.clone(), id };
        // Subscribed before the opening frame: a receipt stored after the client (re)connected is not missed.
        let mut receipts = Some(hub.receipt_hints());
        // Pinned once: a fresh `cancelled()` per loop turn would register with (and leave) the token's
        // waiter list, which every stream shares, on every delivery.
        let shutdown = hub.shutdown_token().clone().cancelled_owned();
        tokio::pin!(shutdown);
        // Looked up once: the macro consults the metrics registry on every call, and this runs per delivery.
        let events_sent = metrics::counter!(m::SSE_EVENTS_SENT);

        let start = resume_point(&meta, request.resume_from);
        // Attach before reading the backlog: events after `head` arrive in the queue, events up to it are read
        // from the database. That is the seam, and nothing falls through it.
        let (mut rx, head) = hub.attach(id);
        // The log's current position. This process's head may trail a publish by a moment (another process's
        // NOTIFY not handled yet); a client that starts afresh, or over after a reset, starts from what is
        // committed, and the events up to it that still reach the queue are skipped below.
        let current = head.max(meta.last_seq);
        let opening = match start { Ok(Some(seq)) => seq, _ => current };
        let opening_position = Position::new(epoch, opening).to_string();
        yield Ok(Frame { retry: Some(reconnect_delay()), id: Some(&opening_position), ..Frame::default() }.encode());

        let mut sent_through = opening;
        if let Err(reason) = start {
            metrics::counter!(m::SSE_RESETS, "reason" => reason.as_str()).increment(1);
            // The client reloads over REST and then gets only what comes after the current position.
            let position = Position::new(epoch, sent_through).to_string();
            let data = json!({ "reason": reason.as_str(), "position": position }).to_string();
            yield Ok(named("reset", &data, Some(&position)));
        }

        let mut backlog_through = Some(head).filter(|h| *h > sent_through);
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + hub.config().heartbeat, hub.config().heartbeat);
        let expires_in = (request.token_expires_at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        let expiry = tokio::time::sleep(expires_in);
        tokio::pin!(expiry);

        let mut retry = None;
        'stream: loop {
            // The position only moves over events checked against the stream's real groups: a stream whose
            // dispatcher lost them ends here, and its client learns why.
            if let Some(reason) = shared.revocation() {
                yield Ok(access_revoked(Position::new(epoch, sent_through), reason));
                break;
            }
            // Backlog (at start, and after falling behind): from the hub's window of recent events when it
            // holds the whole range (no query), else read our groups from the database, page by page.
            if let Some(through) = backlog_through {
                if let Some(events) = hub.read_window(epoch, &shared.groups(), sent_through, through) {
                    for event in events {
                        events_sent.increment(1);
                        yield Ok(event.frame_for(|| shared.groups()));
                    }
                    sent_through = through; // nothing else of ours up to `through`
                    backlog_through = None;
                    continue;
                }
                match hub.read_backlog(epoch, &shared.groups(), sent_through, through).await {
                    Ok((events, covered)) => {
                        retry = None;
                        for event in events {
                            events_sent.increment(1);
                            yield Ok(event.frame_for(|| shared.groups()));
                        }
                        sent_through = covered; // nothing else of ours up to `covered`
                        if covered >= through {
                            backlog_through = None;
                        }
                        continue;
                    }
                    Err(error) if hub.config().retry_catchup && crate::db::is_transient(&error) => {
                        // A busy pool or a lost connection passes: the stream stays open (its client would
                        // only come back, with everyone else, and ask again) and reads again later, still
                        // sending heartbeats meanwhile.
                        let delay = retry
                            .get_or_insert_with(crate::db::reconnect_backoff)
                            .next()
                            .unwrap_or(MAX_RETRY_DELAY)
                            .min(MAX_RETRY_DELAY);
                        tracing::debug!(%error, retry_in_ms = delay.as_millis() as u64, "backlog read failed; retrying");
                        let pause = tokio::time::sleep(delay);
                        tokio::pin!(pause);
                        loop {
                            tokio::select! {
                                biased;
                                _ = &mut shutdown => break 'stream,
                                _ = &mut pause => break,
                                _ = heartbeat.tick() => yield Ok(heartbeat_frame(Position::new(epoch, sent_through), false)),
                            }
                        }
                        continue;
                    }
                    Err(error) => {
                        // End the stream; the client reconnects and resumes from what it received.
                        tracing::warn!(%error, "backlog read failed; ending the stream");
                        break;
                    }
                }
            }

            let step = tokio::select! {
                biased;
                _ = &mut shutdown => Step::Shutdown,
                _ = &mut expiry => Step::TokenExpired,
                received = rx.recv() => received.map_or(Step::QueueClosed, Step::Deliver),
                _ = heartbeat.tick() => Step::Heartbeat,
                hint = next_hint(&mut receipts) => Step::Receipt(hint),
            };
            match step {
                Step::Deliver(event) => {
                    // The queue only holds events after the attach-time head, but the client's position can be
                    // ahead of this process's head (it came from a faster server, or started at the log's
                    // current position before this hub caught up): skip what it has.
                    if event.seq > sent_through {
                        sent_through = event.seq;
                        events_sent.increment(1);
                        yield Ok(event.frame_for(|| shared.groups()));
                    }
                }
                Step::Receipt(Ok(receipt)) => {
                    if shared.with_groups(|groups| receipt.hint.reaches(groups)) {
                        yield Ok(receipt.frame.clone());
                    }
                }
                Step::Receipt(Err(RecvError::Lagged(_))) => {
                    yield Ok(named("receipt", &ReceiptHint::Stale.data(), None));
                }
                Step::Receipt(Err(RecvError::Closed)) => receipts = None,
                Step::QueueClosed => {
                    if shared.is_revoked() {
                        continue; // ended at the top of the loop, with the reason
                    }
                    if !shared.take_lagged() {
                        break; // the hub ended us (epoch change): the client reconnects and gets a reset
                    }
                    metrics::counter!(m::SSE_CATCHUP).increment(1);
                    tracing::debug!(client = id, from = sent_through, "stream fell behind; catching up from the log");
                    let (new_rx, head) = hub.attach(id);
                    rx = new_rx;
                    backlog_through = Some(head).filter(|h| *h > sent_through);
                }
                Step::Heartbeat => {
                    // A named event, so that the page's EventSource sees it and can tell a silent connection
                    // from a quiet one. It carries `id:` only when the client has every event of its groups
                    // up to the head.
                    let advanced = hub.head_if_drained(id, &rx).filter(|head| *head > sent_through);
                    if let Some(seq) = advanced {
                        sent_through = seq;
                    }
                    yield Ok(heartbeat_frame(Position::new(epoch, sent_through), advanced.is_some()));
                }
                Step::TokenExpired => {
                    let data = json!({ "position": Position::new(epoch, sent_through).to_string() }).to_string();
                    yield Ok(named("auth-expired", &data, None));
                    break;
                }
                Step::Shutdown => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::Epoch;

    fn meta() -> StreamMeta {
        StreamMeta { epoch: Epoch(0xabcdef01), last_seq: 100, expired_through_seq: 10 }
    }

    #[test]
    fn a_fresh_client_starts_live() {
        assert_eq!(resume_point(&meta(), None), Ok(None));
    }

    #[test]
    fn a_position_in_the_window_resumes() {
        assert_eq!(resume_point(&meta(), Some(Position::new(Epoch(0xabcdef01), 10))), Ok(Some(10)));
        assert_eq!(resume_point(&meta(), Some(Position::new(Epoch(0xabcdef01), 100))), Ok(Some(100)));
    }

    #[test]
    fn a_foreign_or_unknown_position_resets_with_epoch() {
        assert_eq!(resume_point(&meta(), Some(Position::new(Epoch(1), 50))), Err(ResetReason::Epoch));
        assert_eq!(resume_point(&meta(), Some(Position::new(Epoch(0xabcdef01), 101))), Err(ResetReason::Epoch));
    }

    #[test]
    fn a_position_before_retention_resets_with_expired() {
        assert_eq!(resume_point(&meta(), Some(Position::new(Epoch(0xabcdef01), 9))), Err(ResetReason::Expired));
    }
}

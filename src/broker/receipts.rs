//! Receipt hints over NATS, for broker-fed nodes (which do not LISTEN, so PostgreSQL's `ss_receipts`
//! NOTIFY does not reach them).
//!
//! A broker-fed node that stores a receipt publishes its hint on the core NATS subject [`RECEIPTS_SUBJECT`]
//! (not JetStream: a hint is best-effort, and nothing is replayed), and every broker-fed node subscribes and
//! passes what arrives to its hub, its own publishes included. Where the subscription starts, or NATS
//! comes back after an outage, hints may have been missed: the node's streams get `{"stale": true}` and
//! their consoles read the receipts again.

use crate::receipts::ReceiptHint;
use crate::supervisor::Progress;
use futures::StreamExt;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The core NATS subject of receipt hints; the payload is `ss_receipts`' NOTIFY payload.
pub const RECEIPTS_SUBJECT: &str = "ss.receipts";

/// A function that announces a stored receipt to every broker-fed node: publishes on [`RECEIPTS_SUBJECT`].
/// Never waits for the server (a hint lost is a hint lost).
pub fn announcer(client: async_nats::Client) -> Arc<dyn Fn(ReceiptHint) + Send + Sync> {
    Arc::new(move |hint: ReceiptHint| {
        let Some(payload) = hint.notify_payload() else { return };
        let client = client.clone();
        tokio::spawn(async move {
            if let Err(error) = client.publish(RECEIPTS_SUBJECT, payload.into()).await {
                tracing::debug!(%error, "could not announce a receipt over NATS");
            }
        });
    })
}

/// Subscribes to [`RECEIPTS_SUBJECT`] until `shutdown` and hands every hint to `deliver`, with
/// [`ReceiptHint::Stale`] whenever the subscription (re)starts and whenever the client reconnects. Ticks
/// `progress` every second while subscribed (quiet is normal: hints come only when consoles report).
pub async fn subscribe(
    client: async_nats::Client,
    deliver: impl Fn(ReceiptHint),
    shutdown: CancellationToken,
    progress: Progress,
) {
    let mut backoff = crate::db::reconnect_backoff();
    while !shutdown.is_cancelled() {
        let mut subscription = match client.subscribe(RECEIPTS_SUBJECT).await {
            Ok(subscription) => subscription,
            Err(error) => {
                let delay = backoff.next().unwrap_or(std::time::Duration::from_secs(10));
                tracing::warn!(%error, "cannot subscribe to receipt hints; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        deliver(ReceiptHint::Stale);
        let mut was_connected = true;
        let mut state_check = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                message = subscription.next() => match message {
                    Some(message) => match std::str::from_utf8(&message.payload).ok().and_then(ReceiptHint::from_notify) {
                        Some(hint) => deliver(hint),
                        None => tracing::debug!("malformed receipt hint on NATS"),
                    },
                    None => break, // the subscription ended: subscribe again
                },
                _ = state_check.tick() => {
                    progress.tick();
                    // Hints published while the client was away are gone: say so once it is back.
                    let connected = client.connection_state() == async_nats::connection::State::Connected;
                    if connected && !was_connected {
                        deliver(ReceiptHint::Stale);
                    }
                    was_connected = connected;
                }
            }
        }
    }
}

/// Copies PostgreSQL's receipt NOTIFYs on to [`RECEIPTS_SUBJECT`] until `shutdown`, so that receipts stored
/// by PostgreSQL-fed nodes (which know no NATS) reach broker-fed nodes' streams live in a mixed fleet. Runs in
/// the processes that relay with a broker. Hints stored by broker-fed nodes arrive twice (announced by
/// their node, then bridged), which is harmless: a hint only says how far a dispatcher has applied the log.
/// Ticks `progress` every second while listening.
pub async fn bridge(pool: sqlx::PgPool, client: async_nats::Client, shutdown: CancellationToken, progress: Progress) {
    let mut backoff = crate::db::reconnect_backoff();
    while !shutdown.is_cancelled() {
        let mut listener = match listen(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                let delay = backoff.next().unwrap_or(std::time::Duration::from_secs(10));
                tracing::warn!(%error, "cannot LISTEN for receipts to bridge to NATS; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        let mut alive = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = alive.tick() => progress.tick(),
                notification = listener.try_recv() => match notification {
                    Ok(Some(notification)) => {
                        let payload = notification.payload().to_owned();
                        if let Err(error) = client.publish(RECEIPTS_SUBJECT, payload.into()).await {
                            tracing::debug!(%error, "could not bridge a receipt to NATS");
                        }
                    }
                    // The connection was lost: what was sent meanwhile is gone, and the nodes' consoles
                    // read their receipts again when NATS or their own streams say so.
                    Ok(None) => continue,
                    Err(error) => {
                        tracing::warn!(%error, "the receipts bridge lost its LISTEN connection; reconnecting");
                        break;
                    }
                },
            }
        }
    }
}

async fn listen(pool: &sqlx::PgPool) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(crate::receipts::RECEIPTS_CHANNEL).await?;
    Ok(listener)
}

//! The per-process hub: one LISTEN connection, one read per batch published by another process (this process's
//! relay hands its batches over), fan-out by group.
//!
//! Unlike a pub/sub that drops messages for a subscriber that lags (mini-redis ignores
//! `RecvError::Lagged`), a stream whose bounded queue is full is detached here and told so: it then reads
//! from `event_log` from its own position and re-attaches when caught up. Nobody waits for a slow client,
//! and a slow client never silently misses an event.

use super::event::{EventRow, StreamEvent, StreamMeta, fetch_after};
use crate::metrics as m;
use crate::position::{Epoch, Position};
use crate::relay::EVENTS_CHANNEL;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Tuning of the hub and its streams.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Events a stream may have queued before it is switched to reading from the database.
    pub client_queue: usize,
    /// Rows per database read (hub reads and client catch-up pages).
    pub page_size: i64,
    /// How often the hub checks the log even without a NOTIFY (a dropped notification costs at most this).
    pub safety_poll: Duration,
    /// How often open streams pick up group membership changes (the contract allows 5 s).
    pub membership_poll: Duration,
    /// Comment heartbeat interval (the contract asks for at least every 15 s).
    pub heartbeat: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            client_queue: 512,
            page_size: 1000,
            safety_poll: Duration::from_secs(1),
            membership_poll: Duration::from_secs(2),
            heartbeat: Duration::from_secs(10),
        }
    }
}

pub(crate) type Delivery = Arc<StreamEvent>;

/// What a stream shares with the hub.
#[derive(Debug)]
pub(crate) struct ClientShared {
    groups: Mutex<Vec<String>>,
    lagged: AtomicBool,
}

impl ClientShared {
    pub(crate) fn groups(&self) -> Vec<String> {
        lock(&self.groups).clone()
    }
    pub(crate) fn take_lagged(&self) -> bool {
        self.lagged.swap(false, Ordering::AcqRel)
    }
}

struct ClientEntry {
    dispatcher_id: String,
    /// The groups the client asked for (None: all of the dispatcher's groups).
    requested: Option<Vec<String>>,
    /// requested ∩ membership, as of the last membership poll.
    groups: Vec<String>,
    /// Some while attached to the live fan-out.
    tx: Option<mpsc::Sender<Delivery>>,
    shared: Arc<ClientShared>,
}

struct Registry {
    epoch: Epoch,
    /// The last seq fanned out. Every event after it reaches attached clients through their queues.
    head: i64,
    head_published_at: Option<DateTime<Utc>>,
    clients: HashMap<u64, ClientEntry>,
    by_group: HashMap<String, HashMap<u64, mpsc::Sender<Delivery>>>,
}

impl Registry {
    fn link(&mut self, id: u64) {
        let Some(entry) = self.clients.get(&id) else { return };
        let Some(tx) = entry.tx.clone() else { return };
        for g in &entry.groups {
            self.by_group.entry(g.clone()).or_default().insert(id, tx.clone());
        }
    }

    fn unlink(&mut self, id: u64) {
        let Some(entry) = self.clients.get(&id) else { return };
        for g in &entry.groups {
            if let Some(subs) = self.by_group.get_mut(g) {
                subs.remove(&id);
                if subs.is_empty() {
                    self.by_group.remove(g);
                }
            }
        }
    }

    /// Takes a client off the live fan-out because its queue is full; it will catch up from the database.
    fn detach_lagging(&mut self, id: u64) {
        self.unlink(id);
        if let Some(entry) = self.clients.get_mut(&id) {
            entry.tx = None; // closing the queue wakes the stream, which sees `lagged`
            entry.shared.lagged.store(true, Ordering::Release);
        }
    }
}

struct HubInner {
    pool: PgPool,
    config: HubConfig,
    registry: Mutex<Registry>,
    listening: AtomicBool,
    next_client: AtomicU64,
    shutdown: CancellationToken,
    node_id: Uuid,
    /// Rung when this process's relay hands over a batch the hub cannot take as it is (a hole before it, or
    /// another epoch): the hub then checks the log instead.
    resync: Notify,
}

/// Handle to the process's hub. Cheap to clone.
#[derive(Clone)]
pub struct Hub(Arc<HubInner>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the registry half-updated in a way that matters more
    // than stopping delivery would, so keep going with the data as it is.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Hub {
    /// Starts the hub: reads the log's head, then LISTENs, polls and tracks membership until `shutdown`.
    pub async fn start(
        pool: PgPool,
        config: HubConfig,
        node_id: Uuid,
        shutdown: CancellationToken,
    ) -> Result<Self, sqlx::Error> {
        let meta = StreamMeta::read(&pool).await?;
        let published_at: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT last_published_at FROM stream_meta").fetch_one(&pool).await?;
        let registry = Registry {
            epoch: meta.epoch,
            head: meta.last_seq,
            head_published_at: published_at,
            clients: HashMap::new(),
            by_group: HashMap::new(),
        };
        let hub = Hub(Arc::new(HubInner {
            pool,
            config,
            registry: Mutex::new(registry),
            listening: AtomicBool::new(false),
            next_client: AtomicU64::new(1),
            shutdown,
            node_id,
            resync: Notify::new(),
        }));
        tokio::spawn(hub.clone().listen_loop());
        tokio::spawn(hub.clone().membership_loop());
        Ok(hub)
    }

    pub fn config(&self) -> &HubConfig {
        &self.0.config
    }
    pub fn pool(&self) -> &PgPool {
        &self.0.pool
    }
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.0.shutdown
    }
    /// For this process's relay, after it committed a batch: fans the events out at once, without reading
    /// them back or waiting for the NOTIFY to come round through PostgreSQL (hubs of other processes still
    /// go by the NOTIFY, which then finds nothing new here). If the batch does not follow the head (another
    /// process published in between, or the epoch changed), the hub checks the log instead.
    pub fn deliver_published(&self, epoch: &str, rows: Vec<EventRow>) {
        let Some(first_seq) = rows.first().map(|row| row.seq) else { return };
        let Ok(epoch) = epoch.parse::<Epoch>() else {
            self.0.resync.notify_one();
            return;
        };
        // Encoded before taking the lock, which the streams share.
        let events: Vec<Delivery> = rows.into_iter().map(|row| Arc::new(row.encode(epoch))).collect();
        let mut reg = lock(&self.0.registry);
        if reg.epoch == epoch && first_seq <= reg.head + 1 {
            dispatch_locked(&mut reg, events);
        } else {
            drop(reg);
            self.0.resync.notify_one();
        }
    }

    /// Event streams open on this process now (for the operator's log line).
    pub fn stream_count(&self) -> usize {
        lock(&self.0.registry).clients.len()
    }

    /// True while the LISTEN connection is up (part of `/readyz`).
    pub fn is_listening(&self) -> bool {
        self.0.listening.load(Ordering::Acquire)
    }

    /// Adds a stream (not yet attached to the live fan-out).
    pub(crate) fn add_client(
        &self,
        dispatcher_id: &str,
        requested: Option<Vec<String>>,
        groups: Vec<String>,
    ) -> (u64, Arc<ClientShared>) {
        let id = self.0.next_client.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(ClientShared { groups: Mutex::new(groups.clone()), lagged: AtomicBool::new(false) });
        let entry = ClientEntry {
            dispatcher_id: dispatcher_id.to_owned(),
            requested,
            groups,
            tx: None,
            shared: shared.clone(),
        };
        lock(&self.0.registry).clients.insert(id, entry);
        metrics::gauge!(m::SSE_CONNECTIONS).increment(1.0);
        (id, shared)
    }

    /// Attaches a stream to the live fan-out. Returns its queue and the head at this instant: every event
    /// after that head will arrive in the queue, so the stream reads the database only up to it (the seam).
    pub(crate) fn attach(&self, id: u64) -> (mpsc::Receiver<Delivery>, i64) {
        let (tx, rx) = mpsc::channel(self.0.config.client_queue);
        let mut reg = lock(&self.0.registry);
        if let Some(entry) = reg.clients.get_mut(&id) {
            entry.tx = Some(tx);
        }
        reg.link(id);
        let head = reg.head;
        (rx, head)
    }

    pub(crate) fn remove_client(&self, id: u64) {
        let mut reg = lock(&self.0.registry);
        reg.unlink(id);
        if reg.clients.remove(&id).is_some() {
            metrics::gauge!(m::SSE_CONNECTIONS).decrement(1.0);
        }
    }

    /// The head, if the stream has consumed everything fanned out to it so far (its queue is empty while
    /// the registry is locked, and the hub only pushes under that lock). A heartbeat may then carry it as
    /// `id:`, so an idle client of a quiet group resumes from a recent position.
    pub(crate) fn head_if_drained(&self, rx: &mpsc::Receiver<Delivery>) -> Option<i64> {
        let reg = lock(&self.0.registry);
        rx.is_empty().then_some(reg.head)
    }

    /// Fans events out in seq order. Runs under the registry lock and never waits on a client.
    fn dispatch(&self, events: Vec<Delivery>) {
        dispatch_locked(&mut lock(&self.0.registry), events);
    }

    /// Reads and fans out everything published after the head.
    async fn catch_up(&self) -> Result<(), sqlx::Error> {
        loop {
            let (epoch, head, published_from) = {
                let reg = lock(&self.0.registry);
                (reg.epoch, reg.head, reg.head_published_at)
            };
            let rows = fetch_after(&self.0.pool, head, published_from, self.0.config.page_size).await?;
            let full_page = rows.len() as i64 == self.0.config.page_size;
            if rows.is_empty() {
                return Ok(());
            }
            self.dispatch(rows.into_iter().map(|r| Arc::new(r.encode(epoch))).collect());
            if !full_page {
                return Ok(());
            }
        }
    }

    /// Safety net: compares with `stream_meta`, handles an epoch change, catches up if behind.
    async fn check_log(&self) -> Result<(), sqlx::Error> {
        let meta = StreamMeta::read(&self.0.pool).await?;
        let behind = {
            let mut reg = lock(&self.0.registry);
            if meta.epoch != reg.epoch {
                tracing::warn!(old = %reg.epoch, new = %meta.epoch, "event log epoch changed; ending all streams");
                reg.epoch = meta.epoch;
                reg.head = meta.last_seq;
                reg.head_published_at = None;
                reg.by_group.clear();
                // Closing every queue ends the streams; clients reconnect and get event: reset.
                reg.clients.values_mut().for_each(|c| c.tx = None);
                false
            } else {
                meta.last_seq > reg.head
            }
        };
        if behind { self.catch_up().await } else { Ok(()) }
    }

    async fn listen_loop(self) {
        let mut backoff = crate::relay::reconnect_backoff();
        let mut safety = tokio::time::interval(self.0.config.safety_poll);
        safety.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.0.shutdown.is_cancelled() {
            let mut listener = match self.connect_listener().await {
                Ok(listener) => listener,
                Err(error) => {
                    self.0.listening.store(false, Ordering::Release);
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "stream listener cannot LISTEN");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = self.0.shutdown.cancelled() => return,
                    }
                }
            };
            backoff = crate::relay::reconnect_backoff();
            self.0.listening.store(true, Ordering::Release);
            // Notifications sent before LISTEN took effect are not coming: read from the head now.
            self.log_failure(self.catch_up().await);
            loop {
                tokio::select! {
                    _ = self.0.shutdown.cancelled() => return,
                    _ = safety.tick() => self.log_failure(self.check_log().await),
                    _ = self.0.resync.notified() => self.log_failure(self.check_log().await),
                    received = listener.try_recv() => match received {
                        Ok(Some(notification)) => match self.news_in(notification.payload()) {
                            News::Nothing => {}
                            News::Ahead => self.log_failure(self.catch_up().await),
                            News::Unknown => self.log_failure(self.check_log().await),
                        },
                        Ok(None) => {
                            // sqlx reconnected the listener; anything sent meanwhile was dropped.
                            metrics::counter!(m::LISTENER_RECONNECTS).increment(1);
                            tracing::info!("stream listener reconnected; catching up from the log");
                            self.log_failure(self.catch_up().await);
                        }
                        Err(error) => {
                            self.0.listening.store(false, Ordering::Release);
                            metrics::counter!(m::LISTENER_RECONNECTS).increment(1);
                            tracing::warn!(%error, "stream listener lost its connection; reconnecting");
                            break;
                        }
                    }
                }
            }
        }
    }

    async fn connect_listener(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.0.pool).await?;
        listener.listen(EVENTS_CHANNEL).await?;
        Ok(listener)
    }

    /// A NOTIFY payload is the new last position: skip the read when we already have it, and check the log's
    /// epoch before reading when the payload names another one (or cannot be parsed).
    fn news_in(&self, payload: &str) -> News {
        let Ok(position) = payload.parse::<Position>() else { return News::Unknown };
        let reg = lock(&self.0.registry);
        if position.epoch != reg.epoch {
            News::Unknown
        } else if position.seq > reg.head {
            News::Ahead
        } else {
            News::Nothing
        }
    }

    fn log_failure(&self, result: Result<(), sqlx::Error>) {
        if let Err(error) = result {
            tracing::warn!(%error, "stream hub could not read the event log; will retry");
        }
    }

    /// Applies group membership changes to open streams, and records that this listener is alive.
    async fn membership_loop(self) {
        let mut tick = tokio::time::interval(self.0.config.membership_poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beats = 0u32;
        loop {
            tokio::select! {
                _ = self.0.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(error) = self.refresh_membership().await {
                tracing::warn!(%error, "could not refresh group membership of open streams");
            }
            beats += 1;
            let due = beats % 3 == 1 && self.is_listening();
            if due && let Err(error) = crate::relay::beat(&self.0.pool, self.0.node_id, "listener").await {
                tracing::warn!(%error, "listener heartbeat failed");
            }
        }
    }

    async fn refresh_membership(&self) -> Result<(), sqlx::Error> {
        let dispatcher_ids: Vec<String> = {
            let reg = lock(&self.0.registry);
            let set: HashSet<&String> = reg.clients.values().map(|c| &c.dispatcher_id).collect();
            set.into_iter().cloned().collect()
        };
        if dispatcher_ids.is_empty() {
            return Ok(());
        }
        let rows: Vec<(String, Vec<String>)> = sqlx::query_as(
            "SELECT d.id, coalesce(array_agg(g.group_key ORDER BY g.group_key)
                                   FILTER (WHERE g.group_key IS NOT NULL), '{}')
             FROM unnest($1::text[]) AS d(id)
             LEFT JOIN dispatcher_groups g ON g.dispatcher_id = d.id
             GROUP BY d.id",
        )
        .bind(&dispatcher_ids)
        .fetch_all(&self.0.pool)
        .await?;
        let membership: HashMap<String, Vec<String>> = rows.into_iter().collect();

        let mut reg = lock(&self.0.registry);
        let ids: Vec<u64> = reg.clients.keys().copied().collect();
        for id in ids {
            let Some(entry) = reg.clients.get(&id) else { continue };
            let held = membership.get(&entry.dispatcher_id).cloned().unwrap_or_default();
            let effective = effective_groups(entry.requested.as_deref(), &held);
            if effective == entry.groups {
                continue;
            }
            tracing::info!(dispatcher = %entry.dispatcher_id, groups = ?effective, "stream groups changed");
            reg.unlink(id);
            if let Some(entry) = reg.clients.get_mut(&id) {
                *lock(&entry.shared.groups) = effective.clone();
                entry.groups = effective;
            }
            reg.link(id);
        }
        Ok(())
    }
}

/// Fans events out in seq order to the attached streams of their groups; skips what is at or below the head.
fn dispatch_locked(reg: &mut Registry, events: Vec<Delivery>) {
    let mut lagging = Vec::new();
    for event in events {
        if event.seq <= reg.head {
            continue;
        }
        let mut deliver = |id: u64, tx: &mpsc::Sender<Delivery>| {
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(event.clone()) {
                lagging.push(id);
            }
        };
        if let [only] = event.groups.as_slice() {
            if let Some(subs) = reg.by_group.get(only) {
                subs.iter().for_each(|(id, tx)| deliver(*id, tx));
            }
        } else {
            // A client in several of the event's groups gets it once.
            let mut reached = HashSet::new();
            for g in &event.groups {
                if let Some(subs) = reg.by_group.get(g) {
                    subs.iter().filter(|(id, _)| reached.insert(**id)).for_each(|(id, tx)| deliver(*id, tx));
                }
            }
        }
        reg.head = event.seq;
        reg.head_published_at = Some(event.published_at);
        for id in lagging.drain(..) {
            reg.detach_lagging(id);
        }
    }
}

/// What a NOTIFY tells the hub.
enum News {
    /// Nothing after the head.
    Nothing,
    /// Events after the head, of the same epoch.
    Ahead,
    /// Another epoch, or a payload that is not a position: check `stream_meta` first.
    Unknown,
}

/// The groups a stream receives: what it asked for, limited to what the dispatcher holds now.
pub(crate) fn effective_groups(requested: Option<&[String]>, held: &[String]) -> Vec<String> {
    let mut groups: Vec<String> = match requested {
        None => held.to_vec(),
        Some(req) => req.iter().filter(|g| held.contains(g)).cloned().collect(),
    };
    groups.sort();
    groups.dedup();
    groups
}

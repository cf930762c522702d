//! The per-process hub: one LISTEN connection, one read per batch published by another process (this process's
//! relay hands its batches over), fan-out by group.
//!
//! Unlike a pub/sub that drops messages for a subscriber that lags (mini-redis ignores
//! `RecvError::Lagged`), a stream whose bounded queue is full is detached here and told so: it then reads
//! from `event_log` from its own position and re-attaches when caught up. Nobody waits for a slow client,
//! and a slow client never silently misses an event.

use super::catchup::CatchUpReads;
use super::event::{Delivery, StreamEvent};
use super::receipt_frame::{RECEIPT_HINTS_QUEUED, ReceiptFrame};
pub use super::registry::Memberships;
use super::registry::{ClientEntry, ClientShared, Registry, dispatch_locked, lock};
pub use super::revocation::Revocation;
use super::window::Window;
use crate::coalesce::Coalescer;
use crate::db::reconnect_backoff;
use crate::event_log::{EVENTS_CHANNEL, PublishedBatch, StreamMeta, fetch_after};
use crate::metrics as m;
use crate::position::{Epoch, Position};
use crate::receipts::{RECEIPTS_CHANNEL, ReceiptHint};
use crate::supervisor::{Progress, Supervisor};
use futures::future::BoxFuture;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, broadcast, mpsc};
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
    /// Heartbeat interval (the contract asks for at least every 15 s).
    pub heartbeat: Duration,
    /// Where membership refreshes read the current groups and access of dispatchers. `None`: the database
    /// ([`crate::auth::current_access`]). A seam for wrapping the read, for example to hold it at a chosen moment.
    pub membership_source: Option<MembershipSource>,
    /// Most events the resume window keeps (the latest fanned out); 0 turns the window off and every
    /// resume reads the database.
    pub window_events: usize,
    /// Most bytes (encoded events) the resume window keeps; the oldest go first.
    pub window_bytes: usize,
    /// Catch-up reads of the database running at once; the others wait their turn. Keep it below the
    /// pool's size so that API requests always find a connection. 0: no queue (every stream reads at once).
    pub catchup_reads: usize,
    /// Most bytes of catch-up pages kept for the streams that resume after (0: none kept; reads running at
    /// once are still shared).
    pub catchup_cache_bytes: usize,
    /// Whether the hub LISTENs and reads `event_log` for what other processes publish (the default). Off on a
    /// broker-fed node, whose events come from JetStream through [`crate::event_log::FeedTarget`].
    pub listen: bool,
    /// Whether a catch-up read that fails for a reason that passes (pool busy, connection lost) is retried
    /// with backoff. Off only to measure the old design: the stream then ends and its client reconnects.
    pub retry_catchup: bool,
}

impl HubConfig {
    /// The design before the resume window and the catch-up queue (every resume reads the database at
    /// once, a failed read ends the stream): for the benchmark's comparison only.
    pub fn without_storm_protection(self) -> Self {
        Self { window_events: 0, catchup_reads: 0, catchup_cache_bytes: 0, retry_catchup: false, ..self }
    }
}

type MembershipRead = dyn Fn(PgPool, Vec<String>) -> BoxFuture<'static, Result<Memberships, sqlx::Error>> + Send + Sync;

/// Reads the current groups and access of the given dispatchers for the membership refresh.
#[derive(Clone)]
pub struct MembershipSource(pub Arc<MembershipRead>);

impl std::fmt::Debug for MembershipSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MembershipSource")
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            client_queue: 512,
            page_size: 1000,
            safety_poll: Duration::from_secs(1),
            membership_poll: Duration::from_secs(2),
            heartbeat: Duration::from_secs(10),
            membership_source: None,
            window_events: 10_000,
            window_bytes: 32 << 20,
            catchup_reads: 8,
            catchup_cache_bytes: 16 << 20,
            retry_catchup: true,
            listen: true,
        }
    }
}

struct HubInner {
    pool: PgPool,
    /// `stream_meta` reads for connecting streams: one query for the streams that connect together.
    meta: Coalescer<(), StreamMeta>,
    config: HubConfig,
    registry: Mutex<Registry>,
    window: RwLock<Window>,
    /// Catch-up reads of the database, queued and shared.
    catchup: CatchUpReads,
    listening: AtomicBool,
    next_client: AtomicU64,
    shutdown: CancellationToken,
    node_id: Uuid,
    /// Rung when this process's relay hands over a batch the hub cannot take as it is (a hole before it, or
    /// another epoch): the hub then checks the log instead.
    resync: Notify,
    /// When the listener last read the log successfully: the listener's heartbeat row (what `outbox status`
    /// shows) is written only while this is recent.
    last_log_read: Mutex<std::time::Instant>,
    /// Receipt hints for the open streams (`event: receipt`). A broadcast: a hint is small and goes to every
    /// stream of its groups; a stream that lags behind this channel gets [`ReceiptHint::Stale`] instead.
    receipts: broadcast::Sender<Arc<ReceiptFrame>>,
}

/// Handle to the process's hub. Cheap to clone.
#[derive(Clone)]
pub struct Hub(Arc<HubInner>);

/// A listener that makes no progress for this long (no successful read of the log, including the safety
/// poll) makes the process not ready.
fn hub_stall_after(config: &HubConfig) -> Duration {
    (config.safety_poll * 5).max(Duration::from_secs(10))
}

impl Hub {
    /// Starts the hub: reads the log's head, then LISTENs, polls and tracks membership until `shutdown`,
    /// each loop supervised by `supervisor` (restarted after a panic, reported by `/readyz` while stalled).
    pub async fn start(
        pool: PgPool,
        config: HubConfig,
        node_id: Uuid,
        supervisor: &Supervisor,
        shutdown: CancellationToken,
    ) -> Result<Self, sqlx::Error> {
        let meta = StreamMeta::read(&pool).await?;
        let registry = Registry {
            epoch: meta.epoch,
            head: meta.last_seq,
            clients: HashMap::new(),
            by_group: HashMap::new(),
            membership_reads: 0,
        };
        let catchup =
            CatchUpReads::new(pool.clone(), config.page_size, config.catchup_reads, config.catchup_cache_bytes);
        let meta_pool = pool.clone();
        let meta_reads = Coalescer::new(move |_: Vec<()>| {
            let pool = meta_pool.clone();
            Box::pin(async move { Ok(HashMap::from([((), StreamMeta::read(&pool).await?)])) })
        });
        let hub = Hub(Arc::new(HubInner {
            meta: meta_reads,
            pool,
            config,
            window: RwLock::new(Window::new(meta.epoch)),
            catchup,
            registry: Mutex::new(registry),
            listening: AtomicBool::new(false),
            next_client: AtomicU64::new(1),
            shutdown: shutdown.clone(),
            node_id,
            resync: Notify::new(),
            last_log_read: Mutex::new(std::time::Instant::now()),
            receipts: broadcast::channel(RECEIPT_HINTS_QUEUED).0,
        }));
        if hub.0.config.listen {
            let listener_hub = hub.clone();
            supervisor.spawn("listener", hub_stall_after(&hub.0.config), shutdown.clone(), move |progress| {
                listener_hub.clone().listen_loop(progress)
            });
        }
        let membership_hub = hub.clone();
        let membership_stall = (hub.0.config.membership_poll * 5).max(Duration::from_secs(15));
        supervisor.spawn("membership", membership_stall, shutdown, move |progress| {
            membership_hub.clone().membership_loop(progress)
        });
        Ok(hub)
    }

    /// The hub's tuning.
    pub fn config(&self) -> &HubConfig {
        &self.0.config
    }
    /// Cancelled when the server shuts down: every stream ends on it.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.0.shutdown
    }
    /// For this process's relay, after it committed a batch: fans the events out at once, without reading
    /// them back or waiting for the NOTIFY to come round through PostgreSQL (hubs of other processes still
    /// go by the NOTIFY, which then finds nothing new here). If the batch does not follow the head (another
    /// process published in between, or the epoch changed), the hub checks the log instead.
    pub fn deliver_published(&self, batch: PublishedBatch) {
        let PublishedBatch { epoch, events: rows } = batch;
        let Some(first_seq) = rows.first().map(|row| row.seq) else { return };
        let Ok(epoch) = epoch.parse::<Epoch>() else {
            self.0.resync.notify_one();
            return;
        };
        // Encoded before taking the lock, which the streams share.
        let events: Vec<Delivery> = rows.into_iter().map(|row| Arc::new(StreamEvent::encode(row, epoch))).collect();
        let mut reg = lock(&self.0.registry);
        if reg.epoch == epoch && first_seq <= reg.head + 1 {
            self.dispatch_locked(&mut reg, events);
        } else {
            drop(reg);
            self.0.resync.notify_one();
        }
    }

    /// The log's state as of a read that began after this call (streams that connect together share it).
    pub async fn current_meta(&self) -> Result<StreamMeta, sqlx::Error> {
        self.0.meta.get(()).await?.ok_or(sqlx::Error::RowNotFound)
    }

    /// Event streams open on this process now (for the operator's log line).
    pub fn stream_count(&self) -> usize {
        lock(&self.0.registry).clients.len()
    }

    /// True while the LISTEN connection is up .
    /// Passes a receipt hint to the open streams of its groups (wherever it came from: this process's
    /// listener, or a broker). Best-effort: nobody waits for it.
    pub fn deliver_receipt(&self, hint: ReceiptHint) {
        let _no_streams_is_fine = self.0.receipts.send(Arc::new(ReceiptFrame::new(hint)));
    }

    /// The receipt hints from now on, for one stream.
    pub(crate) fn receipt_hints(&self) -> broadcast::Receiver<Arc<ReceiptFrame>> {
        self.0.receipts.subscribe()
    }

    pub fn is_listening(&self) -> bool {
        self.0.listening.load(Ordering::Acquire)
    }

    /// Adds a stream (not yet attached to the live fan-out).
    pub(crate) fn add_client(
        &self,
        dispatcher_id: &str,
        requested: Option<Vec<String>>,
        groups: Vec<String>,
        token_generation: Option<i64>,
    ) -> (u64, Arc<ClientShared>) {
        let id = self.0.next_client.fetch_add(1, Ordering::Relaxed);
        let revoked = if groups.is_empty() { Revocation::NoGroups.code() } else { 0 };
        let shared = Arc::new(ClientShared {
            groups: Mutex::new(groups.clone()),
            lagged: AtomicBool::new(false),
            revoked: AtomicU8::new(revoked),
        });
        let mut reg = lock(&self.0.registry);
        let entry = ClientEntry {
            dispatcher_id: dispatcher_id.to_owned(),
            requested,
            groups,
            token_generation,
            tx: None,
            shared: shared.clone(),
            added_after_read: reg.membership_reads,
        };
        reg.clients.insert(id, entry);
        drop(reg);
        metrics::gauge!(m::SSE_CONNECTIONS).increment(1.0);
        (id, shared)
    }

    /// Attaches a stream to the live fan-out. Returns its queue and the head at this instant: every event
    /// after that head will arrive in the queue, so the stream reads the database only up to it (the seam).
    pub(crate) fn attach(&self, id: u64) -> (mpsc::Receiver<Delivery>, i64) {
        let (tx, rx) = mpsc::channel(self.0.config.client_queue);
        let mut reg = lock(&self.0.registry);
        if let Some(entry) = reg.clients.get_mut(&id).filter(|e| !e.shared.is_revoked()) {
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
    /// the registry is locked, and the hub only pushes under that lock) and is still attached with groups
    /// of its own: every event up to the head was then checked against those groups. A heartbeat may carry
    /// it as `id:`, so an idle client of a quiet group resumes from a recent position.
    pub(crate) fn head_if_drained(&self, id: u64, rx: &mpsc::Receiver<Delivery>) -> Option<i64> {
        let reg = lock(&self.0.registry);
        let attached = reg.clients.get(&id).is_some_and(|e| e.tx.is_some() && !e.groups.is_empty());
        (attached && rx.is_empty()).then_some(reg.head)
    }

    /// Fans events out in seq order. Runs under the registry lock and never waits on a client.
    fn dispatch(&self, events: Vec<Delivery>) {
        self.dispatch_locked(&mut lock(&self.0.registry), events);
    }

    /// Fans events out and appends what moved the head to the resume window, both under the registry lock,
    /// so the window always ends at the head a stream sees when it attaches.
    fn dispatch_locked(&self, reg: &mut Registry, events: Vec<Delivery>) {
        let head = reg.head;
        let fresh: Vec<Delivery> = events.iter().filter(|e| e.seq > head).cloned().collect();
        dispatch_locked(reg, events);
        if self.0.config.window_events > 0 && !fresh.is_empty() {
            let mut window = self.0.window.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            for event in fresh {
                window.push(reg.epoch, event, self.0.config.window_events, self.0.config.window_bytes);
            }
        }
    }

    /// The events of `groups` in `(after, through]` from the resume window, if it holds all of that range.
    pub(crate) fn read_window(
        &self,
        epoch: Epoch,
        groups: &[String],
        after: i64,
        through: i64,
    ) -> Option<Vec<Delivery>> {
        if self.0.config.window_events == 0 {
            return None;
        }
        let window = self.0.window.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        window.read(epoch, groups, after, through)
    }

    /// The events of `groups` after `after`, up to `through` or the end of a page, from the database (one
    /// read shared by every stream that needs the same page; see [`CatchUpReads`]), with how far they go.
    /// A stream's headers are sent already: while the read waits its turn, its client simply waits.
    pub(crate) async fn read_backlog(
        &self,
        epoch: Epoch,
        groups: &[String],
        after: i64,
        through: i64,
    ) -> Result<(Vec<Delivery>, i64), sqlx::Error> {
        self.0.catchup.read(epoch, groups, after, through).await
    }

    /// Reads and fans out everything published after the head. Reads by `seq` alone: no wall-clock bound,
    /// since a batch published while the database's clock stood behind has an earlier `published_at`.
    async fn catch_up(&self) -> Result<(), sqlx::Error> {
        loop {
            let (epoch, head) = {
                let reg = lock(&self.0.registry);
                (reg.epoch, reg.head)
            };
            let rows = fetch_after(&self.0.pool, head, self.0.config.page_size).await?;
            let full_page = rows.len() as i64 == self.0.config.page_size;
            if rows.is_empty() {
                return Ok(());
            }
            self.dispatch(rows.into_iter().map(|r| Arc::new(StreamEvent::encode(r, epoch))).collect());
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
                self.restart_streams_locked(&mut reg, meta.epoch, meta.last_seq);
                false
            } else {
                meta.last_seq > reg.head
            }
        };
        if behind { self.catch_up().await } else { Ok(()) }
    }

    /// Moves the head to `(epoch, head)` and ends every open stream (closing its queue); clients reconnect
    /// and resume from the log, which tells them (`event: reset`) what they cannot have.
    fn restart_streams_locked(&self, reg: &mut Registry, epoch: Epoch, head: i64) {
        reg.epoch = epoch;
        reg.head = head;
        self.0.window.write().unwrap_or_else(|poisoned| poisoned.into_inner()).clear(epoch);
        reg.by_group.clear();
        reg.clients.values_mut().for_each(|c| c.tx = None);
    }

    /// LISTENs and fans out until shutdown. Ticks `progress` at every successful read of the log (the
    /// safety poll reads it at least every `safety_poll`), so a listener that cannot read is reported.
    async fn listen_loop(self, progress: Progress) {
        let mut backoff = reconnect_backoff();
        let mut safety = tokio::time::interval(self.0.config.safety_poll);
        safety.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A panic anywhere below (a restart by the supervisor follows) must not leave `listening` on.
        let _listening = ListeningFlag(&self.0.listening);
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
            backoff = reconnect_backoff();
            self.0.listening.store(true, Ordering::Release);
            // Notifications sent before LISTEN took effect are not coming: read from the head now, and tell
            // the streams that receipts may have moved meanwhile.
            self.deliver_receipt(ReceiptHint::Stale);
            self.track(&progress, self.catch_up().await);
            loop {
                tokio::select! {
                    _ = self.0.shutdown.cancelled() => return,
                    _ = safety.tick() => self.track(&progress, self.check_log().await),
                    _ = self.0.resync.notified() => self.track(&progress, self.check_log().await),
                    received = listener.try_recv() => match received {
                        Ok(Some(notification)) if notification.channel() == RECEIPTS_CHANNEL => {
                            match ReceiptHint::from_notify(notification.payload()) {
                                Some(hint) => self.deliver_receipt(hint),
                                None => tracing::warn!(payload = notification.payload(), "malformed receipt notification"),
                            }
                        }
                        Ok(Some(notification)) => match self.news_in(notification.payload()) {
                            News::Nothing => {}
                            News::Ahead => self.track(&progress, self.catch_up().await),
                            News::Unknown => self.track(&progress, self.check_log().await),
                        },
                        Ok(None) => {
                            // sqlx reconnected the listener; anything sent meanwhile was dropped.
                            metrics::counter!(m::LISTENER_RECONNECTS).increment(1);
                            self.deliver_receipt(ReceiptHint::Stale);
                            tracing::info!("stream listener reconnected; catching up from the log");
                            self.track(&progress, self.catch_up().await);
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
        listener.listen_all([EVENTS_CHANNEL, RECEIPTS_CHANNEL]).await?;
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

    /// Ticks on success; logs a failure (the next poll retries).
    fn track(&self, progress: &Progress, result: Result<(), sqlx::Error>) {
        match result {
            Ok(()) => {
                progress.tick();
                *lock(&self.0.last_log_read) = std::time::Instant::now();
            }
            Err(error) => tracing::warn!(%error, "stream hub could not read the event log; will retry"),
        }
    }

    /// Applies group membership and access changes to open streams, and records that this listener is alive.
    async fn membership_loop(self, progress: Progress) {
        let mut tick = tokio::time::interval(self.0.config.membership_poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beats = 0u32;
        loop {
            tokio::select! {
                _ = self.0.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.refresh_membership().await {
                Ok(()) => progress.tick(),
                Err(error) => tracing::warn!(%error, "could not refresh group membership of open streams"),
            }
            beats += 1;
            let reading = lock(&self.0.last_log_read).elapsed() <= hub_stall_after(&self.0.config);
            let due = beats % 3 == 1 && self.is_listening() && reading;
            if due && let Err(error) = crate::node::beat(&self.0.pool, self.0.node_id, "listener").await {
                tracing::warn!(%error, "listener heartbeat failed");
            }
        }
    }

    /// Reads the groups of the dispatchers of open streams and applies them. The read runs without the
    /// registry lock, so streams may open meanwhile: the read's number keeps its answer off those.
    async fn refresh_membership(&self) -> Result<(), sqlx::Error> {
        let (read, dispatcher_ids) = lock(&self.0.registry).begin_membership_read();
        if dispatcher_ids.is_empty() {
            return Ok(());
        }
        let membership = match &self.0.config.membership_source {
            Some(source) => (source.0)(self.0.pool.clone(), dispatcher_ids).await?,
            None => crate::auth::current_access(&self.0.pool, &dispatcher_ids).await?,
        };
        lock(&self.0.registry).apply_membership(read, &membership);
        Ok(())
    }
}

/// A broker-fed node's hub: the broker's consumer delivers here instead of the LISTEN loop.
impl crate::event_log::FeedTarget for Hub {
    fn head(&self) -> (Epoch, i64) {
        let reg = lock(&self.0.registry);
        (reg.epoch, reg.head)
    }

    fn deliver(&self, batch: PublishedBatch) -> bool {
        let Ok(epoch) = batch.epoch.parse::<Epoch>() else { return false };
        let Some(first_seq) = batch.events.first().map(|row| row.seq) else { return true };
        let events: Vec<Delivery> =
            batch.events.into_iter().map(|row| Arc::new(StreamEvent::encode(row, epoch))).collect();
        let mut reg = lock(&self.0.registry);
        if reg.epoch != epoch || first_seq > reg.head + 1 {
            return false;
        }
        self.dispatch_locked(&mut reg, events);
        true
    }

    fn skip_to(&self, epoch: Epoch, next_seq: i64) {
        let mut reg = lock(&self.0.registry);
        tracing::warn!(%epoch, from = reg.head + 1, to = next_seq - 1, "the broker feed skips expired events; ending all streams");
        self.restart_streams_locked(&mut reg, epoch, next_seq - 1);
    }

    fn is_open(&self) -> bool {
        !self.0.shutdown.is_cancelled()
    }

    fn set_live(&self, live: bool) {
        self.0.listening.store(live, Ordering::Release);
    }
}

/// Clears the `listening` flag when the listen loop ends, however it ends.
struct ListeningFlag<'a>(&'a AtomicBool);

impl Drop for ListeningFlag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
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

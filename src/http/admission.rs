//! Which connections get in: budgets derived from the file-descriptor limit, and a bound on connections
//! that have not yet sent a complete request head.
//!
//! Why: every connection costs a descriptor, and a process out of descriptors cannot accept `/healthz`,
//! cannot open a pool connection and logs `accept failed` in a loop. So the budget of connections is what
//! the descriptor limit leaves after the pool, the LISTEN connection and the process's own files, and event
//! streams (which live for hours) may take only part of it, so that API requests and health checks always
//! find room. Connections that have not finished their request head (a slow client, or an attacker who
//! opens thousands and sends a byte now and then) are bounded separately: when the bound is reached, the
//! oldest of them is closed to make room. A real client sends its head in one round trip, so it is never
//! the oldest for long; a flood only evicts itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Descriptors kept out of the connection budget besides the pool's: the listener, the LISTEN connection,
/// the runtime's epoll and eventfd, standard streams, the console's files, and a margin for what a library
/// opens (TLS roots, DNS resolution).
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// How many connections of each kind this process admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// All open client connections (streams, API, connections still sending their head).
    pub max_connections: usize,
    /// Open event streams of all dispatchers: `max_connections` less the room kept for everything else.
    pub max_streams: usize,
    /// Connections that have not sent a complete request head; past it, the oldest is closed.
    pub max_pending_heads: usize,
    /// How long a client may take to send a request head, and how long a keep-alive connection may
    /// idle between requests, on both transports. A browser sends its head in one round trip.
    pub head_timeout: Duration,
}

/// The default [`ConnectionLimits::head_timeout`].
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(15);

impl ConnectionLimits {
    /// The limits for a process allowed `descriptors` open files, whose pool holds up to `pool_size`
    /// connections. Of what is left after [`RESERVED_DESCRIPTORS`] and the pool, a tenth (at least 32) is
    /// kept from event streams for API requests and health checks; a quarter (at least 16, at most 4,096) may
    /// be connections still sending their head.
    pub fn from_descriptors(descriptors: u64, pool_size: u32) -> Self {
        let reserved = RESERVED_DESCRIPTORS + u64::from(pool_size);
        let usable = usize::try_from(descriptors.saturating_sub(reserved)).unwrap_or(usize::MAX).max(48);
        let api_room = (usable / 10).max(32);
        Self {
            max_connections: usable,
            max_streams: usable.saturating_sub(api_room).max(16),
            max_pending_heads: (usable / 4).clamp(16, 4096),
            head_timeout: HEAD_TIMEOUT,
        }
    }
}

/// Raises the soft limit of open files to the hard limit (as servers do at start: the soft default of
/// 1,024 is a relic of `select(2)`) and returns the limit now in force. Errors: the limit cannot be read.
pub fn raise_descriptor_limit() -> std::io::Result<u64> {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    rlimit::increase_nofile_limit(hard).or_else(|_| rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft))
}

/// The connection counter and the set of connections waiting for their request head.
#[derive(Debug)]
pub struct Admission {
    limits: ConnectionLimits,
    open: AtomicUsize,
    pending: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    next_id: u64,
    /// By admission order: the first entry is the oldest.
    waiting: BTreeMap<u64, CancellationToken>,
}

impl Admission {
    /// Admission under `limits`.
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self { limits, open: AtomicUsize::new(0), pending: Mutex::new(Pending::default()) })
    }

    /// The limits in force.
    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections open now that have not sent a complete request head.
    pub fn pending_heads(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Admits a new connection as one waiting for its head, or `None` when every connection is taken and
    /// none of them is still waiting for its head (the caller closes the new one). To make room, the oldest
    /// connection waiting for its head is told to close (its ticket's [`Ticket::evicted`] completes).
    pub fn admit(self: &Arc<Self>) -> Option<Ticket> {
        let mut pending = self.lock();
        let full = self.open.load(Ordering::Relaxed) >= self.limits.max_connections;
        if full || pending.waiting.len() >= self.limits.max_pending_heads {
            let made_room = evict_oldest(&mut pending);
            if full && !made_room {
                return None;
            }
        }
        let id = pending.next_id;
        pending.next_id += 1;
        let evicted = CancellationToken::new();
        pending.waiting.insert(id, evicted.clone());
        self.open.fetch_add(1, Ordering::Relaxed);
        Some(Ticket { admission: self.clone(), id, evicted })
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn evict_oldest(pending: &mut Pending) -> bool {
    match pending.waiting.pop_first() {
        Some((_, evicted)) => {
            metrics::counter!(crate::metrics::CONNECTIONS_EVICTED).increment(1);
            evicted.cancel();
            true
        }
        None => false,
    }
}

/// One admitted connection: counted while it lives, and among those waiting for a head until
/// [`Ticket::head_received`].
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    evicted: CancellationToken,
}

impl Ticket {
    /// Completes when the connection was closed to make room for newer ones, before its head arrived.
    pub fn evicted(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.evicted.cancelled()
    }

    /// The connection sent a complete request head: it no longer counts among those waiting, and can no
    /// longer be evicted. Idempotent.
    pub fn head_received(&self) {
        self.admission.lock().waiting.remove(&self.id);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.head_received();
        self.admission.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, max_pending_heads: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections,
            max_streams: max_connections,
            max_pending_heads,
            head_timeout: HEAD_TIMEOUT,
        }
    }

    #[test]
    fn the_budget_leaves_room_for_the_pool_the_api_and_the_process() {
        let at_300 = ConnectionLimits::from_descriptors(300, 10);
        assert_eq!(at_300.max_connections, 226);
        assert_eq!(at_300.max_streams, 226 - 32);
        assert_eq!(at_300.max_pending_heads, 56);
        let at_a_million = ConnectionLimits::from_descriptors(1 << 20, 32);
        assert!(at_a_million.max_streams < at_a_million.max_connections);
        assert_eq!(at_a_million.max_pending_heads, 4096);
        // A limit below the reserve still admits someone.
        assert!(ConnectionLimits::from_descriptors(10, 32).max_connections >= 48);
    }

    #[test]
    fn past_the_pending_bound_the_oldest_waiting_connection_is_evicted() {
        let admission = Admission::new(limits(100, 2));
        let first = admission.admit().unwrap();
        let second = admission.admit().unwrap();
        let third = admission.admit().unwrap();
        assert!(first.evicted.is_cancelled(), "the oldest makes room");
        assert!(!second.evicted.is_cancelled() && !third.evicted.is_cancelled());
        assert_eq!(admission.pending_heads(), 2);
        assert_eq!(admission.open(), 3, "an evicted connection counts until it closes");
        drop(first);
        assert_eq!(admission.open(), 2);
    }

    #[test]
    fn a_connection_that_sent_its_head_is_never_evicted_and_a_full_house_refuses() {
        let admission = Admission::new(limits(2, 2));
        let served = admission.admit().unwrap();
        served.head_received();
        let waiting = admission.admit().unwrap();
        let newcomer = admission.admit().expect("the waiting one makes room");
        assert!(waiting.evicted.is_cancelled() && !served.evicted.is_cancelled());
        newcomer.head_received();
        drop(waiting);
        assert!(admission.admit().is_none(), "two connections with heads: full, nothing to evict");
        drop(served);
        assert!(admission.admit().is_some());
    }
}

//! The hub's registry of open streams: who is attached to which group, their queues, and the membership
//! and access each stream was last checked against.

use super::event::Delivery;
use super::revocation::Revocation;
use crate::position::Epoch;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;

/// The current groups and access of some dispatchers, by id. An id absent from the answer is unknown (left
/// as it is), not a dispatcher without groups.
pub type Memberships = HashMap<String, crate::auth::Standing>;

/// What a stream shares with the hub.
#[derive(Debug)]
pub(crate) struct ClientShared {
    pub(super) groups: Mutex<Vec<String>>,
    pub(super) lagged: AtomicBool,
    /// Set (a [`Revocation`] code; 0: not revoked) when the dispatcher no longer holds any group the stream
    /// delivers, was disabled, or the stream's token was revoked: the stream must end instead of moving its
    /// position over events it can no longer check against real groups and access.
    pub(super) revoked: AtomicU8,
}

impl ClientShared {
    pub(crate) fn groups(&self) -> Vec<String> {
        lock(&self.groups).clone()
    }
    /// `f` of the stream's groups, without copying them (for checks made per stream on a shared message).
    pub(crate) fn with_groups<R>(&self, f: impl FnOnce(&[String]) -> R) -> R {
        f(&lock(&self.groups))
    }
    pub(crate) fn take_lagged(&self) -> bool {
        self.lagged.swap(false, Ordering::AcqRel)
    }
    pub(crate) fn is_revoked(&self) -> bool {
        self.revocation().is_some()
    }
    pub(crate) fn revocation(&self) -> Option<Revocation> {
        Revocation::from_code(self.revoked.load(Ordering::Acquire))
    }
}

pub(super) struct ClientEntry {
    pub(super) dispatcher_id: String,
    /// The groups the client asked for (None: all of the dispatcher's groups).
    pub(super) requested: Option<Vec<String>>,
    /// requested ∩ membership, as of the last membership poll.
    pub(super) groups: Vec<String>,
    /// The stream's token generation (`None`: an identity-provider token).
    pub(super) token_generation: Option<i64>,
    /// Some while attached to the live fan-out.
    pub(super) tx: Option<mpsc::Sender<Delivery>>,
    pub(super) shared: Arc<ClientShared>,
    /// `Registry::membership_reads` when the stream was added: a membership read that began before this
    /// (lower or equal number) may not know of the stream's request and is not applied to it.
    pub(super) added_after_read: u64,
}

pub(super) struct Registry {
    pub(super) epoch: Epoch,
    /// The last seq fanned out. Every event after it reaches attached clients through their queues.
    pub(super) head: i64,
    pub(super) clients: HashMap<u64, ClientEntry>,
    /// Membership reads started so far (each refresh takes the next number before it queries).
    pub(super) membership_reads: u64,
    pub(super) by_group: HashMap<String, HashMap<u64, mpsc::Sender<Delivery>>>,
}

impl Registry {
    pub(super) fn link(&mut self, id: u64) {
        let Some(entry) = self.clients.get(&id) else { return };
        let Some(tx) = entry.tx.clone() else { return };
        for g in &entry.groups {
            self.by_group.entry(g.clone()).or_default().insert(id, tx.clone());
        }
    }

    pub(super) fn unlink(&mut self, id: u64) {
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
    pub(super) fn detach_lagging(&mut self, id: u64) {
        self.unlink(id);
        if let Some(entry) = self.clients.get_mut(&id) {
            entry.tx = None; // closing the queue wakes the stream, which sees `lagged`
            entry.shared.lagged.store(true, Ordering::Release);
        }
    }

    /// Starts a membership read: the dispatchers of the streams open now, and the read's number.
    pub(super) fn begin_membership_read(&mut self) -> (u64, Vec<String>) {
        self.membership_reads += 1;
        let ids: HashSet<&String> = self.clients.values().map(|c| &c.dispatcher_id).collect();
        (self.membership_reads, ids.into_iter().cloned().collect())
    }

    /// Applies the answer of membership read `read` to the streams that were open when it began. Streams
    /// added meanwhile keep the groups their own request read, and dispatchers missing from the answer are
    /// left alone: a stream is never given groups from a read that did not ask about it. A stream whose
    /// groups become empty, whose dispatcher is disabled or whose token is revoked is revoked and closed.
    pub(super) fn apply_membership(&mut self, read: u64, membership: &Memberships) {
        let ids: Vec<u64> = self.clients.keys().copied().collect();
        for id in ids {
            let Some(entry) = self.clients.get(&id) else { continue };
            if entry.added_after_read >= read {
                continue;
            }
            let Some(standing) = membership.get(&entry.dispatcher_id) else { continue };
            let mut effective = effective_groups(entry.requested.as_deref(), &standing.groups);
            let revocation = Revocation::of(standing, entry.token_generation, &effective);
            if revocation.is_some() {
                effective.clear();
            }
            if effective == entry.groups && revocation.is_none() {
                continue;
            }
            tracing::info!(dispatcher = %entry.dispatcher_id, groups = ?effective, ?revocation, "stream access changed");
            self.unlink(id);
            let Some(entry) = self.clients.get_mut(&id) else { continue };
            *lock(&entry.shared.groups) = effective.clone();
            if let Some(revocation) = revocation {
                entry.shared.revoked.store(revocation.code(), Ordering::Release);
                entry.tx = None; // wakes the stream, which sees `revoked` and ends
            }
            entry.groups = effective;
            self.link(id);
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the registry half-updated in a way that matters more
    // than stopping delivery would, so keep going with the data as it is.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Fans events out in seq order to the attached streams of their groups; skips what is at or below the head.
pub(super) fn dispatch_locked(reg: &mut Registry, events: Vec<Delivery>) {
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
        for id in lagging.drain(..) {
            reg.detach_lagging(id);
        }
    }
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

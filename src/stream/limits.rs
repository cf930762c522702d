//! How many event streams may be open: per dispatcher, and in all, on this instance.
//!
//! A stream holds a descriptor and a queue for hours, so one token opening streams in a loop could take
//! every descriptor the process has and lock every other dispatcher out. Each dispatcher may hold up to
//! [`StreamLimits::per_dispatcher`] streams on one instance (enough for many tabs in a few browsers; the
//! console shares one stream between the tabs of a browser), and the instance holds up to
//! [`StreamLimits::total`], which the server sizes from its descriptor limit so that API requests and
//! health checks always find room. The counts are per instance: behind a load balancer a dispatcher may
//! hold the per-dispatcher number on each instance.

use crate::metrics as m;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Streams a dispatcher may hold on one instance, by default.
pub const DEFAULT_STREAMS_PER_DISPATCHER: usize = 32;

/// Why a stream was not opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamLimitError {
    /// The dispatcher holds as many streams on this instance as it may.
    #[error("you have {0} event streams open on this server, the most one dispatcher may; close other tabs or devices")]
    PerDispatcher(usize),
    /// The instance holds as many streams as it may.
    #[error("this server holds {0} event streams, the most it can; retry shortly (another instance may have room)")]
    Total(usize),
}

/// The stream counts and their limits; cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct StreamLimits {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    per_dispatcher: usize,
    total: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_dispatcher: HashMap<String, usize>,
}

impl StreamLimits {
    /// At most `per_dispatcher` streams for one dispatcher and `total` in all (each at least 1).
    pub fn new(per_dispatcher: usize, total: usize) -> Self {
        let inner = Inner { per_dispatcher: per_dispatcher.max(1), total: total.max(1), counts: Mutex::default() };
        Self { inner: Arc::new(inner) }
    }

    /// The per-dispatcher limit.
    pub fn per_dispatcher(&self) -> usize {
        self.inner.per_dispatcher
    }

    /// The instance's limit.
    pub fn total(&self) -> usize {
        self.inner.total
    }

    /// Streams `dispatcher_id` holds now.
    pub fn held_by(&self, dispatcher_id: &str) -> usize {
        self.lock().by_dispatcher.get(dispatcher_id).copied().unwrap_or(0)
    }

    /// A permit for one more stream of `dispatcher_id`, held for as long as the stream lives. Errors: a
    /// limit is reached (counted in `smartscheduler_sse_streams_refused_total` by `reason`).
    pub fn acquire(&self, dispatcher_id: &str) -> Result<StreamPermit, StreamLimitError> {
        let mut counts = self.lock();
        self.refusal(&counts, dispatcher_id)?;
        counts.total += 1;
        *counts.by_dispatcher.entry(dispatcher_id.to_owned()).or_default() += 1;
        Ok(StreamPermit { limits: self.clone(), dispatcher_id: dispatcher_id.to_owned() })
    }

    /// Whether [`acquire`](Self::acquire) would refuse `dispatcher_id` now, without taking a place: to refuse a
    /// stream before any work is spent on it. Errors and metric as `acquire`'s; `Ok` promises nothing (the
    /// place may be gone by the time it is acquired).
    pub fn check(&self, dispatcher_id: &str) -> Result<(), StreamLimitError> {
        self.refusal(&self.lock(), dispatcher_id)
    }

    fn refusal(&self, counts: &Counts, dispatcher_id: &str) -> Result<(), StreamLimitError> {
        let held = counts.by_dispatcher.get(dispatcher_id).copied().unwrap_or(0);
        let refusal = if held >= self.inner.per_dispatcher {
            StreamLimitError::PerDispatcher(self.inner.per_dispatcher)
        } else if counts.total >= self.inner.total {
            StreamLimitError::Total(self.inner.total)
        } else {
            return Ok(());
        };
        let reason = match refusal {
            StreamLimitError::PerDispatcher(_) => "per_dispatcher",
            StreamLimitError::Total(_) => "instance",
        };
        metrics::counter!(m::SSE_STREAMS_REFUSED, "reason" => reason).increment(1);
        Err(refusal)
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.inner.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One open stream's place in the counts; released when dropped.
#[derive(Debug)]
pub struct StreamPermit {
    limits: StreamLimits,
    dispatcher_id: String,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut counts = self.limits.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(held) = counts.by_dispatcher.get_mut(&self.dispatcher_id) {
            *held -= 1;
            if *held == 0 {
                counts.by_dispatcher.remove(&self.dispatcher_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dispatcher_at_its_limit_is_refused_while_others_are_not() {
        let limits = StreamLimits::new(2, 10);
        let a1 = limits.acquire("alice").unwrap();
        let _a2 = limits.acquire("alice").unwrap();
        assert_eq!(limits.acquire("alice").unwrap_err(), StreamLimitError::PerDispatcher(2));
        let _b = limits.acquire("bob").expect("bob is not alice");
        drop(a1);
        assert_eq!(limits.held_by("alice"), 1);
        assert!(limits.acquire("alice").is_ok(), "a closed stream frees its place");
    }

    #[test]
    fn the_instance_limit_holds_across_dispatchers_and_entries_do_not_linger() {
        let limits = StreamLimits::new(5, 2);
        let a = limits.acquire("alice").unwrap();
        let b = limits.acquire("bob").unwrap();
        assert_eq!(limits.acquire("carol").unwrap_err(), StreamLimitError::Total(2));
        drop((a, b));
        assert!(limits.lock().by_dispatcher.is_empty());
        assert_eq!(limits.lock().total, 0);
    }
}

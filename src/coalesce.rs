//! Coalesced reads: concurrent lookups of the same kind share one query.
//!
//! A reconnect storm opens thousands of streams within a second (an instance died and its browsers came back
//! here), and each needs its dispatcher's groups and the log's state. Asked one by one, that is a query per
//! stream and the pool becomes the bottleneck (issue 14: 9,600 transactions for 9,500 resumes). Here a
//! lookup that arrives while a read is running waits for the next read, which asks for every waiting key at
//! once. So the number of queries follows the database's pace, not the number of callers.
//!
//! Freshness is kept exactly: every caller is answered by a read that *started after it asked*, never by one
//! already running (which may have missed a commit the caller knows of: a browser resuming from a position
//! another instance gave it, or a dispatcher whose groups were changed a moment ago). A caller waits at most
//! for the read in flight and its own read.

use futures::future::BoxFuture;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// Reads the values of some keys. A key absent from the answer has no value (`None` to its caller).
type ReadFn<K, V> = dyn Fn(Vec<K>) -> BoxFuture<'static, Result<HashMap<K, V>, sqlx::Error>> + Send + Sync;

type Answer<V> = Result<Option<V>, sqlx::Error>;

/// Shares reads among concurrent callers (see the module). Cheap to clone.
pub struct Coalescer<K, V>(Arc<Inner<K, V>>);

impl<K, V> Clone for Coalescer<K, V> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

struct Inner<K, V> {
    read: Box<ReadFn<K, V>>,
    state: Mutex<State<K, V>>,
}

struct State<K, V> {
    waiting: Vec<(K, oneshot::Sender<Answer<V>>)>,
    /// Whether a reader task runs (it takes the waiting callers until there are none).
    reading: bool,
}

impl<K, V> Coalescer<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    /// `read` answers a batch of distinct keys with one query. The next read starts as soon as the previous
    /// one ends, with every key asked for meanwhile.
    pub fn new<F>(read: F) -> Self
    where
        F: Fn(Vec<K>) -> BoxFuture<'static, Result<HashMap<K, V>, sqlx::Error>> + Send + Sync + 'static,
    {
        let state = Mutex::new(State { waiting: Vec::new(), reading: false });
        Self(Arc::new(Inner { read: Box::new(read), state }))
    }

    /// The value of `key` from a read that started after this call, or `None` if it has none.
    ///
    /// # Errors
    /// The read's error: the first caller of a failed read gets it as it was, the others a copy that keeps
    /// its kind (see [`copy_error`]); [`sqlx::Error::WorkerCrashed`] if the read panicked.
    pub async fn get(&self, key: K) -> Answer<V> {
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut state = lock(&self.0.state);
            state.waiting.push((key, tx));
            !std::mem::replace(&mut state.reading, true)
        };
        if lead {
            // A task of its own, not this caller's future: a caller that goes away (its client hung up) must
            // not take the others' read with it.
            tokio::spawn(self.clone().read_while_waited_for());
        }
        rx.await.unwrap_or(Err(sqlx::Error::WorkerCrashed))
    }

    async fn read_while_waited_for(self) {
        let mut reset = ResetOnExit { state: &self.0.state, armed: true };
        loop {
            let batch = {
                let mut state = lock(&self.0.state);
                if state.waiting.is_empty() {
                    state.reading = false;
                    // From here on `reading` belongs to whoever comes next: it may be on again, for a new
                    // reader, before this task has ended.
                    reset.armed = false;
                    return;
                }
                std::mem::take(&mut state.waiting)
            };
            let mut keys: Vec<K> = batch.iter().map(|(key, _)| key.clone()).collect();
            let mut seen = std::collections::HashSet::with_capacity(keys.len());
            keys.retain(|key| seen.insert(key.clone()));
            match (self.0.read)(keys).await {
                Ok(values) => {
                    for (key, tx) in batch {
                        let _ = tx.send(Ok(values.get(&key).cloned()));
                    }
                }
                Err(error) => {
                    let mut batch = batch.into_iter();
                    let first = batch.next();
                    for (_, tx) in batch {
                        let _ = tx.send(Err(copy_error(&error)));
                    }
                    if let Some((_, tx)) = first {
                        let _ = tx.send(Err(error));
                    }
                }
            }
        }
    }
}

/// Whatever else ends the reader task (a panic in `read`, the runtime shutting down), the next caller must
/// find `reading` off and start a new one; callers left waiting are answered with an error by dropping them.
/// Disarmed when the reader ends normally: it has handed `reading` on by then, and a new reader's callers
/// are not its to drop.
struct ResetOnExit<'a, K, V> {
    state: &'a Mutex<State<K, V>>,
    armed: bool,
}

impl<K, V> Drop for ResetOnExit<'_, K, V> {
    fn drop(&mut self) {
        if self.armed {
            let mut state = lock(self.state);
            state.reading = false;
            state.waiting.clear();
        }
    }
}

/// A copy of a read's error for the other callers of the same read (`sqlx::Error` is not `Clone`). Keeps
/// what callers decide on: a busy pool stays `PoolTimedOut`, a lost connection or an unavailable server an
/// I/O error (so still a 503, still retried), anything else a protocol error with the same message.
pub fn copy_error(error: &sqlx::Error) -> sqlx::Error {
    match error {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        sqlx::Error::Io(e) => sqlx::Error::Io(std::io::Error::new(e.kind(), e.to_string())),
        other if crate::db::is_transient(other) => {
            sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, other.to_string()))
        }
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Notify;

    /// A read that counts its calls and holds each one until released, so that the test decides who
    /// arrives while a read is in flight.
    type Batches = Arc<Mutex<Vec<Vec<u32>>>>;

    /// A reader that finds no one waiting ends; a caller arriving right then starts the next reader. The
    /// old reader's exit must not take the new caller with it (it used to clear `waiting` whenever it saw
    /// `reading` on, which the new caller had just set: a lost answer, a 500 under the fuzzer in CI).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_reader_that_ends_never_drops_a_caller_who_arrived_as_it_ended() {
        let coalescer: Coalescer<u32, u32> = Coalescer::new(|keys: Vec<u32>| {
            Box::pin(async move { Ok(keys.into_iter().map(|k| (k, k)).collect()) }) as BoxFuture<'static, _>
        });
        let callers: Vec<_> = (0..8u32)
            .map(|task| {
                let coalescer = coalescer.clone();
                tokio::spawn(async move {
                    for round in 0..20_000u32 {
                        let key = task * 100_000 + round;
                        match coalescer.get(key).await {
                            Ok(Some(value)) => assert_eq!(value, key),
                            other => panic!("caller {key} was answered {other:?}"),
                        }
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.expect("every caller is answered with its value");
        }
    }

    /// A read that panics fails its callers (they are not left waiting) and the next caller gets a new read.
    #[tokio::test]
    async fn a_read_that_panics_fails_its_callers_and_the_next_read_works() {
        let coalescer: Coalescer<u32, u32> = Coalescer::new(|keys: Vec<u32>| {
            Box::pin(async move {
                assert!(!keys.contains(&13), "a bug in the read");
                Ok(keys.into_iter().map(|k| (k, k)).collect())
            }) as BoxFuture<'static, _>
        });
        assert!(matches!(coalescer.get(13).await, Err(sqlx::Error::WorkerCrashed)));
        assert_eq!(coalescer.get(7).await.unwrap(), Some(7), "the next caller starts a new read");
    }

    fn gated() -> (Coalescer<u32, u32>, Arc<AtomicUsize>, Arc<Notify>, Batches) {
        let batches: Batches = Arc::default();
        let (calls, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        let (c, g, b) = (calls.clone(), gate.clone(), Arc::clone(&batches));
        let coalescer = Coalescer::new(move |keys: Vec<u32>| {
            let (c, g, b) = (c.clone(), g.clone(), Arc::clone(&b));
            Box::pin(async move {
                c.fetch_add(1, Ordering::SeqCst);
                lock(&b).push(keys.clone());
                g.notified().await;
                if keys.contains(&13) {
                    return Err(sqlx::Error::PoolTimedOut);
                }
                Ok(keys.into_iter().filter(|k| *k != 0).map(|k| (k, k * 10)).collect())
            }) as BoxFuture<'static, _>
        });
        (coalescer, calls, gate, batches)
    }

    async fn until(mut check: impl FnMut() -> bool) {
        while !check() {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn callers_during_a_read_share_the_next_one_and_never_the_one_in_flight() {
        let (coalescer, calls, gate, batches) = gated();
        let first = tokio::spawn({
            let c = coalescer.clone();
            async move { c.get(1).await }
        });
        until(|| calls.load(Ordering::SeqCst) == 1).await;
        // Three callers arrive while the first read runs: none of them may be answered by it.
        let later: Vec<_> = [2, 2, 0]
            .into_iter()
            .map(|k| {
                let c = coalescer.clone();
                tokio::spawn(async move { c.get(k).await })
            })
            .collect();
        until(|| lock(&coalescer.0.state).waiting.len() == 3).await;
        gate.notify_one();
        assert_eq!(first.await.unwrap().unwrap(), Some(10));
        until(|| calls.load(Ordering::SeqCst) == 2).await;
        gate.notify_one();
        let answers: Vec<_> = futures::future::join_all(later).await.into_iter().map(|r| r.unwrap().unwrap()).collect();
        assert_eq!(answers, vec![Some(20), Some(20), None], "a key without a value is None");
        assert_eq!(*lock(&batches), vec![vec![1], vec![2, 0]], "one read for the three, keys once each");
    }

    #[tokio::test]
    async fn a_failed_read_fails_each_of_its_callers_with_the_same_kind_of_error_and_the_next_read_works() {
        let (coalescer, calls, gate, _) = gated();
        let spawn_get = |k: u32| {
            let c = coalescer.clone();
            tokio::spawn(async move { c.get(k).await })
        };
        let first = spawn_get(1);
        until(|| calls.load(Ordering::SeqCst) == 1).await;
        let failing = [spawn_get(13), spawn_get(13)];
        until(|| lock(&coalescer.0.state).waiting.len() == 2).await;
        gate.notify_one();
        assert_eq!(first.await.unwrap().unwrap(), Some(10));
        until(|| calls.load(Ordering::SeqCst) == 2).await;
        gate.notify_one();
        for caller in failing {
            let answer = caller.await.unwrap();
            assert!(matches!(answer, Err(sqlx::Error::PoolTimedOut)), "{answer:?}");
        }
        let after = spawn_get(5);
        until(|| calls.load(Ordering::SeqCst) == 3).await;
        gate.notify_one();
        assert_eq!(after.await.unwrap().unwrap(), Some(50));
    }

    #[test]
    fn copied_errors_keep_their_kind() {
        assert!(matches!(copy_error(&sqlx::Error::PoolTimedOut), sqlx::Error::PoolTimedOut));
        let io = sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"));
        assert!(crate::db::is_transient(&copy_error(&io)));
        assert!(matches!(copy_error(&sqlx::Error::RowNotFound), sqlx::Error::Protocol(_)));
    }
}

//! Catch-up reads of the database for resumes older than the resume window, shared among streams.
//!
//! After an outage, thousands of browsers of the same groups resume from nearby positions. Read one by
//! one, every stream pays for its own query, and the queries overlap almost entirely. Here the log is read
//! in fixed buckets of seqs, `(k·B, (k+1)·B]` for a stream's groups: streams resuming from anywhere in a
//! bucket need the same read, so one read serves them all (the others wait for it), and a bucket read
//! once is kept (bounded by bytes) for the streams that come after. Because positions are dense, a bucket
//! holds at most B events, so its read is never cut short by the page limit.
//!
//! Only complete buckets are shared and kept: a bucket whose end lies past the stream's seam (the hub's
//! head when it attached, at or below what is committed) is read for that stream alone and bounded by the
//! seam, since events after it may still be committing. Reads wait for their turn in the bounded queue.

use super::event::{Delivery, fetch_for_groups};
use crate::metrics as m;
use crate::position::Epoch;
use sqlx::PgPool;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{OnceCell, Semaphore};

/// A bucket of the log for a set of groups (sorted).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BucketKey {
    epoch: Epoch,
    groups: Vec<String>,
    index: i64,
}

type Bucket = Arc<[Delivery]>;

/// Shared, bounded catch-up reads (see the module).
pub(crate) struct CatchUpReads {
    pool: PgPool,
    /// Seqs per bucket (B), also the page limit of a read.
    bucket_seqs: i64,
    /// Permits for reads of the database running at once (`None`: unbounded).
    queue: Option<Arc<Semaphore>>,
    /// Most bytes of events the kept buckets may hold; 0 keeps none (reads are still shared while running).
    max_bytes: usize,
    kept: Mutex<Kept>,
}

/// The buckets being read or kept. A bucket enters `order` (with its bytes) once its read succeeded; a
/// failed read leaves the map, so only running reads and kept buckets are in it.
#[derive(Default)]
struct Kept {
    cells: HashMap<BucketKey, Arc<OnceCell<Bucket>>>,
    /// Kept buckets, oldest first, with their bytes.
    order: VecDeque<(BucketKey, usize)>,
    bytes: usize,
}

impl CatchUpReads {
    pub(crate) fn new(pool: PgPool, bucket_seqs: i64, queue: usize, max_bytes: usize) -> Self {
        let queue = (queue > 0).then(|| Arc::new(Semaphore::new(queue)));
        Self { pool, bucket_seqs: bucket_seqs.max(1), queue, max_bytes, kept: Mutex::default() }
    }

    /// The events of `groups` in `(after, n]`, where `n` is the end of `after`'s bucket or `through`,
    /// whichever comes first; returns them with `n`. A stream calls it until `n` reaches `through`.
    pub(crate) async fn read(
        &self,
        epoch: Epoch,
        groups: &[String],
        after: i64,
        through: i64,
    ) -> Result<(Vec<Delivery>, i64), sqlx::Error> {
        let (index, lo, hi, covered) = bucket_bounds(after, through, self.bucket_seqs);
        if hi > through {
            // The seam falls inside this bucket: read up to the seam for this stream alone.
            let events = self.fetch(epoch, groups, after, through).await?;
            return Ok((events, covered));
        }
        let mut sorted = groups.to_vec();
        sorted.sort();
        let key = BucketKey { epoch, groups: sorted, index };
        let cell = self.cell(&key);
        let read = cell
            .get_or_try_init(|| async {
                let bucket = Bucket::from(self.fetch(epoch, groups, lo, hi).await?);
                self.keep(&key, &bucket);
                Ok::<_, sqlx::Error>(bucket)
            })
            .await;
        let bucket = match read {
            Ok(bucket) => bucket,
            Err(error) => {
                self.forget_unread(&key, &cell);
                return Err(error);
            }
        };
        let events = bucket.iter().filter(|e| e.seq > after).cloned().collect();
        Ok((events, covered))
    }

    /// One read of the database, after waiting for its turn in the queue. The gauge shows the reads waiting.
    async fn fetch(
        &self,
        epoch: Epoch,
        groups: &[String],
        after: i64,
        through: i64,
    ) -> Result<Vec<Delivery>, sqlx::Error> {
        let _permit = match &self.queue {
            Some(queue) => {
                let waiting = metrics::gauge!(m::SSE_CATCHUP_WAITING);
                waiting.increment(1.0);
                let permit = queue.clone().acquire_owned().await;
                waiting.decrement(1.0);
                // The semaphore is never closed; without a permit, read anyway rather than never.
                permit.ok()
            }
            None => None,
        };
        metrics::counter!(m::SSE_BACKLOG_READS).increment(1);
        let events = fetch_for_groups(&self.pool, epoch, groups, after, through, self.bucket_seqs).await?;
        Ok(events.into_iter().map(Arc::new).collect())
    }

    /// The bucket's cell: the one being read or kept, else a new one.
    fn cell(&self, key: &BucketKey) -> Arc<OnceCell<Bucket>> {
        lock(&self.kept).cells.entry(key.clone()).or_default().clone()
    }

    /// Counts a bucket just read against the byte bound, and lets the oldest go while over it. A bucket let
    /// go stays with the streams still reading it; later streams read it again.
    fn keep(&self, key: &BucketKey, bucket: &Bucket) {
        let size = bucket.iter().map(|e| e.size).sum::<usize>();
        let mut kept = lock(&self.kept);
        let Kept { cells, order, bytes } = &mut *kept;
        order.push_back((key.clone(), size));
        *bytes += size;
        while *bytes > self.max_bytes {
            let Some((old, size)) = order.pop_front() else { break };
            *bytes -= size;
            cells.remove(&old);
        }
    }

    /// After a failed read: the next stream to ask starts a new cell (streams already waiting on this one
    /// try again on it themselves).
    fn forget_unread(&self, key: &BucketKey, cell: &Arc<OnceCell<Bucket>>) {
        let mut kept = lock(&self.kept);
        if kept.cells.get(key).is_some_and(|c| Arc::ptr_eq(c, cell) && !c.initialized()) {
            kept.cells.remove(key);
        }
    }
}

/// The bucket of a resume from `after` with buckets of `b` seqs: its index, its bounds `(lo, hi]`, and how
/// far this read goes (`hi`, or the seam `through` if that comes first).
fn bucket_bounds(after: i64, through: i64, b: i64) -> (i64, i64, i64, i64) {
    let index = after.div_euclid(b);
    let (lo, hi) = (index * b, (index + 1) * b);
    (index, lo, hi, hi.min(through))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_reads_from_its_own_bucket_to_the_bucket_end_or_the_seam() {
        // Bucket of 1000: after 4321 belongs to (4000, 5000].
        assert_eq!(bucket_bounds(4321, 20_000, 1000), (4, 4000, 5000, 5000));
        // The seam inside the bucket bounds the read.
        assert_eq!(bucket_bounds(4321, 4500, 1000), (4, 4000, 5000, 4500));
        // A resume from a bucket's last seq starts the next bucket.
        assert_eq!(bucket_bounds(5000, 20_000, 1000), (5, 5000, 6000, 6000));
        assert_eq!(bucket_bounds(0, 10, 1000), (0, 0, 1000, 10));
    }
}

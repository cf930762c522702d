//! Receipts stored in batches: each server gathers its consoles' reports and stores them in one
//! transaction at most once per [`BatchConfig::flush_interval`] (group commit), with `ss_record_receipts`
//! (migration 0019).
//!
//! Why: one transaction per report cost PostgreSQL 7.8 % of a core for 1,000 consoles at one report per 5 s
//! (`scripts/receipts-cost.sh`, docs/performance.md); the commit, the plpgsql call and the lock were most of
//! it. A batch pays them once per server per interval, and the reports of one dispatcher in a batch (its
//! other tabs) count as one. The figure the issue asks for (≤ 1 % of a core) is bench section 16.
//!
//! The batch also checks each report's access (the dispatcher exists and is enabled, the token's generation
//! is theirs), so that `POST /api/receipts` costs its request no read of its dispatcher: at 200 reports/s
//! that read, not the write, was most of what receipts cost PostgreSQL (bench section 16).
//!
//! A report is answered only once its batch is stored: `204` still means "stored", and a server killed
//! with reports in hand loses only unanswered ones, which their consoles send again. An isolated report
//! waits for nothing (the interval counts from the previous flush); under load a report waits at most one
//! interval. A batch the database refuses for one bad row (a dispatcher deleted meanwhile) is stored again
//! one dispatcher at a time, so that only that dispatcher's reports fail.

use super::{Reached, ReceiptHint};
use crate::auth::Refusal;
use crate::position::{Epoch, Position};
use crate::supervisor::{Progress, Supervisor};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Counter of batches stored (one transaction each).
pub const RECEIPT_BATCHES: &str = "smartscheduler_receipt_batches_total";
/// Counter of reports received, stored or not.
pub const RECEIPT_REPORTS: &str = "smartscheduler_receipt_reports_total";

/// How a server gathers receipts.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// The least time between two batches (default 1 s): the most a report waits under load, and what
    /// bounds this server's receipt transactions to one per interval.
    pub flush_interval: Duration,
    /// The most dispatchers one statement stores (default 500): bounds a statement's JSON, its NOTIFYs and
    /// how long it holds the receipts' lock, which other servers' batches wait for.
    pub max_dispatchers_per_statement: usize,
    /// Reports that may wait for the next batch (default 8,192); more make `POST /api/receipts` wait
    /// (backpressure), not fail.
    pub queue: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { flush_interval: Duration::from_secs(1), max_dispatchers_per_statement: 500, queue: 8192 }
    }
}

/// Why a report was not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    /// The batch (or, after a split, the dispatcher's own statement) failed.
    #[error("storing the receipt failed: {0}")]
    Database(Arc<sqlx::Error>),
    /// The batcher stopped (shutdown, or its task panicked with the report in hand).
    #[error("the receipt batcher is not running")]
    Stopped,
    /// The dispatcher's access refuses the token (revoked, or the dispatcher is disabled).
    #[error("{0}")]
    Refused(Refusal),
    /// The token names no dispatcher.
    #[error("the token's dispatcher does not exist")]
    UnknownDispatcher,
}

/// Announces a stored receipt to processes that do not hear PostgreSQL's NOTIFY (broker-fed nodes).
pub type Announce = Arc<dyn Fn(ReceiptHint) + Send + Sync>;

/// One report waiting for its batch.
struct Pending {
    dispatcher_id: String,
    /// The token's generation (`None`: the identity provider's token).
    generation: Option<i64>,
    position: Position,
    done: oneshot::Sender<Result<(), RecordError>>,
}

/// The handle handlers record through. Cheap to clone.
#[derive(Clone)]
pub struct ReceiptBatcher {
    queue: mpsc::Sender<Pending>,
}

impl ReceiptBatcher {
    /// Starts the supervised task `receipts` that stores the batches until `shutdown` (then stores what it
    /// holds and ends). `announce` is called for every row written.
    pub fn start(
        pool: PgPool,
        config: BatchConfig,
        announce: Option<Announce>,
        supervisor: &Supervisor,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(config.queue.max(1));
        // The receiver outlives a panicking run: the restarted one takes it again.
        let receiver = Arc::new(Mutex::new(receiver));
        let stall_after = config.flush_interval * 10 + Duration::from_secs(30);
        let task_shutdown = shutdown.clone();
        let task = supervisor.spawn("receipts", stall_after, shutdown, move |progress| {
            let flusher = Flusher { pool: pool.clone(), config: config.clone(), announce: announce.clone() };
            flusher.run(receiver.clone(), task_shutdown.clone(), progress)
        });
        (Self { queue }, task)
    }

    /// Records a console's report that `dispatcher_id` applied everything of its groups through
    /// `position`, sent with a token whose signature and times are checked and which carries `generation`
    /// (`None`: the identity provider's). Returns once the batch holding it is stored, whether or not it
    /// moved anything (see [`super`]).
    ///
    /// # Errors
    /// [`RecordError`]: the dispatcher's access refuses the token, the batch failed, or the batcher is not
    /// running.
    pub async fn record(
        &self,
        dispatcher_id: &str,
        generation: Option<i64>,
        position: Position,
    ) -> Result<(), RecordError> {
        metrics::counter!(RECEIPT_REPORTS).increment(1);
        let (done, stored) = oneshot::channel();
        let pending = Pending { dispatcher_id: dispatcher_id.to_owned(), generation, position, done };
        self.queue.send(pending).await.map_err(|_| RecordError::Stopped)?;
        stored.await.unwrap_or(Err(RecordError::Stopped))
    }
}

/// The reports of one dispatcher, token generation and epoch within a batch: stored as their furthest.
struct Merged {
    dispatcher_id: String,
    generation: Option<i64>,
    epoch: Epoch,
    seq: i64,
    waiting: Vec<oneshot::Sender<Result<(), RecordError>>>,
}

struct Flusher {
    pool: PgPool,
    config: BatchConfig,
    announce: Option<Announce>,
}

impl Flusher {
    async fn run(self, receiver: Arc<Mutex<mpsc::Receiver<Pending>>>, shutdown: CancellationToken, progress: Progress) {
        let mut receiver = receiver.lock().await;
        let mut idle = tokio::time::interval(Duration::from_secs(1));
        let mut last_flush: Option<Instant> = None;
        loop {
            let first = tokio::select! {
                pending = receiver.recv() => match pending {
                    Some(pending) => pending,
                    None => return, // every handle is gone: the server is being dropped
                },
                _ = idle.tick() => {
                    progress.tick(); // waiting for reports is progress: there is nothing to store
                    continue;
                }
                _ = shutdown.cancelled() => return,
            };
            let mut batch = vec![first];
            if let Some(at) = last_flush {
                // Gather for the rest of the interval; at shutdown, store what is in hand at once.
                tokio::select! {
                    _ = tokio::time::sleep_until(at + self.config.flush_interval) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            while let Ok(pending) = receiver.try_recv() {
                batch.push(pending);
            }
            last_flush = Some(Instant::now());
            if self.flush(batch).await {
                progress.tick();
            }
        }
    }

    /// Stores `batch`, answers every report in it, and returns whether all of it reached the database.
    async fn flush(&self, batch: Vec<Pending>) -> bool {
        let merged = merge(batch);
        let mut all_stored = true;
        let chunk_size = self.config.max_dispatchers_per_statement.max(1);
        let mut merged = merged.into_iter().peekable();
        while merged.peek().is_some() {
            let chunk: Vec<Merged> = merged.by_ref().take(chunk_size).collect();
            all_stored &= self.store_chunk(chunk).await;
        }
        all_stored
    }

    /// One statement for `chunk`; if the database refuses it (rather than being unreachable) and it holds
    /// more than one dispatcher, each is stored alone, so that one bad row fails only its own reports.
    async fn store_chunk(&self, chunk: Vec<Merged>) -> bool {
        match store(&self.pool, &chunk).await {
            Ok(verdicts) => {
                metrics::counter!(RECEIPT_BATCHES).increment(1);
                for m in chunk {
                    let verdict =
                        verdicts.iter().find(|v| v.dispatcher_id == m.dispatcher_id && v.generation == m.generation);
                    answer(m, verdict.map_or(Ok(()), Verdict::result));
                }
                self.announce_written(&verdicts);
                true
            }
            Err(error) if chunk.len() > 1 && !crate::db::is_transient(&error) => {
                tracing::warn!(%error, dispatchers = chunk.len(), "a receipt batch was refused; storing it one dispatcher at a time");
                let mut all_stored = true;
                for one in chunk {
                    all_stored &= Box::pin(self.store_chunk(vec![one])).await;
                }
                all_stored
            }
            Err(error) => {
                tracing::warn!(%error, dispatchers = chunk.len(), "could not store receipts");
                let error = RecordError::Database(Arc::new(error));
                chunk.into_iter().for_each(|m| answer(m, Err(error.clone())));
                false
            }
        }
    }

    /// Tells broker-fed nodes of the rows written (PostgreSQL-fed ones hear the statement's NOTIFYs).
    fn announce_written(&self, verdicts: &[Verdict]) {
        let Some(announce) = &self.announce else { return };
        for v in verdicts {
            if let Some((epoch, reached)) = &v.written {
                announce(ReceiptHint::stored(&v.dispatcher_id, *epoch, reached, v.groups.clone()));
            }
        }
    }
}

/// The batch's reports by dispatcher, token generation and epoch, each kept at its furthest position, in
/// the order they first arrived.
fn merge(batch: Vec<Pending>) -> Vec<Merged> {
    let mut merged: Vec<Merged> = Vec::new();
    let mut index: HashMap<(String, Option<i64>, Epoch), usize> = HashMap::new();
    for p in batch {
        let key = (p.dispatcher_id, p.generation, p.position.epoch);
        match index.get(&key) {
            Some(&i) => {
                let m = &mut merged[i];
                m.seq = m.seq.max(p.position.seq);
                m.waiting.push(p.done);
            }
            None => {
                index.insert(key.clone(), merged.len());
                let (dispatcher_id, generation, epoch) = key;
                merged.push(Merged { dispatcher_id, generation, epoch, seq: p.position.seq, waiting: vec![p.done] });
            }
        }
    }
    merged
}

fn answer(m: Merged, result: Result<(), RecordError>) {
    for done in m.waiting {
        let _ = done.send(result.clone()); // the request may have gone; its report is stored anyway
    }
}

/// What `ss_record_receipts` says of one dispatcher and token generation of a batch.
struct Verdict {
    dispatcher_id: String,
    generation: Option<i64>,
    /// `admitted`, `revoked`, `disabled` or `unknown`.
    verdict: String,
    /// The row written (at the log's epoch as the batch read it), if the reports moved the dispatcher
    /// further.
    written: Option<(Epoch, Reached)>,
    /// The hint's groups (`None`: every stream).
    groups: Option<Vec<String>>,
}

impl Verdict {
    fn result(&self) -> Result<(), RecordError> {
        match self.verdict.as_str() {
            "revoked" => Err(RecordError::Refused(Refusal::TokensRevoked)),
            "disabled" => Err(RecordError::Refused(Refusal::Disabled)),
            "unknown" => Err(RecordError::UnknownDispatcher),
            _ => Ok(()),
        }
    }
}

/// A row of `ss_record_receipts`.
type VerdictRow = (String, Option<i64>, String, String, Option<i64>, Option<DateTime<Utc>>, Option<Vec<String>>);

/// One `ss_record_receipts` call: a verdict per dispatcher and token generation of `chunk`.
async fn store(pool: &PgPool, chunk: &[Merged]) -> Result<Vec<Verdict>, sqlx::Error> {
    let reports: Vec<serde_json::Value> = chunk
        .iter()
        .map(|m| {
            serde_json::json!({
                "dispatcherId": m.dispatcher_id,
                "generation": m.generation,
                "epoch": m.epoch.to_string(),
                "seq": m.seq,
            })
        })
        .collect();
    let rows: Vec<VerdictRow> = sqlx::query_as(
        "SELECT dispatcher_id, generation, verdict, epoch, seq, reached_at, groups FROM ss_record_receipts($1)",
    )
    .bind(serde_json::Value::Array(reports))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(dispatcher_id, generation, verdict, epoch, seq, reached_at, groups)| {
            // A row is written only at the log's epoch, which `stream_meta`'s CHECK keeps well-formed.
            let epoch = epoch.parse::<Epoch>().ok();
            let written =
                epoch.zip(seq.zip(reached_at)).map(|(epoch, (seq, reached_at))| (epoch, Reached { seq, reached_at }));
            Verdict { dispatcher_id, generation, verdict, written, groups }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(dispatcher: &str, epoch: u32, seq: i64) -> (Pending, oneshot::Receiver<Result<(), RecordError>>) {
        let (done, rx) = oneshot::channel();
        let position = Position::new(Epoch(epoch), seq);
        (Pending { dispatcher_id: dispatcher.to_owned(), generation: Some(1), position, done }, rx)
    }

    #[test]
    fn a_dispatchers_reports_in_one_batch_count_as_the_furthest_and_all_are_answered() {
        let batch: Vec<_> = [("bob", 1, 5), ("ann", 1, 3), ("bob", 1, 9), ("bob", 1, 7), ("bob", 2, 1)]
            .into_iter()
            .map(|(d, e, s)| pending(d, e, s))
            .collect();
        let (mut batch, mut answers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let (old_tab, answer_of_old_tab) = pending("bob", 1, 20);
        batch.push(Pending { generation: Some(0), ..old_tab });
        answers.push(answer_of_old_tab);
        let merged = merge(batch);
        let summary: Vec<_> = merged
            .iter()
            .map(|m| (m.dispatcher_id.as_str(), m.generation, m.epoch.0, m.seq, m.waiting.len()))
            .collect();
        assert_eq!(
            summary,
            [
                ("bob", Some(1), 1, 9, 3),
                ("ann", Some(1), 1, 3, 1),
                ("bob", Some(1), 2, 1, 1),
                ("bob", Some(0), 1, 20, 1)
            ],
            "a tab with another token is judged on its own"
        );
        merged.into_iter().for_each(|m| answer(m, Ok(())));
        assert!(answers.iter_mut().all(|a| matches!(a.try_recv(), Ok(Ok(())))));
    }
}

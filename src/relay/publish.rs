//! One publish step: fence, move a batch, advance the counter, notify. All inside PostgreSQL: rows travel
//! from `outbox` to `event_log` in one statement and never through this process.

use super::EVENTS_CHANNEL;
use sqlx::{PgConnection, PgPool};

/// What one publish step did.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchOutcome {
    /// Events `first_seq..=last_seq` are now in `event_log`.
    Published {
        epoch: String,
        first_seq: i64,
        last_seq: i64,
        /// Seconds from each row's creation to its publish, for the lag histogram.
        lags: Vec<f64>,
    },
    /// Nothing committed was waiting.
    Empty,
}

impl BatchOutcome {
    pub fn count(&self) -> i64 {
        match self {
            BatchOutcome::Published { first_seq, last_seq, .. } => last_seq - first_seq + 1,
            BatchOutcome::Empty => 0,
        }
    }
}

/// Publishes up to `batch_size` events in its own transaction, if any are waiting.
pub async fn publish_batch(pool: &PgPool, batch_size: i64) -> Result<BatchOutcome, sqlx::Error> {
    // Cheap unlocked peek first, so that an idle poll costs one index probe and takes no row lock.
    let pending: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM outbox)").fetch_one(pool).await?;
    if !pending {
        return Ok(BatchOutcome::Empty);
    }
    publish_batch_now(pool, batch_size).await
}

/// Publishes up to `batch_size` events in its own transaction, without peeking first: for when a writer
/// just rang the doorbell, so that the peek's round trip is not added to every event's latency.
pub async fn publish_batch_now(pool: &PgPool, batch_size: i64) -> Result<BatchOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let outcome = publish_batch_uncommitted(&mut tx, batch_size).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Publishes every committed outbox row, batch after batch. Returns how many were published.
/// Tests and benchmarks use it to drive the relay deterministically instead of waiting for it.
pub async fn publish_all_pending(pool: &PgPool, batch_size: i64) -> Result<i64, sqlx::Error> {
    let mut total = 0;
    loop {
        match publish_batch(pool, batch_size).await? {
            BatchOutcome::Empty => return Ok(total),
            published => total += published.count(),
        }
    }
}

/// The body of a publish step, inside the caller's transaction (exposed so that tests can kill a relay
/// between the move and the commit). The NOTIFY is delivered only if the transaction commits.
pub async fn publish_batch_uncommitted(tx: &mut PgConnection, batch_size: i64) -> Result<BatchOutcome, sqlx::Error> {
    // The fence. Every publisher queues here; whoever holds it numbers the next batch from the committed
    // last_seq. In READ COMMITTED each following statement takes a fresh snapshot, so once we hold the
    // lock we see every row that committed before, including rows with lower ids that committed late.
    let (epoch, last_seq, needs_partitions): (String, i64, bool) = sqlx::query_as(
        "SELECT epoch, last_seq, partitions_until < now() + interval '2 days'
         FROM stream_meta WHERE stream = 'main' FOR UPDATE",
    )
    .fetch_one(&mut *tx)
    .await?;

    if needs_partitions {
        ensure_partitions(&mut *tx).await?;
    }

    // Move the lowest committed ids, numbered after last_seq in id order, advance the counter and NOTIFY,
    // all in one statement (one round trip: this is on every event's path to the screen). published_at
    // is taken after the fence, so it never decreases along seq (retention drops whole time ranges
    // without making holes). The NOTIFY is delivered at COMMIT, and only if there is one.
    let (count, lags): (i64, Vec<f64>) = sqlx::query_as(
        "WITH moved AS (
             DELETE FROM outbox
             -- = ANY(ARRAY(...)) makes these primary-key probes; IN (subquery) gets planned as a hash
             -- join over a scan of the whole outbox, which makes draining a backlog quadratic.
             WHERE id = ANY (ARRAY(SELECT id FROM outbox ORDER BY id LIMIT $2))
             RETURNING id, event_id, event_type, aggregate_id, groups, payload, replay_of, created_at
         ), numbered AS (
             SELECT moved.*, $1::bigint + row_number() OVER (ORDER BY id) AS seq FROM moved
         ), logged AS (
             INSERT INTO event_log
                 (seq, event_id, event_type, aggregate_id, groups, payload, replay_of, occurred_at, published_at)
             SELECT seq, event_id, event_type, aggregate_id, groups, payload, replay_of, created_at,
                    statement_timestamp()
             FROM numbered
             RETURNING seq, groups
         ), indexed AS (
             INSERT INTO event_log_groups (group_key, seq, published_at)
             -- The outbox refuses repeated groups (ss_valid_groups), so no DISTINCT is needed here.
             SELECT g, logged.seq, statement_timestamp() FROM logged, unnest(logged.groups) AS g
         ), batch AS (
             SELECT count(*) AS n,
                    coalesce(array_agg(greatest(0, extract(epoch FROM statement_timestamp() - created_at))::float8),
                             '{}') AS lags
             FROM numbered
         ), advanced AS (
             UPDATE stream_meta SET last_seq = $1 + batch.n, last_published_at = statement_timestamp()
             FROM batch WHERE stream_meta.stream = 'main' AND batch.n > 0
             RETURNING stream_meta.last_seq
         )
         -- One NOTIFY per batch, carrying only the new last position: listeners read the rows themselves.
         -- (pg_notify returns void, which no client type decodes, hence the count around it.)
         SELECT batch.n, batch.lags,
                (SELECT count(*) FROM (SELECT pg_notify($3, $4 || '-' || last_seq) FROM advanced) AS notified)
         FROM batch",
    )
    .bind(last_seq)
    .bind(batch_size)
    .bind(EVENTS_CHANNEL)
    .bind(&epoch)
    .fetch_one(&mut *tx)
    .await
    .map(|(count, lags, _notified): (i64, Vec<f64>, i64)| (count, lags))?;

    if count == 0 {
        return Ok(BatchOutcome::Empty);
    }
    let new_last = last_seq + count;
    Ok(BatchOutcome::Published { epoch, first_seq: last_seq + 1, last_seq: new_last, lags })
}

/// Makes sure daily partitions exist from yesterday to a week ahead (UTC).
pub async fn ensure_partitions(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT ss_ensure_partitions((now() AT TIME ZONE 'UTC')::date - 1, (now() AT TIME ZONE 'UTC')::date + 8)",
    )
    .execute(conn)
    .await?;
    Ok(())
}

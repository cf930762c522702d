//! Retention: `event_log` keeps the configured window by dropping whole daily partitions (no DELETE, so no
//! bloat), and creates the partitions of the coming days ahead of time.

use crate::supervisor::Progress;
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What one retention pass did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionReport {
    /// The `event_log` partitions dropped (with `dry_run`: that would be dropped), by table name.
    pub dropped_partitions: Vec<String>,
    /// Every seq up to this one has expired: positions at or below it can no longer be resumed from.
    pub expired_through_seq: i64,
    /// Delivery receipts deleted: those of positions that expired (each dispatcher's latest kept) and of
    /// other epochs (with `dry_run`: 0, nothing is counted).
    pub pruned_receipts: u64,
}

/// Drops partitions that end before `now - retention`, records the highest seq they held (clients resuming
/// from before it get `event: reset` with reason `expired`), and creates upcoming partitions. With `dry_run`,
/// reports what it would drop and changes nothing. Errors: the database's (nothing is dropped then: one
/// transaction).
pub async fn run_once(pool: &PgPool, dry_run: bool) -> Result<RetentionReport, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Under the fence: no publish runs while partitions move, and expired_through_seq is exact.
    let (retention_ok,): (bool,) =
        sqlx::query_as("SELECT retention > interval '0' FROM stream_meta WHERE stream = 'main' FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
    if !retention_ok {
        return Ok(RetentionReport::default());
    }
    let expired: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, gc.relname::text
         FROM pg_inherits i
         JOIN pg_class c ON c.oid = i.inhrelid
         JOIN pg_class p ON p.oid = i.inhparent AND p.relname = 'event_log'
         LEFT JOIN pg_class gc ON gc.relname = replace(c.relname, 'event_log_p', 'event_log_groups_p')
         WHERE to_timestamp(substr(c.relname, 12), 'YYYYMMDD')::date + 1
               <= ((now() - (SELECT retention FROM stream_meta)) AT TIME ZONE 'UTC')::date
         ORDER BY c.relname",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut report = RetentionReport::default();
    let mut expired_through: i64 =
        sqlx::query_scalar("SELECT expired_through_seq FROM stream_meta").fetch_one(&mut *tx).await?;
    for (partition, groups_partition) in expired {
        let max_seq: Option<i64> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT max(seq) FROM {}", quote(&partition))))
                .fetch_one(&mut *tx)
                .await?;
        expired_through = expired_through.max(max_seq.unwrap_or(0));
        if !dry_run {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {}", quote(&partition)))).execute(&mut *tx).await?;
            if !groups_partition.is_empty() {
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {}", quote(&groups_partition))))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        report.dropped_partitions.push(partition);
    }
    report.expired_through_seq = expired_through;
    if !dry_run {
        sqlx::query("UPDATE stream_meta SET expired_through_seq = $1").bind(expired_through).execute(&mut *tx).await?;
        crate::event_log::ensure_partitions(&mut tx).await?;
        tx.commit().await?;
        // Outside the fence: a large delete must not hold up publishing.
        report.pruned_receipts = crate::receipts::prune(pool, expired_through).await?;
    }
    Ok(report)
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// Runs retention at start-up and then every `interval`, until shutdown. Ticks `progress` after each pass
/// that worked.
pub async fn run_periodically(pool: PgPool, interval: Duration, shutdown: CancellationToken, progress: Progress) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match run_once(&pool, false).await {
            Ok(report) => {
                progress.tick();
                if !report.dropped_partitions.is_empty() {
                    tracing::info!(dropped = ?report.dropped_partitions, expired_through_seq = report.expired_through_seq, "retention dropped expired partitions");
                }
            }
            Err(error) => tracing::warn!(%error, "retention pass failed; will retry"),
        }
    }
}

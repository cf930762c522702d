//! Section 2: how fast the relay empties a backlog, against a relay that moves rows through the application.

use crate::common::{Ctx, Report, fmt_int, pass_word};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Fills the outbox with `n` events of ~500-byte payloads over four region groups, then VACUUM ANALYZE.
async fn prefill(pool: &PgPool, n: i64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO outbox (event_type, aggregate_id, groups, payload)
         SELECT 'RecommendationReady', gen_random_uuid(),
                ARRAY['region:' || (ARRAY['north', 'south', 'east', 'west'])[i % 4 + 1]],
                jsonb_build_object('i', i, 'summary', jsonb_build_object('recommendationSetId', gen_random_uuid(),
                                   'count', 10, 'note', repeat('x', 400)))
         FROM generate_series(1, $1) AS i",
    )
    .bind(n)
    .execute(pool)
    .await?;
    sqlx::query("VACUUM ANALYZE outbox").execute(pool).await?;
    Ok(())
}

async fn reset(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE outbox, event_log, event_log_groups").execute(pool).await?;
    sqlx::query("VACUUM ANALYZE event_log_groups").execute(pool).await?;
    Ok(())
}

type Row = (i64, Uuid, String, Uuid, Vec<String>, String, DateTime<Utc>);

/// The naive relay: one transaction per batch that reads the rows into the application and writes them
/// back one statement at a time (same fence, numbering, group index and NOTIFY as ours).
async fn naive_publish_all(pool: &PgPool, batch_size: i64, max_batches: usize) -> anyhow::Result<i64> {
    let mut total = 0;
    for _ in 0..max_batches {
        let mut tx = pool.begin().await?;
        let (epoch, last_seq): (String, i64) =
            sqlx::query_as("SELECT epoch, last_seq FROM stream_meta WHERE stream = 'main' FOR UPDATE")
                .fetch_one(&mut *tx)
                .await?;
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, event_id, event_type, aggregate_id, groups, payload::text, created_at
             FROM outbox ORDER BY id LIMIT $1",
        )
        .bind(batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(total);
        }
        let mut seq = last_seq;
        let mut ids = Vec::with_capacity(rows.len());
        for (id, event_id, event_type, aggregate_id, groups, payload, created_at) in rows {
            seq += 1;
            ids.push(id);
            sqlx::query(
                "INSERT INTO event_log (seq, event_id, event_type, aggregate_id, groups, payload, replay_of,
                                        occurred_at, published_at)
                 VALUES ($1, $2, $3, $4, $5, $6::jsonb, NULL, $7, now())",
            )
            .bind(seq)
            .bind(event_id)
            .bind(&event_type)
            .bind(aggregate_id)
            .bind(&groups)
            .bind(&payload)
            .bind(created_at)
            .execute(&mut *tx)
            .await?;
            for g in &groups {
                sqlx::query("INSERT INTO event_log_groups (group_key, seq, published_at) VALUES ($1, $2, now())")
                    .bind(g)
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)").bind(&ids).execute(&mut *tx).await?;
        sqlx::query("UPDATE stream_meta SET last_seq = $1, last_published_at = now() WHERE stream = 'main'")
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_notify('ss_events', $1)").bind(format!("{epoch}-{seq}")).execute(&mut *tx).await?;
        tx.commit().await?;
        total += ids.len() as i64;
    }
    Ok(total)
}

pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let db = ctx.fresh_db(4).await?;
    let result = run_on(ctx, &db.pool, report).await;
    ctx.drop_db(db).await;
    result
}

async fn timed<F: std::future::Future<Output = anyhow::Result<i64>>>(f: F) -> anyhow::Result<(i64, Duration)> {
    let t = Instant::now();
    let n = f.await?;
    Ok((n, t.elapsed()))
}

async fn run_on(ctx: &Ctx, pool: &PgPool, report: &mut Report) -> anyhow::Result<()> {
    let rows: i64 = if ctx.quick { 20_000 } else { 100_000 };
    let naive_rows: i64 = if ctx.quick { 5_000 } else { 20_000 };
    // Warm-up (partitions, plans, caches).
    prefill(pool, 2_000).await?;
    smartscheduler::relay::publish_all_pending(pool, 1000).await?;
    reset(pool).await?;

    let mut sweep = Vec::new();
    for batch in [1000i64, 500, 2000] {
        prefill(pool, rows).await?;
        let (n, took) = timed(async { Ok(smartscheduler::relay::publish_all_pending(pool, batch).await?) }).await?;
        anyhow::ensure!(n == rows, "published {n} of {rows} rows");
        sweep.push((batch, n, took));
        reset(pool).await?;
    }
    prefill(pool, naive_rows).await?;
    let (naive_n, naive_took) = timed(naive_publish_all(pool, 1000, 10_000)).await?;
    anyhow::ensure!(naive_n == naive_rows, "naive relay published {naive_n} of {naive_rows} rows");
    reset(pool).await?;

    let ours_rate = sweep[0].1 as f64 / sweep[0].2.as_secs_f64();
    let naive_rate = naive_n as f64 / naive_took.as_secs_f64();
    let pass = ours_rate >= 50_000.0;
    let mut body = format!(
        "Backlog of {} outbox rows (~500-byte jsonb payloads, groups `region:north|south|east|west` by i % 4), \
         `VACUUM ANALYZE`, then `relay::publish_all_pending(pool, batch)` until empty. Each batch is one call \
         of `ss_publish_batch` in its own transaction: fence (`stream_meta` row lock), one `DELETE ... \
         RETURNING` → `INSERT event_log` → `INSERT event_log_groups` statement, counter update, one `NOTIFY`; \
         the published rows come back to the relay (for its process's hub), the move itself stays inside \
         PostgreSQL.\n\n\
         Naive baseline: a client-side relay, one transaction per batch of 1000: same fence, `SELECT` the rows \
         (payload as text) into the application, one `INSERT` per event into `event_log` and one per group \
         into `event_log_groups`, `DELETE ... WHERE id = ANY($1)`, counter update, `NOTIFY` \
         (run on {} rows to keep the suite short).\n\n",
        fmt_int(rows as f64),
        fmt_int(naive_rows as f64)
    );
    body.push_str("| relay | batch | events | time | events/s |\n|---|---|---|---|---|\n");
    for (batch, n, took) in &sweep {
        body.push_str(&format!(
            "| ours | {batch} | {} | {:.2} s | {} |\n",
            fmt_int(*n as f64),
            took.as_secs_f64(),
            fmt_int(*n as f64 / took.as_secs_f64())
        ));
    }
    body.push_str(&format!(
        "| naive (row by row through the app) | 1000 | {} | {:.2} s | {} |\n\n",
        fmt_int(naive_n as f64),
        naive_took.as_secs_f64(),
        fmt_int(naive_rate)
    ));
    body.push_str(&format!(
        "Ours (batch 1000) vs naive: **{:.1}×** faster.\n\nTarget: ≥ 50,000 events/s → **{}** ({} events/s).\n",
        ours_rate / naive_rate,
        pass_word(pass),
        fmt_int(ours_rate)
    ));
    report.section("2. Relay drain (issue 2)", &body);
    report.summary_row(
        "2. Relay drain of 100,000 rows (batch 1000)",
        "≥ 50,000 events/s",
        &format!("{} events/s (naive {}; {:.1}×)", fmt_int(ours_rate), fmt_int(naive_rate), ours_rate / naive_rate),
        Some(pass),
    );
    Ok(())
}

//! Sections 11 and 12: reconnect storms. Thousands of clients resume at the same instant (an instance died
//! and its browsers came back on this one), each a random number of events behind, against our design
//! (resume window in memory, catch-up reads queued, transient failures retried) and against the design
//! before it (`HubConfig::without_storm_protection`: every resume reads the database at once, and a read
//! that finds no connection in time ends the stream), in the same run, over the same log.

use crate::common::{BenchDb, Ctx, Report, fmt_int, pass_word};
use crate::memory::ServeChild;
use crate::sse_client::{SseClient, json_u64};
use crate::stream::{REGIONS, region_dispatchers};
use memchr::memmem;
use smartscheduler::stream::HubConfig;
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Events in the log (published while the server runs, so that its hub fans them out).
const LOG: i64 = 20_000;
/// How long a client may take to catch up before it counts as not caught up.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// One storm's outcome.
struct Outcome {
    clients: usize,
    caught_up: u64,
    errors: u64,
    took: Duration,
    transactions: i64,
}

/// The database's committed + rolled back transactions so far (every statement outside a transaction
/// block is one), after the backends flushed their counters.
async fn transactions(pool: &PgPool) -> anyhow::Result<i64> {
    sqlx::query("SELECT pg_stat_clear_snapshot()").execute(pool).await?;
    Ok(sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await?)
}

/// Starts `serve` as a process of its own (so that the server and the 10,000 clients each have their own
/// open-files limit), without a relay: the benchmark publishes.
async fn start_server(url: &str, design: Design) -> anyhow::Result<ServeChild> {
    let args: &[&str] = match design {
        Design::Ours => &["--no-relay"],
        Design::OursWithoutWindow => &["--no-relay", "--resume-window-events", "0"],
        Design::Before => &["--no-relay", "--bench-only-without-storm-protection"],
    };
    ServeChild::start(url, args).await
}

/// The server designs a storm is run against.
#[derive(Clone, Copy)]
enum Design {
    /// Resume window, queued and shared catch-up reads, retries.
    Ours,
    /// The same without the window: every resume reads the log (shared reads only).
    OursWithoutWindow,
    /// Before issue 14: no window, no queue, no sharing, a failed read ends the stream.
    Before,
}

/// The last seq of region index `r` at or below `through` (seq s belongs to region s % 4).
fn last_of_region(r: usize, through: i64) -> i64 {
    let r = r as i64;
    through - (through - r).rem_euclid(4)
}

/// `clients` clients resume at once, each `behind` events behind the head (drawn from `behind`), and read
/// until they received the last event of their region. No reconnect: a stream that ends counts as an error.
async fn storm(
    addr: &str,
    tokens: &[String],
    epoch: &str,
    clients: usize,
    behind: std::ops::RangeInclusive<i64>,
) -> Outcome {
    let caught_up = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let last_done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let region = i % REGIONS.len();
        let token = tokens[region].clone();
        let from = LOG - rand::random_range(behind.clone());
        let target = last_of_region(region, LOG);
        let (addr, epoch) = (addr.to_owned(), epoch.to_owned());
        let (caught_up, errors, last_done) = (caught_up.clone(), errors.clone(), last_done.clone());
        tasks.push(tokio::spawn(async move {
            let key = memmem::Finder::new(b"\"i\":");
            let done = async {
                let mut client = SseClient::connect(&addr, &token, Some(&format!("{epoch}-{from}"))).await?;
                if from >= target {
                    return anyhow::Ok(true);
                }
                let mut reached = false;
                client
                    .read_until(CLIENT_TIMEOUT, |frame| {
                        reached |= json_u64(frame.data, &key).is_some_and(|i| i as i64 >= target);
                        !reached
                    })
                    .await?;
                Ok(reached)
            };
            match done.await {
                Ok(true) => {
                    caught_up.fetch_add(1, Ordering::Relaxed);
                    last_done.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    Outcome {
        clients,
        caught_up: caught_up.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        took: Duration::from_micros(last_done.load(Ordering::Relaxed)),
        transactions: 0,
    }
}

/// One storm against a fresh server of `design`, the queries it cost counted on the database.
async fn storm_against(
    db: &BenchDb,
    design: Design,
    tokens: &[String],
    epoch: &str,
    clients: usize,
    behind: std::ops::RangeInclusive<i64>,
) -> anyhow::Result<Outcome> {
    let server = start_server(&db.url, design).await?;
    let addr = server.addr.clone();
    // The log is published after the server started, so that its hub fanned it out (and holds the latest
    // events in its window, when it has one): what a long-running instance has when the storm comes.
    publish_log(db).await?;
    wait_for_head(&addr, tokens, epoch).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await; // let the backends flush their statistics
    let before = transactions(&db.pool).await?;
    let mut outcome = storm(&addr, tokens, epoch, clients, behind).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Our own two statistics reads are not the server's.
    outcome.transactions = transactions(&db.pool).await? - before - 2;
    server.stop().await;
    Ok(outcome)
}

/// Writes and publishes the log once (later calls find it published): `LOG` events, seq s for region
/// s % 4, each carrying `"i": s`.
async fn publish_log(db: &BenchDb) -> anyhow::Result<()> {
    let published: i64 = sqlx::query_scalar("SELECT last_seq FROM stream_meta").fetch_one(&db.pool).await?;
    if published >= LOG {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO outbox (event_type, aggregate_id, groups, payload)
         SELECT 'BenchEvent', gen_random_uuid(), ARRAY['region:' || (ARRAY['north','south','east','west'])[i % 4 + 1]],
                jsonb_build_object('i', i, 'summary', repeat('x', 300))
         FROM generate_series(1, $1) AS i ORDER BY i",
    )
    .bind(LOG)
    .execute(&db.pool)
    .await?;
    smartscheduler::relay::publish_all_pending(&db.pool, 1000).await?;
    Ok(())
}

/// Waits until the server's hub fanned out the whole log: a north client resuming one event before its last
/// north event receives it.
async fn wait_for_head(addr: &str, tokens: &[String], epoch: &str) -> anyhow::Result<()> {
    let key = memmem::Finder::new(b"\"i\":");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let mut client = SseClient::connect(addr, &tokens[0], Some(&format!("{epoch}-{}", LOG - 1))).await?;
        let mut reached = false;
        client
            .read_until(Duration::from_secs(2), |frame| {
                reached |= json_u64(frame.data, &key).is_some_and(|i| i as i64 >= LOG);
                !reached
            })
            .await?;
        if reached {
            return Ok(());
        }
    }
    anyhow::bail!("the server's hub did not reach seq {LOG}")
}

/// Sections 11 (storm, 0–1,000 behind) and 12 (deep storm, 5,000–10,000 behind).
pub async fn run(ctx: &Ctx, report: &mut Report, deep: bool) -> anyhow::Result<()> {
    let clients: usize = if ctx.quick { 2_000 } else { 10_000 };
    let limit = crate::common::open_files_limit();
    // Each client is one descriptor here and one in the server's process.
    let clients = clients.min(limit.saturating_sub(1_000) as usize);
    let db = ctx.fresh_db(8).await?;
    let result = run_on(&db, report, clients, deep).await;
    ctx.drop_db(db).await;
    result
}

async fn run_on(db: &BenchDb, report: &mut Report, clients: usize, deep: bool) -> anyhow::Result<()> {
    let tokens = region_dispatchers(&db.pool).await?;
    let epoch: String = sqlx::query_scalar("SELECT epoch FROM stream_meta").fetch_one(&db.pool).await?;
    let behind = if deep { 5_000..=10_000 } else { 0..=1_000 };
    let ours = storm_against(db, Design::Ours, &tokens, &epoch, clients, behind.clone()).await?;
    let without_window = if deep {
        Some(storm_against(db, Design::OursWithoutWindow, &tokens, &epoch, clients, behind.clone()).await?)
    } else {
        None
    };
    let before = storm_against(db, Design::Before, &tokens, &epoch, clients, behind.clone()).await?;
    let row = |name: &str, o: &Outcome| {
        format!(
            "| {name} | {} | {} | {} | {:.2} s | {} |\n",
            fmt_int(o.clients as f64),
            fmt_int(o.caught_up as f64),
            fmt_int(o.errors as f64),
            o.took.as_secs_f64(),
            fmt_int(o.transactions as f64)
        )
    };
    let (n, title) = if deep { (12, "Deep reconnect storm") } else { (11, "Reconnect storm") };
    let mut body = format!(
        "{} events in the log (groups `region:north|south|east|west` by seq % 4, ~400-byte payloads), \
         published while the server runs so that its hub fanned them out. Then {} clients (a quarter per \
         region dispatcher, lean HTTP/1.1 clients in the benchmark process) connect at the same instant with \
         `Last-Event-ID` {}–{} events behind the head (uniform), and read until the last event of their \
         region; a stream that ends before counts as an error (no reconnect). Server: `smartscheduler serve --no-relay` \
         in a process of its own (a pool of 32 connections, 5 s acquire timeout). Queries: the database's \
         transactions (`pg_stat_database` xact_commit + xact_rollback; every statement outside a transaction \
         block is one) from just before the storm to 1.5 s after it, which includes the hub's own polls.\n\n\
         Ours: `HubConfig::default()` (resume window of {} events / {} MiB, {} catch-up reads at once, each page of the log read once for all the streams that need it, retried). \
         Before: `serve --bench-only-without-storm-protection` (`HubConfig::without_storm_protection()`), the design before issue 14 (no window, no queue, a \
         failed read ends the stream).\n\n\
         | design | clients | caught up | streams ended with an error | time until all caught up | PostgreSQL transactions |\n\
         |---|---|---|---|---|---|\n",
        fmt_int(LOG as f64),
        fmt_int(clients as f64),
        behind.start(),
        behind.end(),
        HubConfig::default().window_events,
        HubConfig::default().window_bytes >> 20,
        HubConfig::default().catchup_reads,
    );
    body.push_str(&row("ours", &ours));
    if let Some(o) = &without_window {
        body.push_str(&row("ours without the window (`--resume-window-events 0`: shared catch-up reads only)", o));
    }
    body.push_str(&row("before (no window, no queue)", &before));
    let all = ours.caught_up == clients as u64 && ours.errors == 0;
    if deep {
        let pass = all;
        body.push_str(&format!("\nTarget: 0 errors, time and queries reported → **{}**.\n", pass_word(pass)));
        report.section(
            &format!("{n}. {title}: {} clients 5,000–10,000 events behind (issue 14)", fmt_int(clients as f64)),
            &body,
        );
        report.summary_row(
            &format!("{n}. Deep storm, {} clients 5,000–10,000 behind", fmt_int(clients as f64)),
            "0 errors",
            &format!(
                "{} errors, {:.2} s, {} tx (before: {} errors, {:.2} s, {} tx)",
                ours.errors,
                ours.took.as_secs_f64(),
                fmt_int(ours.transactions as f64),
                before.errors,
                before.took.as_secs_f64(),
                fmt_int(before.transactions as f64)
            ),
            Some(pass),
        );
    } else {
        let pass = all && ours.took <= Duration::from_secs(2) && ours.transactions <= 100 && clients >= 10_000;
        body.push_str(&format!(
            "\nTarget: 10,000 clients all caught up ≤ 2 s, 0 errors, ≤ 100 PostgreSQL queries → **{}**.\n",
            pass_word(pass)
        ));
        report.section(
            &format!("{n}. {title}: {} clients 0–1,000 events behind (issue 14)", fmt_int(clients as f64)),
            &body,
        );
        report.summary_row(
            &format!("{n}. Storm, {} clients 0–1,000 behind", fmt_int(clients as f64)),
            "≤ 2 s, 0 errors, ≤ 100 queries",
            &format!(
                "{:.2} s, {} errors, {} tx (before: {:.2} s, {} errors, {} tx)",
                ours.took.as_secs_f64(),
                ours.errors,
                fmt_int(ours.transactions as f64),
                before.took.as_secs_f64(),
                before.errors,
                fmt_int(before.transactions as f64)
            ),
            Some(pass),
        );
    }
    Ok(())
}

//! Section 13: scale-out. The same clients and the same event rate over 1, 2 and 4 `serve` instances (each
//! with its own pool, hub, LISTEN connection and relay, as `serve` starts them) on one database: what each
//! instance adds to PostgreSQL, and what the clients see.

use crate::common::{BenchDb, Ctx, Report, fmt_int, ms, now_ns};
use crate::stream::{
    PHASE_HEADER, REGIONS, SECRET, Stats, collect_phase, open_stream_clients, phase_row, region_dispatchers,
    write_phase,
};
use smartscheduler::auth::AuthSecret;
use smartscheduler::outbox::RelayWaker;
use smartscheduler::server::{Server, ServerConfig};
use sqlx::PgPool;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Events per second offered in every run.
const RATE: u32 = 200;

struct Instance {
    addr: String,
    waker: RelayWaker,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Starts an instance as `serve` does: a pool of 32, hub, HTTP and (`relay`) a relay.
async fn start_instance(url: &str, relay: bool) -> anyhow::Result<Instance> {
    let pool = smartscheduler::db::connect(url, 32).await?;
    let mut config = ServerConfig::new("127.0.0.1:0".parse()?);
    config.streams_per_dispatcher = usize::MAX; // thousands of streams, one token
    config.run_relay = relay;
    let shutdown = CancellationToken::new();
    let server = Server::start(pool, config, AuthSecret::new(SECRET)?, shutdown.clone()).await?;
    let addr = server.local_addr()?.to_string();
    let waker = server.relay_waker();
    Ok(Instance { addr, waker, shutdown, task: tokio::spawn(server.run()) })
}

/// Transactions committed or rolled back in the database so far, and its open connections (ours excluded).
async fn database_counters(pool: &PgPool) -> anyhow::Result<(i64, i64)> {
    sqlx::query("SELECT pg_stat_clear_snapshot()").execute(pool).await?;
    Ok(sqlx::query_as(
        "SELECT (SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = current_database()),
                (SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND application_name <> 'smartscheduler-bench')",
    )
    .fetch_one(pool)
    .await?)
}

struct Run {
    label: String,
    instances: usize,
    row: String,
    queries_per_s: f64,
    connections: i64,
    p99_us: u64,
    deliveries_per_s: f64,
    complete: bool,
}

/// One run over `n` instances, the first `relays` of which run a relay.
async fn run_with(
    ctx: &Ctx,
    db: &BenchDb,
    tokens: &[String],
    (n, relays): (usize, usize),
    phase: usize,
) -> anyhow::Result<Run> {
    let per_region_total = if ctx.quick { 100 } else { 250 };
    let mut instances = Vec::new();
    for i in 0..n {
        instances.push(start_instance(&db.url, i < relays).await?);
    }
    let stats = Stats::new();
    let mut clients = Vec::new();
    for instance in &instances {
        let targets = tokens.iter().map(|t| ("/api/events".to_owned(), Some(t.clone()))).collect();
        clients.push(open_stream_clients(&instance.addr, targets, per_region_total / n, &stats).await?);
    }
    let writer_pool = ctx.pool(&db.url, 24).await?;
    let secs = if ctx.quick { 3 } else { 10 };
    let measured = async {
        // Warm-up, then the measured phase with the database's counters around it.
        let (w, t) = write_phase(&writer_pool, &instances[0].waker, &stats, 100, Duration::from_secs(1), phase).await?;
        collect_phase(&stats, (per_region_total / n * n) as u64, 100, phase, now_ns(), w, t).await?;
        let (tx_before, _) = database_counters(&db.pool).await?;
        let t0 = now_ns();
        let (written, took) =
            write_phase(&writer_pool, &instances[0].waker, &stats, RATE, Duration::from_secs(secs), phase + 1).await?;
        let (tx_after, connections) = database_counters(&db.pool).await?;
        let result =
            collect_phase(&stats, (per_region_total / n * n) as u64, RATE, phase + 1, t0, written, took).await?;
        // The writers' own transactions (one per event) and our two counter reads are not the instances'.
        let queries = (tx_after - tx_before - written as i64 - 2).max(0) as f64 / took.as_secs_f64();
        anyhow::Ok((result, queries, connections))
    }
    .await;
    for c in clients {
        c.stop().await;
    }
    writer_pool.close().await;
    for instance in instances {
        instance.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), instance.task).await;
    }
    let (result, queries_per_s, connections) = measured?;
    let clients_total = (per_region_total / n * n * REGIONS.len()) as u64;
    let label = match (n, relays) {
        (1, _) => "1 instance".to_owned(),
        (n, r) if r == n => format!("{n} instances"),
        (n, r) => format!("{n} instances, {r} with a relay"),
    };
    Ok(Run {
        row: phase_row(&label, clients_total, &result),
        label,
        instances: n,
        queries_per_s,
        connections,
        p99_us: result.p(0.99),
        deliveries_per_s: result.deliveries_per_s,
        complete: result.delivered == result.expected,
    })
}

pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let db = ctx.fresh_db(4).await?;
    let result = run_on(ctx, &db, report).await;
    ctx.drop_db(db).await;
    result
}

async fn run_on(ctx: &Ctx, db: &BenchDb, report: &mut Report) -> anyhow::Result<()> {
    let tokens = region_dispatchers(&db.pool).await?;
    let mut runs = Vec::new();
    for (k, shape) in [(1usize, 1usize), (2, 2), (4, 4), (4, 1)].into_iter().enumerate() {
        eprintln!("[bench]   {} instance(s), {} relay(s)", shape.0, shape.1);
        runs.push(run_with(ctx, db, &tokens, shape, 2 * k).await?);
    }
    let mut body = format!(
        "1, 2 and 4 instances started as `serve` starts them (`Server::start`: a pool of 32, hub with its LISTEN \
         connection, HTTP, relay), in this process, on one database. The clients (the same number in every run, \
         spread evenly over the instances, a quarter per region) and the writers ({RATE} events/s, each its own \
         transaction, ringing the first instance's relay) are those of section 3. The instances share this \
         machine's two cores, so the figures show what each instance adds to PostgreSQL, not more CPU for \
         fan-out. Queries/s: the database's transactions during the measured phase, less the writers' own.\n\n"
    );
    body.push_str(PHASE_HEADER);
    for r in &runs {
        body.push_str(&r.row);
    }
    body.push_str(
        "\n| run | PostgreSQL queries/s (instances) | queries/s per instance | connections open | connections per instance |\n|---|---|---|---|---|\n",
    );
    for r in &runs {
        body.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} |\n",
            r.label,
            fmt_int(r.queries_per_s),
            fmt_int(r.queries_per_s / r.instances as f64),
            r.connections,
            r.connections as f64 / r.instances as f64
        ));
    }
    let one = &runs[0];
    let four = &runs[2];
    body.push_str(&format!(
        "\nFrom 1 to 4 instances: queries/s × {:.2}, deliveries/s × {:.2}, p99 {} → {}; every delivery arrived: {}.\n",
        four.queries_per_s / one.queries_per_s.max(1.0),
        four.deliveries_per_s / one.deliveries_per_s.max(1.0),
        ms(one.p99_us),
        ms(four.p99_us),
        if runs.iter().all(|r| r.complete) { "yes" } else { "NO" }
    ));
    report.section("13. Scale-out: 1, 2 and 4 instances on one database (issue 14)", &body);
    report.summary_row(
        "13. Scale-out, queries/s and p99 at 1 / 2 / 4 instances / 4 with one relay",
        "info",
        &runs
            .iter()
            .map(|r| format!("{} q/s, p99 {}", fmt_int(r.queries_per_s), ms(r.p99_us)))
            .collect::<Vec<_>>()
            .join(" / "),
        None,
    );
    Ok(())
}

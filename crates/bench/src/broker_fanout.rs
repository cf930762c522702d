//! Section 14: SSE nodes fed by NATS JetStream, side by side with the same node counts fed by PostgreSQL.
//!
//! Every run has one relay process (a `serve` with its relay and no clients) and 1, 4 or 16 SSE nodes
//! (`serve --no-relay`) holding the clients: fed by PostgreSQL (LISTEN + reads of `event_log`, a pool of 3)
//! or by JetStream (`--broker`, a pool of 2 for sign-in and membership). Clients, rate and writers are
//! section 13's. What is measured per run: PostgreSQL's transactions/s and connections with the nodes idle
//! and while events flow, less what the relay process alone costs, and commit → receipt at the clients.

use crate::common::{BenchDb, Ctx, Report, fmt_int, ms, now_ns};
use crate::stream::{
    PHASE_HEADER, REGIONS, SECRET, Stats, collect_phase, open_stream_clients, phase_row, region_dispatchers,
    write_phase,
};
use anyhow::Context;
use smartscheduler::auth::AuthSecret;
use smartscheduler::broker::{BrokerConfig, PublisherConfig};
use smartscheduler::outbox::RelayWaker;
use smartscheduler::server::{Server, ServerConfig};
use sqlx::PgPool;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Events per second offered in every run (section 13's).
const RATE: u32 = 200;

/// Pool of a PostgreSQL-fed node: 16 of them plus the relay, the writers and the bench must fit in the
/// server's default `max_connections` of 100 (with section 13's pool of 32, 16 nodes do not start).
const PG_NODE_POOL: u32 = 3;

/// Pool of a broker-fed node (issue 23: at most 2 connections).
const BROKER_NODE_POOL: u32 = 2;

/// How long the idle cost is measured.
const IDLE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq)]
enum Feed {
    Postgres,
    Broker,
}

impl Feed {
    fn name(self) -> &'static str {
        match self {
            Feed::Postgres => "PostgreSQL",
            Feed::Broker => "JetStream",
        }
    }
}

struct Node {
    addr: String,
    waker: RelayWaker,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Node {
    async fn start(url: &str, pool: u32, relay: bool, broker: Option<&str>) -> anyhow::Result<Self> {
        let pool = smartscheduler::db::connect(url, pool).await?;
        let mut config = ServerConfig::new("127.0.0.1:0".parse()?);
        config.streams_per_dispatcher = usize::MAX; // thousands of streams, one token
        config.run_relay = relay;
        config.broker =
            broker.map(|url| BrokerConfig { urls: vec![url.to_owned()], publisher: PublisherConfig::default() });
        let shutdown = CancellationToken::new();
        let server = Server::start(pool, config, AuthSecret::new(SECRET)?, shutdown.clone()).await?;
        let addr = server.local_addr()?.to_string();
        let waker = server.relay_waker();
        Ok(Self { addr, waker, shutdown, task: tokio::spawn(server.run()) })
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }

    async fn until_ready(&self) -> anyhow::Result<()> {
        let url = format!("http://{}/readyz", self.addr);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if http_status(&url).await == Some(200) {
                return Ok(());
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "{} never became ready", self.addr);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `GET url` → status (a tiny HTTP/1.1 client: the bench has no HTTP client crate of its own).
async fn http_status(url: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}")))?;
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = vec![0u8; 64];
    let n = stream.read(&mut head).await.ok()?;
    String::from_utf8_lossy(&head[..n]).split(' ').nth(1)?.parse().ok()
}

/// A nats-server with JetStream on a free loopback port, its store in a temporary directory.
struct Nats {
    url: String,
    child: tokio::process::Child,
    store: PathBuf,
}

impl Nats {
    async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let store = std::env::temp_dir().join(format!("ss-bench-nats-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&store)?;
        let bin = nats_server_binary();
        let child = tokio::process::Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} (make bench installs Debian's nats-server)", bin.display()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "nats-server did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self { url: format!("nats://127.0.0.1:{port}"), child, store })
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

fn nats_server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("SMARTSCHEDULER_NATS_SERVER") {
        return path.into();
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| "/usr/sbin/nats-server".into())
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

/// Transactions/s and connections over `span` with nothing written (our own two counter reads excluded).
async fn idle_cost(pool: &PgPool, span: Duration) -> anyhow::Result<(f64, i64)> {
    let (before, _) = database_counters(pool).await?;
    tokio::time::sleep(span).await;
    let (after, connections) = database_counters(pool).await?;
    Ok(((after - before - 2).max(0) as f64 / span.as_secs_f64(), connections))
}

struct Run {
    feed: Feed,
    nodes: usize,
    row: String,
    /// The nodes' PostgreSQL transactions/s (the relay process's own subtracted): idle, and under load.
    idle_queries: f64,
    queries: f64,
    /// The nodes' connections (the relay process's own subtracted).
    connections: i64,
    p50_us: u64,
    p99_us: u64,
    deliveries_per_s: f64,
    complete: bool,
}

/// What the relay process alone costs PostgreSQL, idle and under load: subtracted from every run.
struct RelayCost {
    idle_queries: f64,
    connections: i64,
}

async fn run_with(
    ctx: &Ctx,
    db: &BenchDb,
    tokens: &[String],
    (feed, n): (Feed, usize),
    nats: &Nats,
) -> anyhow::Result<Run> {
    let phase = 0; // every run has its own `Stats`: warm-up is phase 0, the measured phase 1
    let per_region_total = if ctx.quick { 100 } else { 250 };
    let broker = (feed == Feed::Broker).then_some(nats.url.as_str());
    let relay = Node::start(&db.url, 4, true, broker).await?;
    relay.until_ready().await?;
    tokio::time::sleep(Duration::from_millis(500)).await; // the relay's start-up queries settle
    let (relay_idle, relay_connections) = idle_cost(&db.pool, IDLE).await?;
    let relay_cost = RelayCost { idle_queries: relay_idle, connections: relay_connections };
    let mut nodes = Vec::new();
    for _ in 0..n {
        let pool = if broker.is_some() { BROKER_NODE_POOL } else { PG_NODE_POOL };
        nodes.push(Node::start(&db.url, pool, false, broker).await?);
    }
    for node in &nodes {
        node.until_ready().await?;
    }
    let stats = Stats::new();
    let mut clients = Vec::new();
    for node in &nodes {
        let targets = tokens.iter().map(|t| ("/api/events".to_owned(), Some(t.clone()))).collect();
        clients.push(open_stream_clients(&node.addr, targets, per_region_total / n, &stats).await?);
    }
    let writer_pool = ctx.pool(&db.url, 12).await?;
    let secs = if ctx.quick { 3 } else { 10 };
    let per_region = (per_region_total / n * n) as u64;
    let measured = async {
        // The clients' sign-ins (group lookups, shared by concurrent connects) settle before the idle span.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (idle_queries, _) = idle_cost(&db.pool, IDLE).await?;
        let (w, t) = write_phase(&writer_pool, &relay.waker, &stats, 100, Duration::from_secs(1), phase).await?;
        collect_phase(&stats, per_region, 100, phase, now_ns(), w, t).await?;
        let (tx_before, _) = database_counters(&db.pool).await?;
        eprintln!("[bench]     measured phase: {secs} s"); // a mark for an outside profiler (perf record -a)
        let t0 = now_ns();
        let (written, took) =
            write_phase(&writer_pool, &relay.waker, &stats, RATE, Duration::from_secs(secs), phase + 1).await?;
        let (tx_after, connections) = database_counters(&db.pool).await?;
        let result = collect_phase(&stats, per_region, RATE, phase + 1, t0, written, took).await?;
        // The writers' own transactions (one per event) and our two counter reads are not the nodes'.
        let queries = (tx_after - tx_before - written as i64 - 2).max(0) as f64 / took.as_secs_f64();
        anyhow::Ok((result, idle_queries, queries, connections))
    }
    .await;
    for c in clients {
        c.stop().await;
    }
    writer_pool.close().await;
    for node in nodes {
        node.stop().await;
    }
    relay.stop().await;
    let (result, idle_queries, queries, connections) = measured?;
    let label = format!("{n} node(s) fed by {}", feed.name());
    Ok(Run {
        row: phase_row(&label, per_region * REGIONS.len() as u64, &result),
        feed,
        nodes: n,
        idle_queries: (idle_queries - relay_cost.idle_queries).max(0.0),
        // Under load the relay's cost is the same in both feeds except for the broker's publisher; it stays in.
        queries,
        connections: connections - relay_cost.connections,
        p50_us: result.p(0.5),
        p99_us: result.p(0.99),
        deliveries_per_s: result.deliveries_per_s,
        complete: result.delivered == result.expected,
    })
}

pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let db = ctx.fresh_db(4).await?;
    let nats = Nats::start().await?;
    let result = run_on(ctx, &db, &nats, report).await;
    nats.stop().await;
    ctx.drop_db(db).await;
    result
}

async fn run_on(ctx: &Ctx, db: &BenchDb, nats: &Nats, report: &mut Report) -> anyhow::Result<()> {
    let tokens = region_dispatchers(&db.pool).await?;
    let counts: &[usize] = if ctx.quick { &[1, 4] } else { &[1, 4, 16] };
    let mut runs = Vec::new();
    for &n in counts {
        for feed in [Feed::Postgres, Feed::Broker] {
            eprintln!("[bench]   {n} node(s) fed by {}", feed.name());
            runs.push(run_with(ctx, db, &tokens, (feed, n), nats).await?);
        }
    }
    report.section("14. SSE nodes fed by JetStream vs by PostgreSQL: 1, 4 and 16 nodes (issue 23)", &render(&runs));
    let at = |feed: Feed, n: usize| runs.iter().find(|r| r.feed == feed && r.nodes == n);
    let most = *counts.last().unwrap_or(&1);
    if let (Some(one), Some(many), Some(pg_one)) = (at(Feed::Broker, 1), at(Feed::Broker, most), at(Feed::Postgres, 1))
    {
        report.summary_row(
            &format!("14. Broker-fed nodes: PostgreSQL queries/s at {most} nodes ÷ at 1 (≤ 1.10)"),
            "≤ 1.10",
            &format!("{:.2}", many.queries / one.queries.max(1.0)),
            Some(many.queries <= one.queries * 1.10),
        );
        report.summary_row(
            &format!("14. Broker-fed p99 at {most} nodes ÷ at 1 (≤ 1.5)"),
            "≤ 1.5",
            &format!("{:.2}", many.p99_us as f64 / one.p99_us.max(1) as f64),
            Some(many.p99_us as f64 <= one.p99_us as f64 * 1.5),
        );
        report.summary_row(
            "14. p50 commit → receipt at 1 node, JetStream ÷ PostgreSQL (≤ 2)",
            "≤ 2",
            &format!("{:.2}", one.p50_us as f64 / pg_one.p50_us.max(1) as f64),
            Some(one.p50_us as f64 <= pg_one.p50_us as f64 * 2.0),
        );
        let per_idle = many.idle_queries / many.nodes as f64;
        let per_conn = many.connections as f64 / many.nodes as f64;
        report.summary_row(
            "14. Broker-fed idle node: queries/s and connections to PostgreSQL (≤ 1 and ≤ 2)",
            "≤ 1 / ≤ 2",
            &format!("{per_idle:.2} / {per_conn:.1}"),
            Some(per_idle <= 1.0 && per_conn <= 2.0),
        );
    }
    Ok(())
}

fn render(runs: &[Run]) -> String {
    let mut body = format!(
        "One relay process (`serve` with its relay, no clients) and 1, 4 or 16 SSE nodes (`serve --no-relay`, in \
         this process) holding the clients: fed by PostgreSQL (LISTEN and reads of `event_log`, a pool of \
         {PG_NODE_POOL}: with section 13's 32, 16 nodes exhaust the default `max_connections` of 100) or by a \
         single-node JetStream (`--broker`, a pool of {BROKER_NODE_POOL}). Clients (the same number in every run, \
         spread over the nodes, a quarter per region), writers ({RATE} events/s) and latency (commit → receipt) \
         are section 13's. Idle: the nodes' PostgreSQL transactions/s over {} s with nothing written, less the \
         relay process's own. Under load: all transactions but the writers'. Connections: the nodes' own (the \
         relay process's subtracted), under load.\n\n",
        IDLE.as_secs()
    );
    body.push_str(PHASE_HEADER);
    for r in runs {
        body.push_str(&r.row);
    }
    body.push_str(
        "\n| run | PostgreSQL queries/s under load | per node | idle queries/s per node | connections per node | p50 | p99 | deliveries/s |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in runs {
        body.push_str(&format!(
            "| {} node(s), {} | {} | {:.1} | {:.2} | {:.1} | {} | {} | {} |\n",
            r.nodes,
            r.feed.name(),
            fmt_int(r.queries),
            r.queries / r.nodes as f64,
            r.idle_queries / r.nodes as f64,
            r.connections as f64 / r.nodes as f64,
            ms(r.p50_us),
            ms(r.p99_us),
            fmt_int(r.deliveries_per_s),
        ));
    }
    let ratio = |feed: Feed| {
        let of = |n| runs.iter().find(|r| r.feed == feed && r.nodes == n);
        let most = runs.iter().filter(|r| r.feed == feed).map(|r| r.nodes).max().unwrap_or(1);
        match (of(1), of(most)) {
            (Some(one), Some(many)) => format!(
                "{}: from 1 to {most} nodes PostgreSQL's queries/s × {:.2}, p99 {} → {} (× {:.2})",
                feed.name(),
                many.queries / one.queries.max(1.0),
                ms(one.p99_us),
                ms(many.p99_us),
                many.p99_us as f64 / one.p99_us.max(1) as f64
            ),
            _ => String::new(),
        }
    };
    body.push_str(&format!(
        "\n{}.\n\n{}.\n\nEvery delivery arrived: {}.\n",
        ratio(Feed::Postgres),
        ratio(Feed::Broker),
        if runs.iter().all(|r| r.complete) { "yes" } else { "NO" }
    ));
    body
}

//! Shared pieces: the monotonic clock, fresh databases, histograms and the markdown report.

use anyhow::Context;
use hdrhistogram::Histogram;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use uuid::Uuid;

static START: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since a fixed instant of this process (monotonic; shared by writers and readers).
pub fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

pub struct Ctx {
    pub admin_url: String,
    pub server_url: String,
    pub quick: bool,
    created: Mutex<Vec<String>>,
}

/// A migrated database of the benchmark's own.
pub struct BenchDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl Ctx {
    pub fn new(admin_url: &str, quick: bool) -> Self {
        let server_url = match admin_url.rsplit_once('/') {
            Some((server, _db)) if server.contains("://") && !server.ends_with('/') => server.to_owned(),
            _ => admin_url.to_owned(),
        };
        Self { admin_url: admin_url.to_owned(), server_url, quick, created: Mutex::new(Vec::new()) }
    }

    pub async fn admin(&self) -> anyhow::Result<PgConnection> {
        PgConnection::connect(&self.admin_url).await.with_context(|| format!("connecting to {}", self.admin_url))
    }

    /// Creates and migrates `ss_bench_<uuid>`, with a pool of `max_connections`.
    pub async fn fresh_db(&self, max_connections: u32) -> anyhow::Result<BenchDb> {
        let name = format!("ss_bench_{}", Uuid::new_v4().simple());
        let mut admin = self.admin().await?;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await?;
        self.created.lock().unwrap().push(name.clone());
        let _ = admin.close().await;
        let url = format!("{}/{}", self.server_url, name);
        let pool = self.pool(&url, max_connections).await?;
        smartscheduler::db::migrate(&pool).await?;
        Ok(BenchDb { name, url, pool })
    }

    pub async fn pool(&self, url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
        let options = smartscheduler::db::connect_options(url)?.application_name("smartscheduler-bench");
        Ok(PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(20))
            .connect_with(options)
            .await?)
    }

    pub async fn drop_db(&self, db: BenchDb) {
        db.pool.close().await;
        self.drop_named(&db.name).await;
    }

    async fn drop_named(&self, name: &str) {
        if let Ok(mut admin) = self.admin().await {
            let _ = sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                .execute(&mut admin)
                .await;
            let _ = admin.close().await;
        }
        self.created.lock().unwrap().retain(|n| n != name);
    }

    /// Drops every database this run created and has not dropped yet (also after a failed section).
    pub async fn drop_all(&self) {
        let names = self.created.lock().unwrap().clone();
        for name in names {
            self.drop_named(&name).await;
        }
    }
}

/// A latency histogram in microseconds, 1 µs to 10 min, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// A load worker: how many operations it did, and their latency histogram (µs).
pub type Worker = tokio::task::JoinHandle<anyhow::Result<(u64, Histogram<u64>)>>;

/// Waits for load workers that each return how many operations they did and their latency histogram (µs),
/// and sums them.
pub async fn sum_workers(tasks: Vec<Worker>) -> anyhow::Result<(u64, Histogram<u64>)> {
    let (mut total, mut hist) = (0, histogram());
    for t in tasks {
        let (n, h) = t.await??;
        total += n;
        hist.add(h)?;
    }
    Ok((total, hist))
}

pub fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

pub fn pass_word(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

pub fn fmt_int(n: f64) -> String {
    let n = n.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

const NOTES: &str = "## How to read these figures\n\n\
- Everything runs on one machine: PostgreSQL, the server and (sections 3, 4, 6, 7, 9) the SSE clients share the \
  same CPUs, so the clients' own parsing is part of every stream figure. Other work on the machine (see the load \
  average above) shows up directly; compare runs only at similar load.\n\
- Every commit is durable (`synchronous_commit = on` unless the server says otherwise): each writer \
  transaction and each relay batch waits for a WAL flush, and the relay's flush is on the commit → receipt path.\n\
- Baselines run in the same process and the same run as our figures, so their ratios are more stable than the \
  absolute numbers.\n\
- `--quick` shortens phases and shrinks row and connection counts; its figures are indicative only.\n\n\
## What limits each figure (measured while tuning, 2026-11-25)\n\n\
- **Writer cost (1), generation (8) and the API (10), 2026-11-30.** Two changes, each measured in the same \
  runs against the same write without the outbox row (load average 2-6 on the two cores from other builds). \
  (a) The outbox row rides in the statement that writes the set and its rows (a data-modifying CTE, \
  `outbox::insert_sql`) instead of a statement of its own: section 1 without / with went from 1.40-1.44× (1 \
  writer) and 1.48-1.66× (16) as a separate statement to 1.31-1.40× and 1.37-1.47× folded, and section 10 \
  measured 1.05-1.12× in three runs. So the round trip was not most of the cost; the row's own work inside \
  PostgreSQL was. (b) pgbench, one statement per call: `SELECT ss_valid_groups(...)` took 0.18-0.20 ms \
  against 0.07 ms for `SELECT 1`: the groups `CHECK` of migration 0005 is a SQL function with a subquery, \
  which PostgreSQL cannot inline and plans again in every statement, about 0.1 ms per event. Migration 0010 \
  rewrote it in PL/pgSQL (same verdicts, plans kept per session): 0.08 ms. After both, two runs: section 1 \
  1.18× (1 writer) and 1.22-1.30× (16), section 8 +4.6 to +7.1% (the separate statement was about +11%), \
  section 10 1.06-1.11× (per-round ratios 0.93-1.51: the figure moves with the machine's other load). What is \
  left per event: the row itself (identity, `gen_random_uuid`, jsonb input and its `CHECK`s, heap and \
  primary-key inserts and their WAL), and in section 10 the relay's publish work (a second transaction per \
  batch that moves the rows to `event_log`) on the same two cores as the API. Section 1's transaction is the \
  cheapest possible writer (two inserts, about 0.8 ms), so a fixed 0.1-0.2 ms per event weighs most there; \
  at 16 writers the two cores are saturated and every microsecond of PostgreSQL CPU shows 1:1. So the 1.05× \
  (10) and 1.10× (1) targets are not met on this machine. Next steps: publish from a relay on other cores \
  (`serve --no-relay` plus `smartscheduler relay` elsewhere), and measure on a quiet machine.\n\
- **Relay drain (2).** A batch used to scan the whole outbox (`IN (subquery)` planned as a hash join), which \
  made draining quadratic; primary-key probes fixed it (40k to 47-49k events/s), one statement and then one \
  call per batch took it further. The rest is per row: the heap move plus three index inserts and their \
  WAL; batches of 1000 and 2000 drain at about the same rate.\n\
- **Fan-out at 1,000 clients (3, 4).** Each event costs its 250 deliveries, and at 200 events/s the two \
  cores are 70-80% busy: about 32 us of machine time per delivery, of which about 17 us is kernel TCP over \
  loopback (the server's write, and the client's receive on the same cores), about 9 us user space (server \
  and client) and the rest PostgreSQL. At that utilisation, queueing behind the previous event decides the \
  median. What moved it (2026-11-25): (a) the load generator's clients: a general-purpose client \
  (reqwest's connection task and body channel, then a parser that allocates per field) cost more per \
  delivery than the server; the lean client in `sse_client.rs` took catch-up from 22-33k to 74-104k \
  events/s. (b) ACK segments: a receive-only Linux socket ACKs every read, and over loopback each ACK is \
  sent and received on these two cores; clients that delay ACKs took p50 from 9-10 ms to 3.0-3.6 ms in \
  three runs at 20:55-21:00 UTC. (c) Relay round trips: first 7 → 4 per batch (the move, counter update \
  and NOTIFY in one statement; no peek after a doorbell), then 4 → 1 (`ss_publish_batch`, migration 0006: \
  fence, move, counter and NOTIFY in one call), with the committed rows handed to the hub of the same \
  process instead of the hub reading them back after a wake-up. A/B against the previous commit, two \
  interleaved runs each at 23:00 UTC: p50 at 44-48 clients 0.95-1.18 → 0.68-0.69 ms, at 1,000 clients \
  2.00-2.45 → 1.79-2.01 ms. Returning the rows costs the drain (2) 3-10% (110k → 106k events/s at batch \
  1000). The VM's speed drifts: runs of the earlier code at 21:15-22:05 UTC measured 6-8 ms p50 while the \
  writers' own commit p50 under load was 2-3 ms instead of 0.5-0.9 ms, so compare the two rows of section \
  3 with each other, and runs only at similar writer commit times. Next step: the clients on another host.\n\
- **Memory per idle connection (5).** hyper's HTTP/1 connection keeps an 8 KiB read buffer and an 8 KiB \
  write buffer for its whole life (massif: 24 KB of heap per idle stream, 17 KiB resident). A connection \
  whose first request is `GET /api/events` is now served by a lean transport \
  (`src/http/stream_connection.rs`: the head parsed with `httparse` into a buffer freed before streaming, \
  the request routed through the same axum router, each event written as one chunk straight to the \
  socket), which took 17 KiB to 5.5-5.7 KiB. What is left is the task, the socket's registration, the \
  stream's state machine, its queue and registry entry. A stream opened on a keep-alive connection that \
  served other requests first stays on hyper (about 17 KiB). mimalloc instead of glibc's allocator \
  measured 23 KiB, so it was not adopted.\n\
- **Catch-up (6).** The database read is not the limit (8-17 ms per 1,000-event page, under 10 us per \
  event; payloads are spliced as jsonb text, not re-encoded). The limit was the client's parser; with the \
  lean client the server sends 74-104k events/s.\n\
- **Writer cost, measured again (1, 10), 2026-11-30 19:45-20:00 UTC on a quiet machine.** Section 1: 1.27-1.40× \
  in three runs (1 writer +0.3-0.4 ms per transaction), section 10 1.044× (per-round 0.81-1.23). Inside \
  PostgreSQL the row is cheap: 20,000 rows by one `INSERT ... SELECT` cost 23-27 us each with every CHECK and \
  6.5 us without (groups 5 us, payload size 5 us, event type regex 6 us), and pgbench with the statement \
  of section 1 measured +0.1 ms with `synchronous_commit = off` and anything from -0.13 to +0.32 ms with it on \
  (single client, 4-6 s runs). So what section 1 adds beyond the row's own work is a fixed per-transaction cost, \
  not the CHECKs: per transaction the row adds 2 WAL records and ~600 bytes (+17%, no full-page image, no extra \
  flush), and with every CHECK dropped it still adds 0.1-0.25 ms, the fixed cost of one more relation in the \
  transaction (its locks, index, identity sequence and WAL) against a ~1.2 ms transaction. The 1.10× target \
  stays missed here.
- **Reconnect storms (11, 12), 2026-11-30.** Profiled with `perf` and the kernel's counters (`nstat`): of the \
  35 s that 9,500 resuming clients took, almost all was the listen backlog. tokio binds with a backlog of \
  1,024; the burst overflowed it (70,398 `ListenOverflows`, 40,058 SYN retransmits) and each dropped client \
  waited for its kernel to resend its SYN (1 s, 3 s, 7 s, ...). A backlog of 4,096 took it to 2.3-3.6 s. \
  What was left was per-connect queries (two each: the dispatcher's groups and `stream_meta`) and copies: \
  `malloc`/`memmove` led the profile, one copy of each event's frame per delivery (axum's `sse::Event` is a \
  growable buffer that is cloned) and one write system call per event. Concurrent connects now share one \
  read of each kind (`src/coalesce.rs`: each caller is answered by a read that began after it asked), \
  frames are encoded once into shared `Bytes`, and the lean transport writes every frame that is ready in \
  one call: 10,000 clients in 1.4-1.6 s with 31-57 transactions in three runs (section 11). The open-files limit here is 20,000 \
  and cannot be raised, so the storm runs `serve` as a process of its own (one descriptor per client on \
  each side). The deep storm (12) moves 10,000 × ~1,900 events (about 15 GB over loopback): its time is \
  the machine's copy and parse rate; without the window every resume reads the log, and shared page reads \
  keep that to 150-200 transactions where the design before made 17,000-20,000 and ended 2,600-4,100 streams.
- **Scale-out (13).** Every instance runs its hub (one LISTEN connection, one read of each batch another \
  instance published) and, by default, a relay that probes the outbox every 2 ms while events arrive: those \
  probes are most of an instance's queries. Four instances with one relay cost about two thirds of the queries of \
  four relays for the same deliveries. Where one PostgreSQL stops being enough: each instance adds one \
  read per published batch (the NOTIFY wake-up), its membership and safety polls (about 1.5 queries/s) and \
  its relay's probes (up to 500/s while busy); run relays on two instances (`serve --no-relay` on the \
  others: the fence serialises relays anyway, a second one is only for failover). Then per instance the \
  cost is one read per batch, so at 200 batches/s 50 instances make 10,000 reads/s of the newest rows: \
  the next step is a fan-out tier (instances that subscribe to a few relaying readers instead of \
  PostgreSQL) or logical replication to a read replica for the hubs' reads. Connections per instance stay \
  around 5-9 (the pool opens what it uses).
- **Writers that do not ring (9).** A plain SQL writer's event waited for the relay's 200 ms poll: p50 \
  114-146 ms, p99 220-370 ms. Choices measured on 2026-11-30 (idle cost of a `serve` with nothing to do, \
  transactions/s and % of one core for the server plus its PostgreSQL backends): a constant 2 ms probe \
  finds rows as fast as anything but costs 266-298 probes/s and 5.3-9.3% CPU when idle; the 200 ms poll \
  cost 7-9 probes/s and 0.1-0.2%. The relay now probes every 2 ms while events keep arriving (for 1 s after \
  its last batch) and every 20 ms when idle: 51-54 transactions/s and 1.4-1.9% CPU idle (the server process \
  0.9-1.2%, PostgreSQL 0.5-0.7%; a `serve` without a relay: 2-3 transactions/s, 0-0.1%), and one event after \
  a quiet spell arrives in 18-21 ms p50, at most 27-30 ms. A probe is `SELECT EXISTS (SELECT 1 FROM outbox)` \
  outside any transaction: it takes no lock and writes nothing (the publish call takes the fence, so it \
  runs only when the probe found rows). Three runs at 400 clients, 16:28-16:42 UTC, load average 1.3-7 from \
  other work on the machine: plain SQL p50 5.6-7.8 ms and p99 10.3-35.4 ms at 100-200 events/s, against \
  2.4-3.0 ms and 6.4-32 ms for the server's own writer in the same runs (its doorbell skips the wait and the \
  probe: the difference is half a busy poll period plus one round trip); the p99 follows the machine's \
  stalls, which the own writer and nchan show in the same runs (nchan p99 at 200 events/s 28.5-29.7 ms). A \
  WAL-driven wake-up was not taken: sqlx speaks no replication protocol, and polling \
  `pg_current_wal_insert_lsn()` still costs a round trip per look (the cost measured above is the round \
  trip, not the probe), and on a shared server every other database's writes move it. A writer that wants \
  its event out sooner still may send `NOTIFY ss_wake` after its COMMIT as a statement of its own: p50 \
  2.9-7.5 ms, and 4.8-8.2 ms instead of 18-21 ms after a quiet spell, for one more round trip in the writer \
  (its call p50 0-2.6 ms longer in these runs). Inside the transaction a NOTIFY would serialise the writers' commits, so \
  it never belongs there. nchan delivers more per second (its ramp passed 3,200 events/s, 300k+ deliveries/s, \
  where our own writer passed it in two runs of three and the plain SQL writer stopped at 800-1,600: every one of our events is a durable PostgreSQL commit and \
  publish, nchan keeps them in memory) and its first event after a quiet spell is faster (1.1 ms p50: no \
  poll); per idle connection ours holds 6.3-6.7 KiB, nchan's workers 10.0 KiB.\n";

#[derive(Default)]
pub struct Report {
    summary: Vec<(String, String, String, Option<bool>)>,
    sections: Vec<(String, String)>,
}

impl Report {
    pub fn section(&mut self, title: &str, body: &str) {
        eprintln!("\n## {title}\n\n{body}");
        self.sections.push((title.to_owned(), body.to_owned()));
    }

    pub fn summary_row(&mut self, what: &str, target: &str, result: &str, pass: Option<bool>) {
        self.summary.push((what.to_owned(), target.to_owned(), result.to_owned(), pass));
    }

    pub fn render(&self, header: &str, quick: bool, took: Duration) -> String {
        let mut s = String::new();
        s.push_str("# SmartScheduler realtime — performance\n\n");
        s.push_str("Generated by `make bench` (`target/release/smartscheduler-bench --out docs/performance.md`");
        if quick {
            s.push_str(", **--quick**: shorter phases and fewer rows; figures are indicative only");
        }
        s.push_str("). Do not edit by hand: rerun `make bench`.\n\n");
        s.push_str(header);
        s.push_str(&format!("- benchmark wall time: {:.0} s\n\n", took.as_secs_f64()));
        s.push_str("## Summary\n\n| measurement | target | result | verdict |\n|---|---|---|---|\n");
        for (what, target, result, pass) in &self.summary {
            let verdict = match pass {
                Some(true) => "PASS",
                Some(false) => "**MISS**",
                None => "info",
            };
            s.push_str(&format!("| {what} | {target} | {result} | {verdict} |\n"));
        }
        s.push('\n');
        for (title, body) in &self.sections {
            s.push_str(&format!("## {title}\n\n{body}\n"));
        }
        s.push_str(NOTES);
        s
    }
}

/// Date, machine and PostgreSQL version, as markdown bullet lines.
pub async fn machine_header(ctx: &Ctx) -> anyhow::Result<String> {
    let mut admin = ctx.admin().await?;
    let version: String = sqlx::query_scalar("SELECT version()").fetch_one(&mut admin).await?;
    let max_conn: String = sqlx::query_scalar("SHOW max_connections").fetch_one(&mut admin).await?;
    let _ = admin.close().await;
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    Ok(format!(
        "- date: {}\n- command: `make bench`\n- machine: {cpus} CPUs (`nproc`), {:.1} GiB RAM, {cpu_model}\n\
         - load average at start (1/5/15 min): {}\n- PostgreSQL: {version} (max_connections {max_conn}), \
         on the same machine\n",
        chrono::Local::now().format("%Y-%m-%d %H:%M:%S %Z"),
        mem_kib as f64 / 1024.0 / 1024.0,
        load.join(" / "),
    ))
}

/// The soft limit on open files of this process (from /proc/self/limits).
pub fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

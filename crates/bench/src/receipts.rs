//! Section 16: what delivery receipts (issue 24) cost PostgreSQL. Each phase runs on a fresh database with
//! an in-process server ([`Rig`]) while writers publish 200 events/s: A publishes only (the floor); B adds
//! 1,000 simulated consoles, each its own dispatcher, each reporting the log's head with
//! `POST /api/receipts` every 5 s over keep-alive connections (about 200 reports/s); C is the naive design,
//! one transaction per report (`ss_record_receipt` called straight from a bench pool): C1 at B's rate for the
//! same 1,000 dispatchers, C2 a report per applied event from 20 consoles (4,000 reports/s). Over each
//! window the PostgreSQL backends of the database are sampled in /proc (utime + stime), and
//! `console_receipts` and `pg_stat_database` are counted; a phase's cost is its CPU minus A's.

use crate::common::{BenchDb, Ctx, Report, fmt_int, pass_word};
use crate::stream::{Rig, SECRET, Stats, write_phase};
use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use smartscheduler::auth::{AuthSecret, add_dispatcher};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Simulated consoles (one dispatcher each, all in `region:north`).
const CONSOLES: usize = 1_000;
/// Consoles of the naive per-event design (C2).
const NAIVE_CONSOLES: usize = 20;
const EVENT_RATE: u32 = 200;
/// How often a console reports (the design's interval).
const REPORT_EVERY_S: f64 = 5.0;
/// Keep-alive HTTP connections the consoles' reports use: one per console, as each browser tab has its own
/// (a report waits for its server's batch, up to a second, so a few shared connections would throttle them).
const HTTP_CONNECTIONS: usize = CONSOLES;
/// Targets of issue 24: PostgreSQL's CPU for the receipts of 1,000 consoles (% of one core), rows written/s.
const CPU_TARGET_PCT: f64 = 1.0;
const ROWS_TARGET: f64 = 400.0;
const GROUP: &str = "region:north";

#[derive(Clone, Copy, PartialEq)]
enum Load {
    /// A: events only.
    Floor,
    /// B: 1,000 consoles POST the head every 5 s.
    Consoles,
    /// C1: one `ss_record_receipt` transaction per report, 1,000 dispatchers, B's rate.
    NaiveHead,
    /// C2: 20 consoles report every applied event.
    NaivePerEvent,
}

impl Load {
    fn label(self) -> &'static str {
        match self {
            Load::Floor => "A. events only (floor)",
            Load::Consoles => "B. 1,000 consoles, `POST /api/receipts` every 5 s",
            Load::NaiveHead => "C1. naive: a transaction per report, 1,000 dispatchers every 5 s",
            Load::NaivePerEvent => "C2. naive: 20 consoles report every applied event",
        }
    }

    /// Reports/s offered.
    fn rate(self) -> f64 {
        match self {
            Load::Floor => 0.0,
            Load::Consoles | Load::NaiveHead => CONSOLES as f64 / REPORT_EVERY_S,
            Load::NaivePerEvent => NAIVE_CONSOLES as f64 * EVENT_RATE as f64,
        }
    }
}

/// What one phase measured over its window.
struct Measured {
    load: Load,
    secs: f64,
    /// PostgreSQL backends of the database, % of one core.
    cpu_pct: f64,
    /// Time inside `ss_record_receipts` (`pg_stat_user_functions.total_time`), % of one core: an upper
    /// bound on the CPU of the receipts' statements, free of the other backends' noise.
    in_function_pct: f64,
    backends: usize,
    rows_per_s: f64,
    xacts_per_s: f64,
    events_per_s: f64,
    reports_per_s: f64,
    /// Reports that did not get a 204 (B) or whose call failed (C), over the whole phase.
    failures: u64,
}

/// Reports done and failed, shared by a phase's load tasks.
#[derive(Default)]
struct Counters {
    done: AtomicU64,
    failed: AtomicU64,
}

pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let (warm, window) = if ctx.quick {
        (Duration::from_secs(1), Duration::from_secs(5))
    } else {
        (Duration::from_secs(3), Duration::from_secs(15))
    };
    let clk_tck = clock_ticks_per_second();
    let mut phases = Vec::new();
    for load in [Load::Floor, Load::Consoles, Load::NaiveHead, Load::NaivePerEvent] {
        eprintln!("[bench]   phase {}", load.label());
        let m = phase(ctx, load, warm, window, clk_tck).await.with_context(|| format!("phase {}", load.label()))?;
        eprintln!(
            "[bench]   {:.2} % of a core, {:.0} rows/s, {:.0} transactions/s, {:.0} reports/s, {} failed",
            m.cpu_pct, m.rows_per_s, m.xacts_per_s, m.reports_per_s, m.failures
        );
        phases.push(m);
    }
    let [a, b, c1, c2] = &phases[..] else { anyhow::bail!("expected four phases") };
    let cost = |m: &Measured| m.cpu_pct - a.cpu_pct;
    let b_cost = cost(b);
    // CPU of one report, µs: the cost over the floor spread over the reports of the window.
    let per_report = |m: &Measured| {
        if m.reports_per_s > 0.0 {
            format!("{} µs", fmt_int(cost(m) / 100.0 * 1e6 / m.reports_per_s))
        } else {
            "-".into()
        }
    };
    let ratio = |m: &Measured| {
        if b_cost >= 0.05 { format!("×{:.1}", cost(m) / b_cost) } else { "n/a (B's cost is within noise)".into() }
    };

    let mut body = format!(
        "Each phase runs {} s (after {} s of warm-up) on a fresh database with an in-process server (`Server::start`: \
         hub, HTTP and relay) while its writers publish {EVENT_RATE} events/s (`outbox::enqueue` + COMMIT + the \
         relay's doorbell, round-robin over the regions). {} dispatchers (`console-0001`... in `{GROUP}`) are added \
         to every database. B simulates one console per dispatcher: each sends `POST /api/receipts` with \
         `{{\"position\":\"<epoch>-<head>\"}}` once every {REPORT_EVERY_S:.0} s, staggered evenly (about {:.0} \
         reports/s), each over a keep-alive HTTP/1.1 connection of its own with its own bearer token; the head is \
         the log's `stream_meta.last_seq`, polled every 100 ms, so every report moves its dispatcher and writes a \
         row (the worst case). Every response must be 204. The server checks a report's token (signature, expiry) \
         itself and leaves the dispatcher's access (exists, enabled, token generation) to the batch, so a request \
         costs PostgreSQL no read of its own. C is the unbatched design, one transaction per report: \
         `SELECT * FROM ss_record_receipt($1, $2, $3, ARRAY['{GROUP}'])` straight from a bench pool, C1 at B's \
         rate and positions for the same 1,000 dispatchers, C2 {NAIVE_CONSOLES} consoles each reporting every \
         applied event ({} reports/s offered; the achieved rate is shown). PostgreSQL CPU is utime + stime (from \
         /proc/<pid>/stat, {clk_tck} ticks/s) summed over every backend of the phase's database in \
         `pg_stat_activity` (the server's pool and LISTEN connections, the writers', the bench's own, autovacuum), \
         sampled every 0.5 s so that backends that come and go are counted; server-wide processes (WAL writer, \
         checkpointer) are not. Rows are `count(*)` of `console_receipts`, transactions `xact_commit + \
         xact_rollback` of `pg_stat_database`, both over the window. A phase's cost is its CPU minus the floor \
         A's, which holds the events and everything else that is not receipts; as the floor moves by a few % of a \
         core between runs on this machine, B's cost is also measured directly: the time PostgreSQL spent inside \
         `ss_record_receipts` (`track_functions = all`, `pg_stat_user_functions.total_time`), wall time and so an \
         upper bound on its CPU, plus one commit per batch; for B only (one batcher, nothing waits), as in C it also \
         counts the callers' waits for the receipts' lock. The verdict uses the direct figure.\n\n\
         | phase | reports/s | failed | events/s | PostgreSQL CPU (% of a core) | cost over A | CPU per report \
         | in `ss_record_receipts` (% of a core) | rows written/s | transactions/s | backends |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
        window.as_secs(),
        warm.as_secs(),
        fmt_int(CONSOLES as f64),
        Load::Consoles.rate(),
        fmt_int(Load::NaivePerEvent.rate()),
    );
    for m in &phases {
        body.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} % | {} | {} | {:.3} % | {} | {} | {} |\n",
            m.load.label(),
            fmt_int(m.reports_per_s),
            m.failures,
            fmt_int(m.events_per_s),
            m.cpu_pct,
            if m.load == Load::Floor { "-".to_owned() } else { format!("{:+.2} %", cost(m)) },
            per_report(m),
            m.in_function_pct,
            fmt_int(m.rows_per_s),
            fmt_int(m.xacts_per_s),
            m.backends
        ));
    }
    let cpu_pass = b.in_function_pct <= CPU_TARGET_PCT && b.failures == 0;
    let rows_pass = b.rows_per_s <= ROWS_TARGET && b.failures == 0;
    // C2's cost at the rate it was offered, from its cost per report (when it could not keep up).
    let c2_offered = cost(c2) / c2.reports_per_s.max(1.0) * Load::NaivePerEvent.rate();
    body.push_str(&format!(
        "\nReceipts of 1,000 consoles: {:.3} % of a core inside `ss_record_receipts` (B − A: {:.2} %), {} rows/s, {} more transactions/s than the floor \
         (indicative: the floor's own rate moves with the relay's probes). Naive, a transaction per report: C1 {:.2} % ({} of B's cost), C2 {:.2} % at {} reports/s ({} of B's cost; at the \
         {} reports/s offered that is about {:.0} % of a core, from its cost per report). Windows of {:.1} / {:.1} \
         / {:.1} / {:.1} s.\n\n\
         Targets (issue 24, 1,000 consoles at {EVENT_RATE} events/s): PostgreSQL CPU ≤ {CPU_TARGET_PCT} % of a \
         core → **{}**; writes ≤ {ROWS_TARGET:.0}/s → **{}**{}.\n",
        b.in_function_pct,
        b_cost,
        fmt_int(b.rows_per_s),
        fmt_int(b.xacts_per_s - a.xacts_per_s),
        cost(c1),
        ratio(c1),
        cost(c2),
        fmt_int(c2.reports_per_s),
        ratio(c2),
        fmt_int(Load::NaivePerEvent.rate()),
        c2_offered,
        a.secs,
        b.secs,
        c1.secs,
        c2.secs,
        pass_word(cpu_pass),
        pass_word(rows_pass),
        if b.failures > 0 { format!(" ({} reports of B failed)", b.failures) } else { String::new() }
    ));
    report.section("16. Delivery receipts: what 1,000 consoles' reports cost PostgreSQL (issue 24)", &body);
    report.summary_row(
        "16. Receipts: PostgreSQL CPU of 1,000 consoles",
        "≤ 1 % of a core",
        &format!(
            "{:.3} % of a core in its statements (B − A {b_cost:.2} %; naive, a transaction per report: {:.2} %)",
            b.in_function_pct,
            cost(c1)
        ),
        Some(cpu_pass),
    );
    report.summary_row(
        "16. Receipts: writes/s",
        "≤ 400/s",
        &format!("{} rows/s ({} reports/s)", fmt_int(b.rows_per_s), fmt_int(b.reports_per_s)),
        Some(rows_pass),
    );
    Ok(())
}

/// One phase on a fresh database with its own server.
async fn phase(ctx: &Ctx, load: Load, warm: Duration, window: Duration, clk_tck: u64) -> anyhow::Result<Measured> {
    let db = track_functions(ctx, ctx.fresh_db(8).await?).await?;
    let rig = Rig::start(ctx, db).await?;
    let result = phase_on(ctx, &rig, load, warm, window, clk_tck).await;
    rig.stop(ctx).await;
    result
}

/// Turns on `track_functions` for the database (so that `pg_stat_user_functions` times the receipts'
/// function) and reopens its pool, whose sessions read the setting when they start.
async fn track_functions(ctx: &Ctx, db: BenchDb) -> anyhow::Result<BenchDb> {
    let mut admin = ctx.admin().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER DATABASE \"{}\" SET track_functions = 'all'", db.name)))
        .execute(&mut admin)
        .await
        .context("ALTER DATABASE ... SET track_functions")?;
    db.pool.close().await;
    let pool = ctx.pool(&db.url, 8).await?;
    Ok(BenchDb { pool, ..db })
}

async fn phase_on(
    ctx: &Ctx,
    rig: &Rig,
    load: Load,
    warm: Duration,
    window: Duration,
    clk_tck: u64,
) -> anyhow::Result<Measured> {
    let consoles = add_consoles(&rig.db.pool).await?;
    // The bench's own connections: the head poll and the samples.
    let probe = ctx.pool(&rig.db.url, 2).await?;
    let result = measure(ctx, rig, &probe, load, &consoles, warm, window, clk_tck).await;
    probe.close().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    ctx: &Ctx,
    rig: &Rig,
    probe: &PgPool,
    load: Load,
    consoles: &[(String, String)],
    warm: Duration,
    window: Duration,
    clk_tck: u64,
) -> anyhow::Result<Measured> {
    let head: (String, i64) = sqlx::query_as("SELECT epoch, last_seq FROM stream_meta")
        .fetch_one(probe)
        .await
        .context("reading stream_meta")?;
    let base_seq = head.1;
    // The naive design's own pool (C), opened before anything runs.
    let naive_workers = match load {
        Load::NaiveHead => 4,
        Load::NaivePerEvent => 8,
        Load::Floor | Load::Consoles => 0,
    };
    let naive_pool = match naive_workers {
        0 => None,
        n => Some(ctx.pool(&rig.db.url, n).await?),
    };
    let (head_tx, head_rx) = watch::channel(head);
    let stop = CancellationToken::new();
    let counters = Arc::new(Counters::default());
    let total = warm + window + Duration::from_secs(1);
    let start = tokio::time::Instant::now();

    let poller = {
        let (probe, stop) = (probe.clone(), stop.clone());
        tokio::spawn(async move { poll_head(&probe, &head_tx, &stop).await })
    };
    let writer = {
        let (pool, waker, stats) = (rig.writer_pool.clone(), rig.waker.clone(), Stats::new());
        tokio::spawn(async move { write_phase(&pool, &waker, &stats, EVENT_RATE, total, 0).await })
    };
    // Reports due over the phase, at most (bounds every load loop).
    let max_reports = (load.rate() * (total.as_secs_f64() + 1.0)).ceil() as u64;
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    match load {
        Load::Floor => {}
        Load::Consoles => {
            let tokens: Arc<Vec<String>> = Arc::new(consoles.iter().map(|(_, t)| t.clone()).collect());
            for c in 0..HTTP_CONNECTIONS {
                let schedule = Schedule { first: c as u64, step: HTTP_CONNECTIONS as u64, max: max_reports, start };
                let (addr, tokens, head, counters, stop) =
                    (rig.addr.to_string(), tokens.clone(), head_rx.clone(), counters.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    console_connection(&addr, &tokens, schedule, load.rate(), head, &counters, &stop).await
                }));
            }
        }
        Load::NaiveHead | Load::NaivePerEvent => {
            let dispatchers = if load == Load::NaiveHead { CONSOLES } else { NAIVE_CONSOLES };
            let ids: Arc<Vec<String>> = Arc::new(consoles.iter().take(dispatchers).map(|(id, _)| id.clone()).collect());
            let per_event = (load == Load::NaivePerEvent).then_some(base_seq);
            for (w, pool) in (0..naive_workers).flat_map(|w| naive_pool.as_ref().map(|p| (w, p))) {
                let schedule = Schedule { first: w as u64, step: naive_workers as u64, max: max_reports, start };
                let (pool, ids, head, counters, stop) =
                    (pool.clone(), ids.clone(), head_rx.clone(), counters.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    naive_reports(&pool, &ids, schedule, load.rate(), per_event, head, &counters, &stop).await
                }));
            }
        }
    }

    let sampled = async {
        tokio::time::sleep_until(start + warm).await;
        let mut cpu = CpuTracker::default();
        cpu.observe(probe, true).await?;
        let s0 = Sample::take(probe, &counters).await?;
        let t0 = Instant::now();
        while t0.elapsed() + Duration::from_millis(500) < window {
            tokio::time::sleep(Duration::from_millis(500)).await;
            cpu.observe(probe, false).await?;
        }
        tokio::time::sleep(window.saturating_sub(t0.elapsed())).await;
        cpu.observe(probe, false).await?;
        let s1 = Sample::take(probe, &counters).await?;
        let secs = t0.elapsed().as_secs_f64();
        anyhow::Ok((cpu, s0, s1, secs))
    }
    .await;
    stop.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    if let Some(pool) = naive_pool {
        pool.close().await;
    }
    let written = writer.await.context("the writers' task")?;
    let _ = poller.await;
    let (cpu, s0, s1, secs) = sampled?;
    written.context("writing events")?;
    Ok(Measured {
        load,
        secs,
        cpu_pct: cpu.ticks() as f64 / clk_tck as f64 / secs * 100.0,
        in_function_pct: (s1.in_function_ms - s0.in_function_ms) / 1000.0 / secs * 100.0,
        backends: cpu.last.len(),
        rows_per_s: (s1.rows - s0.rows) as f64 / secs,
        xacts_per_s: (s1.xacts - s0.xacts) as f64 / secs,
        events_per_s: (s1.head - s0.head) as f64 / secs,
        reports_per_s: (s1.reports - s0.reports) as f64 / secs,
        failures: counters.failed.load(Ordering::Relaxed),
    })
}

/// Adds the consoles' dispatchers (`console-0001`... in [`GROUP`]) and mints a token for each.
async fn add_consoles(pool: &PgPool) -> anyhow::Result<Vec<(String, String)>> {
    let secret = AuthSecret::new(SECRET)?;
    let groups = [GROUP.to_owned()];
    let ids: Vec<String> = (1..=CONSOLES).map(|i| format!("console-{i:04}")).collect();
    futures::stream::iter(ids.iter().map(|id| {
        let groups = &groups;
        async move { add_dispatcher(pool, id, &format!("Console {id}"), groups).await.map(drop) }
    }))
    .buffer_unordered(8)
    .try_collect::<Vec<()>>()
    .await
    .context("adding the consoles' dispatchers")?;
    let generations: HashMap<String, i64> =
        sqlx::query_as("SELECT id, token_generation FROM dispatchers WHERE id LIKE 'console-%'")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    ids.into_iter()
        .map(|id| -> anyhow::Result<(String, String)> {
            let generation = *generations.get(&id).with_context(|| format!("{id} was just added"))?;
            let token = secret.issue(&id, generation, Duration::from_secs(4 * 3600))?;
            Ok((id, token))
        })
        .collect()
}

/// Publishes the log's `(epoch, last_seq)` every 100 ms until `stop`.
async fn poll_head(probe: &PgPool, head: &watch::Sender<(String, i64)>, stop: &CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Ok(now) =
            sqlx::query_as::<_, (String, i64)>("SELECT epoch, last_seq FROM stream_meta").fetch_one(probe).await
        {
            head.send_replace(now);
        }
    }
}

/// Which of a phase's reports a task sends: numbers `first`, `first + step`, ... below `max`; report `j` is
/// due at `start + j / rate`.
#[derive(Clone, Copy)]
struct Schedule {
    first: u64,
    step: u64,
    max: u64,
    start: tokio::time::Instant,
}

impl Schedule {
    /// Waits until report `j` is due; `false` when the phase stopped first.
    async fn wait(&self, j: u64, rate: f64, stop: &CancellationToken) -> bool {
        let due = self.start + Duration::from_secs_f64(j as f64 / rate);
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep_until(due) => !stop.is_cancelled(),
        }
    }
}

/// One keep-alive HTTP connection carrying the reports of consoles `j % CONSOLES` of its schedule.
async fn console_connection(
    addr: &str,
    tokens: &[String],
    schedule: Schedule,
    rate: f64,
    head: watch::Receiver<(String, i64)>,
    counters: &Counters,
    stop: &CancellationToken,
) {
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(1024);
    let mut j = schedule.first;
    while j < schedule.max && schedule.wait(j, rate, stop).await {
        let token = &tokens[(j as usize) % tokens.len()];
        let body = {
            let h = head.borrow();
            format!("{{\"position\":\"{}-{}\"}}", h.0, h.1)
        };
        let request = format!(
            "POST /api/receipts HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let answered =
            tokio::time::timeout(Duration::from_secs(5), exchange(&mut conn, addr, &request, &mut buf)).await;
        match answered {
            Ok(Ok(204)) => counters.done.fetch_add(1, Ordering::Relaxed),
            _ => {
                conn = None;
                counters.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
        j += schedule.step;
    }
}

/// Sends `request` on the connection (opening it if needed) and reads one response: its status. The
/// connection is dropped when the server says it closes it.
async fn exchange(conn: &mut Option<TcpStream>, addr: &str, request: &str, buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    if conn.is_none() {
        let s = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        *conn = Some(s);
    }
    let stream = conn.as_mut().context("no connection")?;
    stream.write_all(request.as_bytes()).await?;
    buf.clear();
    let mut chunk = [0u8; 2048];
    let (status, body_len, head_len, close) = loop {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head_len) = response.parse(buf)? {
            let status = response.code.context("a response without a status")?;
            let header = |name: &str| {
                response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| h.value.to_ascii_lowercase())
            };
            let body_len: usize = match header("content-length") {
                Some(v) => std::str::from_utf8(&v)?.trim().parse().context("a bad Content-Length")?,
                None => 0,
            };
            let close = header("connection").is_some_and(|v| v == b"close");
            break (status, body_len, head_len, close);
        }
        anyhow::ensure!(buf.len() < 64 * 1024, "a response head over 64 KiB");
    };
    while buf.len() < head_len + body_len {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "the server closed the connection mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    if close {
        *conn = None;
    }
    Ok(status)
}

/// The unbatched design: one `ss_record_receipt` call (its own transaction) per report. With `per_event`
/// (the head when the phase began) report `j` of console `j % ids.len()` names the position one past its
/// previous report, as a console that reports every applied event does; otherwise the polled head.
#[allow(clippy::too_many_arguments)]
async fn naive_reports(
    pool: &PgPool,
    ids: &[String],
    schedule: Schedule,
    rate: f64,
    per_event: Option<i64>,
    head: watch::Receiver<(String, i64)>,
    counters: &Counters,
    stop: &CancellationToken,
) {
    let groups = vec![GROUP.to_owned()];
    let mut j = schedule.first;
    while j < schedule.max && schedule.wait(j, rate, stop).await {
        let console = (j as usize) % ids.len();
        let (epoch, head_seq) = head.borrow().clone();
        let seq = match per_event {
            Some(base) => base + (j / ids.len() as u64) as i64 + 1,
            None => head_seq,
        };
        let called = sqlx::query("SELECT * FROM ss_record_receipt($1, $2, $3, $4)")
            .bind(&ids[console])
            .bind(&epoch)
            .bind(seq)
            .bind(&groups)
            .execute(pool)
            .await;
        match called {
            Ok(_) => counters.done.fetch_add(1, Ordering::Relaxed),
            Err(_) => counters.failed.fetch_add(1, Ordering::Relaxed),
        };
        j += schedule.step;
    }
}

/// Counters at one instant of a window.
struct Sample {
    /// `pg_stat_user_functions.total_time` of `ss_record_receipts`, ms.
    in_function_ms: f64,
    rows: i64,
    xacts: i64,
    head: i64,
    reports: u64,
}

impl Sample {
    async fn take(probe: &PgPool, counters: &Counters) -> anyhow::Result<Self> {
        let (in_function_ms, rows, xacts, head): (f64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT coalesce(sum(total_time), 0)::float8 FROM pg_stat_user_functions
                     WHERE funcname = 'ss_record_receipts'),
                    (SELECT count(*) FROM console_receipts),
                    (SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = current_database()),
                    (SELECT last_seq FROM stream_meta)",
        )
        .fetch_one(probe)
        .await
        .context("sampling console_receipts and pg_stat_database")?;
        Ok(Self { in_function_ms, rows, xacts, head, reports: counters.done.load(Ordering::Relaxed) })
    }
}

/// CPU ticks of the database's backends: the first and the latest reading of every pid seen in the window
/// (a pid first seen after the window began started in it, so all of its ticks count).
#[derive(Default)]
struct CpuTracker {
    first: HashMap<i32, u64>,
    last: HashMap<i32, u64>,
}

impl CpuTracker {
    async fn observe(&mut self, probe: &PgPool, window_start: bool) -> anyhow::Result<()> {
        let pids: Vec<i32> = sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            .fetch_all(probe)
            .await
            .context("listing the database's backends")?;
        for pid in pids {
            if let Some(ticks) = process_ticks(pid) {
                self.first.entry(pid).or_insert(if window_start { ticks } else { 0 });
                self.last.insert(pid, ticks);
            }
        }
        Ok(())
    }

    fn ticks(&self) -> u64 {
        self.last.iter().map(|(pid, last)| last.saturating_sub(self.first.get(pid).copied().unwrap_or(0))).sum()
    }
}

/// utime + stime of a process, in clock ticks (`None` if it is gone or unreadable).
fn process_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces): state is field 3, utime 14.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `getconf CLK_TCK` (100 on Linux if it cannot be read).
fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

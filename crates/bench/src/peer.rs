//! Section 9: writers that do not ring the relay (a plain SQL `INSERT INTO outbox`), and a peer SSE hub,
//! Debian's nginx with the nchan module, driven by the same clients at the same rates.
//!
//! nchan is installed by `make bench` (`nginx` + `libnginx-mod-nchan`) and started here as a child process
//! on a loopback port with a configuration of our own; `make test` never needs it.

use crate::common::{BenchDb, Ctx, Report, fmt_int, ms, now_ns, pass_word};
use crate::memory::{ServeChild, idle_growth};
use crate::stream::{
    Clients, EVENT_TYPE, MAX_EVENTS_PER_PHASE, PHASE_HEADER, PhaseResult, REGIONS, Rig, Stats, collect_phase,
    open_stream_clients, phase_row, summary_template,
};
use memchr::memmem;
use serde_json::json;
use smartscheduler::outbox::{self, NewEvent, RelayWaker};
use smartscheduler::recommendations::region_group;
use smartscheduler::relay::{RelayConfig, WAKE_CHANNEL};
use sqlx::PgPool;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use uuid::Uuid;

const NCHAN_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";
/// Most concurrent writer tasks (and connections) per publisher.
const WRITERS: u64 = 24;

/// nginx + nchan as a child process: `POST /pub/<region>` publishes, `GET /sub/<region>` is an EventSource.
struct Nchan {
    dir: PathBuf,
    child: Child,
    addr: String,
}

impl Nchan {
    async fn start() -> anyhow::Result<Nchan> {
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| std::path::Path::new(p).is_file());
        let (Some(nginx), true) = (nginx, std::path::Path::new(NCHAN_MODULE).is_file()) else {
            anyhow::bail!(
                "nginx with the nchan module is not installed: `make bench` installs Debian's nginx and \
                 libnginx-mod-nchan (or apt-get install nginx libnginx-mod-nchan)"
            );
        };
        let dir = std::env::temp_dir().join(format!("ss-bench-nchan-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let d = dir.display();
        // Two workers for two cores, as nginx's `auto` would choose; logs and temp files in our directory.
        let conf = format!(
            "load_module {NCHAN_MODULE};\n\
             worker_processes 2;\nworker_rlimit_nofile 20000;\ndaemon off;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 12000; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{\n    listen {addr};\n\
                 location ~ ^/sub/(\\w+)$ {{ nchan_subscriber eventsource; nchan_channel_id $1; }}\n\
                 location ~ ^/pub/(\\w+)$ {{ nchan_publisher; nchan_channel_id $1; }}\n  }}\n}}\n"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new(nginx)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let nchan = Nchan { dir, child, addr };
        // nginx says nothing when it listens: try to connect until it accepts.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&nchan.addr).await.is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(nchan.dir.join("error.log")).unwrap_or_default();
                nchan.stop().await;
                anyhow::bail!("nginx did not listen within 10 s: {log}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(nchan)
    }

    /// The worker processes (children of the master), which hold the connections.
    fn worker_pids(&self) -> Vec<u32> {
        let Some(master) = self.child.id() else { return Vec::new() };
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                // Fields after the command's closing parenthesis: state, ppid, ...
                stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(master)
            })
            .collect()
    }

    async fn stop(mut self) {
        // SIGTERM asks nginx to stop at once (its workers with it); kill if it does not.
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Who publishes the events of a phase.
#[derive(Clone)]
enum Publisher {
    /// HTTP `POST /pub/<region>` to nchan over a keep-alive connection per writer.
    Nchan { addr: String },
    /// This product's writer API (`outbox::enqueue` + COMMIT), then the in-process doorbell.
    Own { pool: PgPool, waker: RelayWaker },
    /// `INSERT INTO outbox ...; COMMIT` and nothing else; with `notify`, then `NOTIFY ss_wake` on its own.
    PlainSql { pool: PgPool, notify: bool },
}

/// One writer task's connection state.
enum Writer {
    Nchan { stream: TcpStream, buf: Vec<u8> },
    Db,
}

impl Publisher {
    async fn writer(&self) -> anyhow::Result<Writer> {
        Ok(match self {
            Publisher::Nchan { addr } => {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                Writer::Nchan { stream, buf: Vec::with_capacity(4096) }
            }
            _ => Writer::Db,
        })
    }

    /// Publishes event `n` of `phase` to `region`; `sentNs` in the payload is when this call started.
    async fn publish(&self, w: &mut Writer, stats: &Stats, region: &str, phase: usize, n: usize) -> anyhow::Result<()> {
        let began = now_ns();
        let payload = json!({"phase": phase, "n": n, "sentNs": began, "summary": summary_template()});
        match (self, w) {
            (Publisher::Nchan { addr }, Writer::Nchan { stream, buf }) => {
                let body = payload.to_string();
                let request = format!(
                    "POST /pub/{region} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(request.as_bytes()).await?;
                read_response(stream, buf).await?;
            }
            (Publisher::Own { pool, waker }, _) => {
                let mut tx = pool.begin().await?;
                let event = NewEvent::new(EVENT_TYPE, Uuid::new_v4(), vec![region_group(region)?], payload)?;
                outbox::enqueue(&mut tx, &event).await?;
                tx.commit().await?;
                waker.wake();
            }
            (Publisher::PlainSql { pool, notify }, _) => {
                let mut tx = pool.begin().await?;
                sqlx::query("INSERT INTO outbox (event_type, aggregate_id, groups, payload) VALUES ($1, $2, $3, $4)")
                    .bind(EVENT_TYPE)
                    .bind(Uuid::new_v4())
                    .bind(vec![format!("region:{region}")])
                    .bind(sqlx::types::Json(&payload))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                if *notify {
                    sqlx::query(sqlx::AssertSqlSafe(format!("NOTIFY {WAKE_CHANNEL}"))).execute(pool).await?;
                }
            }
            (Publisher::Nchan { .. }, Writer::Db) => anyhow::bail!("an nchan publisher needs its connection"),
        }
        stats.committed(phase, n, began);
        Ok(())
    }
}

/// Reads one HTTP response (head and `Content-Length` body) from a keep-alive connection; fails unless 2xx.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    buf.clear();
    loop {
        if let Some(end) = memmem::find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            anyhow::ensure!(head.starts_with("http/1.1 20"), "nchan refused a publish: {head}");
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                anyhow::ensure!(stream.read_buf(buf).await? > 0, "nchan closed the connection");
            }
            return Ok(());
        }
        anyhow::ensure!(buf.len() < 64 * 1024, "no response head in 64 KiB");
        anyhow::ensure!(stream.read_buf(buf).await? > 0, "nchan closed the connection");
    }
}

/// Writes `rate` events/s for `duration`, round-robin over the regions, then waits for the deliveries.
async fn run_phase(
    publisher: &Publisher,
    stats: &Arc<Stats>,
    per_region: u64,
    rate: u32,
    duration: Duration,
    phase: usize,
) -> anyhow::Result<PhaseResult> {
    let t0 = now_ns();
    let total = ((rate as f64 * duration.as_secs_f64()).round() as u64).min(MAX_EVENTS_PER_PHASE as u64);
    let writers = (rate as u64 / 20).clamp(4, WRITERS);
    let start = tokio::time::Instant::now();
    let hard_stop = start + duration * 3 + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (publisher, stats) = (publisher.clone(), stats.clone());
        tasks.push(tokio::spawn(async move {
            let mut writer = publisher.writer().await?;
            let mut written = 0u64;
            let mut i = w;
            while i < total {
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate as f64)).await;
                if tokio::time::Instant::now() > hard_stop {
                    break;
                }
                publisher.publish(&mut writer, &stats, REGIONS[(i % 4) as usize], phase, i as usize).await?;
                written += 1;
                i += writers;
            }
            anyhow::Ok(written)
        }));
    }
    let mut written = 0;
    for t in tasks {
        written += t.await??;
    }
    collect_phase(stats, per_region, rate, phase, t0, written, start.elapsed()).await
}

/// What one publisher measured: the latency phases and the rate ramp.
struct Measured {
    label: &'static str,
    at100: PhaseResult,
    at200: PhaseResult,
    ramp: Vec<PhaseResult>,
    /// Events written one at a time, each after a quiet spell longer than the relay's busy period.
    isolated: PhaseResult,
}

impl Measured {
    /// The highest ramp step that kept p99 < 100 ms with every delivery: deliveries/s offered (it kept up).
    fn best_deliveries(&self, per_region: u64) -> Option<(u32, f64)> {
        let ok = |r: &&PhaseResult| r.p(0.99) < 100_000 && r.delivered == r.expected;
        self.ramp.iter().filter(ok).map(|r| (r.rate, r.written as f64 / r.write_secs * per_region as f64)).next_back()
    }
}

struct Plan {
    /// Isolated events (each after a quiet spell) per publisher.
    isolated: usize,
    per_region: usize,
    secs: u64,
    ramp: &'static [u32],
    ramp_secs: u64,
}

/// Runs the latency phases (and, if `ramp`, the rate ramp) of one publisher against open clients.
async fn measure(
    plan: &Plan,
    label: &'static str,
    publisher: &Publisher,
    clients: Clients,
    stats: &Arc<Stats>,
    ramp: bool,
) -> anyhow::Result<Measured> {
    let per_region = clients.per_region;
    let run = async {
        run_phase(publisher, stats, per_region, 100, Duration::from_secs(1), 0).await?; // warm-up
        let at100 = run_phase(publisher, stats, per_region, 100, Duration::from_secs(plan.secs), 1).await?;
        let at200 = run_phase(publisher, stats, per_region, 200, Duration::from_secs(plan.secs), 2).await?;
        let mut steps = Vec::new();
        if ramp {
            for (k, &rate) in plan.ramp.iter().enumerate() {
                let r =
                    run_phase(publisher, stats, per_region, rate, Duration::from_secs(plan.ramp_secs), 3 + k).await?;
                let ok = r.p(0.99) < 100_000 && r.delivered == r.expected;
                eprintln!("[bench]   {label} step {rate} ev/s: p99 {}", ms(r.p(0.99)));
                steps.push(r);
                if !ok {
                    break;
                }
            }
        }
        let isolated = isolated_events(plan, publisher, stats, per_region).await?;
        anyhow::Ok(Measured { label, at100, at200, ramp: steps, isolated })
    }
    .await;
    clients.stop().await;
    let m = run?;
    eprintln!("[bench]   {label}: p50 {} p99 {} at 200 ev/s", ms(m.at200.p(0.5)), ms(m.at200.p(0.99)));
    Ok(m)
}

/// Events published one at a time, each after a quiet spell longer than the relay's busy period (1 s), so
/// that each is the first event after an idle period.
async fn isolated_events(
    plan: &Plan,
    publisher: &Publisher,
    stats: &Arc<Stats>,
    per_region: u64,
) -> anyhow::Result<PhaseResult> {
    let phase = ISOLATED_PHASE;
    let t0 = now_ns();
    let started = Instant::now();
    let mut writer = publisher.writer().await?;
    for n in 0..plan.isolated {
        // Jittered: a fixed spell would land each event at the same point of the relay's poll period (both
        // run on timers of this process), and measure one point instead of the spread a real writer sees.
        let jitter = Duration::from_micros(rand::random_range(0..50_000));
        tokio::time::sleep(QUIET + jitter).await;
        publisher.publish(&mut writer, stats, REGIONS[n % 4], phase, n).await?;
    }
    collect_phase(stats, per_region, 0, phase, t0, plan.isolated as u64, started.elapsed()).await
}

/// The quiet spell before each isolated event (plus up to 50 ms of jitter): longer than the relay's default
/// busy period (1 s).
const QUIET: Duration = Duration::from_millis(1300);
/// The phase slot of isolated events (after the ramp's).
const ISOLATED_PHASE: usize = 9;

fn region_targets(tokens: &[String]) -> Vec<(String, Option<String>)> {
    tokens.iter().map(|t| ("/api/events".to_owned(), Some(t.clone()))).collect()
}

fn nchan_targets() -> Vec<(String, Option<String>)> {
    REGIONS.iter().map(|r| (format!("/sub/{r}"), None)).collect()
}

/// CPU seconds (user + system) of `pid` so far, from /proc.
fn cpu_secs(pid: u32, ticks_per_s: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    // After the command: state(0) ppid(1) ... utime(11) stime(12).
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / ticks_per_s
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// An idle server's cost over `secs`: transactions/s on its database, CPU % (of one core) of the server
/// process and of its PostgreSQL backends.
struct IdleCost {
    label: &'static str,
    flags: &'static str,
    xacts_per_s: f64,
    server_cpu_pct: f64,
    backends_cpu_pct: f64,
}

async fn backend_pids(ctx: &Ctx, db: &str) -> anyhow::Result<Vec<u32>> {
    let mut admin = ctx.admin().await?;
    let pids: Vec<i32> = sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1")
        .bind(db)
        .fetch_all(&mut admin)
        .await?;
    Ok(pids.into_iter().map(|p| p as u32).collect())
}

async fn xacts(ctx: &Ctx, db: &str) -> anyhow::Result<f64> {
    let mut admin = ctx.admin().await?;
    // Stats reach pg_stat_database when a backend reports them (at most about once a second).
    let n: i64 =
        sqlx::query_scalar("SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = $1")
            .bind(db)
            .fetch_one(&mut admin)
            .await?;
    Ok(n as f64)
}

async fn idle_cost(
    ctx: &Ctx,
    db: &BenchDb,
    server: &ServeChild,
    label: &'static str,
    flags: &'static str,
    secs: u64,
) -> anyhow::Result<IdleCost> {
    let ticks = clock_ticks();
    // Let start-up work (migrations, first polls, the pool's connections) settle first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let backends = backend_pids(ctx, &db.name).await?;
    let (x0, s0) = (xacts(ctx, &db.name).await?, cpu_secs(server.pid, ticks));
    let b0: f64 = backends.iter().map(|&p| cpu_secs(p, ticks)).sum();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let took = started.elapsed().as_secs_f64();
    let (x1, s1) = (xacts(ctx, &db.name).await?, cpu_secs(server.pid, ticks));
    let b1: f64 = backends.iter().map(|&p| cpu_secs(p, ticks)).sum();
    Ok(IdleCost {
        label,
        flags,
        // The two admin reads of pg_stat_database are on another database and not counted.
        xacts_per_s: (x1 - x0) / took,
        server_cpu_pct: (s1 - s0) / took * 100.0,
        backends_cpu_pct: (b1 - b0) / took * 100.0,
    })
}

pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let nchan = Nchan::start().await?;
    let result = run_with(ctx, report, &nchan).await;
    nchan.stop().await;
    result
}

async fn run_with(ctx: &Ctx, report: &mut Report, nchan: &Nchan) -> anyhow::Result<()> {
    let plan = if ctx.quick {
        Plan { isolated: 3, per_region: 50, secs: 3, ramp: &[400, 1600], ramp_secs: 2 }
    } else {
        Plan { isolated: 12, per_region: 100, secs: 10, ramp: &[400, 800, 1600, 2400, 3200], ramp_secs: 3 }
    };
    let per_region = plan.per_region as u64;
    let clients_total = per_region * 4;
    let idle_secs = if ctx.quick { 3 } else { 10 };
    let idle_conns: usize = if ctx.quick { 1_000 } else { 8_000 };

    // 1. Idle cost of a `serve` process (no clients, nothing to publish) with the default relay settings,
    //    the settings before this section existed, a constant fast probe, and no relay at all; then, on the
    //    default one, memory per idle connection.
    let db = ctx.fresh_db(4).await?;
    let tokens = crate::stream::region_dispatchers(&db.pool).await?;
    let configs: [(&str, &str, &[&str]); 4] = [
        ("defaults (idle 20 ms, busy 2 ms for 1 s)", "", &[]),
        (
            "before: a 200 ms poll",
            "--relay-poll 200ms --relay-busy-poll 200ms",
            &["--relay-poll", "200ms", "--relay-busy-poll", "200ms"],
        ),
        ("constant 2 ms probe", "--relay-poll 2ms", &["--relay-poll", "2ms"]),
        ("no relay (the rest of serve)", "--no-relay", &["--no-relay"]),
    ];
    let mut idle = Vec::new();
    let mut ours_memory = None;
    let setup = async {
        for (k, (label, flags, args)) in configs.iter().enumerate() {
            let server = ServeChild::start(&db.url, args).await?;
            let measured = idle_cost(ctx, &db, &server, label, flags, idle_secs).await;
            if k == 0 && measured.is_ok() {
                ours_memory =
                    Some(idle_growth(&[server.pid], &server.addr, &region_targets(&tokens), idle_conns).await);
            }
            server.stop().await;
            idle.push(measured?);
        }
        anyhow::Ok(())
    }
    .await;
    ctx.drop_db(db).await;
    setup?;
    let ours_memory = ours_memory.ok_or_else(|| anyhow::anyhow!("no memory figure"))??;
    let nchan_workers = nchan.worker_pids();
    anyhow::ensure!(!nchan_workers.is_empty(), "cannot find nchan's worker processes");
    let nchan_memory = idle_growth(&nchan_workers, &nchan.addr, &nchan_targets(), idle_conns).await?;
    let per_conn = |(before, after, _, opened): (u64, u64, f64, usize)| (after as f64 - before as f64) / opened as f64;
    let (ours_kib, nchan_kib) = (per_conn(ours_memory), per_conn(nchan_memory));

    // 2. Latency and ramp: nchan, then this product with each kind of writer, same clients and rates.
    let mut measured = Vec::new();
    let stats = Stats::from_call_start();
    let clients = open_stream_clients(&nchan.addr, nchan_targets(), plan.per_region, &stats).await?;
    measured.push(
        measure(&plan, "nchan (HTTP POST /pub)", &Publisher::Nchan { addr: nchan.addr.clone() }, clients, &stats, true)
            .await?,
    );

    let rig = Rig::start(ctx, ctx.fresh_db(20).await?).await?;
    let ours = async {
        let mut out = Vec::new();
        let kinds: [(&'static str, Publisher, bool); 3] = [
            (
                "ours, its own writer (enqueue + doorbell)",
                Publisher::Own { pool: rig.writer_pool.clone(), waker: rig.waker.clone() },
                true,
            ),
            (
                "ours, plain SQL writer (INSERT; COMMIT)",
                Publisher::PlainSql { pool: rig.writer_pool.clone(), notify: false },
                true,
            ),
            (
                "ours, plain SQL writer + NOTIFY ss_wake after COMMIT",
                Publisher::PlainSql { pool: rig.writer_pool.clone(), notify: true },
                false,
            ),
        ];
        for (label, publisher, ramp) in kinds {
            let stats = Stats::from_call_start();
            let clients =
                open_stream_clients(&rig.addr.to_string(), region_targets(&rig.tokens), plan.per_region, &stats)
                    .await?;
            out.push(measure(&plan, label, &publisher, clients, &stats, ramp).await?);
        }
        anyhow::Ok(out)
    }
    .await;
    rig.stop(ctx).await;
    measured.extend(ours?);

    // The same plain SQL writer against the relay as it was (a 200 ms poll), for the before/after.
    let before_config = RelayConfig {
        poll_interval: Duration::from_millis(200),
        busy_poll_interval: Duration::from_millis(200),
        ..RelayConfig::default()
    };
    let rig = Rig::start_with(ctx, ctx.fresh_db(20).await?, before_config).await?;
    let before = async {
        let stats = Stats::from_call_start();
        let clients =
            open_stream_clients(&rig.addr.to_string(), region_targets(&rig.tokens), plan.per_region, &stats).await?;
        let publisher = Publisher::PlainSql { pool: rig.writer_pool.clone(), notify: false };
        measure(&plan, "before: plain SQL writer, 200 ms poll", &publisher, clients, &stats, false).await
    }
    .await;
    rig.stop(ctx).await;
    measured.push(before?);

    render(
        report,
        &plan,
        clients_total,
        &measured,
        &idle,
        (ours_kib, nchan_kib),
        idle_conns,
        ours_memory,
        nchan_memory,
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn render(
    report: &mut Report,
    plan: &Plan,
    clients_total: u64,
    measured: &[Measured],
    idle: &[IdleCost],
    (ours_kib, nchan_kib): (f64, f64),
    idle_conns: usize,
    ours_memory: (u64, u64, f64, usize),
    nchan_memory: (u64, u64, f64, usize),
) {
    let per_region = plan.per_region as u64;
    let find = |prefix: &str| measured.iter().find(|m| m.label.starts_with(prefix));
    let (Some(nchan), Some(own), Some(plain)) =
        (find("nchan"), find("ours, its own"), find("ours, plain SQL writer ("))
    else {
        return;
    };
    let mut body = format!(
        "The same {clients_total} raw SSE clients ({} per region; the lean client of section 3, delayed ACKs) and the \
         same schedule of events (round-robin over the four regions, each to the clients of its region; \
         {} s at 100 and at 200 events/s after a 1 s warm-up) against: **nchan** 1.3.6 in Debian's nginx \
         (`libnginx-mod-nchan`, 2 workers, `nchan_subscriber eventsource` on `/sub/<region>`, events published \
         with HTTP `POST /pub/<region>` over keep-alive connections), and **this product** in process (as in \
         section 3) with three kinds of writer: its own (`outbox::enqueue`, `COMMIT`, then the in-process \
         doorbell), a plain SQL writer (`BEGIN; INSERT INTO outbox ...; COMMIT` on its own connection, no NOTIFY, \
         nothing else: what any application may do), and the same plain SQL writer followed by `NOTIFY ss_wake` \
         as a statement of its own after the COMMIT. **Latency here runs from the moment the publisher starts \
         its call** (the POST, or the BEGIN) to the client's receipt, so the writer's own transaction is \
         included, unlike sections 3 and 4. nchan's events carry the same JSON; ours add the envelope. The last \
         row is the plain SQL writer against the relay as it was before (a 200 ms poll). The ramp steps {} \
         events/s, {} s each, and stops at the first step with p99 ≥ 100 ms or a missing delivery.\n\n",
        plan.per_region,
        plan.secs,
        plan.ramp.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", "),
        plan.ramp_secs,
    );
    body.push_str(&PHASE_HEADER.replace("writer tx p50 / p99 (not included)", "publisher's call p50 / p99 (included)"));
    for m in measured {
        body.push_str(&phase_row(&format!("{}, 100 ev/s", m.label), clients_total, &m.at100));
        body.push_str(&phase_row(&format!("{}, 200 ev/s", m.label), clients_total, &m.at200));
        for r in &m.ramp {
            body.push_str(&phase_row(&format!("{}, step {} ev/s", m.label, r.rate), clients_total, r));
        }
    }

    let best = |m: &Measured| m.best_deliveries(per_region);
    let best_text = |m: &Measured| match best(m) {
        Some((rate, d)) => {
            let top = m.ramp.last().is_some_and(|r| r.rate == rate);
            format!("{}{} ({rate} ev/s)", fmt_int(d), if top { "+" } else { "" })
        }
        None => "none".to_owned(),
    };
    let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.2}×", a / b) } else { "-".to_owned() };
    body.push_str(
        "\n| publisher | p50 / p99 at 100 ev/s | p50 / p99 at 200 ev/s | p99 at 200 ev/s vs nchan | most deliveries/s with p99 < 100 ms | one event after a quiet spell: p50 / max |\n|---|---|---|---|---|---|\n",
    );
    for m in measured {
        body.push_str(&format!(
            "| {} | {} / {} | {} / {} | {} | {} | {} / {} |\n",
            m.label,
            ms(m.at100.p(0.5)),
            ms(m.at100.p(0.99)),
            ms(m.at200.p(0.5)),
            ms(m.at200.p(0.99)),
            ratio(m.at200.p(0.99) as f64, nchan.at200.p(0.99) as f64),
            if m.ramp.is_empty() { "not ramped".to_owned() } else { best_text(m) },
            ms(m.isolated.p(0.5)),
            ms(m.isolated.hist.max()),
        ));
    }
    body.push_str(
        "\n(`+`: the ramp's last step still passed, so the ceiling is higher than measured. A ratio above 1 \
         means slower than nchan. The last column: events written one at a time, each after 1.3 s without \
         events and a random 0-50 ms more (longer than the relay's 1 s busy period), latency from the call as above.)\n",
    );

    let plain_p50 = plain.at100.p(0.5).max(plain.at200.p(0.5));
    let plain_p99 = plain.at100.p(0.99).max(plain.at200.p(0.99));
    let complete = plain.at100.delivered == plain.at100.expected && plain.at200.delivered == plain.at200.expected;
    let (p50_ok, p99_ok) = (plain_p50 <= 10_000, plain_p99 <= 30_000);
    body.push_str(&format!(
        "\nPlain SQL writer, worst of 100 and 200 ev/s: p50 {} (target ≤ 10 ms) → **{}**; p99 {} (target ≤ 30 ms) → \
         **{}**; every delivery arrived: **{}**.\n",
        ms(plain_p50),
        pass_word(p50_ok),
        ms(plain_p99),
        pass_word(p99_ok),
        if complete { "yes" } else { "NO" }
    ));

    body.push_str(&format!(
        "\n**Memory per idle connection**, {} idle SSE connections opened as in section 5 (each waits for its \
         opening block, nchan's `: hi`), resident memory before and after: ours a `smartscheduler serve` child \
         (VmRSS), nchan its two worker processes (summed VmRSS; the master holds no connection).\n\n\
         | server | before | after | per connection |\n|---|---|---|---|\n\
         | ours (`serve`) | {} KiB | {} KiB | **{ours_kib:.2} KiB** |\n\
         | nchan (2 workers) | {} KiB | {} KiB | **{nchan_kib:.2} KiB** |\n\n\
         Ours / nchan: {:.2}×.\n",
        fmt_int(idle_conns as f64),
        fmt_int(ours_memory.0 as f64),
        fmt_int(ours_memory.1 as f64),
        fmt_int(nchan_memory.0 as f64),
        fmt_int(nchan_memory.1 as f64),
        ours_kib / nchan_kib.max(0.01),
    ));

    body.push_str(
        "\n**Idle cost** of a `smartscheduler serve` child with no client and nothing to publish, per relay \
         setting: transactions/s on its database (`pg_stat_database`, each probe is one), CPU of the server \
         process and of its PostgreSQL backends (`/proc/<pid>/stat`, % of one core). The relay's own share is \
         the difference to the row without a relay.\n\n\
         | relay setting | flags | transactions/s | server CPU | its PostgreSQL backends' CPU |\n|---|---|---|---|---|\n",
    );
    for c in idle {
        body.push_str(&format!(
            "| {} | `{}` | {:.0} | {:.2}% | {:.2}% |\n",
            c.label,
            if c.flags.is_empty() { "(none)" } else { c.flags },
            c.xacts_per_s,
            c.server_cpu_pct,
            c.backends_cpu_pct
        ));
    }
    report.section("9. Writers that do not ring, and a peer: nchan (issue 17)", &body);

    report.summary_row(
        &format!("9. Plain SQL writer → receipt p50, {clients_total} clients, 100-200 ev/s"),
        "≤ 10 ms",
        &format!(
            "{} (nchan {}, before 200 ms poll {})",
            ms(plain_p50),
            ms(nchan.at200.p(0.5)),
            find("before").map(|b| ms(b.at100.p(0.5))).unwrap_or_default()
        ),
        Some(p50_ok && complete),
    );
    report.summary_row(
        &format!("9. Plain SQL writer → receipt p99, {clients_total} clients, 100-200 ev/s"),
        "≤ 30 ms",
        &format!("{} (nchan {})", ms(plain_p99), ms(nchan.at200.p(0.99))),
        Some(p99_ok && complete),
    );
    report.summary_row(
        "9. p50 / p99 at 200 ev/s from the call: own writer, plain SQL, nchan",
        "info",
        &format!(
            "{} / {}, {} / {}, {} / {} (p99 own {} and plain {} of nchan's)",
            ms(own.at200.p(0.5)),
            ms(own.at200.p(0.99)),
            ms(plain.at200.p(0.5)),
            ms(plain.at200.p(0.99)),
            ms(nchan.at200.p(0.5)),
            ms(nchan.at200.p(0.99)),
            ratio(own.at200.p(0.99) as f64, nchan.at200.p(0.99) as f64),
            ratio(plain.at200.p(0.99) as f64, nchan.at200.p(0.99) as f64),
        ),
        None,
    );
    report.summary_row(
        &format!("9. Most deliveries/s with p99 < 100 ms, {clients_total} clients: own, plain SQL, nchan"),
        "info",
        &format!("{}, {}, {}", best_text(own), best_text(plain), best_text(nchan)),
        None,
    );
    report.summary_row(
        &format!("9. Memory per idle connection ({}): ours vs nchan", fmt_int(idle_conns as f64)),
        "info",
        &format!("{ours_kib:.2} vs {nchan_kib:.2} KiB ({:.2}×)", ours_kib / nchan_kib.max(0.01)),
        None,
    );
    if let (Some(d), Some(none)) = (idle.first(), idle.iter().find(|c| c.flags == "--no-relay")) {
        report.summary_row(
            "9. Relay idle cost (default settings, minus serve without a relay)",
            "info",
            &format!(
                "{:.0} transactions/s, {:.2}% CPU (server {:.2}% + PostgreSQL {:.2}%)",
                d.xacts_per_s - none.xacts_per_s,
                (d.server_cpu_pct - none.server_cpu_pct) + (d.backends_cpu_pct - none.backends_cpu_pct),
                d.server_cpu_pct - none.server_cpu_pct,
                d.backends_cpu_pct - none.backends_cpu_pct
            ),
            None,
        );
    }
}

//! Section 15: lock-out. A `smartscheduler serve` child process is flooded two ways, each with as many
//! sockets as this process may open (up to 20,000): event streams from one dispatcher's token, re-opened
//! as soon as they are refused or closed, and request heads that never finish, from no token, re-sent as
//! soon as the server closes them. Meanwhile a prober opens a fresh connection every 20 ms for `/healthz`
//! and for another dispatcher's `GET /api/me`, and times each from connect to the end of the response.
//! The baseline is the same prober against the same server with no flood.

use crate::common::{Ctx, Report, fmt_int, histogram, ms, open_files_limit, pass_word};
use crate::stream::SECRET;
use anyhow::Context;
use smartscheduler::auth::{AuthSecret, add_dispatcher};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The probe target: every probe answers within this.
const TARGET_MS: f64 = 100.0;

/// What one phase measured.
struct Probed {
    health: hdrhistogram::Histogram<u64>,
    me: hdrhistogram::Histogram<u64>,
    failures: u64,
    flood_attempts: u64,
}

pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?.with_file_name("smartscheduler");
    anyhow::ensure!(
        exe.is_file(),
        "{} not found: build it with `cargo build --release --bin smartscheduler`",
        exe.display()
    );
    let sockets = 20_000u64.min(open_files_limit().saturating_sub(400)) as usize;
    let seconds = if ctx.quick { 4 } else { 10 };
    let db = ctx.fresh_db(8).await?;
    let secret = AuthSecret::new(SECRET)?;
    add_dispatcher(&db.pool, "mallory", "Mallory", &["region:north".to_owned()]).await?;
    add_dispatcher(&db.pool, "bob", "Bob", &["region:south".to_owned()]).await?;
    let generation = |id: &'static str| {
        let pool = db.pool.clone();
        async move { smartscheduler::auth::token_generation(&pool, id).await?.context("the dispatcher was just added") }
    };
    let mallory = secret.issue("mallory", generation("mallory").await?, Duration::from_secs(3600))?;
    let bob = secret.issue("bob", generation("bob").await?, Duration::from_secs(3600))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = crate::memory::serve_command(&exe, &addr, &db.url)?.stderr(Stdio::null()).spawn()?;
    if let Some(stdout) = child.stdout.take() {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(line) = lines.next_line().await? {
            if line.contains("listening on") {
                break;
            }
        }
    }
    let phases = async {
        let idle = probe_under(&addr, &bob, seconds, None).await?;
        let streams = format!(
            "GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {mallory}\r\nAccept: text/event-stream\r\n\r\n"
        );
        let stream_flood = probe_under(&addr, &bob, seconds, Some((streams, sockets))).await?;
        let heads = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a".to_owned();
        let head_flood = probe_under(&addr, &bob, seconds, Some((heads, sockets))).await?;
        anyhow::Ok((idle, stream_flood, head_flood))
    }
    .await;
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    ctx.drop_db(db).await;
    let (idle, stream_flood, head_flood) = phases?;

    let worst = |p: &Probed| (p.health.value_at_quantile(1.0).max(p.me.value_at_quantile(1.0))) as f64 / 1000.0;
    let pass = [&stream_flood, &head_flood].iter().all(|p| worst(p) <= TARGET_MS && p.failures == 0);
    let mut body = format!(
        "A `smartscheduler serve` child process (release build, defaults: 32 streams per dispatcher, budgets from \
         its descriptor limit) on a fresh database. Each flood holds {} sockets from this process for {seconds} s \
         and re-opens every one the server refuses or closes; a prober meanwhile opens a fresh connection every \
         20 ms and times `GET /healthz` and another dispatcher's `GET /api/me` from connect to the end of the \
         response. Baseline: the same prober with no flood.\n\n\
         | phase | flood connections opened | `/healthz` p50 / p99 / max | bob's `/api/me` p50 / p99 / max | probes failed |\n\
         |---|---|---|---|---|\n",
        fmt_int(sockets as f64)
    );
    for (name, p) in [
        ("no flood (baseline)", &idle),
        ("streams from one token", &stream_flood),
        ("half-sent request heads, no token", &head_flood),
    ] {
        body.push_str(&format!(
            "| {name} | {} | {} / {} / {} | {} / {} / {} | {} |\n",
            fmt_int(p.flood_attempts as f64),
            ms(p.health.value_at_quantile(0.5)),
            ms(p.health.value_at_quantile(0.99)),
            ms(p.health.value_at_quantile(1.0)),
            ms(p.me.value_at_quantile(0.5)),
            ms(p.me.value_at_quantile(0.99)),
            ms(p.me.value_at_quantile(1.0)),
            p.failures
        ));
    }
    let ratio =
        |p: &Probed| p.health.value_at_quantile(0.99) as f64 / idle.health.value_at_quantile(0.99).max(1) as f64;
    body.push_str(&format!(
        "\n`/healthz` p99 under the flood ÷ without: streams ×{:.2}, heads ×{:.2}. Target: every probe answered \
         within {TARGET_MS} ms under both floods → **{}**\n",
        ratio(&stream_flood),
        ratio(&head_flood),
        pass_word(pass)
    ));
    report.section("15. Lock-out: floods of streams and half-sent heads (issue 22)", &body);
    report.summary_row(
        &format!("15. Health and API under a {}-socket flood (streams / heads)", fmt_int(sockets as f64)),
        "every probe ≤ 100 ms",
        &format!("max {:.1} ms / {:.1} ms", worst(&stream_flood), worst(&head_flood)),
        Some(pass),
    );
    Ok(())
}

/// Probes for `seconds` while `flood` (the bytes each flood socket sends, and how many sockets) runs.
async fn probe_under(addr: &str, token: &str, seconds: u64, flood: Option<(String, usize)>) -> anyhow::Result<Probed> {
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicU64::new(0));
    let mut flooders = Vec::new();
    if let Some((bytes, sockets)) = flood {
        let bytes = Arc::new(bytes.into_bytes());
        for _ in 0..sockets {
            let (addr, bytes, stop, attempts) = (addr.to_owned(), bytes.clone(), stop.clone(), attempts.clone());
            flooders.push(tokio::spawn(async move { flood_one(&addr, &bytes, &stop, &attempts).await }));
        }
        // Let the flood build up before the probes count.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (mut health, mut me, mut failures) = (histogram(), histogram(), 0);
    let until = Instant::now() + Duration::from_secs(seconds);
    let me_request =
        format!("GET /api/me HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    let health_request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    while Instant::now() < until {
        for (request, into) in [(&health_request, &mut health), (&me_request, &mut me)] {
            match timed_exchange(addr, request).await {
                Some(took) => into.record(took.as_micros() as u64)?,
                None => failures += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.abort();
    }
    Ok(Probed { health, me, failures, flood_attempts: attempts.load(Ordering::Relaxed) })
}

/// One flood socket: send `bytes`, hold the connection until the server closes it, and open it again.
async fn flood_one(addr: &str, bytes: &[u8], stop: &AtomicBool, attempts: &AtomicU64) {
    let mut sink = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut socket) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        attempts.fetch_add(1, Ordering::Relaxed);
        if socket.write_all(bytes).await.is_err() {
            continue;
        }
        while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
    }
}

/// Connect, send `request`, read until the server closes: the time it took, or `None` for a failure (no
/// 200, or over 5 s).
async fn timed_exchange(addr: &str, request: &str) -> Option<Duration> {
    let started = Instant::now();
    let exchange = async {
        let mut socket = TcpStream::connect(addr).await.ok()?;
        socket.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        socket.read_to_end(&mut response).await.ok()?;
        response.starts_with(b"HTTP/1.1 200").then_some(())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.ok().flatten()?;
    Some(started.elapsed())
}

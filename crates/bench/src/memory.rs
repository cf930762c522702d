//! Section 5: resident memory per idle SSE connection, measured on a `smartscheduler serve` child process
//! (so that the 10,000 clients' memory is not counted), with light hand-written HTTP clients.

use crate::common::{Ctx, Report, fmt_int, open_files_limit, pass_word};
use crate::stream::{SECRET, body_has_first_block, region_dispatchers};
use futures::StreamExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

/// `smartscheduler serve --addr <addr>` on `database_url` with the bench's secret, quiet logs, stdout piped
/// (it prints the listening line) and killed when dropped; the caller sets stderr and anything else.
pub fn serve_command(exe: &std::path::Path, addr: &str, database_url: &str) -> anyhow::Result<Command> {
    let mut command = Command::new(exe);
    command
        .args(["serve", "--addr", addr])
        .env("DATABASE_URL", database_url)
        .env("SMARTSCHEDULER_AUTH_SECRET", std::str::from_utf8(SECRET)?)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    Ok(command)
}

pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())
}

/// Opens one stream by hand and returns it once the opening block (ours: `retry:` + `id:`) has arrived.
async fn open_idle(addr: String, path: String, token: Option<String>) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(&addr).await?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Accept: text/event-stream\r\n\r\n");
    s.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let k = s.read(&mut chunk).await?;
        anyhow::ensure!(k > 0, "connection closed before the opening block");
        buf.extend_from_slice(&chunk[..k]);
        if body_has_first_block(&buf) {
            break;
        }
        anyhow::ensure!(buf.len() < 65536, "no opening block in 64 KiB");
    }
    anyhow::ensure!(buf.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..buf.len().min(80)]));
    Ok(s)
}

/// Private memory of an idle PostgreSQL backend: what the naive design (a connection per client) pays.
async fn pg_backend_kib(ctx: &Ctx) -> Option<u64> {
    let mut admin = ctx.admin().await.ok()?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut admin).await.ok()?;
    sqlx::query("SELECT 1").execute(&mut admin).await.ok()?;
    status_kib(pid as u32, "RssAnon:")
}

pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?.with_file_name("smartscheduler");
    anyhow::ensure!(
        exe.is_file(),
        "{} not found: build it with `cargo build --release --bin smartscheduler`",
        exe.display()
    );
    let limit = open_files_limit();
    let target: u64 = if ctx.quick { 2_000 } else { 10_000 };
    let n = target.min(limit.saturating_sub(400)) as usize;

    let db = ctx.fresh_db(4).await?;
    let result = async {
        let tokens = region_dispatchers(&db.pool).await?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let mut child = serve_command(&exe, &addr, &db.url)?
            .env("SMARTSCHEDULER_MAX_STREAMS_PER_DISPATCHER", "1000000") // thousands of streams, one token
            .stderr(Stdio::piped())
            .spawn()?;
        let pid = child.id().unwrap_or(0);
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut l = log.lock().unwrap();
                    if l.len() < 50 {
                        l.push(line);
                    }
                }
            });
        }
        let measured = measure(&mut child, pid, &addr, &tokens, n).await;
        let _ = child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        match measured {
            Ok(m) => anyhow::Ok(m),
            Err(e) => {
                let log = log.lock().unwrap().join("\n");
                Err(e.context(format!("server stderr:\n{log}")))
            }
        }
    }
    .await;
    ctx.drop_db(db).await;
    let (before, after, open_secs, opened) = result?;
    let per_conn = (after as f64 - before as f64) / opened as f64;
    let pass = per_conn <= 10.0;
    let backend = pg_backend_kib(ctx).await;
    let mut body = format!(
        "A `smartscheduler serve` child process (release build, `RUST_LOG=warn`, relay on) on a fresh database. \
         VmRSS of the server read from `/proc/<pid>/status` after a warm-up, then after {} idle SSE connections \
         (hand-written HTTP/1.1 `GET /api/events` over tokio `TcpStream`s, 200 opening at a time, each waiting \
         for its opening `retry:`/`id:` block, then left idle); soft open-files limit {limit}.\n\n\
         | | value |\n|---|---|\n\
         | connections | {} |\n| opening them took | {open_secs:.1} s ({} connections/s) |\n\
         | server VmRSS before | {} KiB |\n| server VmRSS after | {} KiB |\n| per connection | **{per_conn:.2} KiB** |\n",
        fmt_int(opened as f64),
        fmt_int(opened as f64),
        fmt_int(opened as f64 / open_secs),
        fmt_int(before as f64),
        fmt_int(after as f64),
    );
    match backend {
        Some(kib) => body.push_str(&format!(
            "| naive design's cost per client: private memory (RssAnon) of one idle PostgreSQL backend | {} KiB ({:.0}× ours) |\n",
            fmt_int(kib as f64),
            kib as f64 / per_conn.max(0.01)
        )),
        None => body.push_str("| naive design's cost per client (one PostgreSQL backend) | not readable here |\n"),
    }
    if opened < 10_000 && !ctx.quick {
        body.push_str(&format!(
            "\nOnly {opened} connections: the open-files limit ({limit}) allows no more; raise it with `ulimit -n`.\n"
        ));
    }
    body.push_str(&format!("\nTarget: ≤ 10 KiB per idle connection → **{}**.\n", pass_word(pass)));
    report.section("5. Memory per idle SSE connection (issue 3)", &body);
    report.summary_row(
        &format!("5. Server memory per idle SSE connection ({})", fmt_int(opened as f64)),
        "≤ 10 KiB",
        &format!("{per_conn:.2} KiB"),
        Some(pass),
    );
    Ok(())
}

async fn measure(
    child: &mut tokio::process::Child,
    pid: u32,
    addr: &str,
    tokens: &[String],
    n: usize,
) -> anyhow::Result<(u64, u64, f64, usize)> {
    until_listening(child).await?;
    let targets: Vec<(String, Option<String>)> =
        tokens.iter().map(|t| ("/api/events".to_owned(), Some(t.clone()))).collect();
    idle_growth(&[pid], addr, &targets, n).await
}

/// The summed VmRSS (KiB) of `pids`.
fn rss_kib(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter().map(|&pid| status_kib(pid, "VmRSS:").ok_or_else(|| anyhow::anyhow!("cannot read VmRSS of {pid}"))).sum()
}

/// Resident memory of the server processes `pids` before and after `n` idle streams to `addr`, the `i`-th
/// opening `targets[i % len]` (path, bearer token): (before KiB, after KiB, seconds to open, opened).
pub async fn idle_growth(
    pids: &[u32],
    addr: &str,
    targets: &[(String, Option<String>)],
    n: usize,
) -> anyhow::Result<(u64, u64, f64, usize)> {
    // Warm-up: the first streams allocate lazily initialised state.
    for i in 0..50 {
        let (path, token) = targets[i % targets.len()].clone();
        let s = open_idle(addr.to_owned(), path, token).await?;
        drop(s);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pids)?;

    let started = Instant::now();
    let opened: Vec<anyhow::Result<TcpStream>> = futures::stream::iter(0..n)
        .map(|i| {
            let (addr, (path, token)) = (addr.to_owned(), targets[i % targets.len()].clone());
            async move {
                tokio::time::timeout(Duration::from_secs(30), open_idle(addr, path, token))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
            }
        })
        .buffer_unordered(200)
        .collect()
        .await;
    let open_secs = started.elapsed().as_secs_f64();
    let mut streams = Vec::with_capacity(n);
    let mut first_error = None;
    for r in opened {
        match r {
            Ok(s) => streams.push(s),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        anyhow::bail!("{} of {n} connections failed; first: {e:#}", n - streams.len());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pids)?;
    let count = streams.len();
    drop(streams);
    Ok((before, after, open_secs, count))
}

/// Waits (at most 30 s) until a `serve` child prints that it listens, then keeps draining its stdout so
/// that it never blocks on a full pipe.
async fn until_listening(child: &mut tokio::process::Child) -> anyhow::Result<()> {
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("listening on") {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("the server exited before listening")
    })
    .await;
    ready.map_err(|_| anyhow::anyhow!("the server did not listen within 30 s"))??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(())
}

/// A `smartscheduler serve` child process on a free loopback port, listening; killed when dropped.
pub struct ServeChild {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub addr: String,
}

impl ServeChild {
    /// Starts the release binary next to this one on `db_url` with `extra` arguments after `serve`.
    pub async fn start(db_url: &str, extra: &[&str]) -> anyhow::Result<ServeChild> {
        let exe = std::env::current_exe()?.with_file_name("smartscheduler");
        anyhow::ensure!(exe.is_file(), "{} not found: build it with `cargo build --release`", exe.display());
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let mut child = serve_command(&exe, &addr, db_url)?
            .env("SMARTSCHEDULER_MAX_STREAMS_PER_DISPATCHER", "1000000") // thousands of streams, one token
            .args(extra)
            .stderr(Stdio::null())
            .spawn()?;
        let pid = child.id().unwrap_or(0);
        until_listening(&mut child).await?;
        Ok(ServeChild { child, pid, addr })
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

//! Section 10: what the `RecommendationReady` event costs the API. `POST /api/jobs/{id}/recommendations`
//! through the real HTTP server at 16 concurrent requests, against the same server whose generations skip
//! the outbox row (`ServerConfig::bench_only_event_write`, a switch that exists for this baseline only).

use crate::common::{Ctx, Report, fmt_int, histogram, ms, pass_word, sum_workers};
use crate::generation::{BENCH_CONTRACTORS, populate};
use crate::stream::SECRET;
use hdrhistogram::Histogram;
use smartscheduler::auth::{AuthSecret, add_dispatcher};
use smartscheduler::recommendations::EventWrite;
use smartscheduler::server::{Server, ServerConfig};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Concurrent requests (one keep-alive connection each).
const CONCURRENCY: usize = 16;
/// Jobs per server: requests on one job serialise on its row lock, so they are spread over many.
const JOBS: usize = 64;
const REGION: &str = "bench";
/// The target: throughput without the event over throughput with it.
const TARGET: f64 = 1.05;

/// One in-process server on a database of its own.
struct Api {
    addr: SocketAddr,
    jobs: Vec<Uuid>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    db: crate::common::BenchDb,
}

async fn start(ctx: &Ctx, event_write: EventWrite) -> anyhow::Result<(Api, String)> {
    // serve's own pool size.
    let db = ctx.fresh_db(32).await?;
    let jobs = populate(&db.pool, REGION, BENCH_CONTRACTORS, JOBS).await?;
    add_dispatcher(&db.pool, "bench-api", "Bench API", &[format!("region:{REGION}")]).await?;
    let secret = AuthSecret::new(SECRET)?;
    let generation = smartscheduler::auth::token_generation(&db.pool, "bench-api").await?.unwrap_or(0);
    let token = secret.issue("bench-api", generation, Duration::from_secs(4 * 3600))?;
    let mut config = ServerConfig::new("127.0.0.1:0".parse()?);
    config.streams_per_dispatcher = usize::MAX; // thousands of streams, one token
    config.bench_only_event_write = event_write;
    let shutdown = CancellationToken::new();
    let server = Server::start(db.pool.clone(), config, secret, shutdown.clone()).await?;
    let addr = server.local_addr()?;
    let server = tokio::spawn(server.run());
    Ok((Api { addr, jobs, shutdown, server, db }, token))
}

async fn stop(ctx: &Ctx, api: Api) {
    api.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), api.server).await;
    ctx.drop_db(api.db).await;
}

/// A keep-alive HTTP/1.1 connection that sends one POST at a time and reads the whole response.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self { stream, buf: Vec::with_capacity(16 * 1024) })
    }

    /// POSTs to `path`; returns the status once the whole body has arrived.
    async fn post(&mut self, addr: SocketAddr, path: &str, token: &str) -> anyhow::Result<u16> {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
        );
        self.stream.write_all(request.as_bytes()).await?;
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = response.parse(&self.buf)? {
                let status = response.code.unwrap_or(0);
                let length: usize = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("response without Content-Length"))?;
                while self.buf.len() < head + length {
                    let k = self.stream.read(&mut chunk).await?;
                    anyhow::ensure!(k > 0, "connection closed inside a response body");
                    self.buf.extend_from_slice(&chunk[..k]);
                }
                anyhow::ensure!(self.buf.len() == head + length, "unexpected bytes after the response");
                return Ok(status);
            }
            let k = self.stream.read(&mut chunk).await?;
            anyhow::ensure!(k > 0, "connection closed before the response head");
            self.buf.extend_from_slice(&chunk[..k]);
            anyhow::ensure!(self.buf.len() < 1 << 20, "response head over 1 MiB");
        }
    }
}

/// `CONCURRENCY` clients POST generations for `duration`; returns (responses, latency histogram, wall time).
async fn drive(api: &Api, token: &str, duration: Duration) -> anyhow::Result<(u64, Histogram<u64>, Duration)> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for c in 0..CONCURRENCY {
        let (addr, token, jobs) = (api.addr, token.to_owned(), api.jobs.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await?;
            let mut hist = histogram();
            let mut n = 0u64;
            // Bounded in time and in count.
            while Instant::now() < deadline && n < 1_000_000 {
                let job = jobs[(c + n as usize * CONCURRENCY) % jobs.len()];
                let t = Instant::now();
                let status = client.post(addr, &format!("/api/jobs/{job}/recommendations"), &token).await?;
                anyhow::ensure!(status == 201, "POST recommendations answered {status}");
                hist.saturating_record(t.elapsed().as_micros() as u64);
                n += 1;
            }
            anyhow::Ok((n, hist))
        }));
    }
    let (total, hist) = sum_workers(tasks).await?;
    Ok((total, hist, started.elapsed()))
}

pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let (with, token) = start(ctx, EventWrite::Write).await?;
    let without = match start(ctx, EventWrite::BenchOnlySkip).await {
        Ok((api, _)) => api,
        Err(e) => {
            stop(ctx, with).await;
            return Err(e);
        }
    };
    let result = measure(ctx, &with, &without, &token, report).await;
    stop(ctx, with).await;
    stop(ctx, without).await;
    result
}

async fn measure(ctx: &Ctx, with: &Api, without: &Api, token: &str, report: &mut Report) -> anyhow::Result<()> {
    // Alternating slices so that background load on the shared machine hits both alike.
    let (slice, rounds) = if ctx.quick { (Duration::from_millis(1000), 2) } else { (Duration::from_secs(2), 6) };
    // Warm-up: connections, prepared statements, caches.
    drive(with, token, Duration::from_millis(500)).await?;
    drive(without, token, Duration::from_millis(500)).await?;

    let mut agg = [(0u64, histogram(), Duration::ZERO), (0u64, histogram(), Duration::ZERO)];
    let mut round_ratios = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let mut rates = [0.0; 2];
        for (i, api) in [without, with].into_iter().enumerate() {
            let (n, h, took) = drive(api, token, slice).await?;
            rates[i] = n as f64 / took.as_secs_f64();
            agg[i].0 += n;
            agg[i].1.add(h)?;
            agg[i].2 += took;
        }
        round_ratios.push(rates[0] / rates[1]);
    }
    let rate = |i: usize| agg[i].0 as f64 / agg[i].2.as_secs_f64();
    let (rate_without, rate_with) = (rate(0), rate(1));
    let ratio = rate_without / rate_with;
    let pass = ratio <= TARGET;
    let per_round: Vec<String> = round_ratios.iter().map(|r| format!("{r:.3}")).collect();

    let mut body = format!(
        "`POST /api/jobs/{{id}}/recommendations` over HTTP/1.1 keep-alive connections (`Authorization: Bearer`, \
         hand-written client, one request in flight per connection), {CONCURRENCY} at a time, against an \
         in-process server (`Server::start`: HTTP, hub, relay; pool of 32 as in `serve`) on a database with \
         {} active contractors in the region and {JOBS} jobs, requests spread over the jobs round-robin. Each \
         request authenticates, reads the job, generates (lock the job, load candidates, score, one statement \
         for the set, its rows and its `RecommendationReady` outbox row, commit), rings the relay, and gets \
         the set as JSON; the relay publishes the events meanwhile on the same two cores. Baseline: an \
         identical server on its own database whose generations skip the outbox row \
         (`ServerConfig::bench_only_event_write`, a benchmark-only switch; `serve` never sets it). \
         {rounds} rounds of {:.0} s per server, alternating.\n\n",
        fmt_int(BENCH_CONTRACTORS as f64),
        slice.as_secs_f64()
    );
    body.push_str("| server | requests | requests/s | mean latency | p50 | p99 |\n|---|---|---|---|---|---|\n");
    for (i, name) in ["without the outbox row (baseline)", "with the outbox row (ours)"].iter().enumerate() {
        body.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} |\n",
            fmt_int(agg[i].0 as f64),
            fmt_int(rate(i)),
            ms(agg[i].1.mean() as u64),
            ms(agg[i].1.value_at_quantile(0.5)),
            ms(agg[i].1.value_at_quantile(0.99)),
        ));
    }
    body.push_str(&format!(
        "\nThroughput without / with the event: **{ratio:.3}×** (per round: {}). Target: ≤ {TARGET:.2}× → **{}**.\n",
        per_round.join(", "),
        pass_word(pass)
    ));
    report.section("10. API cost of the event (issue 14)", &body);
    report.summary_row(
        "10. POST recommendations at 16 concurrent: without / with the event",
        "≤ 1.05×",
        &format!("{ratio:.3}× ({} vs {} requests/s)", fmt_int(rate_without), fmt_int(rate_with)),
        Some(pass),
    );
    Ok(())
}

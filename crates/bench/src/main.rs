//! `smartscheduler-bench`: the performance suite behind `make bench` (figures go to docs/performance.md).
//!
//! Every section measures our design and a naive baseline in the same run, on fresh databases
//! (`ss_bench_<uuid>`) created on the admin server and dropped at the end. Every loop is bounded in count
//! and in time; everything talks to 127.0.0.1 only.

mod api_cost;
mod broker_fanout;
mod common;
mod generation;
mod lockout;
mod memory;
mod peer;
mod receipts;
mod relay_drain;
mod scale_out;
mod storm;
mod stream;
mod writer;

// The lean SSE client is shared with the fault suite (crates/sse-client).
use smartscheduler_sse_client as sse_client;

use anyhow::Context;
use clap::Parser;
use common::{Ctx, Report};
use std::path::PathBuf;
use std::time::Instant;

/// Benchmarks of the outbox writer, the relay, the SSE fan-out and recommendation generation.
#[derive(Debug, Parser)]
#[command(name = "smartscheduler-bench")]
struct Args {
    /// Write the markdown report to this file (overwritten).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A smaller, faster run (shorter phases, fewer rows and connections).
    #[arg(long)]
    quick: bool,
    /// Run only these sections (comma-separated numbers 1-16; 9 is the plain SQL writer and the nchan peer, 10
    /// the API cost of the event, 11 and 12 the reconnect storms, 14 the broker-fed nodes, 15 the lock-out
    /// floods, 16 what delivery receipts cost PostgreSQL).
    #[arg(long, value_delimiter = ',')]
    only: Vec<u8>,
    /// Server on which the benchmark creates (and drops) its databases.
    #[arg(long, env = "SMARTSCHEDULER_TEST_ADMIN_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    admin_url: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    common::now_ns(); // start the shared monotonic clock
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let ctx = Ctx::new(&args.admin_url, args.quick);
    let header = common::machine_header(&ctx).await.context("cannot reach the admin database")?;
    let mut report = Report::default();
    let wanted = |n: u8| args.only.is_empty() || args.only.contains(&n);

    macro_rules! section {
        ($n:expr, $title:expr, $body:expr) => {
            if wanted($n) {
                let t = Instant::now();
                eprintln!("[bench] section {}: {} ...", $n, $title);
                let result: anyhow::Result<()> = $body.await;
                if let Err(e) = result {
                    eprintln!("[bench] section {} failed: {e:#}", $n);
                    report.section(&format!("{}. {}", $n, $title), &format!("**ERROR**: {e:#}\n"));
                    report.summary_row(&format!("{}. {}", $n, $title), "-", "error", Some(false));
                }
                eprintln!("[bench] section {} done in {:.1} s", $n, t.elapsed().as_secs_f64());
            }
        };
    }

    section!(1, "Writer cost of the outbox", writer::run(&ctx, &mut report));
    section!(2, "Relay drain", relay_drain::run(&ctx, &mut report));
    section!(3, "Stream latency and 4. maximum deliveries/s", stream::latency_and_steps(&ctx, &mut report, wanted(4)));
    section!(5, "Memory per idle SSE connection", memory::run(&ctx, &mut report));
    section!(6, "Catch-up of one client 100,000 events behind", stream::catch_up(&ctx, &mut report));
    section!(7, "Naive fan-out (LISTEN + query per client)", stream::naive_comparison(&ctx, &mut report));
    section!(8, "Recommendation generation", generation(&ctx, &mut report));
    section!(9, "Writers that do not ring, and a peer: nchan", peer::run(&ctx, &mut report));
    section!(10, "API cost of the event", api_cost::run(&ctx, &mut report));
    section!(11, "Reconnect storm", storm::run(&ctx, &mut report, false));
    section!(12, "Deep reconnect storm", storm::run(&ctx, &mut report, true));
    section!(13, "Scale-out over 1, 2 and 4 instances", scale_out::run(&ctx, &mut report));
    section!(14, "SSE nodes fed by JetStream vs by PostgreSQL", broker_fanout::run(&ctx, &mut report));
    section!(15, "Lock-out: floods of streams and half-sent heads", lockout::run(&ctx, &mut report));
    section!(16, "Delivery receipts: what 1,000 consoles' reports cost PostgreSQL", receipts::run(&ctx, &mut report));

    ctx.drop_all().await;
    let text = report.render(&header, args.quick, started.elapsed());
    println!("{text}");
    if let Some(path) = &args.out {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("[bench] report written to {}", path.display());
    }
    Ok(())
}

/// Section 8: the generation benchmark (crates/bench/src/generation.rs) on a fresh database.
async fn generation(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let db = ctx.fresh_db(4).await?;
    let iterations = if ctx.quick { 30 } else { 200 };
    let result = generation::bench_generation(&db.pool, iterations).await;
    ctx.drop_db(db).await;
    let g = result?;
    let pass = g.total_median_ms < 20.0;
    let mut body = String::new();
    body.push_str(
        "`generation::bench_generation`: 1,000 active contractors in the job's region, one \
         generation = lock the job, load candidates, score, one statement for the set, its rows and its \
         `RecommendationReady` outbox row, commit. Baseline: the same generation without the outbox row \
         (the statement without its outbox part), run after each one in the same loop.\n\n",
    );
    body.push_str(&format!("```\n{g}\n```\n\n"));
    body.push_str(&format!(
        "Target: median < 20 ms → **{}** ({:.2} ms; without the outbox row {:.2} ms, so the event costs {:+.1}%)\n",
        common::pass_word(pass),
        g.total_median_ms,
        g.without_event_median_ms,
        g.outbox_share_pct
    ));
    report.section("8. Recommendation generation (issue 4)", &body);
    report.summary_row(
        "8. Generation median (1,000 contractors)",
        "< 20 ms",
        &format!("{:.2} ms (outbox row {:+.1}%)", g.total_median_ms, g.outbox_share_pct),
        Some(pass),
    );
    Ok(())
}

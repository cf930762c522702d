//! `smartscheduler-chaos`: the seeded, randomized fault-injection suite behind `make chaos` and
//! `make test-chaos` (docs/chaos.md).
//!
//! Each run creates a database of its own (`ss_chaos_<seed>_<id>`), starts several `smartscheduler serve`
//! processes on it, writes events with plain SQL while SSE clients follow them across reconnects, injects
//! faults at moments drawn from the seed, and then checks that every client received exactly the committed
//! events of its groups. One line per run; the process exits 1 if any run found a violation.

// The lean SSE client is shared with the benchmark (crates/sse-client).
use smartscheduler_sse_client as sse_client;

mod clients;
mod cluster;
mod faults;
mod nats;
mod run;
mod verify;
mod writers;

use clap::Parser;
use faults::Fault;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Fault-injection runs against real `serve` processes and a real PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "smartscheduler-chaos")]
struct Args {
    /// Seconds of writing and faults per run (the drain and the checks come on top).
    #[arg(long, default_value_t = 45)]
    seconds: u64,
    /// Number of runs; run k uses seed + k.
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// Seed of the first run (random if absent). Repeat a run with its printed seed and `--runs 1`.
    #[arg(long)]
    seed: Option<u64>,
    /// Faults to inject: `all` (PostgreSQL alone), `nats` (all, plus stall, nats-kill and nats-outage, on
    /// the broker topology), or a comma-separated list of kill, conn, membership, burst, poison, clock,
    /// stall, nats-kill, nats-outage. A list with a nats fault runs the broker topology: a 3-node JetStream
    /// cluster, 2 relay processes publishing to it and `--instances` edge nodes fed by it.
    #[arg(long, default_value = "all")]
    faults: String,
    /// `serve` processes on the run's database (edge nodes, on top of the 2 relays, in a broker run).
    #[arg(long, default_value_t = 2)]
    instances: usize,
    /// Long-lived SSE clients.
    #[arg(long, default_value_t = 12)]
    clients: usize,
    /// Writer tasks.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Events per second, all writers together.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Clients per reconnect burst.
    #[arg(long, default_value_t = 200)]
    burst: usize,
    /// The `smartscheduler` binary to run (default: next to this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Server on which each run creates (and drops) its database.
    #[arg(long, env = "SMARTSCHEDULER_TEST_ADMIN_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    admin_url: String,
    /// Where the instances' logs go (a directory per seed; removed when the run passes).
    #[arg(long, default_value = "target/chaos")]
    log_dir: PathBuf,
    /// Keep the database and the logs of every run.
    #[arg(long)]
    keep: bool,
    /// Print the phases of each run to stderr.
    #[arg(long, short)]
    verbose: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let faults = match Fault::parse_list(&args.faults) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: --faults: {e}");
            return ExitCode::from(2);
        }
    };
    if args.instances < 1 || args.writers < 1 || args.rate <= 0.0 {
        eprintln!("error: --instances, --writers and --rate must be positive");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_async(args, faults)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn main_async(args: Args, faults: Vec<Fault>) -> anyhow::Result<bool> {
    let bin = match args.bin.clone() {
        Some(bin) => bin,
        None => std::env::current_exe()?.with_file_name("smartscheduler"),
    };
    anyhow::ensure!(bin.is_file(), "{} not found (build it, or pass --bin)", bin.display());
    let base_seed = args.seed.unwrap_or_else(rand::random);
    let fault_names: Vec<&str> = faults.iter().map(|f| f.name()).collect();
    let fault_names = fault_names.join(",");
    let topology = if faults.iter().any(|f| f.needs_broker()) {
        format!("a 3-node NATS cluster, 2 relays and {} edge nodes", args.instances)
    } else {
        format!("{} instances", args.instances)
    };
    println!(
        "chaos: seed {base_seed}, {} run(s) of {} s, faults {fault_names}, {topology}, {} clients, {} writers at {} events/s, bursts of {}",
        args.runs, args.seconds, args.clients, args.writers, args.rate, args.burst
    );
    let config = run::RunConfig {
        admin_url: args.admin_url.clone(),
        bin,
        seconds: args.seconds,
        faults,
        instances: args.instances,
        clients: args.clients,
        writers: args.writers,
        rate: args.rate,
        burst: args.burst,
        log_dir: args.log_dir.clone(),
        keep: args.keep,
        verbose: args.verbose,
    };
    let started = Instant::now();
    let mut failed = Vec::new();
    for k in 0..args.runs {
        let seed = base_seed.wrapping_add(k);
        let outcome = tokio::select! {
            outcome = run::run(&config, seed) => outcome,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted during the run with seed {seed}"),
        };
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                // The harness could not do its part (set up, start an instance): the run proves nothing.
                println!("run {}/{} seed={seed} ERROR {error:#}", k + 1, args.runs);
                failed.push(seed);
                continue;
            }
        };
        let f = &outcome.findings;
        let faults: Vec<String> = outcome.faults.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let verdict = if outcome.passed() { "PASS" } else { "FAIL" };
        println!(
            "run {}/{} seed={} {:.1}s committed={} deliveries={} lost={} cross_group={} reordered={} dup_in_conn={} other={} unknown_commits={}({} committed) poison_refused={} faults[{}] {verdict}",
            k + 1,
            args.runs,
            outcome.seed,
            outcome.took.as_secs_f64(),
            outcome.committed,
            f.deliveries,
            f.lost,
            f.cross_group,
            f.reordered,
            f.dup_in_connection,
            f.other,
            outcome.unknown,
            outcome.unknown_committed,
            outcome.poison_refused,
            faults.join(" ")
        );
        if !outcome.passed() {
            let (lines, left_out) = f.summary(3);
            for line in lines {
                println!("    {line}");
            }
            let all = outcome.log_dir.join("findings.txt");
            let mut text: String = f.details.iter().map(|(kind, t)| format!("{kind}: {t}\n")).collect();
            text.push_str("\nfaults injected (seconds from the start of the run):\n");
            text.extend(outcome.journal.iter().map(|line| format!("{line}\n")));
            match std::fs::write(&all, text) {
                Ok(()) if left_out > 0 => println!("    ... {left_out} more in {}", all.display()),
                Ok(()) => {}
                Err(e) => println!("    (cannot write {}: {e})", all.display()),
            }
            println!(
                "    repeat: smartscheduler-chaos --seed {seed} --runs 1 --seconds {} --faults {fault_names}; instance logs in {}",
                args.seconds,
                outcome.log_dir.display()
            );
            failed.push(seed);
        }
    }
    println!(
        "chaos: {} of {} run(s) passed in {:.0} s{}",
        args.runs as usize - failed.len(),
        args.runs,
        started.elapsed().as_secs_f64(),
        if failed.is_empty() { String::new() } else { format!("; failed seeds: {failed:?}") }
    );
    Ok(failed.is_empty())
}

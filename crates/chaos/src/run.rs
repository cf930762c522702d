//! One run: a fresh database, the instances, clients, writers and faults for the run's duration, then the
//! drain and the verdict.

use crate::clients::{self, Client, ClientRecord, ClientSpec};
use crate::cluster::{Cluster, ClusterConfig};
use crate::faults::{self, CONTROL_APP, Fault, FaultCtx, Toggle};
use crate::nats::NatsCluster;
use crate::verify::{self, Findings, Logged};
use crate::writers::{self, LedgerEvent, Origin, REGIONS, SharedLedger};
use anyhow::Context;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, RngCore, SeedableRng};
use smartscheduler::auth::AuthSecret;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long the end of a run may take to settle (outbox drained, every client caught up) before that is a
/// failure in itself.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Relay processes of a `nats` run (two, so that one killed leaves another publishing).
const RELAYS: usize = 2;

pub struct RunConfig {
    pub admin_url: String,
    pub bin: PathBuf,
    pub seconds: u64,
    pub faults: Vec<Fault>,
    pub instances: usize,
    pub clients: usize,
    pub writers: usize,
    pub rate: f64,
    pub burst: usize,
    pub log_dir: PathBuf,
    pub keep: bool,
    /// Print the phases of each run to stderr.
    pub verbose: bool,
}

pub struct Outcome {
    pub seed: u64,
    pub took: Duration,
    pub committed: usize,
    pub unknown: usize,
    pub unknown_committed: usize,
    pub poison_refused: usize,
    pub faults: BTreeMap<&'static str, u32>,
    /// The faults as injected, one line each.
    pub journal: Vec<String>,
    pub findings: Findings,
    pub log_dir: PathBuf,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.findings.details.is_empty()
            && self.findings.lost == 0
            && self.findings.cross_group == 0
            && self.findings.reordered == 0
            && self.findings.dup_in_connection == 0
            && self.findings.other == 0
    }
}

/// Static dispatchers (id, groups): held for the whole run.
const DISPATCHERS: [(&str, &[&str]); 8] = [
    ("chaos-north", &["region:north"]),
    ("chaos-south", &["region:south"]),
    ("chaos-east", &["region:east"]),
    ("chaos-west", &["region:west"]),
    ("chaos-ns", &["region:north", "region:south"]),
    ("chaos-ew", &["region:east", "region:west"]),
    ("chaos-nse", &["region:north", "region:south", "region:east"]),
    ("chaos-all", &REGIONS),
];

/// Dispatchers whose membership changes: (id, base groups held throughout, toggled group, held at start).
const TOGGLED: [(&str, &str, &str, bool); 2] =
    [("chaos-m1", "region:north", "region:east", false), ("chaos-m2", "region:west", "region:south", true)];

/// A sub-seed per task, so that one task's draws do not depend on how the others interleave.
fn sub_seed(seed: u64, tag: u64) -> u64 {
    seed ^ tag.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

struct Db {
    name: String,
    url: String,
    server_url: String,
    admin_url: String,
}

impl Db {
    async fn create(admin_url: &str, seed: u64) -> anyhow::Result<Self> {
        let server_url = match admin_url.rsplit_once('/') {
            Some((server, _db)) if server.contains("://") && !server.ends_with('/') => server.to_owned(),
            _ => admin_url.to_owned(),
        };
        let name = format!("ss_chaos_{seed}_{}", &Uuid::new_v4().simple().to_string()[..8]);
        let mut admin = PgConnection::connect(admin_url).await.with_context(|| format!("connecting to {admin_url}"))?;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await?;
        let _ = admin.close().await;
        let url = format!("{server_url}/{name}");
        Ok(Self { name, url, server_url, admin_url: admin_url.to_owned() })
    }

    async fn drop_now(&self) {
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
                .execute(&mut admin)
                .await;
            let _ = admin.close().await;
        }
    }
}

/// Runs once with `seed`; an Err is a harness failure (could not set up), not a finding.
pub async fn run(config: &RunConfig, seed: u64) -> anyhow::Result<Outcome> {
    let db = Db::create(&config.admin_url, seed).await?;
    let log_dir = config.log_dir.join(format!("seed-{seed}"));
    let _ = std::fs::remove_dir_all(&log_dir);
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let result = run_on(config, seed, &db, log_dir.clone()).await;
    let passed = result.as_ref().is_ok_and(Outcome::passed);
    if passed && !config.keep {
        db.drop_now().await;
        let _ = std::fs::remove_dir_all(&log_dir);
    } else if !config.keep {
        // The logs stay for a failed run; the database goes (its counts are in the report).
        db.drop_now().await;
    } else {
        eprintln!("kept database {}/{}", db.server_url, db.name);
    }
    result
}

async fn run_on(config: &RunConfig, seed: u64, db: &Db, log_dir: PathBuf) -> anyhow::Result<Outcome> {
    let mut rng = StdRng::seed_from_u64(seed);
    let options = smartscheduler::db::connect_options(&db.url)?.application_name(CONTROL_APP);
    let control = PgPoolOptions::new()
        .max_connections(6)
        .acquire_timeout(Duration::from_secs(20))
        .connect_with(options)
        .await
        .context("connecting to the run's database")?;
    smartscheduler::db::migrate(&control).await?;
    setup_dispatchers(&control).await?;
    let epoch: String = sqlx::query_scalar("SELECT epoch FROM stream_meta").fetch_one(&control).await?;

    // The secret of this run, for the instances and for the clients' tokens.
    let mut secret_bytes = [0u8; 32];
    rng.fill_bytes(&mut secret_bytes);
    let secret: String = secret_bytes.iter().map(|b| format!("{b:02x}")).collect();
    let signer = AuthSecret::new(secret.as_bytes())?;
    // Tokens are bound to their dispatcher's generation (migration 0011).
    let generations: std::collections::HashMap<String, i64> =
        sqlx::query_as("SELECT id, token_generation FROM dispatchers").fetch_all(&control).await?.into_iter().collect();
    let token = |dispatcher: &str| {
        signer.issue(dispatcher, generations.get(dispatcher).copied().unwrap_or(0), Duration::from_secs(24 * 3600))
    };

    // A `nats` run: a NATS cluster, RELAYS relay processes publishing to it, `instances` edge nodes on top.
    let nats = if config.faults.iter().any(|f| f.needs_broker()) {
        Some(Arc::new(NatsCluster::start(&log_dir).await?))
    } else {
        None
    };
    let (relays, instances) = match nats {
        Some(_) => (RELAYS, RELAYS + config.instances),
        None => (config.instances, config.instances),
    };
    let cluster = Cluster::new(
        ClusterConfig {
            bin: config.bin.clone(),
            database_url: db.url.clone(),
            auth_secret: secret.clone(),
            log_dir: log_dir.clone(),
            broker: nats.as_ref().map(|n| n.urls()),
            relays,
        },
        instances,
    );
    let t0 = Instant::now();
    let phase = |what: &str| {
        if config.verbose {
            eprintln!("[seed {seed} {:6.1}s] {what}", t0.elapsed().as_secs_f64());
        }
    };
    let outcome = async {
        phase("starting instances");
        for i in 0..instances {
            cluster.start(i).await?;
        }
        let started = Instant::now();

        // Clients: two whose membership changes, the others on fixed dispatchers, some narrowed.
        let mut specs = Vec::new();
        for (k, (dispatcher, base, toggled, _)) in TOGGLED.iter().enumerate().take(config.clients) {
            specs.push(ClientSpec {
                name: format!("c{k}"),
                dispatcher: (*dispatcher).to_owned(),
                token: token(dispatcher)?,
                narrowed: None,
                required: vec![(*base).to_owned()],
                toggled: Some((*toggled).to_owned()),
                resume_from: None,
                until: None,
                voluntary_reconnects: true,
            });
        }
        let mut templates = Vec::new();
        for (dispatcher, groups) in DISPATCHERS {
            templates.push(fixed_spec(dispatcher, groups, None, token(dispatcher)?));
            if groups.len() > 1 {
                let narrowed: Vec<&str> = groups.iter().copied().filter(|_| rng.random_bool(0.5)).collect();
                let narrowed = if narrowed.is_empty() { vec![groups[0]] } else { narrowed };
                templates.push(fixed_spec(dispatcher, groups, Some(&narrowed), token(dispatcher)?));
            }
        }
        while specs.len() < config.clients {
            let template = templates.choose(&mut rng).context("no client templates")?;
            specs.push(ClientSpec { name: format!("c{}", specs.len()), ..template.clone() });
        }
        let client_stop = CancellationToken::new();
        let clients: Vec<Arc<Client>> =
            specs.into_iter().map(|spec| Arc::new(Client { spec, record: Mutex::new(ClientRecord::default()) })).collect();
        let mut client_tasks = Vec::new();
        for (k, client) in clients.iter().enumerate() {
            client_tasks.push(tokio::spawn(clients::run(
                client.clone(),
                cluster.clone(),
                sub_seed(seed, 100 + k as u64),
                started,
                client_stop.clone(),
                None,
                epoch.clone(),
            )));
        }
        // Every client has its starting position before the first event is written, so that it must receive
        // every committed event of its groups.
        phase("clients started");
        let opened = wait_until(Duration::from_secs(30), || clients.iter().all(|c| c.record.lock().unwrap().first.is_some())).await;
        if !opened {
            let stuck: Vec<String> = clients
                .iter()
                .filter_map(|c| {
                    let record = c.record.lock().unwrap();
                    record.first.is_none().then(|| format!("{}: {:?}", c.spec.name, record.last_connect_error))
                })
                .collect();
            anyhow::bail!("not every client could open a stream within 30 s: {}", stuck.join("; "));
        }

        let ledger: SharedLedger = Default::default();
        let stop_writers = CancellationToken::new();
        let tx_per_sec = config.rate / 1.4 / config.writers as f64; // 1.4 events per transaction on average
        let writer_tasks: Vec<_> = (0..config.writers)
            .map(|n| {
                tokio::spawn(writers::writer(
                    n,
                    db.url.clone(),
                    sub_seed(seed, 10 + n as u64),
                    tx_per_sec,
                    ledger.clone(),
                    stop_writers.clone(),
                ))
            })
            .collect();
        let fault_ctx = Arc::new(FaultCtx {
            cluster: cluster.clone(),
            control: control.clone(),
            ledger: ledger.clone(),
            started,
            toggles: TOGGLED
                .iter()
                .map(|(d, _, g, held)| Toggle { dispatcher: (*d).to_owned(), group: (*g).to_owned(), initially_held: *held })
                .collect(),
            timeline: Default::default(),
            burst_templates: templates.clone(),
            burst_size: config.burst,
            bursts: Default::default(),
            client_stop: client_stop.clone(),
            epoch: epoch.clone(),
            errors: Default::default(),
            journal: Default::default(),
            nats: nats.clone(),
        });
        let stop_faults = CancellationToken::new();
        let fault_task = tokio::spawn(faults::run(fault_ctx.clone(), config.faults.clone(), sub_seed(seed, 1), stop_faults.clone()));

        phase("writers and faults started");
        tokio::time::sleep(Duration::from_secs(config.seconds)).await;
        phase("stopping writers and faults");
        stop_faults.cancel();
        stop_writers.cancel();
        let fault_counts = fault_task.await.context("fault task")?;
        for task in writer_tasks {
            task.await.context("writer task")??;
        }

        let mut findings = Findings::default();
        for (i, status) in cluster.exited_by_themselves() {
            findings.other += 1;
            findings.fail("instance", format!("instance {i} exited by itself ({status}); see {}", log_dir.display()));
            cluster.kill(i).await?;
        }
        for i in 0..cluster.len() {
            if !cluster.is_up(i) {
                cluster.kill(i).await?;
                cluster.start(i).await?;
            }
        }
        findings.details.extend(fault_ctx.errors.lock().unwrap().iter().map(|e| ("harness", e.clone())));

        // The fence: one event in every group, after every writer's last commit.
        let fence = LedgerEvent { id: Uuid::new_v4(), groups: REGIONS.iter().map(|g| (*g).to_owned()).collect(), origin: Origin::Fence };
        let mut conn = control.acquire().await?;
        writers::insert(&mut conn, &fence, serde_json::json!({ "fence": true })).await?;
        drop(conn);
        ledger.lock().unwrap().committed.push(fence);

        // Drain: the outbox empties, then every client reaches the log's last position.
        phase("fence committed; draining the outbox");
        let drained = wait_until_async(SETTLE_TIMEOUT, || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox").fetch_one(&control).await.is_ok_and(|n| n == 0)
        })
        .await;
        if !drained {
            let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&control).await?;
            findings.other += 1;
            findings.fail("outbox", format!("outbox not drained: {pending} row(s) still pending {SETTLE_TIMEOUT:?} after the writers stopped"));
        }
        phase("waiting for clients to catch up");
        let mut target: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM event_log").fetch_one(&control).await?;
        let settle_deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            let reached = wait_until(settle_deadline.saturating_duration_since(tokio::time::Instant::now()), || {
                clients.iter().all(|c| c.record.lock().unwrap().position.is_some_and(|p| p >= target))
            })
            .await;
            let now: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM event_log").fetch_one(&control).await?;
            if reached && now == target {
                break;
            }
            if !reached {
                for c in &clients {
                    let record = c.record.lock().unwrap();
                    if record.position.is_none_or(|p| p < target) {
                        findings.other += 1;
                        findings.fail("catch-up", format!(
                            "{} (dispatcher {}) did not reach the log's last seq {target} within {SETTLE_TIMEOUT:?}: at {:?}, {} connection(s), last connect error {:?}",
                            c.spec.name, c.spec.dispatcher, record.position, record.connections.len(), record.last_connect_error
                        ));
                    }
                }
                break;
            }
            target = now; // something committed late (an unknown outcome that did commit): wait for it too
        }
        // Burst clients end on their own (target reached, or their deadline).
        phase("waiting for burst clients");
        let mut bursts: Vec<faults::BurstClient> = std::mem::take(&mut *fault_ctx.bursts.lock().unwrap());
        let burst_deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        for burst in &mut bursts {
            let _ = tokio::time::timeout_at(burst_deadline, &mut burst.task).await;
        }
        client_stop.cancel();
        for task in client_tasks {
            task.await.context("client task")?;
        }
        for burst in &mut bursts {
            if !burst.task.is_finished() {
                let _ = (&mut burst.task).await;
            }
        }

        phase("verifying");
        // Resolve the unknown commits, then verify.
        let mut ledger = std::mem::take(&mut *ledger.lock().unwrap());
        let unknown_ids: Vec<Uuid> = ledger.unknown.iter().map(|e| e.id).collect();
        let found: Vec<Uuid> = sqlx::query_scalar(
            "SELECT event_id FROM event_log WHERE event_id = ANY($1) UNION SELECT event_id FROM outbox WHERE event_id = ANY($1)",
        )
        .bind(&unknown_ids)
        .fetch_all(&control)
        .await?;
        for event in std::mem::take(&mut ledger.unknown) {
            if found.contains(&event.id) {
                ledger.unknown_committed += 1;
                ledger.committed.push(event);
            } else {
                ledger.unknown_aborted += 1;
            }
        }
        let rows: Vec<(Uuid, i64, Vec<String>)> =
            sqlx::query_as("SELECT event_id, seq, groups FROM event_log").fetch_all(&control).await?;
        let mut log: HashMap<Uuid, Logged> = HashMap::new();
        for (id, seq, groups) in rows {
            if log.insert(id, Logged { seq, groups }).is_some() {
                findings.other += 1;
                findings.fail("log", format!("event_log holds event {id} twice"));
            }
        }
        check_log(&control, &mut findings).await?;
        for event in &ledger.committed {
            if !log.contains_key(&event.id) {
                if event.origin == Origin::Poison {
                    continue; // refused at publish and parked: not an event anyone receives
                }
                findings.other += 1;
                findings.fail("unpublished", format!("committed {} event {} never reached event_log", event.origin.name(), event.id));
            }
        }
        let committed_ids: std::collections::HashSet<Uuid> = ledger.committed.iter().map(|e| e.id).collect();
        let strays = log.keys().filter(|id| !committed_ids.contains(id)).count();
        if strays > 0 {
            findings.other += 1;
            findings.fail("log", format!("event_log holds {strays} event(s) the ledger does not know"));
        }
        if verify::ledger_duplicates(&ledger) > 0 {
            findings.fail("harness", "the ledger holds an event id twice (harness bug)".to_owned());
        }
        let timeline = fault_ctx.timeline.lock().unwrap().clone();
        let mut all: Vec<&Client> = clients.iter().map(|c| c.as_ref()).collect();
        all.extend(bursts.iter().map(|b| b.client.as_ref()));
        verify::clients(&mut findings, &ledger, &log, &all, &fault_ctx.toggles, &timeline);

        Ok(Outcome {
            seed,
            took: started.elapsed(),
            committed: ledger.committed.len(),
            unknown: ledger.unknown_committed + ledger.unknown_aborted,
            unknown_committed: ledger.unknown_committed,
            poison_refused: ledger.poison_refused,
            faults: fault_counts,
            journal: fault_ctx.journal.lock().unwrap().clone(),
            findings,
            log_dir: log_dir.clone(),
        })
    }
    .await;
    cluster.stop_all().await;
    if let Some(nats) = &nats {
        nats.stop_all().await;
    }
    control.close().await;
    outcome
}

fn fixed_spec(dispatcher: &str, groups: &[&str], narrowed: Option<&[&str]>, token: String) -> ClientSpec {
    let to_vec = |g: &[&str]| g.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    ClientSpec {
        name: String::new(),
        dispatcher: dispatcher.to_owned(),
        token,
        narrowed: narrowed.map(to_vec),
        required: to_vec(narrowed.unwrap_or(groups)),
        toggled: None,
        resume_from: None,
        until: None,
        voluntary_reconnects: true,
    }
}

async fn setup_dispatchers(pool: &PgPool) -> anyhow::Result<()> {
    let mut all: Vec<(&str, Vec<&str>)> = DISPATCHERS.iter().map(|(d, g)| (*d, g.to_vec())).collect();
    for (d, base, toggled, held) in TOGGLED {
        all.push((d, if held { vec![base, toggled] } else { vec![base] }));
    }
    for (dispatcher, groups) in all {
        sqlx::query("INSERT INTO dispatchers (id, name) VALUES ($1, $1)").bind(dispatcher).execute(pool).await?;
        for group in groups {
            sqlx::query("INSERT INTO dispatcher_groups (dispatcher_id, group_key) VALUES ($1, $2)")
                .bind(dispatcher)
                .bind(group)
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

/// event_log dense and consistent with stream_meta.
async fn check_log(pool: &PgPool, findings: &mut Findings) -> anyhow::Result<()> {
    let (count, min, max, distinct): (i64, Option<i64>, Option<i64>, i64) =
        sqlx::query_as("SELECT count(*), min(seq), max(seq), count(DISTINCT seq) FROM event_log")
            .fetch_one(pool)
            .await?;
    let last_seq: i64 = sqlx::query_scalar("SELECT last_seq FROM stream_meta").fetch_one(pool).await?;
    if let (Some(min), Some(max)) = (min, max) {
        if count != max - min + 1 || distinct != count {
            findings.other += 1;
            findings.fail("log", format!(
                "event_log not dense: count {count}, distinct seqs {distinct}, min {min}, max {max} (expected count {})",
                max - min + 1
            ));
        }
        if max != last_seq {
            findings.other += 1;
            findings.fail("log", format!("stream_meta.last_seq {last_seq} differs from max(seq) {max}"));
        }
    }
    Ok(())
}

/// Polls `done` every 20 ms until it holds or `timeout` passes; returns whether it held.
async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until_async<F: std::future::Future<Output = bool>>(
    timeout: Duration,
    mut done: impl FnMut() -> F,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if done().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

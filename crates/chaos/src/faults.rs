//! The faults, injected one at a time at random moments drawn from the run's seed.

use crate::clients::{self, Client, ClientRecord, ClientSpec};
use crate::cluster::Cluster;
use crate::nats::NatsCluster;
use crate::writers::{self, LedgerEvent, Origin, SharedLedger};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlx::{Acquire, PgPool};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The application name of the harness's own connections: the only ones the connection fault spares.
pub const CONTROL_APP: &str = "smartscheduler-chaos-control";

/// What a fault that was not injected says it did.
const SKIPPED: &str = "skipped: ";

/// How far back a burst client resumes from (at most).
const BURST_SPAN: i64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL one instance, start it again.
    Kill,
    /// pg_terminate_backend of every application connection (instances and writers).
    Conn,
    /// Add or remove a group of a dispatcher whose clients are connected.
    Membership,
    /// Many short-lived clients at once, each resuming from a random recent position.
    Burst,
    /// An outbox row with `created_at = 'infinity'`.
    Poison,
    /// A batch published by hand with `published_at` 10 s in the past.
    ClockStep,
    /// SIGSTOP of one instance for 1-4 s, then SIGCONT: its consumer (or relay) falls behind.
    Stall,
    /// SIGKILL of one nats-server of the three, started again 0-3 s later (a `nats` run).
    NatsKill,
    /// Every nats-server killed, all started again 1-4 s later: a whole-NATS outage (a `nats` run).
    NatsOutage,
}

/// `all`: the faults of a run on PostgreSQL alone.
pub const ALL: [Fault; 6] =
    [Fault::Kill, Fault::Conn, Fault::Membership, Fault::Burst, Fault::Poison, Fault::ClockStep];

/// `nats`: every fault, on the broker topology (a NATS cluster, relays publishing to it, edge nodes fed by it).
pub const NATS: [Fault; 9] = [
    Fault::Kill,
    Fault::Conn,
    Fault::Membership,
    Fault::Burst,
    Fault::Poison,
    Fault::ClockStep,
    Fault::Stall,
    Fault::NatsKill,
    Fault::NatsOutage,
];

/// Every fault by name, for parsing.
const NAMED: [Fault; 9] = NATS;

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Conn => "conn",
            Fault::Membership => "membership",
            Fault::Burst => "burst",
            Fault::Poison => "poison",
            Fault::ClockStep => "clock",
            Fault::Stall => "stall",
            Fault::NatsKill => "nats-kill",
            Fault::NatsOutage => "nats-outage",
        }
    }

    /// Whether the fault acts on the broker: a run with one of these runs the broker topology.
    pub fn needs_broker(self) -> bool {
        matches!(self, Fault::NatsKill | Fault::NatsOutage)
    }

    /// `all`, or a comma-separated list of fault names.
    pub fn parse_list(text: &str) -> Result<Vec<Fault>, String> {
        let mut faults = Vec::new();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            if word == "all" {
                faults.extend(ALL);
                continue;
            }
            if word == "nats" {
                faults.extend(NATS);
                continue;
            }
            let names: Vec<&str> = NAMED.iter().map(|f| f.name()).collect();
            let fault = NAMED
                .into_iter()
                .find(|f| f.name() == word)
                .ok_or_else(|| format!("unknown fault {word:?} (all, nats, {})", names.join(", ")))?;
            faults.push(fault);
        }
        faults.sort();
        faults.dedup();
        if faults.is_empty() {
            return Err("no fault named".to_owned());
        }
        Ok(faults)
    }
}

/// One membership change, with the instants around its commit.
#[derive(Debug, Clone)]
pub struct MembershipChange {
    pub dispatcher: String,
    pub group: String,
    pub held_after: bool,
    /// Just before the statement was sent / just after it committed (from the run's start).
    pub before: Duration,
    pub after: Duration,
}

/// A dispatcher whose membership the fault changes: it always holds its base groups, `toggled` comes and goes.
#[derive(Debug, Clone)]
pub struct Toggle {
    pub dispatcher: String,
    pub group: String,
    pub initially_held: bool,
}

/// A burst client and its task.
pub struct BurstClient {
    pub client: Arc<Client>,
    pub task: JoinHandle<()>,
}

/// Everything the faults act on.
pub struct FaultCtx {
    pub cluster: Arc<Cluster>,
    pub control: PgPool,
    pub ledger: SharedLedger,
    pub started: Instant,
    pub toggles: Vec<Toggle>,
    pub timeline: Arc<Mutex<Vec<MembershipChange>>>,
    /// Specs the burst clients are drawn from (dispatcher, token, groups).
    pub burst_templates: Vec<ClientSpec>,
    pub burst_size: usize,
    pub bursts: Arc<Mutex<Vec<BurstClient>>>,
    pub client_stop: CancellationToken,
    pub epoch: String,
    /// Harness-side problems (a fault that could not be applied, an instance that would not start again).
    pub errors: Arc<Mutex<Vec<String>>>,
    /// What was injected when (seconds from the run's start), for the findings file.
    pub journal: Arc<Mutex<Vec<String>>>,
    /// The broker of a `nats` run.
    pub nats: Option<Arc<NatsCluster>>,
}

impl FaultCtx {
    fn log(&self, at: Duration, text: String) {
        self.journal.lock().unwrap().push(format!("{:7.2}s {text}", at.as_secs_f64()));
    }
}

/// Injects faults from `kinds` until `stop`, one at a time, with random gaps; returns the count per kind.
/// A fault in progress is finished (a killed instance is started again) before it returns.
pub async fn run(
    ctx: Arc<FaultCtx>,
    kinds: Vec<Fault>,
    seed: u64,
    stop: CancellationToken,
) -> BTreeMap<&'static str, u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut counts: BTreeMap<&'static str, u32> = kinds.iter().map(|k| (k.name(), 0)).collect();
    loop {
        let gap = Duration::from_millis(rng.random_range(1_000..3_500));
        tokio::select! {
            _ = stop.cancelled() => return counts,
            _ = tokio::time::sleep(gap) => {}
        }
        let Some(&fault) = kinds.choose(&mut rng) else { return counts };
        let at = ctx.started.elapsed();
        match apply(&ctx, fault, &mut rng).await {
            Ok(what) => {
                ctx.log(at, format!("{}: {what}", fault.name()));
                if what.starts_with(SKIPPED) {
                    continue; // not injected, not counted
                }
            }
            Err(error) => {
                ctx.log(at, format!("{}: failed: {error:#}", fault.name()));
                ctx.errors.lock().unwrap().push(format!(
                    "fault {} at {:.1}s: {error:#}",
                    fault.name(),
                    at.as_secs_f64()
                ));
            }
        }
        *counts.entry(fault.name()).or_default() += 1;
    }
}

/// Injects one fault; returns what it did, for the journal.
async fn apply(ctx: &FaultCtx, fault: Fault, rng: &mut StdRng) -> anyhow::Result<String> {
    match fault {
        Fault::Kill => {
            let up = ctx.cluster.up();
            let Some(&(i, _)) = up.choose(rng) else { return Ok("no instance up".to_owned()) };
            ctx.cluster.kill(i).await?;
            let down = Duration::from_millis(rng.random_range(0..1_500));
            tokio::time::sleep(down).await;
            ctx.cluster.start(i).await?;
            Ok(format!("instance {i} killed; started again after {down:?} (plus its start-up)"))
        }
        Fault::Conn => {
            let n = sqlx::query_scalar::<_, i64>(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = current_database() AND backend_type = 'client backend'
                   AND pid <> pg_backend_pid() AND application_name <> $1",
            )
            .bind(CONTROL_APP)
            .fetch_one(&ctx.control)
            .await?;
            Ok(format!("{n} backend(s) terminated"))
        }
        Fault::Membership => {
            let Some(toggle) = ctx.toggles.choose(rng) else { return Ok("no dispatcher to change".to_owned()) };
            let held: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM dispatcher_groups WHERE dispatcher_id = $1 AND group_key = $2)",
            )
            .bind(&toggle.dispatcher)
            .bind(&toggle.group)
            .fetch_one(&ctx.control)
            .await?;
            let before = ctx.started.elapsed();
            let sql = if held {
                "DELETE FROM dispatcher_groups WHERE dispatcher_id = $1 AND group_key = $2"
            } else {
                "INSERT INTO dispatcher_groups (dispatcher_id, group_key) VALUES ($1, $2)"
            };
            sqlx::query(sql).bind(&toggle.dispatcher).bind(&toggle.group).execute(&ctx.control).await?;
            let after = ctx.started.elapsed();
            ctx.timeline.lock().unwrap().push(MembershipChange {
                dispatcher: toggle.dispatcher.clone(),
                group: toggle.group.clone(),
                held_after: !held,
                before,
                after,
            });
            let verb = if held { "removed from" } else { "added to" };
            Ok(format!("{} {verb} {}", toggle.group, toggle.dispatcher))
        }
        Fault::Burst => {
            let head: i64 = sqlx::query_scalar("SELECT last_seq FROM stream_meta WHERE stream = 'main'")
                .fetch_one(&ctx.control)
                .await?;
            let mut bursts = ctx.bursts.lock().unwrap();
            // One burst at a time: on two shared cores, overlapping bursts starve the writers and relays and
            // test the machine rather than the product.
            if bursts.iter().any(|b| !b.task.is_finished()) {
                return Ok(format!("{SKIPPED}the previous burst is still reading"));
            }
            let n = bursts.len();
            for k in 0..ctx.burst_size {
                let Some(template) = ctx.burst_templates.choose(rng) else { break };
                let from = rng.random_range((head - BURST_SPAN).max(0)..=head);
                let spec = ClientSpec {
                    name: format!("burst{}-{}", n / ctx.burst_size.max(1), k),
                    resume_from: Some(from),
                    until: Some(head),
                    voluntary_reconnects: false,
                    ..template.clone()
                };
                let client = Arc::new(Client { spec, record: Mutex::new(ClientRecord::default()) });
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                let task = tokio::spawn(clients::run(
                    client.clone(),
                    ctx.cluster.clone(),
                    rng.random(),
                    ctx.started,
                    ctx.client_stop.clone(),
                    Some(deadline),
                    ctx.epoch.clone(),
                ));
                bursts.push(BurstClient { client, task });
            }
            Ok(format!("{} clients resuming from the last {BURST_SPAN} positions up to {head}", ctx.burst_size))
        }
        Fault::Poison => {
            let event = LedgerEvent { origin: Origin::Poison, ..writers::new_event(rng, Origin::Poison) };
            let inserted = sqlx::query(
                "INSERT INTO outbox (event_id, event_type, aggregate_id, groups, payload, created_at)
                 VALUES ($1, 'ChaosPoison', gen_random_uuid(), $2, '{\"poison\": true}', 'infinity')",
            )
            .bind(event.id)
            .bind(&event.groups)
            .execute(&ctx.control)
            .await;
            let id = event.id;
            let mut ledger = ctx.ledger.lock().unwrap();
            Ok(match inserted {
                Ok(_) => {
                    ledger.committed.push(event);
                    format!("committed (event {id})")
                }
                // Refused by a constraint: nothing committed, and nothing to expect.
                Err(sqlx::Error::Database(e))
                    if e.code().is_some_and(|c| c.starts_with("23") || c.starts_with("22")) =>
                {
                    ledger.poison_refused += 1;
                    format!("refused: {}", e.message())
                }
                Err(e) => {
                    ledger.unknown.push(event);
                    format!("outcome unknown: {e}")
                }
            })
        }
        Fault::ClockStep => clock_step(ctx, rng).await,
        Fault::Stall => {
            let up = ctx.cluster.up();
            let Some(&(i, _)) = up.choose(rng) else { return Ok("no instance up".to_owned()) };
            let pause = Duration::from_millis(rng.random_range(1_000..4_000));
            ctx.cluster.stall(i, pause).await?;
            Ok(format!("instance {i} stopped (SIGSTOP) for {pause:?}, then continued"))
        }
        Fault::NatsKill => {
            let Some(nats) = &ctx.nats else { return Ok(format!("{SKIPPED}no broker in this run")) };
            let Some(&i) = nats.up().choose(rng) else { return Ok("no nats-server up".to_owned()) };
            nats.kill(i).await?;
            let down = Duration::from_millis(rng.random_range(0..3_000));
            tokio::time::sleep(down).await;
            nats.restart(i).await?;
            Ok(format!("nats-server n{i} killed; started again after {down:?}"))
        }
        Fault::NatsOutage => {
            let Some(nats) = &ctx.nats else { return Ok(format!("{SKIPPED}no broker in this run")) };
            for i in 0..crate::nats::MEMBERS {
                nats.kill(i).await?;
            }
            let down = Duration::from_millis(rng.random_range(1_000..4_000));
            tokio::time::sleep(down).await;
            for i in 0..crate::nats::MEMBERS {
                nats.restart(i).await?;
            }
            Ok(format!("every nats-server killed; all started again after {down:?}"))
        }
    }
}

/// Publishes a batch exactly as `ss_publish_batch` (migrations/0006) does, in a transaction of its own that
/// holds the `stream_meta` row lock, but with `published_at` 10 s in the past: a database clock stepped back.
/// The batch is whatever is in the outbox (writers' committed rows) plus 1 to 3 events of its own.
async fn clock_step(ctx: &FaultCtx, rng: &mut StdRng) -> anyhow::Result<String> {
    let own: Vec<LedgerEvent> =
        (0..rng.random_range(1..=3)).map(|_| writers::new_event(rng, Origin::ClockStep)).collect();
    match publish_backdated(ctx, own).await {
        // A database that refuses a batch published back in time defends itself: nothing committed.
        Err(sqlx::Error::Database(e)) => Ok(format!("refused by the database: {}", e.message())),
        other => Ok(other?),
    }
}

async fn publish_backdated(ctx: &FaultCtx, own: Vec<LedgerEvent>) -> sqlx::Result<String> {
    let mut conn = ctx.control.acquire().await?;
    let mut tx = conn.begin().await?;
    let (epoch, last_seq): (String, i64) =
        sqlx::query_as("SELECT epoch, last_seq FROM stream_meta WHERE stream = 'main' FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
    for (k, event) in own.iter().enumerate() {
        writers::insert(&mut tx, event, json!({ "clockStep": k })).await?;
    }
    let published_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT clock_timestamp() - interval '10 seconds'").fetch_one(&mut *tx).await?;
    let count: i64 = sqlx::query_scalar(
        "WITH moved AS (
             DELETE FROM outbox
             WHERE outbox.id = ANY (ARRAY(SELECT o.id FROM outbox o ORDER BY o.id LIMIT 1000))
             RETURNING outbox.id, outbox.event_id, outbox.event_type, outbox.aggregate_id, outbox.groups,
                       outbox.payload, outbox.replay_of, outbox.created_at
         ), numbered AS (
             SELECT moved.*, $1::bigint + row_number() OVER (ORDER BY moved.id) AS seq FROM moved
         ), logged AS (
             INSERT INTO event_log
                 (seq, event_id, event_type, aggregate_id, groups, payload, replay_of, occurred_at, published_at)
             SELECT n.seq, n.event_id, n.event_type, n.aggregate_id, n.groups, n.payload, n.replay_of, n.created_at, $2
             FROM numbered n
             RETURNING event_log.seq, event_log.groups, event_log.published_at
         ), indexed AS (
             INSERT INTO event_log_groups (group_key, seq, published_at)
             SELECT g, l.seq, l.published_at FROM logged l, unnest(l.groups) AS g
         )
         SELECT count(*) FROM logged",
    )
    .bind(last_seq)
    .bind(published_at)
    .fetch_one(&mut *tx)
    .await?;
    let new_last = last_seq + count;
    sqlx::query("UPDATE stream_meta SET last_seq = $1, last_published_at = $2 WHERE stream = 'main'")
        .bind(new_last)
        .bind(published_at)
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(smartscheduler::event_log::EVENTS_CHANNEL)
        .bind(format!("{epoch}-{new_last}"))
        .execute(&mut *tx)
        .await?;
    let committed = tx.commit().await;
    let mut ledger = ctx.ledger.lock().unwrap();
    let n = own.len();
    match committed {
        Ok(()) => ledger.committed.extend(own),
        Err(_) => ledger.unknown.extend(own),
    }
    let range = if count > 0 { format!("seq {}..={new_last}", last_seq + 1) } else { "nothing".to_owned() };
    Ok(format!("published {range} ({n} own event(s)) with published_at {published_at}"))
}

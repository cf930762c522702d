//! Operations: `outbox status`, `replay`, the `sql/` runbook files and retention, against real databases.

use crate::helpers::*;
use serde_json::json;
use smartscheduler::cli::ReplayArgs;
use smartscheduler::commands;
use smartscheduler::ops::replay::{self, ReplayError, ReplayOptions, ReplayRange, ReplayRequest};
use smartscheduler::ops::{retention, status};
use smartscheduler::outbox::{self, NewEvent};
use smartscheduler::relay::publish_all_pending;
use sqlx::PgPool;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use uuid::Uuid;

async fn epoch(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT epoch FROM stream_meta").fetch_one(pool).await.unwrap()
}

/// Writes and publishes `n` events for `groups`; returns the last seq.
async fn publish(pool: &PgPool, n: usize, groups: &[&str]) -> i64 {
    write_events(pool, n, groups).await;
    publish_all_pending(pool, 1000).await.unwrap();
    sqlx::query_scalar("SELECT last_seq FROM stream_meta").fetch_one(pool).await.unwrap()
}

async fn publish_for_job(pool: &PgPool, job: Uuid, groups: &[&str], i: i64) {
    let mut tx = pool.begin().await.unwrap();
    let event = NewEvent::new("JobEvent", job, groups.iter().map(|g| group(g)).collect(), json!({"i": i, "job": true}))
        .unwrap();
    outbox::enqueue(&mut tx, &event).await.unwrap();
    tx.commit().await.unwrap();
    publish_all_pending(pool, 1000).await.unwrap();
}

async fn beat(pool: &PgPool, role: &str, host: &str, pid: i32, age_seconds: f64) {
    sqlx::query(
        "INSERT INTO node_heartbeats (node_id, role, host, pid, started_at, beat_at)
         VALUES (gen_random_uuid(), $1, $2, $3, now() - interval '1 hour', now() - make_interval(secs => $4))",
    )
    .bind(role)
    .bind(host)
    .bind(pid)
    .bind(age_seconds)
    .execute(pool)
    .await
    .unwrap();
}

/// (outbox id, replay_of) of the copies waiting in the outbox, in id order.
async fn outbox_copies(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT replay_of FROM outbox WHERE replay_of IS NOT NULL ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

fn seqs(epoch: &str, range: impl IntoIterator<Item = i64>) -> Vec<String> {
    range.into_iter().map(|s| format!("{epoch}-{s}")).collect()
}

fn args() -> ReplayArgs {
    ReplayArgs { from: None, to: None, since: None, until: None, groups: vec![], job: None, dry_run: false }
}

fn position_request(epoch: &str, after: i64, through: Option<i64>) -> ReplayRequest {
    ReplayRequest {
        range: ReplayRange::Positions {
            after: format!("{epoch}-{after}").parse().unwrap(),
            through: through.map(|t| format!("{epoch}-{t}").parse().unwrap()),
        },
        groups: vec![],
        job: None,
    }
}

async fn replay_all(pool: &PgPool, request: &ReplayRequest) -> replay::ReplayProgress {
    let resolved = replay::resolve(pool, request).await.unwrap();
    replay::execute(pool, &resolved, &ReplayOptions::default(), |_| {}).await.unwrap()
}

// ---------------------------------------------------------------------------------------------- status

#[tokio::test]
async fn status_of_an_empty_stream() {
    let db = TestDb::new().await;
    let s = status::gather(&db.pool).await.unwrap();
    let epoch = epoch(&db.pool).await;
    assert_eq!(s.pending, 0);
    assert_eq!(s.oldest_pending_age_seconds, None);
    assert_eq!(s.last_seq, 0);
    assert_eq!(s.last_position, format!("{epoch}-0"));
    assert_eq!(s.last_published_at, None);
    assert_eq!(s.last_published_age_seconds, None);
    assert_eq!(s.publish_rate_last_minute, 0.0);
    assert_eq!(s.retention, "7 days");
    assert_eq!(s.retention_seconds, 7.0 * 86400.0);
    assert_eq!(s.oldest_kept_seq, None);
    assert_eq!(s.expired_through_seq, 0);
    assert_eq!((s.relays_alive, s.listeners_alive), (0, 0));
    assert!(s.healthy, "an idle stream is healthy: {:?}", s.reasons);
    assert!(s.warnings.iter().any(|w| w.contains("no relay alive")), "{:?}", s.warnings);

    // The JSON field names are the documented interface.
    let value = serde_json::to_value(&s).unwrap();
    for field in [
        "checkedAt",
        "pending",
        "oldestPendingAgeSeconds",
        "epoch",
        "lastSeq",
        "lastPosition",
        "lastPublishedAt",
        "lastPublishedAgeSeconds",
        "publishRateLastMinute",
        "publishRateLastHour",
        "retention",
        "retentionSeconds",
        "oldestKeptSeq",
        "oldestKeptPosition",
        "expiredThroughSeq",
        "partitionsUntil",
        "relaysAlive",
        "relays",
        "lastRelayBeatAt",
        "listenersAlive",
        "listeners",
        "healthy",
        "reasons",
        "warnings",
    ] {
        assert!(value.get(field).is_some(), "missing JSON field {field}");
    }
}

#[tokio::test]
async fn status_reports_a_backlog_without_relay_as_unhealthy() {
    let db = TestDb::new().await;
    write_events(&db.pool, 7, &["region:north"]).await;
    let s = status::gather(&db.pool).await.unwrap();
    assert_eq!(s.pending, 7);
    assert!(s.oldest_pending_age_seconds.is_some_and(|age| age < 30.0));
    assert!(!s.healthy);
    assert_eq!(s.reasons.len(), 1, "{:?}", s.reasons);
    assert!(s.reasons[0].contains("no relay alive"), "{:?}", s.reasons);

    // An old backlog is unhealthy even with a relay alive.
    beat(&db.pool, "relay", "relay-host", 4242, 1.0).await;
    sqlx::query("UPDATE outbox SET created_at = now() - interval '2 minutes'").execute(&db.pool).await.unwrap();
    let s = status::gather(&db.pool).await.unwrap();
    assert_eq!(s.relays_alive, 1);
    assert!(s.oldest_pending_age_seconds.is_some_and(|age| age >= 119.0));
    assert!(!s.healthy);
    assert_eq!(s.reasons.len(), 1, "{:?}", s.reasons);
    assert!(s.reasons[0].contains("oldest pending"), "{:?}", s.reasons);
}

#[tokio::test]
async fn status_after_publishing_shows_the_last_position_and_the_rate() {
    let db = TestDb::new().await;
    let last = publish(&db.pool, 12, &["region:north"]).await;
    let epoch = epoch(&db.pool).await;
    let s = status::gather(&db.pool).await.unwrap();
    assert_eq!(s.pending, 0);
    assert_eq!(s.oldest_pending_age_seconds, None);
    assert_eq!(last, 12);
    assert_eq!(s.last_seq, 12);
    assert_eq!(s.last_position, format!("{epoch}-12"));
    assert!(s.last_published_at.is_some());
    assert!(s.last_published_age_seconds.is_some_and(|age| age < 60.0));
    assert!((s.publish_rate_last_minute - 12.0 / 60.0).abs() < 1e-9, "{}", s.publish_rate_last_minute);
    assert!((s.publish_rate_last_hour - 12.0 / 3600.0).abs() < 1e-9, "{}", s.publish_rate_last_hour);
    assert_eq!(s.oldest_kept_seq, Some(1));
    assert_eq!(s.oldest_kept_position, Some(format!("{epoch}-1")));
    assert!(s.healthy, "{:?}", s.reasons);
    let table = status::render(&s);
    assert!(table.contains(&format!("last position:       {epoch}-12")), "{table}");
}

#[tokio::test]
async fn status_counts_only_fresh_heartbeats() {
    let db = TestDb::new().await;
    let s = status::gather(&db.pool).await.unwrap();
    assert_eq!(s.relays_alive, 0, "no heartbeat row: relay down");
    assert_eq!(s.last_relay_beat_at, None);

    beat(&db.pool, "relay", "old-host", 1, 60.0).await; // stopped a minute ago
    let s = status::gather(&db.pool).await.unwrap();
    assert_eq!(s.relays_alive, 0, "a stale heartbeat is not alive");
    assert!(s.last_relay_beat_at.is_some());

    beat(&db.pool, "relay", "relay-a", 101, 2.0).await;
    beat(&db.pool, "listener", "web-a", 202, 1.0).await;
    beat(&db.pool, "listener", "web-b", 203, 3.0).await;
    let s = status::gather(&db.pool).await.unwrap();
    assert_eq!(s.relays_alive, 1);
    assert_eq!((s.relays[0].host.as_str(), s.relays[0].pid), ("relay-a", 101));
    assert!(s.relays[0].beat_age_seconds >= 1.5 && s.relays[0].beat_age_seconds < 10.0);
    assert_eq!(s.listeners_alive, 2);
    assert_eq!(s.listeners.iter().map(|n| n.host.as_str()).collect::<Vec<_>>(), ["web-a", "web-b"]);
    assert!(s.healthy && s.warnings.is_empty(), "{:?} {:?}", s.reasons, s.warnings);
    let table = status::render(&s);
    assert!(table.contains("relay-a:101"), "{table}");
}

// ---------------------------------------------------------------------------------------------- replay

#[tokio::test]
async fn replay_by_position_range_copies_only_the_range_in_order() {
    let db = TestDb::new().await;
    publish(&db.pool, 20, &["region:north"]).await;
    let epoch = epoch(&db.pool).await;

    let done = replay_all(&db.pool, &position_request(&epoch, 5, Some(12))).await;
    assert_eq!((done.replayed, done.skipped, done.complete), (7, 0, true));
    // --from is exclusive, --to inclusive; copies wait in the outbox in the originals' order.
    assert_eq!(outbox_copies(&db.pool).await, seqs(&epoch, 6..=12));

    assert_eq!(publish_all_pending(&db.pool, 1000).await.unwrap(), 7);
    type Row = (i64, Uuid, String, Uuid, Vec<String>, serde_json::Value, Option<String>, String);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT seq, event_id, event_type, aggregate_id, groups, payload, replay_of,
                to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')
         FROM event_log ORDER BY seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_dense(&rows.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>());
    let by_seq: HashMap<i64, &Row> = rows.iter().map(|r| (r.0, r)).collect();
    for (i, copy_seq) in (21..=27).enumerate() {
        let copy = by_seq[&copy_seq];
        let original = by_seq[&(6 + i as i64)];
        assert_eq!(copy.6.as_deref(), Some(format!("{epoch}-{}", original.0).as_str()), "new positions after the end");
        assert_ne!(copy.1, original.1, "a copy is a new event");
        // The copy carries the original's occurrence time (its own occurredAt is the replay's), and
        // otherwise the original's payload unchanged.
        let mut payload = copy.5.clone();
        let carried = payload.as_object_mut().and_then(|p| p.remove("originalOccurredAt"));
        assert_eq!(carried, Some(serde_json::Value::String(original.7.clone())), "copy of seq {}", original.0);
        assert_eq!((&copy.2, copy.3, &copy.4, &payload), (&original.2, original.3, &original.4, &original.5));
        assert!(original.5.get("originalOccurredAt").is_none(), "an original carries no originalOccurredAt");
    }
}

#[tokio::test]
async fn replay_without_to_goes_to_the_end_and_never_selects_copies() {
    let db = TestDb::new().await;
    publish(&db.pool, 6, &["region:north"]).await;
    let epoch = epoch(&db.pool).await;
    let done = replay_all(&db.pool, &position_request(&epoch, 2, None)).await;
    assert_eq!(done.replayed, 4);
    publish_all_pending(&db.pool, 1000).await.unwrap(); // copies at 7..=10

    // From the start again: the copies are not originals, and the originals all have copies.
    let resolved = replay::resolve(&db.pool, &position_request(&epoch, 0, None)).await.unwrap();
    let plan = replay::plan(&db.pool, &resolved).await.unwrap();
    assert_eq!((plan.matched, plan.already_replayed, plan.to_replay), (6, 4, 2));
    assert_eq!((plan.first_seq, plan.last_seq), (Some(1), Some(2)));
    let done = replay::execute(&db.pool, &resolved, &ReplayOptions::default(), |_| {}).await.unwrap();
    assert_eq!((done.replayed, done.skipped), (2, 4));
    assert_eq!(outbox_copies(&db.pool).await, seqs(&epoch, 1..=2));
}

#[tokio::test]
async fn replay_by_time_range() {
    let db = TestDb::new().await;
    publish(&db.pool, 5, &["region:north"]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(&db.pool).await.unwrap();
    publish(&db.pool, 5, &["region:north"]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let until: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(&db.pool).await.unwrap();
    publish(&db.pool, 5, &["region:north"]).await;
    let epoch = epoch(&db.pool).await;

    let request = ReplayRequest::try_from(&ReplayArgs {
        since: Some(since.to_rfc3339()),
        until: Some(until.to_rfc3339()),
        ..args()
    })
    .unwrap();
    let resolved = replay::resolve(&db.pool, &request).await.unwrap();
    assert_eq!((resolved.after_seq, resolved.through_seq), (5, 10));
    replay::execute(&db.pool, &resolved, &ReplayOptions::default(), |_| {}).await.unwrap();
    assert_eq!(outbox_copies(&db.pool).await, seqs(&epoch, 6..=10));

    // Without --until: through the end as it was when the replay started.
    let request = ReplayRequest::try_from(&ReplayArgs { since: Some(until.to_rfc3339()), ..args() }).unwrap();
    let resolved = replay::resolve(&db.pool, &request).await.unwrap();
    assert_eq!((resolved.after_seq, resolved.through_seq), (10, 15));

    // A window with nothing in it replays nothing.
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let request = ReplayRequest::try_from(&ReplayArgs { since: Some(later.to_rfc3339()), ..args() }).unwrap();
    let resolved = replay::resolve(&db.pool, &request).await.unwrap();
    assert_eq!(replay::plan(&db.pool, &resolved).await.unwrap().matched, 0);
}

#[tokio::test]
async fn replay_by_a_time_relative_to_now() {
    let db = TestDb::new().await;
    publish(&db.pool, 3, &["region:north"]).await;
    let resolve = |since: &str, until: Option<&str>| {
        let args = ReplayArgs { since: Some(since.into()), until: until.map(str::to_owned), ..args() };
        let request = ReplayRequest::try_from(&args).unwrap();
        let pool = db.pool.clone();
        async move {
            let resolved = replay::resolve(&pool, &request).await.unwrap();
            let matched = replay::plan(&pool, &resolved).await.unwrap().matched;
            (resolved.after_seq, resolved.through_seq, matched)
        }
    };
    assert_eq!(resolve("1h", None).await, (0, 3, 3), "--since 1h: the three events of the last minute");
    assert_eq!(resolve("1h", Some("0s")).await, (0, 3, 3), "--until 0s is now");
    assert_eq!(resolve("2h", Some("1h")).await.2, 0, "an hour-long window that ended an hour ago: nothing");
}

#[tokio::test]
async fn replay_filters_by_group_and_job() {
    let db = TestDb::new().await;
    let job = Uuid::new_v4();
    publish(&db.pool, 2, &["region:north"]).await; // 1, 2
    publish(&db.pool, 2, &["region:south"]).await; // 3, 4
    publish(&db.pool, 1, &["region:north", "region:east"]).await; // 5
    publish_for_job(&db.pool, job, &["region:south"], 0).await; // 6
    publish_for_job(&db.pool, job, &["region:west"], 1).await; // 7
    publish(&db.pool, 1, &["region:west"]).await; // 8
    let epoch = epoch(&db.pool).await;

    let mut request = position_request(&epoch, 0, None);
    request.groups = vec![group("region:south"), group("region:east")];
    let resolved = replay::resolve(&db.pool, &request).await.unwrap();
    let plan = replay::plan(&db.pool, &resolved).await.unwrap();
    assert_eq!(plan.matched, 4);
    assert_eq!(
        plan.per_group,
        vec![("region:east".to_owned(), 1, 1), ("region:north".to_owned(), 1, 1), ("region:south".to_owned(), 3, 3)]
    );
    replay::execute(&db.pool, &resolved, &ReplayOptions::default(), |_| {}).await.unwrap();
    assert_eq!(outbox_copies(&db.pool).await, seqs(&epoch, [3, 4, 5, 6]));
    sqlx::query("DELETE FROM outbox").execute(&db.pool).await.unwrap();

    let mut request = position_request(&epoch, 0, None);
    request.job = Some(job);
    replay_all(&db.pool, &request).await;
    assert_eq!(outbox_copies(&db.pool).await, seqs(&epoch, [6, 7]));
    sqlx::query("DELETE FROM outbox").execute(&db.pool).await.unwrap();

    // Both filters together, through the command entry point.
    commands::replay(
        &db.pool,
        ReplayArgs { from: Some(format!("{epoch}-0")), groups: vec!["region:west".into()], job: Some(job), ..args() },
    )
    .await
    .unwrap();
    assert_eq!(outbox_copies(&db.pool).await, seqs(&epoch, [7]));
}

#[tokio::test]
async fn a_dry_run_publishes_nothing() {
    let db = TestDb::new().await;
    publish(&db.pool, 10, &["region:north"]).await;
    let epoch = epoch(&db.pool).await;
    commands::replay(&db.pool, ReplayArgs { from: Some(format!("{epoch}-0")), dry_run: true, ..args() }).await.unwrap();
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&db.pool).await.unwrap();
    assert_eq!(pending, 0);
    assert_eq!(publish_all_pending(&db.pool, 1000).await.unwrap(), 0);
    let last: i64 = sqlx::query_scalar("SELECT last_seq FROM stream_meta").fetch_one(&db.pool).await.unwrap();
    assert_eq!(last, 10);
}

#[tokio::test]
async fn replay_refuses_positions_of_another_epoch_and_bad_input() {
    let db = TestDb::new().await;
    publish(&db.pool, 3, &["region:north"]).await;
    let epoch = epoch(&db.pool).await;
    let other = if epoch == "00000000" { "00000001" } else { "00000000" };
    let err = replay::resolve(&db.pool, &position_request(other, 0, None)).await.unwrap_err();
    assert!(matches!(err, ReplayError::EpochMismatch { flag: "--from", .. }), "{err}");
    let request = ReplayRequest {
        range: ReplayRange::Positions {
            after: format!("{epoch}-0").parse().unwrap(),
            through: Some(format!("{other}-2").parse().unwrap()),
        },
        groups: vec![],
        job: None,
    };
    let err = replay::resolve(&db.pool, &request).await.unwrap_err();
    assert!(matches!(err, ReplayError::EpochMismatch { flag: "--to", .. }), "{err}");
    assert!(err.to_string().contains(&epoch), "{err}");

    // Malformed input is a usage error (exit code 2).
    let err = commands::replay(&db.pool, ReplayArgs { from: Some("1042".into()), ..args() }).await.unwrap_err();
    assert!(err.downcast_ref::<smartscheduler::commands::UsageError>().is_some(), "{err:#}");
    let err = commands::replay(&db.pool, ReplayArgs { from: Some(format!("{other}-0")), ..args() }).await.unwrap_err();
    assert!(err.downcast_ref::<smartscheduler::commands::UsageError>().is_none(), "{err:#}");
}

#[tokio::test]
async fn an_interrupted_replay_completes_when_run_again_and_copies_each_original_once() {
    let db = TestDb::new().await;
    publish(&db.pool, 10, &["region:north"]).await;
    let epoch = epoch(&db.pool).await;
    let request = position_request(&epoch, 0, Some(10));
    let small = |max_batches| ReplayOptions { batch_size: 3, max_batches };

    // "Interrupted" after one batch of 3.
    let resolved = replay::resolve(&db.pool, &request).await.unwrap();
    let mut seen = Vec::new();
    let first = replay::execute(&db.pool, &resolved, &small(Some(1)), |p| seen.push(*p)).await.unwrap();
    assert_eq!((first.replayed, first.through_seq, first.complete), (3, 3, false));
    assert_eq!(seen.len(), 1);
    // The relay publishes some copies meanwhile: now copies are in event_log and in the outbox.
    publish_all_pending(&db.pool, 1000).await.unwrap();
    let resolved = replay::resolve(&db.pool, &request).await.unwrap();
    replay::execute(&db.pool, &resolved, &small(Some(1)), |_| {}).await.unwrap(); // 3 skipped... and stopped
    let resolved = replay::resolve(&db.pool, &request).await.unwrap();
    let plan = replay::plan(&db.pool, &resolved).await.unwrap();
    assert_eq!(
        (plan.matched, plan.already_replayed, plan.to_replay),
        (10, 3, 7),
        "the re-run's first batch only skipped"
    );

    // Run again to the end, with progress after each batch.
    let mut seen = Vec::new();
    let done = replay::execute(&db.pool, &resolved, &small(None), |p| seen.push(*p)).await.unwrap();
    assert_eq!((done.replayed, done.skipped, done.complete), (7, 3, true));
    assert_eq!(seen.iter().map(|p| p.through_seq).collect::<Vec<_>>(), [3, 6, 9, 10]);
    // And once more: a no-op.
    let done = replay::execute(&db.pool, &resolved, &small(None), |_| {}).await.unwrap();
    assert_eq!((done.replayed, done.skipped), (0, 10));

    publish_all_pending(&db.pool, 1000).await.unwrap();
    let copies: Vec<(String, i64)> = sqlx::query_as(
        "SELECT replay_of, count(*) FROM event_log WHERE replay_of IS NOT NULL GROUP BY replay_of
         ORDER BY split_part(replay_of, '-', 2)::bigint",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(copies, seqs(&epoch, 1..=10).into_iter().map(|p| (p, 1)).collect::<Vec<_>>());
    // Published in the originals' order.
    let order: Vec<String> =
        sqlx::query_scalar("SELECT replay_of FROM event_log WHERE replay_of IS NOT NULL ORDER BY seq")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(order, seqs(&epoch, 1..=10));
}

// ---------------------------------------------------------------------------------------------- sql/

fn psql() -> PathBuf {
    ["/usr/bin/psql", "/usr/lib/postgresql/15/bin/psql"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("psql"))
}

fn run_sql_file(db: &TestDb, file: &Path, vars: &[(&str, &str)]) -> String {
    let mut command = Command::new(psql());
    command.arg(&db.url).args(["-X", "-v", "ON_ERROR_STOP=1"]);
    for (name, value) in vars {
        command.arg("-v").arg(format!("{name}={value}"));
    }
    let output = command.arg("-f").arg(file).output().expect("run psql");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{} failed:\n{stdout}\n{stderr}", file.display());
    assert!(!stderr.contains("ERROR"), "{}: {stderr}", file.display());
    stdout
}

fn sql_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("sql/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn every_sql_runbook_file_runs_cleanly_on_a_seeded_database() {
    let db = TestDb::new().await;
    smartscheduler::recommendations::seed::seed_demo(&db.pool).await.unwrap();
    publish(&db.pool, 30, &["region:north"]).await;
    publish(&db.pool, 10, &["region:south", "region:east"]).await;
    write_events(&db.pool, 3, &["region:west"]).await; // a backlog
    beat(&db.pool, "relay", "relay-a", 11, 1.0).await;
    beat(&db.pool, "listener", "web-a", 12, 1.0).await;

    let files = sql_files();
    assert_eq!(files.len(), 9, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(text.starts_with("-- "), "{} starts with a comment block", file.display());
        assert!(text.contains("When to use it"), "{} says when to use it", file.display());
        let out = run_sql_file(&db, file, &[]);
        assert!(!out.trim().is_empty(), "{} printed nothing", file.display());
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");

    let out = run_sql_file(&db, &dir.join("06_density.sql"), &[]);
    assert!(out.contains("density: OK"), "{out}");
    let epoch = epoch(&db.pool).await;
    let out = run_sql_file(&db, &dir.join("05_around_position.sql"), &[("seq", "20")]);
    for seq in 15..=25 {
        assert!(out.contains(&format!("{epoch}-{seq}")), "{out}");
    }
    let out = run_sql_file(&db, &dir.join("05_around_position.sql"), &[("seq", &format!("{epoch}-3"))]);
    assert!(out.contains(&format!("{epoch}-8")) && !out.contains(&format!("{epoch}-9 ")), "{out}");

    // Alice (north) applied through seq 25: north's 26..=30 are what her consoles never applied; the south and
    // east events after them are not hers.
    sqlx::query("INSERT INTO console_receipts (dispatcher_id, epoch, seq) VALUES ('alice', $1, 25)")
        .bind(&epoch)
        .execute(&db.pool)
        .await
        .unwrap();
    let out = run_sql_file(&db, &dir.join("09_unapplied_events.sql"), &[("dispatcher", "alice")]);
    assert!(out.contains(&format!("{epoch}-25")), "her latest receipt is shown: {out}");
    for seq in 26..=30 {
        assert!(out.contains(&format!("{epoch}-{seq} ")), "{seq} is unapplied: {out}");
    }
    for seq in [24, 31, 40] {
        assert!(!out.contains(&format!("{epoch}-{seq} ")), "{seq} is not listed: {out}");
    }

    // The by-hand replay: defaults copy nothing; a range copies it once, however often it runs.
    let copies = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox WHERE replay_of IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    run_sql_file(&db, &dir.join("07_replay_by_hand.sql"), &[]);
    assert_eq!(copies(db.pool.clone()).await, 0);
    run_sql_file(&db, &dir.join("07_replay_by_hand.sql"), &[("from_seq", "5"), ("to_seq", "9"), ("dry_run", "1")]);
    assert_eq!(copies(db.pool.clone()).await, 0);
    run_sql_file(&db, &dir.join("07_replay_by_hand.sql"), &[("from_seq", "5"), ("to_seq", "9")]);
    assert_eq!(outbox_copies(&db.pool).await, seqs(&epoch, 6..=9));
    publish_all_pending(&db.pool, 1000).await.unwrap();
    run_sql_file(&db, &dir.join("07_replay_by_hand.sql"), &[("from_seq", "0"), ("to_seq", "9")]);
    assert_eq!(outbox_copies(&db.pool).await, seqs(&epoch, 1..=5), "copied originals are skipped");

    // A hole makes the density check say BROKEN and show it.
    sqlx::query("DELETE FROM event_log WHERE seq = 17").execute(&db.pool).await.unwrap();
    let out = run_sql_file(&db, &dir.join("06_density.sql"), &[]);
    assert!(out.contains("density: BROKEN"), "{out}");
    assert!(out.contains("16 |       18 |       1"), "{out}");
}

// ---------------------------------------------------------------------------------------------- retention

#[tokio::test]
async fn retention_drops_exactly_the_expired_partitions() {
    let db = TestDb::new().await;
    let today: chrono::NaiveDate =
        sqlx::query_scalar("SELECT (now() AT TIME ZONE 'UTC')::date").fetch_one(&db.pool).await.unwrap();
    let day = |n: i64| today - chrono::Duration::days(n);
    sqlx::query("SELECT ss_ensure_partitions($1, $2)").bind(day(5)).bind(day(3)).execute(&db.pool).await.unwrap();
    // seqs 1..=3 five days ago, 4..=6 four days ago, 7..=8 yesterday (kept: within 2 days).
    for (seq, days_ago) in [(1, 5), (2, 5), (3, 5), (4, 4), (5, 4), (6, 4), (7, 1), (8, 1)] {
        let at = day(days_ago).and_hms_opt(12, 0, seq as u32).unwrap().and_utc();
        sqlx::query(
            "WITH e AS (
                 INSERT INTO event_log (seq, event_id, event_type, aggregate_id, groups, payload, occurred_at, published_at)
                 VALUES ($1, gen_random_uuid(), 'TestEvent', gen_random_uuid(), '{region:north}', '{}', $2, $2)
             )
             INSERT INTO event_log_groups (group_key, seq, published_at) VALUES ('region:north', $1, $2)",
        )
        .bind(seq)
        .bind(at)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    sqlx::query("UPDATE stream_meta SET last_seq = 8, retention = '2 days'").execute(&db.pool).await.unwrap();
    publish(&db.pool, 2, &["region:north"]).await; // 9, 10 today
    let partition = |n: i64| format!("event_log_p{}", day(n).format("%Y%m%d"));

    let dry = retention::run_once(&db.pool, true).await.unwrap();
    assert_eq!(dry.dropped_partitions, vec![partition(5), partition(4)]);
    let report = retention::run_once(&db.pool, false).await.unwrap();
    assert_eq!(report.dropped_partitions, vec![partition(5), partition(4)]);
    assert_eq!(report.expired_through_seq, 6);

    let remaining: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent IN ('event_log'::regclass, 'event_log_groups'::regclass) ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for n in [5, 4] {
        let suffix = day(n).format("%Y%m%d").to_string();
        assert!(!remaining.iter().any(|p| p.ends_with(&suffix)), "{suffix} still there: {remaining:?}");
    }
    assert!(remaining.contains(&partition(1)) && remaining.contains(&partition(0)), "{remaining:?}");
    let kept: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM event_log ORDER BY seq").fetch_all(&db.pool).await.unwrap();
    assert_eq!(kept, [7, 8, 9, 10]);

    let s = status::gather(&db.pool).await.unwrap();
    assert_eq!((s.expired_through_seq, s.oldest_kept_seq), (6, Some(7)));
    assert_eq!(s.retention_seconds, 2.0 * 86400.0);
    // Nothing more to drop; the log is still dense for the DBA check.
    assert!(retention::run_once(&db.pool, false).await.unwrap().dropped_partitions.is_empty());
    let out = run_sql_file(&db, &Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/06_density.sql"), &[]);
    assert!(out.contains("density: OK"), "{out}");
}

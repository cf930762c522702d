//! The relay's guarantees: positions in commit order, dense, exactly once, also with several relays,
//! dying transactions and killed connections.

use crate::helpers::*;
use rand::Rng;
use serde_json::json;
use smartscheduler::outbox::{self, NewEvent, RelayWaker};
use smartscheduler::relay::{self, BatchOutcome, Relay, RelayConfig};
use sqlx::{Connection, PgPool};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WRITERS: usize = 8;
const EVENTS_PER_WRITER: usize = 50;

fn fast_relay_config(batch_size: i64) -> RelayConfig {
    RelayConfig { batch_size, poll_interval: Duration::from_millis(20), ..RelayConfig::default() }
}

fn spawn_relay(
    pool: PgPool,
    config: RelayConfig,
    waker: RelayWaker,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(Relay::new(pool, config, waker, Uuid::new_v4()).run(shutdown.clone()));
    (shutdown, handle)
}

/// What one writer wrote: (writer, i) → event id.
type Written = HashMap<Uuid, (usize, usize)>;

/// `WRITERS` concurrent writers; each holds its transaction open for a random time before COMMIT, so
/// transactions commit in another order than their outbox ids.
async fn run_out_of_order_writers(pool: PgPool, waker: RelayWaker) -> Written {
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let pool = pool.clone();
        let waker = waker.clone();
        tasks.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for i in 0..EVENTS_PER_WRITER {
                let mut tx = pool.begin().await.unwrap();
                let event = NewEvent::new(
                    "TestEvent",
                    Uuid::new_v4(),
                    vec![group("region:north")],
                    json!({"writer": writer, "i": i}),
                )
                .unwrap();
                let id = outbox::enqueue(&mut tx, &event).await.unwrap();
                let hold = rand::rng().random_range(0..12);
                tokio::time::sleep(Duration::from_millis(hold)).await; // the point of the test: late commits
                tx.commit().await.unwrap();
                waker.wake();
                written.push((id, (writer, i)));
            }
            written
        }));
    }
    let mut all = Written::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// A reader that polls `position > last` during the load, the way a resuming client does.
/// `query` returns (position, event_id) rows after the given position, in position order.
async fn read_during_load(pool: PgPool, query: &'static str, load_done: CancellationToken) -> Vec<(i64, Uuid)> {
    let mut seen = Vec::new();
    let mut last = 0i64;
    let mut final_pass = false;
    loop {
        let rows: Vec<(i64, Uuid)> = sqlx::query_as(query).bind(last).fetch_all(&pool).await.unwrap();
        if let Some((pos, _)) = rows.last() {
            last = *pos;
        }
        seen.extend(rows);
        if final_pass {
            return seen;
        }
        if load_done.is_cancelled() {
            final_pass = true; // one more read after everything committed and was published
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await; // the reader's polling cadence
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seq_reader_sees_every_late_committing_event_exactly_once_in_commit_order() {
    let db = TestDb::new().await;
    let waker = RelayWaker::new();
    let (stop_relay, relay_task) = spawn_relay(db.pool.clone(), fast_relay_config(100), waker.clone());
    let load_done = CancellationToken::new();
    let reader = tokio::spawn(read_during_load(
        db.pool.clone(),
        "SELECT seq, event_id FROM event_log WHERE seq > $1 ORDER BY seq",
        load_done.clone(),
    ));

    let written = run_out_of_order_writers(db.pool.clone(), waker).await;
    let total = (WRITERS * EVENTS_PER_WRITER) as i64;
    PublishWatcher::new(&db).await.until_seq(&db, total, Duration::from_secs(20)).await;
    load_done.cancel();
    let seen = reader.await.unwrap();
    stop_relay.cancel();
    relay_task.await.unwrap();

    // Exactly once: every written event, no repeats.
    let ids: Vec<Uuid> = seen.iter().map(|(_, id)| *id).collect();
    let unique: HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "the reader saw an event twice");
    let missed: Vec<_> = written.keys().filter(|id| !unique.contains(id)).collect();
    assert!(missed.is_empty(), "the reader missed {} of {total} events", missed.len());
    assert_eq!(seen.len() as i64, total);

    // Dense positions, and the log agrees with what the reader saw.
    assert_dense(&seen);
    assert_eq!(log_entries(&db.pool).await, seen);

    // Each writer's events keep that writer's commit order.
    let mut next_i = [0usize; WRITERS];
    for (_, id) in &seen {
        let (writer, i) = written[id];
        assert_eq!(i, next_i[writer], "writer {writer}'s events are out of its commit order");
        next_i[writer] += 1;
    }
}

/// The same harness, with the position an event gets at insert time (its outbox id) instead of the relay's
/// fenced seq: the reader misses late commits. This is the bug the fence exists to prevent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_reader_misses_events_when_positions_are_given_at_insert_time() {
    let db = TestDb::new().await;
    // No relay: rows stay in the outbox, and the reader resumes from outbox ids.
    let load_done = CancellationToken::new();
    let reader = tokio::spawn(read_during_load(
        db.pool.clone(),
        "SELECT id, event_id FROM outbox WHERE id > $1 ORDER BY id",
        load_done.clone(),
    ));
    let written = run_out_of_order_writers(db.pool.clone(), RelayWaker::new()).await;
    load_done.cancel();
    let seen: HashSet<Uuid> = reader.await.unwrap().into_iter().map(|(_, id)| id).collect();

    let missed = written.keys().filter(|id| !seen.contains(id)).count();
    println!("naive insert-order reader missed {missed} of {} events", written.len());
    assert!(missed > 0, "expected the insert-order reader to miss late commits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_at_once_never_duplicate_reorder_or_leave_holes() {
    let db = TestDb::new().await;
    // A committed backlog in a known order, then two relays racing over it while writers keep writing.
    let mut backlog = Vec::new();
    for _ in 0..20 {
        backlog.extend(write_events(&db.pool, 100, &["region:north", "region:south"]).await);
    }
    let waker_a = RelayWaker::new();
    let waker_b = RelayWaker::new();
    let (stop_a, task_a) = spawn_relay(db.pool_named("relay-a", 4).await, fast_relay_config(37), waker_a.clone());
    let (stop_b, task_b) = spawn_relay(db.pool_named("relay-b", 4).await, fast_relay_config(53), waker_b.clone());
    let written = run_out_of_order_writers(db.pool.clone(), waker_a).await;
    waker_b.wake();

    let total = (backlog.len() + written.len()) as i64;
    PublishWatcher::new(&db).await.until_seq(&db, total, Duration::from_secs(30)).await;
    stop_a.cancel();
    stop_b.cancel();
    task_a.await.unwrap();
    task_b.await.unwrap();

    let log = log_entries(&db.pool).await;
    assert_dense(&log);
    let ids: HashSet<Uuid> = log.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids.len(), log.len(), "an event was published twice");
    assert!(backlog.iter().all(|id| ids.contains(id)) && written.keys().all(|id| ids.contains(id)));
    // The backlog was committed before either relay started: it must come out in exactly its order.
    let backlog_order: Vec<Uuid> = log.iter().map(|(_, id)| *id).filter(|id| backlog.contains(id)).collect();
    assert_eq!(backlog_order, backlog, "the relays reordered the backlog");
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&db.pool).await.unwrap();
    assert_eq!(pending, 0);
}

#[tokio::test]
async fn a_relay_transaction_that_dies_mid_batch_loses_and_duplicates_nothing() {
    let db = TestDb::new().await;
    let ids = write_events(&db.pool, 100, &["region:north"]).await;

    // A relay moves half the backlog, then its connection is killed before COMMIT.
    let doomed_pool = db.pool_named("doomed-relay", 1).await;
    let mut tx = doomed_pool.begin().await.unwrap();
    let outcome = relay::publish_batch_uncommitted(&mut tx, 50).await.unwrap();
    assert_eq!(outcome.count(), 50);
    assert_eq!(db.terminate("doomed-relay").await, 1);
    assert!(tx.commit().await.is_err(), "the killed transaction must not commit");

    // Nothing of it is visible, and the next relay publishes everything once, densely, in order.
    assert!(log_entries(&db.pool).await.is_empty());
    assert_eq!(relay::publish_all_pending(&db.pool, 30).await.unwrap(), 100);
    let log = log_entries(&db.pool).await;
    assert_dense(&log);
    assert_eq!(log.iter().map(|(_, id)| *id).collect::<Vec<_>>(), ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_recovers_within_seconds_after_its_connections_are_terminated() {
    let db = TestDb::new().await;
    let waker = RelayWaker::new();
    let relay_pool = db.pool_named("relay-under-test", 4).await;
    let (stop, task) = spawn_relay(relay_pool, fast_relay_config(100), waker.clone());
    let mut watcher = PublishWatcher::new(&db).await;

    write_event(&db.pool, &["region:north"], json!({"n": 1})).await;
    waker.wake();
    watcher.until_seq(&db, 1, Duration::from_secs(5)).await;

    let killed = db.terminate("relay-under-test").await;
    assert!(killed >= 1, "expected to kill the relay's connections");

    let started = tokio::time::Instant::now();
    write_event(&db.pool, &["region:north"], json!({"n": 2})).await;
    waker.wake();
    watcher.until_seq(&db, 2, Duration::from_secs(5)).await;
    println!("relay published again {:?} after its connections were killed", started.elapsed());
    stop.cancel();
    task.await.unwrap();
    assert_dense(&log_entries(&db.pool).await);
}

#[tokio::test]
async fn a_rolled_back_writer_leaves_no_hole_and_plain_sql_writers_need_nothing_else() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.unwrap();
    let event = NewEvent::new("TestEvent", Uuid::new_v4(), vec![group("team:hvac")], json!({})).unwrap();
    outbox::enqueue(&mut tx, &event).await.unwrap();
    tx.rollback().await.unwrap();

    // The contract's one-statement write, from plain SQL.
    sqlx::query(
        "INSERT INTO outbox (event_type, aggregate_id, groups, payload)
         VALUES ('JobUpdated', gen_random_uuid(), '{team:hvac}', '{\"status\": \"assigned\"}')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    write_event(&db.pool, &["team:hvac"], json!({"k": 2})).await;

    assert_eq!(relay::publish_all_pending(&db.pool, 10).await.unwrap(), 2);
    assert_dense(&log_entries(&db.pool).await);
    let (event_type, payload): (String, serde_json::Value) =
        sqlx::query_as("SELECT event_type, payload FROM event_log WHERE seq = 1").fetch_one(&db.pool).await.unwrap();
    assert_eq!(event_type, "JobUpdated");
    assert_eq!(payload, json!({"status": "assigned"}));
}

#[tokio::test]
async fn the_outbox_table_refuses_bad_events_from_plain_sql() {
    let db = TestDb::new().await;
    for (groups, payload, why) in [
        ("'{Region:North}'", "'{}'", "upper-case group key"),
        ("'{}'", "'{}'", "no groups"),
        ("'{region:north}'", "'[1,2]'", "payload not an object"),
        ("'{region:north}'", "'{\"position\": 1}'", "payload shadows the envelope"),
        ("'{region:north,region:north}'", "'{}'", "a repeated group"),
        ("'{region:north,NULL}'", "'{}'", "a NULL group"),
    ] {
        let sql = format!(
            "INSERT INTO outbox (event_type, aggregate_id, groups, payload) VALUES ('X', gen_random_uuid(), {groups}, {payload})"
        );
        let result = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&db.pool).await;
        assert!(result.is_err(), "the outbox accepted an event with {why}");
    }
    assert_eq!(relay::publish_batch(&db.pool, 10).await.unwrap(), BatchOutcome::Empty);
}

/// Migration 0010 rewrote the group check for speed; it must accept exactly what the SQL version of 0005
/// accepted (restated here as the reference).
#[tokio::test]
async fn the_group_check_gives_the_verdicts_of_its_reference_definition() {
    let db = TestDb::new().await;
    let language: String = sqlx::query_scalar(
        "SELECT l.lanname::text FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang WHERE p.proname = 'ss_valid_groups'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(language, "plpgsql", "migration 0010 is applied");
    let many = |n: usize| format!("'{{{}}}'", (0..n).map(|i| format!("g{i}")).collect::<Vec<_>>().join(","));
    let long = |n: usize| format!("'{{a{}}}'", "b".repeat(n - 1));
    let mut cases: Vec<String> = [
        "'{region:north}'",
        "'{region:north,team:hvac}'",
        "'{a,b,a}'",
        "'{a,NULL}'",
        "'{NULL}'",
        "'{}'",
        "NULL",
        "'{Region:north}'",
        "'{-a}'",
        "'{a b}'",
        "'{\"a,b\"}'",
        "'{{a,b},{c,d}}'",
        "'[2:3]={a,b}'",
        "'[0:1]={a,a}'",
        "'{\"\"}'",
        "'{0,9,a:b_c-d}'",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    cases.extend([many(32), many(33), long(64), long(65)]);
    for case in cases {
        let sql = format!(
            "SELECT ss_valid_groups(g::text[]),
                    coalesce(g::text[] IS NOT NULL
                       AND array_ndims(g::text[]) = 1
                       AND cardinality(g::text[]) BETWEEN 1 AND 32
                       AND (SELECT count(x) = cardinality(g::text[])
                               AND count(DISTINCT x) = cardinality(g::text[])
                               AND coalesce(bool_and(x ~ '^[a-z0-9][a-z0-9:_-]{{0,63}}$'), false)
                            FROM unnest(g::text[]) AS x), false)
             FROM (SELECT {case}::text[] AS g) t"
        );
        let (got, reference): (Option<bool>, bool) =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_one(&db.pool).await.unwrap();
        assert_eq!(got.unwrap_or(false), reference, "{case}");
    }
}

/// A relay that queued at the fence stamps its batch once it holds the lock, not when its statement began:
/// otherwise its events could carry an earlier `published_at` than the batch published while it waited, and
/// retention, which drops whole time ranges, could cut a hole in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_waited_at_the_fence_never_stamps_its_batch_before_the_one_published_meanwhile() {
    let db = TestDb::new().await;
    write_events(&db.pool, 3, &["region:north"]).await;

    // Relay A takes the fence and keeps it while relay B starts its step and queues behind it.
    let mut relay_a = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM stream_meta FOR UPDATE").execute(&mut *relay_a).await.unwrap();
    let pool_b = db.pool_named("relay-b", 1).await;
    let relay_b = tokio::spawn(async move { relay::publish_batch_now(&pool_b, 10).await.unwrap() });
    db.until_waiting_for_a_lock("relay-b", Duration::from_secs(10)).await;

    // A publishes two events and commits; B then gets the lock and publishes the third.
    assert_eq!(relay::publish_batch_uncommitted(&mut relay_a, 2).await.unwrap().count(), 2);
    relay_a.commit().await.unwrap();
    assert_eq!(relay_b.await.unwrap().count(), 1);

    let stamps: Vec<(i64, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT seq, published_at FROM event_log ORDER BY seq").fetch_all(&db.pool).await.unwrap();
    assert_eq!(stamps.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(stamps[2].1 >= stamps[1].1, "published_at went backwards along seq: {stamps:?}");
}

#[tokio::test]
async fn the_publish_step_refuses_to_run_under_a_snapshot_older_than_the_fence() {
    let db = TestDb::new().await;
    write_events(&db.pool, 1, &["region:north"]).await;
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await.unwrap();
    let refused = relay::publish_batch_uncommitted(&mut tx, 10).await.unwrap_err();
    assert!(refused.to_string().contains("READ COMMITTED"), "unexpected error: {refused}");
    drop(tx);
    assert_eq!(relay::publish_all_pending(&db.pool, 10).await.unwrap(), 1);
}

#[tokio::test]
async fn the_relay_publishes_on_a_database_whose_default_isolation_is_serializable() {
    let db = TestDb::new().await;
    let alter = format!("ALTER DATABASE \"{}\" SET default_transaction_isolation = 'serializable'", db.name);
    sqlx::query(sqlx::AssertSqlSafe(alter)).execute(&db.pool).await.unwrap();
    write_events(&db.pool, 3, &["region:north"]).await;

    // A new connection gets the database's default, except where the application sets its own.
    let fresh = db.pool_named("after-alter", 1).await;
    let mut plain = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let plain_default: String = sqlx::query_scalar("SHOW transaction_isolation").fetch_one(&mut plain).await.unwrap();
    assert_eq!(plain_default, "serializable");
    assert_eq!(relay::publish_all_pending(&fresh, 10).await.unwrap(), 3);
}

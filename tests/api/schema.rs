//! Database objects DBAs rely on: comments everywhere, and an index-backed backlog read.

use crate::helpers::*;
use serde_json::Value;
use smartscheduler::event_log::BACKLOG_SQL;

#[tokio::test]
async fn every_table_view_and_partition_has_a_comment() {
    let db = TestDb::new().await;
    let missing: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')
           AND obj_description(c.oid, 'pg_class') IS NULL
         ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(missing.is_empty(), "tables and views without COMMENT ON: {missing:?}");
}

/// Node types and relation names of the plan nodes that ran (EXPLAIN ANALYZE, FORMAT JSON), flattened.
/// Subplans pruned at run time (`never executed`) do not count.
fn nodes(plan: &Value, out: &mut Vec<(String, String)>) {
    let kind = plan["Node Type"].as_str().unwrap_or_default().to_owned();
    let relation = plan["Relation Name"].as_str().unwrap_or_default().to_owned();
    if plan["Actual Loops"].as_i64().unwrap_or(0) > 0 {
        out.push((kind, relation));
    }
    for child in plan["Plans"].as_array().into_iter().flatten() {
        nodes(child, out);
    }
}

/// A dispatcher of a quiet group resuming after a busy hour must not scan the busy hour.
#[tokio::test]
async fn the_backlog_of_a_quiet_group_after_a_busy_hour_is_read_through_indexes() {
    let db = TestDb::new().await;
    write_events(&db.pool, 3, &["team:quiet"]).await;
    for _ in 0..4 {
        write_events(&db.pool, 5000, &["region:north"]).await;
    }
    write_events(&db.pool, 2, &["team:quiet", "region:south"]).await;
    smartscheduler::relay::publish_all_pending(&db.pool, 1000).await.unwrap();
    sqlx::query("ANALYZE").execute(&db.pool).await.unwrap();

    let explain = format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {BACKLOG_SQL}");
    let groups = vec!["team:quiet".to_owned(), "region:south".to_owned()];
    let (plan,): (Value,) = sqlx::query_as(sqlx::AssertSqlSafe(explain))
        .bind(&groups)
        .bind(0i64)
        .bind(30_000i64)
        .bind(1000i64)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let root = &plan[0]["Plan"];
    let mut all = Vec::new();
    nodes(root, &mut all);
    let seq_scans: Vec<_> = all.iter().filter(|(kind, _)| kind == "Seq Scan").collect();
    assert!(seq_scans.is_empty(), "the backlog read scans tables: {seq_scans:?}\n{plan:#}");
    assert!(
        all.iter().any(|(kind, rel)| kind.starts_with("Index") && rel.starts_with("event_log_groups")),
        "expected an index scan of event_log_groups: {all:?}"
    );
    assert_eq!(root["Actual Rows"], 5, "3 quiet + 2 shared events");
    // 20,000 busy events live in the same partitions; the read touches a few pages, not all of them.
    let buffers = root["Shared Hit Blocks"].as_i64().unwrap_or(0) + root["Shared Read Blocks"].as_i64().unwrap_or(0);
    assert!(buffers < 200, "the quiet group's backlog touched {buffers} buffers:\n{plan:#}");
}

//! `seed --demo` against a real PostgreSQL: idempotent, the contract's dispatchers, and demo jobs that all get
//! recommendations.

use crate::helpers::TestDb;
use smartscheduler::recommendations::seed::{SeedReport, seed_demo};
use uuid::Uuid;

#[tokio::test]
async fn seeding_twice_changes_nothing() {
    let db = TestDb::new().await;
    let first = seed_demo(&db.pool).await.unwrap();
    assert_eq!(first.regions, 4);
    assert_eq!(first.contractors, 240);
    assert!(first.assignments > 50, "{first}");
    assert_eq!(first.jobs, 24);
    assert_eq!(first.dispatchers, 4);
    assert_eq!(first.dispatcher_groups, 8);
    assert!(first.inserted > 0);

    let second = seed_demo(&db.pool).await.unwrap();
    assert_eq!(second, SeedReport { inserted: 0, ..first });
    assert!(second.to_string().contains("nothing added"), "{second}");
    let total: i64 =
        sqlx::query_scalar("SELECT count(*) FROM contractor_assignments").fetch_one(&db.pool).await.unwrap();
    assert_eq!(total as u64, first.assignments);

    // The contract's dispatchers and groups.
    let rows: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "SELECT d.id, d.name, array_agg(g.group_key ORDER BY g.group_key)
         FROM dispatchers d JOIN dispatcher_groups g ON g.dispatcher_id = d.id
         GROUP BY d.id, d.name ORDER BY d.id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let expect = |id: &str, name: &str, groups: &[&str]| {
        (id.to_owned(), name.to_owned(), groups.iter().map(|g| g.to_string()).collect::<Vec<_>>())
    };
    assert_eq!(
        rows,
        vec![
            expect("alice", "Alice Anders", &["region:north"]),
            expect("bob", "Bob Brown", &["region:south"]),
            expect("carol", "Carol Chen", &["region:north", "region:south"]),
            expect("dana", "Dana Diaz", &["region:east", "region:north", "region:south", "region:west"]),
        ]
    );
}

#[tokio::test]
async fn every_demo_job_gets_recommendations() {
    let db = TestDb::new().await;
    seed_demo(&db.pool).await.unwrap();
    let per_region: Vec<(String, i64)> = sqlx::query_as(
        "SELECT region, count(*) FROM jobs WHERE status = 'open' AND window_start > now()
         GROUP BY region ORDER BY region",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(per_region.len(), 4);
    assert!(per_region.iter().all(|(_, n)| *n >= 5), "{per_region:?}");
    let active: i64 =
        sqlx::query_scalar("SELECT count(*) FROM contractors WHERE active").fetch_one(&db.pool).await.unwrap();
    assert!(active >= 200);
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM jobs ORDER BY id").fetch_all(&db.pool).await.unwrap();
    for id in ids {
        let set = smartscheduler::recommendations::generate(&db.pool, id, "dana").await.unwrap();
        assert!(set.recommendations.len() >= 2, "job {id}: {set:?}");
    }
}

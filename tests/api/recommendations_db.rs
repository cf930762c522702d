//! The recommendations domain against a real PostgreSQL, without HTTP: generation (the set and its event
//! commit together, in generation order), job queries and input errors.

use crate::helpers::TestDb;
use chrono::{DateTime, Duration, Utc};
use smartscheduler::recommendations::*;
use sqlx::PgPool;
use sqlx::Row;
use uuid::Uuid;

/// Adds region `north` (and `south`) and five hvac contractors near the north centre; returns a
/// job in north that needs hvac, tomorrow 09:00-12:00 UTC.
async fn fixture(pool: &PgPool) -> Job {
    sqlx::query(
        "INSERT INTO regions (key, name, center_lat, center_lon)
         VALUES ('north', 'North', 47.72, -122.31), ('south', 'South', 47.48, -122.28)",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO dispatchers (id, name) VALUES ('alice', 'Alice Anders')").execute(pool).await.unwrap();
    sqlx::query(
        "INSERT INTO contractors (name, region, home_lat, home_lon, skills, rating)
         SELECT 'Tech ' || g, 'north', 47.72 + g * 0.01, -122.31, '{hvac,electrical}', 4.5
         FROM generate_series(1, 5) g",
    )
    .execute(pool)
    .await
    .unwrap();
    create_job(pool, &new_job("north", &["hvac"]), "alice").await.unwrap()
}

fn new_job(region: &str, skills: &[&str]) -> NewJob {
    let day = (Utc::now() + Duration::days(1)).date_naive();
    let start = day.and_hms_opt(9, 0, 0).unwrap().and_utc();
    NewJob {
        title: "  Furnace makes a banging noise ".into(),
        region: region.into(),
        required_skills: skills.iter().map(|s| s.to_string()).collect(),
        location: Location { lat: 47.72, lon: -122.31 },
        window_start: start,
        window_end: start + Duration::hours(3),
    }
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn a_set_and_its_event_commit_together() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let job = fixture(pool).await;
    assert_eq!(job.title, "Furnace makes a banging noise");

    let set = generate(pool, job.id, "alice").await.unwrap();
    assert_eq!(set.job_id, job.id);
    assert_eq!(set.recommendations.len(), 5);
    assert_eq!(set.recommendations.iter().map(|r| r.rank).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    // The nearest (Tech 1, 1.1 km away) comes first.
    assert_eq!(set.recommendations[0].name, "Tech 1");
    assert_eq!(set.recommendations[0].matched_skills, vec!["hvac"]);

    // What the API reads back is what generate returned (the score parts included).
    assert_eq!(latest_set(pool, job.id).await.unwrap().as_ref(), Some(&set));
    assert_eq!(set.algorithm, "weighted-v1");
    assert_eq!(set.score_weights, Some(scoring::WEIGHTS));
    let stored: Vec<(f64, f64, f64, f64, f64)> = sqlx::query_as(
        "SELECT score, score_proximity, score_skills, score_rating, score_capacity FROM recommendations ORDER BY rank",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (row, r) in stored.iter().zip(&set.recommendations) {
        let p = r.score_parts.expect("parts of a new set");
        assert_eq!(*row, (r.score, p.proximity, p.skills, p.rating, p.capacity));
        // Tech 1..5 hold hvac and electrical, the job needs hvac: half their skills; rating 4.5; no bookings.
        assert_eq!((p.skills, p.rating, p.capacity), (0.5, 0.9, 1.0));
        assert!((r.score - p.weighted_sum(&scoring::WEIGHTS)).abs() <= 1e-4, "{r:?}");
    }
    let row = sqlx::query("SELECT generated_by, algorithm, candidates FROM recommendation_sets")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(row.get::<Option<String>, _>(0).as_deref(), Some("alice"));
    assert_eq!(row.get::<String, _>(1), "weighted-v1");
    assert_eq!(row.get::<i32, _>(2), 5);

    // Exactly one outbox row, for the job's region, carrying the summary.
    let rows = sqlx::query("SELECT event_id, event_type, aggregate_id, groups, payload FROM outbox")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.get::<String, _>("event_type"), "RecommendationReady");
    assert_eq!(r.get::<Uuid, _>("aggregate_id"), job.id);
    assert_eq!(r.get::<Vec<String>, _>("groups"), vec!["region:north"]);
    let payload: serde_json::Value = r.get("payload");
    assert_eq!(payload, event_payload(&set));
    assert_eq!(payload["jobId"], job.id.to_string());
    assert_eq!(payload["summary"]["recommendationSetId"], set.recommendation_set_id.to_string());
    assert_eq!(payload["summary"]["count"], 5);
    let top = payload["summary"]["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    assert_eq!(top[0]["contractorId"], set.recommendations[0].contractor_id.to_string());
    assert_eq!(top[0]["name"], "Tech 1");
    assert_eq!(top[0]["etaMinutes"], set.recommendations[0].eta_minutes);

    // Merged with an envelope, the payload is a valid SSE data object of the published schema.
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../schemas/recommendation-ready.v1.schema.json")).unwrap();
    let mut data = serde_json::json!({
        "eventId": r.get::<Uuid, _>("event_id"),
        "type": "RecommendationReady",
        "position": "7f3a9c21-1",
        "groups": ["region:north"],
        "occurredAt": "2030-06-10T09:00:00Z",
        "replayOf": null,
    });
    data.as_object_mut().unwrap().extend(payload.as_object().unwrap().clone());
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&data).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
}

#[tokio::test]
async fn a_failure_after_the_set_insert_rolls_back_set_and_event() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let job = fixture(pool).await;
    for fail in [FailPoint::AfterSetInsert, FailPoint::BeforeCommit] {
        let err = generate_with(pool, job.id, "alice", fail).await.unwrap_err();
        assert!(matches!(err, RecommendationError::Database(_)), "{err:?}");
        assert_eq!(count(pool, "SELECT count(*) FROM recommendation_sets").await, 0);
        assert_eq!(count(pool, "SELECT count(*) FROM recommendations").await, 0);
        assert_eq!(count(pool, "SELECT count(*) FROM outbox").await, 0);
        assert_eq!(latest_set(pool, job.id).await.unwrap(), None);
    }
    // The job is not left locked: a normal generation goes through.
    generate(pool, job.id, "alice").await.unwrap();
    assert_eq!(count(pool, "SELECT count(*) FROM outbox").await, 1);
}

#[tokio::test]
async fn the_set_its_rows_and_its_event_are_one_statement_so_a_refused_event_leaves_nothing() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let job = fixture(pool).await;
    // The outbox row is refused by the database's own CHECK, inside the statement that also writes the
    // set and its rows: the whole statement fails, not just its outbox part.
    let err = generate_with(pool, job.id, "alice", FailPoint::AfterSetInsert).await.unwrap_err();
    let RecommendationError::Database(sqlx::Error::Database(e)) = &err else { panic!("{err:?}") };
    assert_eq!(e.table(), Some("outbox"), "{e}");
    assert_eq!(e.constraint(), Some("outbox_groups_check"), "{e}");
    assert_eq!(count(pool, "SELECT count(*) FROM recommendation_sets").await, 0);
    assert_eq!(count(pool, "SELECT count(*) FROM recommendations").await, 0);
    assert_eq!(count(pool, "SELECT count(*) FROM outbox").await, 0);

    // The benchmark's baseline writes the set alone; everything else writes both.
    let g = generate_writing(pool, job.id, "alice", FailPoint::Never, EventWrite::BenchOnlySkip).await.unwrap();
    assert_eq!(g.event_id, Uuid::nil());
    assert_eq!(count(pool, "SELECT count(*) FROM outbox").await, 0);
    let g = generate_with(pool, job.id, "alice", FailPoint::Never).await.unwrap();
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM outbox").fetch_all(pool).await.unwrap();
    assert_eq!(ids, vec![g.event_id]);
    assert_eq!(count(pool, "SELECT count(*) FROM recommendation_sets").await, 2);
}

/// (outbox id, generated_at of the set it announces) for every outbox row, by outbox id.
async fn outbox_order(pool: &PgPool) -> Vec<(i64, DateTime<Utc>, Uuid)> {
    sqlx::query_as(
        "SELECT o.id, s.generated_at, s.id
         FROM outbox o
         JOIN recommendation_sets s ON s.id = (o.payload -> 'summary' ->> 'recommendationSetId')::uuid
         ORDER BY o.id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_later_generation_gets_a_later_outbox_row() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let job = fixture(pool).await;
    let first = generate(pool, job.id, "alice").await.unwrap();
    let second = generate(pool, job.id, "alice").await.unwrap();
    assert!(second.generated_at > first.generated_at);
    let order = outbox_order(pool).await;
    assert_eq!(
        order.iter().map(|o| o.2).collect::<Vec<_>>(),
        vec![first.recommendation_set_id, second.recommendation_set_id]
    );
    assert_eq!(
        latest_set(pool, job.id).await.unwrap().map(|s| s.recommendation_set_id),
        Some(second.recommendation_set_id)
    );

    // Concurrent generations of one job serialise on the job row: outbox order = set order.
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { generate(&pool, job.id, "alice").await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let order = outbox_order(pool).await;
    assert_eq!(order.len(), 8);
    assert!(order.windows(2).all(|w| w[0].1 < w[1].1), "outbox order differs from generation order: {order:?}");
    let latest = latest_set(pool, job.id).await.unwrap().unwrap();
    assert_eq!(latest.recommendation_set_id, order[7].2);
}

/// Inserts one recommendation row for the only set with the given parts (NULL where `None`).
async fn insert_parts(pool: &PgPool, rank: i32, parts: [Option<f64>; 4]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO recommendations (set_id, rank, contractor_id, score, distance_km, eta_minutes, matched_skills,
                                      score_proximity, score_skills, score_rating, score_capacity)
         SELECT (SELECT id FROM recommendation_sets), $1, (SELECT id FROM contractors LIMIT 1), 0.5, 1, 7, '{}',
                $2, $3, $4, $5",
    )
    .bind(rank)
    .bind(parts[0])
    .bind(parts[1])
    .bind(parts[2])
    .bind(parts[3])
    .execute(pool)
    .await
    .map(|_| ())
}

#[tokio::test]
async fn the_database_keeps_score_parts_within_zero_and_one_all_four_or_none() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let job = fixture(pool).await;
    sqlx::query("INSERT INTO recommendation_sets (job_id, algorithm, candidates) VALUES ($1, 'weighted-v0', 1)")
        .bind(job.id)
        .execute(pool)
        .await
        .unwrap();
    let refused = [
        ([Some(1.5), Some(1.0), Some(1.0), Some(1.0)], "recommendations_score_proximity_range"),
        ([Some(1.0), Some(-0.01), Some(1.0), Some(1.0)], "recommendations_score_skills_range"),
        ([Some(1.0), Some(1.0), Some(f64::NAN), Some(1.0)], "recommendations_score_rating_range"),
        ([Some(1.0), Some(1.0), Some(1.0), Some(f64::INFINITY)], "recommendations_score_capacity_range"),
        ([Some(0.5), None, None, None], "recommendations_score_parts_all_or_none"),
    ];
    for (parts, constraint) in refused {
        let err = insert_parts(pool, 1, parts).await.unwrap_err();
        let sqlx::Error::Database(e) = &err else { panic!("{err:?}") };
        assert_eq!(e.constraint(), Some(constraint), "{parts:?}: {e}");
    }
    insert_parts(pool, 1, [Some(0.0), Some(1.0), Some(0.25), Some(0.5)]).await.unwrap();
    // A row as stored before migration 0016: no parts at all.
    insert_parts(pool, 2, [None; 4]).await.unwrap();

    let set = latest_set(pool, job.id).await.unwrap().unwrap();
    let parts: Vec<_> = set.recommendations.iter().map(|r| r.score_parts).collect();
    assert_eq!(
        parts,
        vec![Some(scoring::ScoreParts { proximity: 0.0, skills: 1.0, rating: 0.25, capacity: 0.5 }), None]
    );
    // An algorithm this build does not know: its parts are shown, no weights are claimed for them.
    assert_eq!(set.algorithm, "weighted-v0");
    assert_eq!(set.score_weights, None);
}

#[tokio::test]
async fn only_available_qualified_contractors_are_recommended() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let job = fixture(pool).await; // Tech 1..5 qualify
    let day_start = job.window_start.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    // Tech 1 is booked during the window; Tech 2 is inactive; Tech 3 is full for the day.
    sqlx::query(
        "INSERT INTO contractor_assignments (contractor_id, starts_at, ends_at)
         SELECT id, $1, $1 + interval '1 hour' FROM contractors WHERE name = 'Tech 1'",
    )
    .bind(job.window_start + Duration::minutes(30))
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("UPDATE contractors SET active = false WHERE name = 'Tech 2'").execute(pool).await.unwrap();
    sqlx::query(
        "UPDATE contractors SET max_daily_jobs = 2 WHERE name = 'Tech 3';
         ",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO contractor_assignments (contractor_id, starts_at, ends_at)
         SELECT id, $1 + h * interval '1 hour', $1 + (h + 1) * interval '1 hour'
         FROM contractors, (VALUES (14), (16)) v (h) WHERE name = 'Tech 3'",
    )
    .bind(day_start)
    .execute(pool)
    .await
    .unwrap();
    // Tech 6 lacks the skill; Tech 7 works nights; Tech 8 is in another region.
    sqlx::query(
        "INSERT INTO contractors (name, region, home_lat, home_lon, skills, work_start, work_end)
         VALUES ('Tech 6', 'north', 47.72, -122.31, '{plumbing}', '08:00', '17:00'),
                ('Tech 7', 'north', 47.72, -122.31, '{hvac}', '18:00', '23:00'),
                ('Tech 8', 'south', 47.72, -122.31, '{hvac}', '08:00', '17:00')",
    )
    .execute(pool)
    .await
    .unwrap();

    let set = generate(pool, job.id, "alice").await.unwrap();
    let names: Vec<_> = set.recommendations.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["Tech 4", "Tech 5"]);
    let candidates: i32 =
        sqlx::query_scalar("SELECT candidates FROM recommendation_sets").fetch_one(pool).await.unwrap();
    assert_eq!(candidates, 6, "active contractors of the region");
}

#[tokio::test]
async fn a_job_nobody_can_take_gets_an_empty_set_and_event() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    fixture(pool).await;
    let job = create_job(pool, &new_job("north", &["solar", "roofing"]), "nobody").await.unwrap();
    let set = generate(pool, job.id, "nobody").await.unwrap();
    assert!(set.recommendations.is_empty());
    let latest = latest_set(pool, job.id).await.unwrap().unwrap();
    assert_eq!(latest, set);
    let payload: serde_json::Value = sqlx::query_scalar("SELECT payload FROM outbox").fetch_one(pool).await.unwrap();
    assert_eq!(payload["summary"]["count"], 0);
    assert_eq!(payload["summary"]["top"], serde_json::json!([]));
    // An unknown dispatcher is not recorded (and is no error).
    let by: Option<String> =
        sqlx::query_scalar("SELECT created_by FROM jobs WHERE id = $1").bind(job.id).fetch_one(pool).await.unwrap();
    assert_eq!(by, None);
}

#[tokio::test]
async fn jobs_are_created_listed_and_fetched() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let north1 = fixture(pool).await;
    let south = create_job(pool, &new_job("south", &[]), "alice").await.unwrap();
    let north2 = create_job(pool, &new_job("north", &["electrical", "hvac"]), "alice").await.unwrap();
    assert_eq!(north2.required_skills, vec!["electrical", "hvac"]);
    assert_eq!(north2.status, "open");
    assert_eq!(north2.location, new_job("north", &[]).location);

    let north: Vec<_> = list_jobs(pool, &["north".into()]).await.unwrap().into_iter().map(|j| j.id).collect();
    assert_eq!(north, vec![north2.id, north1.id], "newest first");
    let both = list_jobs(pool, &["north".into(), "south".into()]).await.unwrap();
    assert_eq!(both.len(), 3);
    assert_eq!(both[0], north2);
    assert!(list_jobs(pool, &[]).await.unwrap().is_empty());
    assert!(list_jobs(pool, &["east".into()]).await.unwrap().is_empty());

    assert_eq!(get_job(pool, south.id).await.unwrap(), Some(south.clone()));
    assert_eq!(get_job(pool, Uuid::new_v4()).await.unwrap(), None);

    // The wire form of a job.
    let v = serde_json::to_value(&south).unwrap();
    for key in
        ["id", "title", "region", "requiredSkills", "location", "windowStart", "windowEnd", "status", "createdAt"]
    {
        assert!(v.get(key).is_some(), "{key} missing from {v}");
    }
}

#[tokio::test]
async fn bad_input_is_refused_with_a_reason() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    fixture(pool).await;
    let err = create_job(pool, &new_job("atlantis", &[]), "alice").await.unwrap_err();
    assert!(matches!(&err, RecommendationError::UnknownRegion(r) if r == "atlantis"), "{err:?}");
    assert_eq!(err.to_string(), "unknown region \"atlantis\"");

    let mut bad = new_job("north", &["hvac"]);
    bad.window_end = bad.window_start - Duration::minutes(1);
    let err = create_job(pool, &bad, "alice").await.unwrap_err();
    assert!(matches!(err, RecommendationError::Validation { field: "windowEnd", .. }), "{err:?}");

    let missing = Uuid::new_v4();
    let err = generate(pool, missing, "alice").await.unwrap_err();
    assert!(matches!(err, RecommendationError::JobNotFound(id) if id == missing), "{err:?}");
    assert_eq!(latest_set(pool, missing).await.unwrap(), None);
    assert_eq!(count(pool, "SELECT count(*) FROM jobs").await, 1);
}

#[tokio::test]
async fn a_job_needing_no_skill_matches_everyone_with_no_matched_skills() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    fixture(pool).await;
    let job = create_job(pool, &new_job("north", &[]), "alice").await.unwrap();
    let set = generate(pool, job.id, "alice").await.unwrap();
    assert_eq!(set.recommendations.len(), 5);
    assert!(set.recommendations.iter().all(|r| r.matched_skills.is_empty()));
    assert_eq!(latest_set(pool, job.id).await.unwrap(), Some(set));
}

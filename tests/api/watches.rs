//! Watched jobs (the console's stars): stored per dispatcher, listed only for regions the dispatcher holds,
//! and refused for jobs they may not see, exactly like `GET /api/jobs/{id}`.

use crate::app::*;
use reqwest::StatusCode;
use serde_json::Value;
use smartscheduler::recommendations::seed::demo_uuid;

async fn watched(app: &TestApp, token: &str) -> Vec<String> {
    let response = http().get(app.url("/api/watches")).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["jobIds"].as_array().expect("jobIds").iter().map(|id| id.as_str().unwrap().to_owned()).collect()
}

async fn star(app: &TestApp, token: &str, job: &str, on: bool) -> reqwest::Response {
    let url = app.url(&format!("/api/jobs/{job}/watch"));
    let request = if on { http().put(url) } else { http().delete(url) };
    request.bearer_auth(token).send().await.unwrap()
}

async fn error_code(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    (status, body["error"]["code"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_star_is_kept_per_dispatcher_idempotently_and_removed() {
    let (db, app) = seeded_app().await;
    let (alice, carol) = (hour_token(&db, "alice").await, hour_token(&db, "carol").await);
    let (first, second) = (demo_uuid("north/job/0").to_string(), demo_uuid("north/job/1").to_string());
    assert!(watched(&app, &alice).await.is_empty());

    for _ in 0..2 {
        assert_eq!(star(&app, &alice, &second, true).await.status(), StatusCode::NO_CONTENT, "idempotent");
    }
    assert_eq!(star(&app, &alice, &first, true).await.status(), StatusCode::NO_CONTENT);
    let mut expected = vec![first.clone(), second.clone()];
    expected.sort();
    assert_eq!(watched(&app, &alice).await, expected, "both stars, by job id");
    assert!(watched(&app, &carol).await.is_empty(), "a star is the dispatcher's own, not the region's");

    for _ in 0..2 {
        assert_eq!(star(&app, &alice, &second, false).await.status(), StatusCode::NO_CONTENT, "idempotent");
    }
    assert_eq!(watched(&app, &alice).await, vec![first]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_one_may_not_see_cannot_be_starred_and_unknown_ids_are_the_same_404_as_a_job_read() {
    let (db, app) = seeded_app().await;
    let alice = hour_token(&db, "alice").await;
    let south = demo_uuid("south/job/0").to_string();
    for on in [true, false] {
        assert_eq!(error_code(star(&app, &alice, &south, on).await).await, (StatusCode::FORBIDDEN, "forbidden".into()));
        let unknown = uuid::Uuid::new_v4().to_string();
        assert_eq!(
            error_code(star(&app, &alice, &unknown, on).await).await,
            (StatusCode::NOT_FOUND, "not_found".into())
        );
        let (status, _) = error_code(star(&app, &alice, "not-a-uuid", on).await).await;
        let read = http().get(app.url("/api/jobs/not-a-uuid")).bearer_auth(&alice).send().await.unwrap();
        assert_eq!(status, read.status(), "a malformed id is refused the way GET /api/jobs/{{id}} refuses it");
    }
    let anonymous = http().put(app.url(&format!("/api/jobs/{south}/watch"))).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM watched_jobs").fetch_one(&db.pool).await.unwrap();
    assert_eq!(count, 0, "nothing was stored for a refused star");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stars_of_a_region_one_left_are_hidden_until_one_is_back_and_go_with_the_job() {
    let (db, app) = seeded_app().await;
    let carol = hour_token(&db, "carol").await;
    let (north, south) = (demo_uuid("north/job/0"), demo_uuid("south/job/0"));
    for job in [north, south] {
        assert_eq!(star(&app, &carol, &job.to_string(), true).await.status(), StatusCode::NO_CONTENT);
    }
    let leave = ["region:south".to_owned()];
    smartscheduler::auth::set_groups(&db.pool, "carol", &[], &leave).await.expect("leave south");
    let only_north = watched(&app, &carol).await;
    assert_eq!(only_north, vec![north.to_string()], "the south star is hidden while carol is out of south");

    smartscheduler::auth::set_groups(&db.pool, "carol", &leave, &[]).await.expect("back to south");
    assert_eq!(watched(&app, &carol).await.len(), 2, "and shown again when she is back");

    sqlx::query("DELETE FROM jobs WHERE id = $1").bind(north).execute(&db.pool).await.expect("delete the job");
    assert_eq!(watched(&app, &carol).await, vec![south.to_string()], "a removed job takes its stars with it");
}

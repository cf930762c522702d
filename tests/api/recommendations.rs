//! Recommendations over HTTP: generation commits the set and its RecommendationReady event together, the
//! event reaches exactly the job's region, matches the versioned JSON Schema, each recommendation explains
//! its score (its parts and the set's weights, as the OpenAPI document describes them), and bad input gets
//! the contract's errors.

use crate::app::*;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn schema_validator() -> jsonschema::Validator {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/recommendation-ready.v1.schema.json");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("schema file")).expect("schema JSON");
    jsonschema::validator_for(&schema).expect("a valid JSON Schema")
}

/// A validator of `#/components/schemas/<name>` of src/http/openapi.json (its `$ref`s resolve inside the
/// document's components).
fn openapi_validator(name: &str) -> jsonschema::Validator {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/openapi.json");
    let document: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("openapi.json")).unwrap();
    let schema = json!({"$ref": format!("#/components/schemas/{name}"), "components": document["components"]});
    jsonschema::validator_for(&schema).expect("a valid JSON Schema")
}

fn assert_valid(validator: &jsonschema::Validator, value: &Value) {
    let errors: Vec<String> = validator.iter_errors(value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "does not match the OpenAPI document: {errors:?}\n{value}");
}

/// The weights docs/http-api.md documents for `weighted-v1`.
const DOCUMENTED_WEIGHTS: [(&str, f64); 4] =
    [("proximity", 0.45), ("skills", 0.20), ("rating", 0.20), ("capacity", 0.15)];

/// Every recommendation of `set` has its four parts in [0, 1], and `score = Σ weight × part` within the
/// rounding of score and parts to 4 decimals.
fn assert_parts_recombine_to_the_score(set: &Value) {
    for (name, weight) in DOCUMENTED_WEIGHTS {
        assert_eq!(set["scoreWeights"][name].as_f64(), Some(weight), "{name} weight: {set}");
    }
    for r in set["recommendations"].as_array().unwrap() {
        let parts = &r["scoreParts"];
        assert_eq!(parts.as_object().map(|o| o.len()), Some(4), "{r}");
        let mut sum = 0.0;
        for (name, weight) in DOCUMENTED_WEIGHTS {
            let part = parts[name].as_f64().unwrap_or_else(|| panic!("{name} missing: {r}"));
            assert!((0.0..=1.0).contains(&part), "{name} = {part}: {r}");
            sum += weight * part;
        }
        let score = r["score"].as_f64().unwrap();
        assert!((score - sum).abs() <= 1e-4 + 1e-12, "score {score} but Σ weight × part = {sum}: {r}");
    }
}

fn new_job(region: &str) -> Value {
    json!({
        "title": "Replace rooftop HVAC unit",
        "region": region,
        "requiredSkills": ["hvac"],
        "location": {"lat": 47.70, "lon": -122.33},
        // Tomorrow 09:00 to 13:00 UTC: inside the demo contractors' working hours.
        "windowStart": tomorrow_at(9).to_rfc3339(),
        "windowEnd": tomorrow_at(13).to_rfc3339(),
    })
}

fn tomorrow_at(hour: u32) -> chrono::DateTime<chrono::Utc> {
    let day = chrono::Utc::now().date_naive() + chrono::Days::new(1);
    day.and_hms_opt(hour, 0, 0).unwrap().and_utc()
}

async fn get_json(app: &TestApp, token: &str, path: &str) -> Value {
    http().get(app.url(path)).bearer_auth(token).send().await.unwrap().json().await.unwrap()
}

async fn post(app: &TestApp, token: &str, path: &str, body: Value) -> reqwest::Response {
    http().post(app.url(path)).bearer_auth(token).json(&body).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_post_produces_a_ranked_set_and_its_event_reaches_exactly_the_jobs_region() {
    let (db, app) = seeded_app().await;
    let (alice, bob, dana) =
        (hour_token(&db, "alice").await, hour_token(&db, "bob").await, hour_token(&db, "dana").await);
    let mut north = Connect::new(&alice).open(&app.base).await;
    let mut everywhere = Connect::new(&dana).open(&app.base).await;
    let mut south = Connect::new(&bob).open(&app.base).await;

    let created = post(&app, &alice, "/api/jobs", new_job("north")).await;
    assert_eq!(created.status(), 201);
    let job: Value = created.json().await.unwrap();
    let job_id = job["id"].as_str().unwrap().to_owned();

    let generated = post(&app, &alice, &format!("/api/jobs/{job_id}/recommendations"), json!({})).await;
    assert_eq!(generated.status(), 201);
    let set: Value = generated.json().await.unwrap();
    let recs = set["recommendations"].as_array().unwrap();
    assert!(!recs.is_empty(), "the demo data has hvac contractors in the north");
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["rank"], i + 1);
        assert!(r["matchedSkills"].as_array().unwrap().contains(&json!("hvac")));
        for field in ["contractorId", "name", "score", "distanceKm", "etaMinutes"] {
            assert!(!r[field].is_null(), "{field} missing");
        }
    }
    let scores: Vec<f64> = recs.iter().map(|r| r["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "ranked by score");
    let set_schema = openapi_validator("RecommendationSet");
    assert_valid(&set_schema, &set);
    assert_eq!(set["algorithm"], "weighted-v1");
    assert_parts_recombine_to_the_score(&set);

    let validator = schema_validator();
    for stream in [&mut north, &mut everywhere] {
        let event = stream.next_data(WAIT).await;
        assert_eq!(event.event, "RecommendationReady");
        let data = data_json(&event);
        let errors: Vec<String> = validator.iter_errors(&data).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "the event does not match its schema: {errors:?}\n{data}");
        assert_eq!(data["jobId"], job_id.as_str());
        assert_eq!(data["summary"]["recommendationSetId"], set["recommendationSetId"]);
        assert_eq!(data["summary"]["count"], recs.len());
        assert!(data["summary"]["top"].as_array().unwrap().len() <= 3);
        assert_eq!(data["groups"], json!(["region:north"]));
    }

    // The south dispatcher got nothing: their first event is a later south one.
    let south_job: Value = post(&app, &bob, "/api/jobs", new_job("south")).await.json().await.unwrap();
    let south_id = south_job["id"].as_str().unwrap();
    assert_eq!(post(&app, &bob, &format!("/api/jobs/{south_id}/recommendations"), json!({})).await.status(), 201);
    assert_eq!(data_json(&south.next_data(WAIT).await)["jobId"], south_id);

    let latest: Value = get_json(&app, &alice, &format!("/api/jobs/{job_id}/recommendations")).await;
    assert_eq!(latest["recommendationSetId"], set["recommendationSetId"]);
    // The stored parts read back exactly as generated.
    assert_valid(&set_schema, &latest);
    assert_eq!(latest["recommendations"], set["recommendations"]);
    assert_eq!(latest["scoreWeights"], set["scoreWeights"]);
}

#[tokio::test]
async fn a_set_stored_before_score_parts_were_kept_is_served_with_null_parts() {
    let (db, app) = seeded_app().await;
    let alice = hour_token(&db, "alice").await;
    let job: String = sqlx::query_scalar("SELECT id::text FROM jobs WHERE region = 'north' ORDER BY id LIMIT 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // Written as the code before migration 0016 wrote it: no score_* columns.
    sqlx::query(
        "WITH s AS (
             INSERT INTO recommendation_sets (job_id, generated_by, algorithm, candidates)
             VALUES ($1::uuid, 'alice', 'weighted-v1', 2) RETURNING id
         )
         INSERT INTO recommendations (set_id, rank, contractor_id, score, distance_km, eta_minutes, matched_skills)
         SELECT s.id, row_number() OVER (ORDER BY c.id), c.id, 0.8, 2.5, 10, '{}'
         FROM s, (SELECT id FROM contractors WHERE region = 'north' ORDER BY id LIMIT 2) c",
    )
    .bind(&job)
    .execute(&db.pool)
    .await
    .unwrap();

    let url = app.url(&format!("/api/jobs/{job}/recommendations"));
    let response = http().get(&url).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let old: Value = response.json().await.unwrap();
    assert_valid(&openapi_validator("RecommendationSet"), &old);
    let recs = old["recommendations"].as_array().unwrap();
    assert_eq!(recs.len(), 2);
    for r in recs {
        assert!(r.as_object().unwrap().contains_key("scoreParts"), "scoreParts is present, as null: {r}");
        assert_eq!(r["scoreParts"], Value::Null, "{r}");
        assert_eq!(r["score"], 0.8);
    }
    assert_eq!(old["algorithm"], "weighted-v1");

    // A generation now stores its parts; the old set stays as it was.
    let new: Value =
        post(&app, &alice, &format!("/api/jobs/{job}/recommendations"), json!({})).await.json().await.unwrap();
    assert_parts_recombine_to_the_score(&new);
    let latest: Value = get_json(&app, &alice, &format!("/api/jobs/{job}/recommendations")).await;
    assert_eq!(latest["recommendationSetId"], new["recommendationSetId"]);
    let still_null: i64 =
        sqlx::query_scalar("SELECT count(*) FROM recommendations WHERE set_id = $1::uuid AND score_proximity IS NULL")
            .bind(old["recommendationSetId"].as_str().unwrap())
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(still_null, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_generations_arrive_in_position_order_and_later_generations_have_higher_positions() {
    let (db, app) = seeded_app().await;
    let dana = hour_token(&db, "dana").await;
    let mut client = Connect::new(&dana).open(&app.base).await;
    let jobs: Vec<String> =
        sqlx::query_scalar("SELECT id::text FROM jobs ORDER BY id LIMIT 12").fetch_all(&db.pool).await.unwrap();

    let mut tasks = Vec::new();
    for round in 0..3 {
        for job in &jobs {
            let (url, token) = (app.url(&format!("/api/jobs/{job}/recommendations")), dana.clone());
            tasks.push(tokio::spawn(async move {
                let r = http().post(url).bearer_auth(token).send().await.unwrap();
                assert_eq!(r.status(), 201, "round {round}");
                r.json::<Value>().await.unwrap()["recommendationSetId"].as_str().unwrap().to_owned()
            }));
        }
    }
    let mut sets = HashSet::new();
    for t in tasks {
        sets.insert(t.await.unwrap());
    }

    let events = client.take(sets.len(), WAIT).await;
    let seqs: Vec<i64> = events.iter().map(seq_of).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "events out of position order: {seqs:?}");
    let delivered: HashSet<String> =
        events.iter().map(|e| data_json(e)["summary"]["recommendationSetId"].as_str().unwrap().to_owned()).collect();
    assert_eq!(delivered, sets, "every generation's event, exactly once");

    // Per job, the set generated last (latest generated_at) has the highest position.
    for job in &jobs {
        let latest: Value = get_json(&app, &dana, &format!("/api/jobs/{job}/recommendations")).await;
        let last_event_for_job = events.iter().rev().find(|e| data_json(e)["jobId"] == job.as_str()).unwrap();
        assert_eq!(data_json(last_event_for_job)["summary"]["recommendationSetId"], latest["recommendationSetId"]);
    }
}

#[tokio::test]
async fn bad_input_gets_the_contract_errors_and_changes_nothing() {
    let (db, app) = seeded_app().await;
    let (alice, bob) = (hour_token(&db, "alice").await, hour_token(&db, "bob").await);
    let check = |status: u16, code: &'static str| {
        move |(actual, body): (u16, Value)| {
            assert_eq!(actual, status, "{body}");
            assert_eq!(body["error"]["code"], code, "{body}");
            assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    };
    async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
    let jobs_url = app.url("/api/jobs");

    check(401, "unauthorized")(send(http().post(&jobs_url).json(&new_job("north"))).await);
    check(401, "invalid_token")(send(http().get(&jobs_url).bearer_auth("not-a-token")).await);
    let malformed = http().post(&jobs_url).bearer_auth(&alice).header("content-type", "application/json");
    check(400, "invalid_json")(send(malformed.body("{\"title\": ")).await);
    let mut missing = new_job("north");
    missing.as_object_mut().unwrap().remove("windowEnd");
    check(400, "invalid_json")(send(http().post(&jobs_url).bearer_auth(&alice).json(&missing)).await);
    let mut bad_coords = new_job("north");
    bad_coords["location"] = json!({"lat": 123.0, "lon": 0.0});
    check(400, "invalid_input")(send(http().post(&jobs_url).bearer_auth(&alice).json(&bad_coords)).await);
    let mut backwards = new_job("north");
    backwards["windowEnd"] = json!((chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339());
    check(400, "invalid_input")(send(http().post(&jobs_url).bearer_auth(&alice).json(&backwards)).await);
    check(400, "invalid_input")(send(http().post(&jobs_url).bearer_auth(&alice).json(&new_job("atlantis"))).await);
    check(403, "forbidden")(send(http().post(&jobs_url).bearer_auth(&bob).json(&new_job("north"))).await);
    let huge = json!({ "title": "x".repeat(70 * 1024) });
    check(413, "payload_too_large")(send(http().post(&jobs_url).bearer_auth(&alice).json(&huge)).await);

    let unknown = uuid::Uuid::new_v4();
    check(404, "not_found")(send(http().get(app.url(&format!("/api/jobs/{unknown}"))).bearer_auth(&alice)).await);
    check(404, "not_found")(send(http().get(app.url("/api/jobs/not-a-uuid")).bearer_auth(&alice)).await);
    check(404, "not_found")(
        send(http().post(app.url(&format!("/api/jobs/{unknown}/recommendations"))).bearer_auth(&alice)).await,
    );
    check(403, "forbidden")(send(http().get(app.url("/api/jobs?region=south")).bearer_auth(&alice)).await);

    let north_job: String = sqlx::query_scalar("SELECT id::text FROM jobs WHERE region = 'north' LIMIT 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    check(403, "forbidden")(
        send(http().post(app.url(&format!("/api/jobs/{north_job}/recommendations"))).bearer_auth(&bob)).await,
    );
    check(404, "not_found")(
        send(http().get(app.url(&format!("/api/jobs/{north_job}/recommendations"))).bearer_auth(&alice)).await,
    );

    // Nothing above wrote anything.
    let sets: i64 = sqlx::query_scalar("SELECT count(*) FROM recommendation_sets").fetch_one(&db.pool).await.unwrap();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&db.pool).await.unwrap();
    let published: i64 = sqlx::query_scalar("SELECT last_seq FROM stream_meta").fetch_one(&db.pool).await.unwrap();
    assert_eq!((sets, events, published), (0, 0, 0));
}

#[tokio::test]
async fn sessions_me_and_the_dev_login() {
    let (db, app) = seeded_app().await;
    let me = http().get(app.url("/api/me")).bearer_auth(hour_token(&db, "carol").await).send().await.unwrap();
    assert_eq!(me.status(), 200);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["dispatcherId"], "carol");
    assert_eq!(me["groups"], json!(["region:north", "region:south"]));

    let cookie_client = reqwest::Client::builder().cookie_store(true).build().unwrap();
    let login =
        cookie_client.post(app.url("/api/dev/session")).json(&json!({"dispatcherId": "bob"})).send().await.unwrap();
    assert_eq!(login.status(), 200);
    let set_cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.starts_with("ss_session=") && set_cookie.contains("HttpOnly"), "{set_cookie}");
    let me: Value = cookie_client.get(app.url("/api/me")).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["dispatcherId"], "bob");

    let with_token = cookie_client
        .post(app.url("/api/session"))
        .json(&json!({"token": hour_token(&db, "dana").await}))
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 200);
    let me: Value = cookie_client.get(app.url("/api/me")).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["dispatcherId"], "dana");
    assert_eq!(cookie_client.delete(app.url("/api/session")).send().await.unwrap().status(), 204);
    assert_eq!(cookie_client.get(app.url("/api/me")).send().await.unwrap().status(), 401);
}

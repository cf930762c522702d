//! Jobs and their recommendations. A dispatcher acts only on jobs of regions in their groups.

use super::extract::{CurrentDispatcher, JsonBody, Path, Query};
use super::{ApiError, AppState};
use crate::recommendations::{self as recs, Job, NewJob, RecommendationSet};
use crate::validate;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/jobs", post(create_job).get(list_jobs))
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/recommendations", post(generate).get(latest))
}

/// An id that is not a UUID cannot name a job: 404 like any unknown id.
fn job_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(format!("no job {}", validate::echo(raw))))
}

/// The job, if it exists and the caller may act on its region.
pub(super) async fn visible_job(state: &AppState, current: &CurrentDispatcher, raw_id: &str) -> Result<Job, ApiError> {
    let id = job_id(raw_id)?;
    let job = recs::get_job(&state.pool, id).await?.ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    if !current.may_see_region(&job.region) {
        return Err(ApiError::forbidden(format!("you are not in group region:{}", job.region)));
    }
    Ok(job)
}

async fn create_job(
    State(state): State<AppState>,
    current: CurrentDispatcher,
    JsonBody(new_job): JsonBody<NewJob>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    new_job.validate()?;
    if !current.may_see_region(&new_job.region) {
        // An unknown region is bad input (400), a known one the caller does not hold is 403.
        if !recs::region_exists(&state.pool, &new_job.region).await? {
            return Err(recs::RecommendationError::UnknownRegion(new_job.region.clone()).into());
        }
        return Err(ApiError::forbidden(format!("you are not in group region:{}", new_job.region)));
    }
    let job = recs::create_job(&state.pool, &new_job, &current.dispatcher.dispatcher_id).await?;
    Ok((StatusCode::CREATED, Json(job)))
}

#[derive(Deserialize)]
struct ListQuery {
    region: Option<String>,
}

async fn list_jobs(
    State(state): State<AppState>,
    current: CurrentDispatcher,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<Job>>, ApiError> {
    let regions = match query.region.filter(|r| !r.is_empty()) {
        Some(region) if !validate::is_key(&region) => {
            return Err(ApiError::bad_request(
                "invalid_input",
                format!("{} is not a region key", validate::echo(&region)),
            ));
        }
        Some(region) if current.may_see_region(&region) => vec![region],
        Some(region) => return Err(ApiError::forbidden(format!("you are not in group region:{region}"))),
        None => current.regions(),
    };
    Ok(Json(recs::list_jobs(&state.pool, &regions).await?))
}

async fn get_job(
    State(state): State<AppState>,
    current: CurrentDispatcher,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(visible_job(&state, &current, &id).await?))
}

/// Generates a set now. Its RecommendationReady event is in the same transaction; the response does not
/// wait for delivery (the relay is rung after commit and publishes on its own).
async fn generate(
    State(state): State<AppState>,
    current: CurrentDispatcher,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<RecommendationSet>), ApiError> {
    let job = visible_job(&state, &current, &id).await?;
    let set = recs::generate_as(&state.pool, job.id, &current.dispatcher.dispatcher_id, state.event_write).await?;
    state.waker.wake();
    Ok((StatusCode::CREATED, Json(set)))
}

async fn latest(
    State(state): State<AppState>,
    current: CurrentDispatcher,
    Path(id): Path<String>,
) -> Result<Json<RecommendationSet>, ApiError> {
    let job = visible_job(&state, &current, &id).await?;
    let set = recs::latest_set(&state.pool, job.id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {} has no recommendations yet", job.id)))?;
    Ok(Json(set))
}

//! Delivery receipts: `POST /api/receipts` (a console's report of how far it applied the log) and
//! `GET /api/jobs/{id}/receipts` (who of the job's group has seen its latest recommendations). See
//! [`crate::receipts`] for what a receipt means and what it costs.

use super::extract::{CurrentDispatcher, Path, VerifiedCaller};
use super::jobs::visible_job;
use super::{ApiError, AppState};
use crate::position::Position;
use crate::receipts::{self, JobReceipts};
use crate::validate;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

pub fn router() -> Router<AppState> {
    Router::new().route("/receipts", post(report)).route("/jobs/{id}/receipts", get(job_receipts))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    /// `<epoch>-<seq>`: the console has applied every event of its groups up to it.
    position: String,
}

/// Stores a console's receipt: 204 once stored, whether or not it moved anything (a report of another
/// epoch, or one behind another console of the same dispatcher, changes nothing and is no error). Reports
/// are stored in batches, at most one per second per server ([`receipts::batch`]): under load the answer
/// waits up to that second.
///
/// The body is JSON whatever its `Content-Type`: a page being closed sends it with `navigator.sendBeacon`,
/// whose string bodies are `text/plain`. That is safe here because cookie-authenticated writes from other
/// origins are refused before any handler (`security.rs`), and the body is still parsed strictly.
///
/// Errors: 400 `invalid_json` (not the object above), 400 `bad_position` (not `<epoch>-<seq>`), 401 (as
/// every request: no token, invalid, expired, revoked, unknown dispatcher), 403 `dispatcher_disabled`, 413,
/// 503 (the database is unreachable).
async fn report(State(state): State<AppState>, caller: VerifiedCaller, body: Bytes) -> Result<StatusCode, ApiError> {
    let report: Report = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("a receipt is {{\"position\": \"<epoch>-<seq>\"}}: {e}"))
    })?;
    let position: Position = report.position.parse().map_err(|_| {
        ApiError::bad_request(
            "bad_position",
            format!("{} is not a position: write <epoch>-<seq>", validate::echo(&report.position)),
        )
    })?;
    // The dispatcher's access is checked by the batch (as of a read that began after this request arrived),
    // so that a report costs no read of its own.
    state.receipts.record(caller.subject(), caller.generation(), position).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The receipts of the job's latest set: 200 [`JobReceipts`], or 404/403 like `GET /api/jobs/{id}`.
async fn job_receipts(
    State(state): State<AppState>,
    current: CurrentDispatcher,
    Path(id): Path<String>,
) -> Result<Json<JobReceipts>, ApiError> {
    let job = visible_job(&state, &current, &id).await?;
    Ok(Json(receipts::job_receipts(&state.pool, job.id, &job.region).await?))
}

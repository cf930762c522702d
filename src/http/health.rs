//! `/healthz` (the process runs), `/readyz` (database and listener connected, every background task making
//! progress), `/metrics` (Prometheus).

use super::AppState;
use crate::metrics as m;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::time::Duration;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics_text))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn database_up(state: &AppState) -> bool {
    let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool);
    matches!(tokio::time::timeout(Duration::from_secs(2), ping).await, Ok(Ok(1)))
}

/// 200 only when the database answers, the LISTEN connection is up, and every supervised background task
/// (relay, listener, membership, retention) is running and made progress within its window. The body says
/// which part is not.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let database = database_up(&state).await;
    let listener = state.hub.is_listening();
    let tasks = state.supervisor.report();
    let tasks_ok = tasks.iter().all(|t| t.healthy);
    let ready = database && listener && tasks_ok;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let word = |up: bool| if up { "up" } else { "down" };
    let stalled: Vec<&str> = tasks.iter().filter(|t| !t.healthy).map(|t| t.name).collect();
    (
        status,
        Json(json!({
            "database": word(database),
            "listener": word(listener),
            "tasks": tasks,
            "stalled": stalled,
        })),
    )
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    // The backlog gauge is read at scrape time: the outbox holds only pending rows, so this is cheap.
    let pending = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox").fetch_one(&state.pool);
    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), pending).await {
        metrics::gauge!(m::OUTBOX_PENDING).set(n as f64);
    }
    let parked = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox_dead_letter").fetch_one(&state.pool);
    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), parked).await {
        metrics::gauge!(m::OUTBOX_DEAD_LETTERS).set(n as f64);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

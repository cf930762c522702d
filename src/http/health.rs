//! `/healthz` (the process runs), `/readyz` (database and listener connected), `/metrics` (Prometheus).

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

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let database = database_up(&state).await;
    let listener = state.hub.is_listening();
    let status = if database && listener { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let word = |up: bool| if up { "up" } else { "down" };
    (status, Json(json!({ "database": word(database), "listener": word(listener) })))
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    // The backlog gauge is read at scrape time: the outbox holds only pending rows, so this is cheap.
    let pending = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox").fetch_one(&state.pool);
    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), pending).await {
        metrics::gauge!(m::OUTBOX_PENDING).set(n as f64);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

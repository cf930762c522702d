//! `GET /api/openapi.json`: the OpenAPI 3.1 description of the HTTP API.
//!
//! The document is written by hand in `openapi.json` next to the routes it describes. tests/api/openapi.rs
//! keeps it in step with the router: every route in `src/http` is in it, every documented method answers,
//! and every undocumented method is 405. `make test-fuzz-api` fuzzes the server from it.

use super::AppState;
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// The document as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(document))
}

async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

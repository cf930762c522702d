//! The web edge: routes, authentication extractor, errors in the contract's shape.

pub mod admission;
pub(crate) mod connection;
mod error;
mod events;
mod extract;
mod health;
mod jobs;
mod openapi;
mod receipts;
pub mod security;
mod session;
pub(crate) mod stream_connection;
mod watches;

pub use error::{ApiError, code_for_status};

use crate::auth::TokenVerifier;
use crate::metrics as m;
use crate::outbox::RelayWaker;
use crate::stream::Hub;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_http::trace::TraceLayer;

/// Largest request body accepted (the contract: 413 above 64 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

/// The handlers' shared state, behind [`AppState`]'s `Arc`.
pub struct AppStateInner {
    /// The database.
    pub pool: PgPool,
    /// The stream hub: every SSE connection of this process subscribes to it.
    pub hub: Hub,
    /// Verifies dispatcher tokens (HS256 and the identity provider's), and holds the secret the demo login
    /// issues tokens with.
    pub tokens: TokenVerifier,
    /// Dispatchers with their groups and access, read fresh for each request (concurrent requests share the
    /// query).
    pub dispatchers: crate::coalesce::Coalescer<String, crate::auth::DispatcherRecord>,
    /// Rung after a write to the outbox commits, so that the relay in this process publishes at once.
    pub waker: RelayWaker,
    /// Enables `/api/dev/*` (demo login).
    pub dev: bool,
    /// Renders `/metrics` (Prometheus text format).
    pub metrics: PrometheusHandle,
    /// Lifetime of tokens minted by `POST /api/dev/session`.
    pub dev_token_ttl: Duration,
    /// The process's background tasks, for `/readyz`.
    pub supervisor: crate::supervisor::Supervisor,
    /// Whether `POST /api/jobs/{id}/recommendations` writes its event: always, except in the benchmark's
    /// baseline (see [`ServerConfig::bench_only_event_write`](crate::server::ServerConfig)).
    pub event_write: crate::recommendations::EventWrite,
    /// How many event streams each dispatcher, and the instance, may hold.
    pub stream_limits: crate::stream::StreamLimits,
    /// How browsers reach this server: the origin check, the security headers, the cookie's `Secure`.
    pub security: security::SecurityConfig,
    /// Stores consoles' receipts in batches (and announces them to broker-fed nodes, which hear no NOTIFY).
    pub receipts: crate::receipts::ReceiptBatcher,
}

impl AppState {
    /// Shares `inner` among the handlers.
    pub fn new(inner: AppStateInner) -> Self {
        Self(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppStateInner;
    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

/// The whole HTTP surface. The browser console answers every other path: from `static_dir` when given,
/// else the one embedded at build time. Every response, the console's included, gets the security headers.
pub fn router(state: AppState, static_dir: Option<PathBuf>) -> Router {
    let headers = security::SecurityHeaders::new(&state.security);
    let api = Router::new()
        .merge(session::router())
        .merge(jobs::router())
        .merge(watches::router())
        .merge(receipts::router())
        .merge(events::router())
        .merge(openapi::router())
        .fallback(|| async { ApiError::not_found("no such API route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
        });
    let app = Router::new()
        .nest("/api", api)
        // `nest` leaves `/api/` itself out; it is an API path like any other, not a page of the console.
        .route_service("/api/", axum::routing::any(|| async { ApiError::not_found("no such API route") }))
        .merge(health::router())
        .layer(axum::middleware::from_fn_with_state(state.clone(), security::refuse_cross_origin))
        .layer(axum::middleware::from_fn_with_state(state.clone(), record_request))
        // Whatever the framework refuses (query, path, body, method, length) leaves in the error shape.
        .layer(axum::middleware::map_response(error::error_shape))
        .layer(TraceLayer::new_for_http())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state);
    // The Host rule inside the headers layer, so that its 400 carries the security headers too.
    crate::console::serve(app, static_dir)
        .layer(axum::middleware::from_fn(require_one_host))
        .layer(axum::middleware::map_response_with_state(headers, security::add_headers))
}

/// RFC 9112, section 3.2: a server must answer 400 to an HTTP/1.1 request without a `Host` header or
/// with more than one (an HTTP/1.0 request may lack it). Without this, a request could reach a handler
/// with no authority to check an `Origin` against.
async fn require_one_host(request: Request, next: Next) -> Response {
    let hosts = request.headers().get_all(axum::http::header::HOST).iter().count();
    if request.version() == axum::http::Version::HTTP_11 && hosts != 1 {
        let why = if hosts == 0 { "carries no Host header" } else { "carries more than one Host header" };
        return ApiError::bad_request("bad_request", format!("this HTTP/1.1 request {why}; it needs exactly one"))
            .into_response();
    }
    next.run(request).await
}

/// HTTP request duration by route and status.
async fn record_request(State(_): State<AppState>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(m::HTTP_DURATION, "route" => route, "method" => method, "status" => status)
        .record(started.elapsed().as_secs_f64());
    response.into_response()
}

#[cfg(test)]
mod fuzz_tests;

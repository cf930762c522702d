//! Sessions: exchange a token for the HttpOnly cookie, the demo login under `--dev`, and `GET /api/me`.

use super::extract::{CurrentDispatcher, JsonBody, SECURE_SESSION_COOKIE, SESSION_COOKIE};
use super::{ApiError, AppState};
use crate::auth::{self, Dispatcher};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use axum_extra::extract::CookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use serde::Deserialize;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/me", get(me))
        .route("/session", post(create_session).delete(end_session))
        .route("/dev/session", post(dev_session))
        .route("/dev/dispatchers", get(dev_dispatchers))
}

async fn me(current: CurrentDispatcher) -> Json<Dispatcher> {
    Json(current.dispatcher)
}

#[derive(Deserialize)]
struct TokenBody {
    token: String,
}

/// The session cookie: `Secure` under the `__Host-` name when the browser came over HTTPS (configured, or
/// said by a trusted proxy), else the plain `ss_session` (a browser would drop a `Secure` cookie over HTTP).
fn session_cookie(secure: bool, token: String, max_age_secs: i64) -> Cookie<'static> {
    let name = if secure { SECURE_SESSION_COOKIE } else { SESSION_COOKIE };
    Cookie::build((name, token))
        .http_only(true)
        .secure(secure)
        .same_site(SameSite::Lax)
        .path("/")
        .max_age(time_seconds(max_age_secs))
        .build()
}

/// A Set-Cookie that deletes the cookie `name` (with the attributes it was set with, or the browser keeps it).
fn cleared(name: &'static str) -> Cookie<'static> {
    Cookie::build((name, ""))
        .http_only(true)
        .secure(name == SECURE_SESSION_COOKIE)
        .same_site(SameSite::Lax)
        .path("/")
        .max_age(time::Duration::ZERO)
        .expires(time::OffsetDateTime::UNIX_EPOCH)
        .build()
}

/// `jar` with the new session cookie; over HTTPS the plain one goes, so that one session is left.
fn signed_in(state: &AppState, headers: &HeaderMap, jar: CookieJar, token: String, max_age: i64) -> CookieJar {
    let secure = state.security.is_https(headers);
    let jar = jar.add(session_cookie(secure, token, max_age));
    if secure && jar.get(SESSION_COOKIE).is_some() { jar.add(cleared(SESSION_COOKIE)) } else { jar }
}

fn time_seconds(secs: i64) -> time::Duration {
    time::Duration::seconds(secs.max(0))
}

/// `POST /api/session {"token"}`: checks the token and stores it in the session cookie.
async fn create_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: CookieJar,
    JsonBody(body): JsonBody<TokenBody>,
) -> Result<Response, ApiError> {
    let (record, verified) = super::extract::authenticate(&state, body.token.trim()).await?;
    let dispatcher = record.dispatcher;
    let max_age = verified.claims.exp - chrono::Utc::now().timestamp();
    tracing::info!(dispatcher = %dispatcher.dispatcher_id, "signed in with a token");
    let jar = signed_in(&state, &headers, jar, body.token.trim().to_owned(), max_age);
    Ok((jar, Json(dispatcher)).into_response())
}

/// `DELETE /api/session`: clears both cookie names, whichever the browser holds (it may hold both after the
/// console moved behind a TLS proxy).
async fn end_session(jar: CookieJar) -> Response {
    let jar = jar.add(cleared(SESSION_COOKIE)).add(cleared(SECURE_SESSION_COOKIE));
    (jar, StatusCode::NO_CONTENT).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DevSessionBody {
    dispatcher_id: String,
}

/// `POST /api/dev/session {"dispatcherId"}` (only under `--dev`): signs in as a demo dispatcher.
async fn dev_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: CookieJar,
    JsonBody(body): JsonBody<DevSessionBody>,
) -> Result<Response, ApiError> {
    if !state.dev {
        return Err(ApiError::not_found("the demo login exists only under serve --dev"));
    }
    crate::validate::dispatcher_id("dispatcherId", &body.dispatcher_id)?;
    let record =
        state.dispatchers.get(body.dispatcher_id.clone()).await?.ok_or_else(|| {
            ApiError::not_found(format!("no dispatcher {}", crate::validate::echo(&body.dispatcher_id)))
        })?;
    let generation = record.access.token_generation;
    record.access.admits(auth::TokenOrigin::Issued { generation })?; // a disabled dispatcher cannot sign in
    let dispatcher = record.dispatcher;
    let secret = state.tokens.secret().ok_or_else(|| {
        ApiError::not_found("the demo login needs an HS256 secret (SMARTSCHEDULER_AUTH_SECRET or serve --dev)")
    })?;
    let token = secret.issue(&dispatcher.dispatcher_id, generation, state.dev_token_ttl)?;
    tracing::info!(dispatcher = %dispatcher.dispatcher_id, "signed in (demo login)");
    let jar = signed_in(&state, &headers, jar, token, state.dev_token_ttl.as_secs() as i64);
    Ok((jar, Json(dispatcher)).into_response())
}

/// `GET /api/dev/dispatchers` (only under `--dev`): who one can sign in as (disabled dispatchers left out).
async fn dev_dispatchers(State(state): State<AppState>) -> Result<Json<Vec<Dispatcher>>, ApiError> {
    if !state.dev {
        return Err(ApiError::not_found("the demo login exists only under serve --dev"));
    }
    // A disabled dispatcher cannot sign in, so is not offered.
    let all = auth::list_dispatchers(&state.pool).await?;
    Ok(Json(all.into_iter().filter(|d| !d.access.disabled).map(|d| d.dispatcher).collect()))
}

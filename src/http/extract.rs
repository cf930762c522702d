//! Extractors: the signed-in dispatcher, and JSON bodies, query strings and path parameters whose
//! rejections come in the contract's error shape (axum's own answer in `text/plain`).

use super::{ApiError, AppState};
use crate::auth::{AuthError, Claims, Dispatcher, DispatcherRecord, TokenOrigin};
use crate::recommendations::region_of_group;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum_extra::extract::CookieJar;
use serde::de::DeserializeOwned;

/// The session cookie over plain HTTP (the contract's name).
pub const SESSION_COOKIE: &str = "ss_session";
/// The session cookie over HTTPS. The `__Host-` prefix makes the browser accept it only with `Secure`,
/// `Path=/` and no `Domain`, so that a sibling subdomain or a plain-HTTP page cannot plant or shadow it.
pub const SECURE_SESSION_COOKIE: &str = "__Host-ss_session";

/// The session token from either cookie (the `__Host-` one first: it cannot have been planted).
pub fn session_token(headers: &axum::http::HeaderMap) -> Option<String> {
    let jar = CookieJar::from_headers(headers);
    jar.get(SECURE_SESSION_COOKIE).or_else(|| jar.get(SESSION_COOKIE)).map(|c| c.value().to_owned())
}

/// The caller, from `Authorization: Bearer <token>` or the session cookie (either name). Groups and access
/// (disabled, token generation) come from the database on every request, in one query, never from the
/// token.
pub struct CurrentDispatcher {
    pub dispatcher: Dispatcher,
    pub claims: Claims,
    /// This server's token (with its generation) or the identity provider's; open streams keep checking it.
    pub origin: TokenOrigin,
}

impl CurrentDispatcher {
    /// The regions whose jobs this dispatcher may see (their `region:*` groups).
    pub fn regions(&self) -> Vec<String> {
        self.dispatcher.groups.iter().filter_map(|g| region_of_group(g)).map(str::to_owned).collect()
    }

    pub fn may_see_region(&self, region: &str) -> bool {
        self.dispatcher.groups.iter().any(|g| region_of_group(g) == Some(region))
    }
}

fn bearer(parts: &Parts) -> Option<String> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

impl FromRequestParts<AppState> for CurrentDispatcher {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        VerifiedCaller::from_request_parts(parts, state).await?.into_current(state).await
    }
}

/// The caller's token, checked (signature, times, audience) but with its dispatcher not yet read: for a
/// request that may be refused on the token's subject alone, before it costs the database a read (a token
/// opening streams in a loop past its limit, issue 22). [`VerifiedCaller::into_current`] finishes the check.
pub struct VerifiedCaller(crate::auth::Verified);

impl VerifiedCaller {
    /// The dispatcher id the token names (not yet known to exist).
    pub fn subject(&self) -> &str {
        &self.0.claims.sub
    }

    /// The dispatcher's token generation the token carries (`None`: the identity provider's token), which
    /// whoever finishes the check must compare with theirs.
    pub fn generation(&self) -> Option<i64> {
        self.0.origin.generation()
    }

    /// The dispatcher, with groups and access read now. Errors as [`authenticate`]'s.
    pub async fn into_current(self, state: &AppState) -> Result<CurrentDispatcher, ApiError> {
        let record = admitted_dispatcher(state, &self.0).await?;
        Ok(CurrentDispatcher { dispatcher: record.dispatcher, claims: self.0.claims, origin: self.0.origin })
    }
}

impl FromRequestParts<AppState> for VerifiedCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).or_else(|| session_token(&parts.headers)).ok_or(AuthError::MissingToken)?;
        Ok(Self(state.tokens.verify(&token).await?))
    }
}

/// Checks `token` and its dispatcher's access: the one check of every request and of `POST /api/session`.
/// Errors: 401 (`unauthorized`, `invalid_token`, `token_expired`, `unknown_dispatcher`, `token_revoked`),
/// 403 `dispatcher_disabled`, 503 when the database cannot be reached.
pub(super) async fn authenticate(
    state: &AppState,
    token: &str,
) -> Result<(DispatcherRecord, crate::auth::Verified), ApiError> {
    let verified = state.tokens.verify(token).await?;
    let record = admitted_dispatcher(state, &verified).await?;
    Ok((record, verified))
}

/// The dispatcher a verified token names, if it exists and the token is still in force for it.
async fn admitted_dispatcher(state: &AppState, verified: &crate::auth::Verified) -> Result<DispatcherRecord, ApiError> {
    let record = state
        .dispatchers
        .get(verified.claims.sub.clone())
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown_dispatcher", "the token's dispatcher does not exist"))?;
    record.access.admits(verified.origin)?;
    Ok(record)
}

/// A JSON body sent as `Content-Type: application/json` (parameters such as `charset` allowed): any other
/// type is 415, malformed JSON 400, an oversized body 413. The type is required because a cross-site
/// `<form>` can send a JSON-looking body as `text/plain` without the preflight that `application/json` needs.
pub struct JsonBody<T>(pub T);

/// Whether the request says its body is JSON.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "this request takes a JSON body: send it with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection: BytesRejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "request bodies are limited to 64 KiB",
                )
            } else {
                ApiError::bad_request("bad_request", rejection.body_text())
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request("invalid_json", format!("malformed JSON body: {e}")))
    }
}

/// A query string read into `T`; a malformed one (a repeated parameter such as `?groups=a&groups=b`, a value
/// of the wrong type, bad percent-encoding) is 400 `invalid_query`.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|rejection| ApiError::bad_request("invalid_query", rejection.body_text()))
    }
}

/// Path parameters read into `T`; a segment that cannot be read (not UTF-8 once percent-decoded) is 400
/// `invalid_path`.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::PathRejection;
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            // The route and the handler disagree about the parameters: a bug, not the client's input.
            Err(rejection @ PathRejection::MissingPathParams(_)) => {
                tracing::error!(%rejection, "route without the path parameters its handler expects");
                Err(ApiError::internal())
            }
            Err(rejection) => Err(ApiError::bad_request("invalid_path", rejection.body_text())),
        }
    }
}

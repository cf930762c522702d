//! `GET /api/events`: the SSE stream. Validates and authorises here; the stream itself is `crate::stream`.

use super::extract::{Query, VerifiedCaller};
use super::{ApiError, AppState};
use crate::outbox::GroupKey;
use crate::position::Position;
use crate::stream::{StreamLimitError, StreamRequest, open_stream};
use crate::validate::echo;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{TimeZone, Utc};
use futures::StreamExt;
use serde::Deserialize;

pub fn router() -> Router<AppState> {
    Router::new().route("/events", get(events))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventsQuery {
    groups: Option<String>,
    last_event_id: Option<String>,
}

/// The resume position: the `Last-Event-ID` header, else `?lastEventId=`. The header wins because a
/// browser's automatic reconnect sends a newer header than the URL it was first opened with.
///
/// A source that is empty or blank names no position and falls through to the next one: some
/// EventSource polyfills send `Last-Event-ID:` empty on their first connect, and taking that as "start
/// at the head" would skip every event between the query's position and the head without a word.
/// Repeated headers must agree (after trimming); two different positions are a 400, not a guess.
/// Errors: 400 `bad_last_event_id` for a position that does not parse, a header that is not UTF-8 or
/// headers that disagree.
fn resume_position(headers: &HeaderMap, query: Option<&str>) -> Result<Option<Position>, ApiError> {
    let mut named: Option<&str> = None;
    for value in headers.get_all("last-event-id") {
        let value = value.to_str().map_err(|_| {
            ApiError::bad_request("bad_last_event_id", "the Last-Event-ID header is not UTF-8 text".to_owned())
        })?;
        let value = value.trim();
        match named {
            _ if value.is_empty() => {}
            None => named = Some(value),
            Some(earlier) if earlier == value => {}
            Some(earlier) => {
                return Err(ApiError::bad_request(
                    "bad_last_event_id",
                    format!("two different Last-Event-ID headers ({} and {}): send one", echo(earlier), echo(value)),
                ));
            }
        }
    }
    let Some(raw) = named.or_else(|| query.map(str::trim).filter(|q| !q.is_empty())) else { return Ok(None) };
    raw.parse::<Position>()
        .map(Some)
        .map_err(|e| ApiError::bad_request("bad_last_event_id", format!("invalid Last-Event-ID {}: {e}", echo(raw))))
}

/// `?groups=a,b`: absent means all of the dispatcher's groups. Present, it must name at least one group and
/// every element must be a group key: an empty list (`groups=`, `groups=,`, a blank) is a 400, not a
/// subscription to nothing whose heartbeats would carry the client's position past events it never saw.
/// A group the dispatcher does not hold is 403.
pub(super) fn requested_groups(raw: Option<&str>, held: &[String]) -> Result<Option<Vec<String>>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let mut groups = Vec::new();
    for key in raw.split(',').map(str::trim) {
        if key.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_groups",
                format!(
                    "groups={raw:?} has an empty element: name at least one group, separated by commas, or leave groups out"
                ),
            ));
        }
        let key = GroupKey::parse(key).map_err(|e| ApiError::bad_request("invalid_group", e.to_string()))?;
        if !held.iter().any(|g| g == key.as_str()) {
            return Err(ApiError::forbidden(format!("you are not in group {key}")));
        }
        groups.push(key.as_str().to_owned());
    }
    groups.sort();
    groups.dedup();
    Ok(Some(groups))
}

async fn events(
    State(state): State<AppState>,
    caller: VerifiedCaller,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    // A dispatcher at its limit is refused on its token alone, before its record is read: a token that
    // floods streams then costs the database nothing, and everyone else's lookups do not queue behind its.
    if let Err(refusal) = state.stream_limits.check(caller.subject()) {
        return Ok(stream_refused(&refusal));
    }
    let current = caller.into_current(&state).await?;
    let resume_from = resume_position(&headers, query.last_event_id.as_deref())?;
    let requested = requested_groups(query.groups.as_deref(), &current.dispatcher.groups)?;
    let groups = requested.clone().unwrap_or_else(|| current.dispatcher.groups.clone());
    if groups.is_empty() {
        return Err(ApiError::forbidden("you belong to no group: there is nothing to stream".to_owned()));
    }
    let permit = match state.stream_limits.acquire(&current.dispatcher.dispatcher_id) {
        Ok(permit) => permit,
        Err(refusal) => return Ok(stream_refused(&refusal)),
    };
    let meta = state.hub.current_meta().await?;
    let request = StreamRequest {
        dispatcher_id: current.dispatcher.dispatcher_id.clone(),
        requested_groups: requested,
        groups,
        resume_from,
        token_generation: current.origin.generation(),
        token_expires_at: Utc.timestamp_opt(current.claims.exp, 0).single().unwrap_or_else(Utc::now),
    };
    // The permit lives as long as the body: the stream's place is freed when its connection ends.
    let body = Body::from_stream(open_stream(state.hub.clone(), request, meta).map(move |frame| {
        let _held = &permit;
        frame
    }));
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        // Proxies (nginx) must not buffer the stream.
        (HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no")),
    ];
    Ok((headers, body).into_response())
}

/// How long a refused client is told to wait (`Retry-After`, seconds).
const RETRY_AFTER_SECS: &str = "5";

/// 429 `too_many_streams` (this dispatcher's limit) or 503 `server_busy` (the instance's), with `Retry-After`.
fn stream_refused(refusal: &StreamLimitError) -> Response {
    let error = match refusal {
        StreamLimitError::PerDispatcher(_) => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_streams", refusal.to_string())
        }
        StreamLimitError::Total(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_busy", refusal.to_string())
        }
    };
    ([(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS))], error).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_wins_over_the_query() {
        let mut headers = HeaderMap::new();
        headers.insert("last-event-id", HeaderValue::from_static("0000000a-5"));
        let p = resume_position(&headers, Some("0000000a-3")).unwrap().unwrap();
        assert_eq!(p.seq, 5);
    }

    /// Every way a position can arrive: each header (absent, empty, blank, a position, garbage), repeated
    /// or not, with each query (the same kinds). The header's position wins when it names one; a header
    /// that names none never hides the query's; garbage anywhere that is consulted is a 400.
    mod every_way_a_position_arrives {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Source {
            Empty,
            Blank(String),
            Position(i64),
            Garbage,
        }

        impl Source {
            fn text(&self) -> String {
                match self {
                    Source::Empty => String::new(),
                    Source::Blank(b) => b.clone(),
                    Source::Position(seq) => format!(" 0000000a-{seq}\t"),
                    Source::Garbage => "nope".to_owned(),
                }
            }
        }

        fn source() -> impl Strategy<Value = Source> {
            prop_oneof![
                Just(Source::Empty),
                "[ \t]{1,4}".prop_map(Source::Blank),
                (0i64..1_000_000).prop_map(Source::Position),
                Just(Source::Garbage),
            ]
        }

        proptest! {
            #[test]
            fn the_first_source_that_names_a_position_is_used(
                headers in proptest::collection::vec(source(), 0..3),
                query in proptest::option::of(source()),
            ) {
                let mut map = HeaderMap::new();
                for h in &headers {
                    map.append("last-event-id", HeaderValue::from_str(&h.text()).unwrap());
                }
                let query_text = query.as_ref().map(Source::text);
                let got = resume_position(&map, query_text.as_deref()).map(|p| p.map(|p| p.seq));

                let named: Vec<&Source> =
                    headers.iter().filter(|h| matches!(h, Source::Position(_) | Source::Garbage)).collect();
                let expected: Result<Option<i64>, ()> = match named.first() {
                    Some(Source::Position(seq)) if named.iter().all(|h| matches!(h, Source::Position(s) if s == seq)) => Ok(Some(*seq)),
                    Some(_) => Err(()),
                    None => match &query {
                        Some(Source::Position(seq)) => Ok(Some(*seq)),
                        Some(Source::Garbage) => Err(()),
                        _ => Ok(None),
                    },
                };
                match (got, expected) {
                    (Ok(got), Ok(expected)) => prop_assert_eq!(got, expected),
                    (Err(error), Err(())) => prop_assert_eq!(error.code, "bad_last_event_id"),
                    (got, expected) => prop_assert!(false, "got {:?}, expected {:?}", got.map_err(|e| e.message), expected),
                }
            }
        }
    }

    #[test]
    fn a_malformed_position_is_a_400_with_its_code() {
        let err = resume_position(&HeaderMap::new(), Some("nope")).unwrap_err();
        assert_eq!(err.code, "bad_last_event_id");
    }

    #[test]
    fn groups_not_held_are_forbidden() {
        let held = vec!["region:north".to_owned()];
        assert_eq!(requested_groups(Some("region:south"), &held).unwrap_err().code, "forbidden");
        assert_eq!(requested_groups(Some("region:north"), &held).unwrap(), Some(held.clone()));
        assert_eq!(requested_groups(None, &held).unwrap(), None);
        assert_eq!(requested_groups(Some("Bad Key"), &held).unwrap_err().code, "invalid_group");
    }

    #[test]
    fn an_empty_or_blank_group_list_is_a_400_never_a_stream_of_nothing() {
        let held = vec!["region:north".to_owned()];
        for raw in ["", ",", ",,,", " ", "region:north,", ",region:north", "region:north,,region:north"] {
            let error = requested_groups(Some(raw), &held).unwrap_err();
            assert_eq!((error.status.as_u16(), error.code), (400, "invalid_groups"), "groups={raw:?}");
        }
    }
}

//! Property tests that fuzz the edge's hand-written parsers: `?groups=` lists and the lean transport's
//! request head. No input may panic; every input is either accepted or refused in the contract's shape.

use super::events::requested_groups;
use super::stream_connection::{encode_burst, error_response, parse_head};
use axum::http::{Method, StatusCode};
use proptest::prelude::*;

/// The error body of `response`, which must be the contract's shape with a snake_case code.
fn error_code(response: axum::response::Response) -> Result<String, TestCaseError> {
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    prop_assert_eq!(content_type.as_deref(), Some("application/json"));
    let bytes = futures::executor::block_on(axum::body::to_bytes(response.into_body(), 64 * 1024))
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let body: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let code = body["error"]["code"].as_str().unwrap_or_default().to_owned();
    prop_assert!(!code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{}", body);
    prop_assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", body);
    Ok(code)
}

fn held() -> Vec<String> {
    vec!["region:north".to_owned(), "region:south".to_owned(), "team:hvac".to_owned()]
}

fn check_groups(raw: &str) -> Result<(), TestCaseError> {
    let held = held();
    match requested_groups(Some(raw), &held) {
        Ok(None) => {}
        Ok(Some(groups)) => {
            prop_assert!(groups.iter().all(|g| held.contains(g)), "{:?} grants groups not held", raw);
            prop_assert!(groups.windows(2).all(|w| w[0] < w[1]), "sorted and without repeats");
        }
        Err(error) => {
            prop_assert!(matches!(error.status, StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN), "{:?}", error);
            error_code(axum::response::IntoResponse::into_response(error))?;
        }
    }
    Ok(())
}

/// A request head made of plausible pieces, some of them wrong.
fn head() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof!["GET", "POST", "get", "", "GET GET"];
    let target = prop_oneof![
        Just("/api/events".to_owned()),
        "/api/events\\?[a-zA-Z0-9=&,:%._ -]{0,40}",
        "[ -~]{0,30}",
        any::<String>().prop_map(|s| s.chars().take(20).collect()),
    ];
    let version = prop_oneof!["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.12", ""];
    let header = prop_oneof![
        "[A-Za-z-]{1,12}: [ -~]{0,30}",
        Just("Content-Length: 3".to_owned()),
        Just("Content-Length: 0".to_owned()),
        Just("Transfer-Encoding: chunked".to_owned()),
        "[ -~]{0,20}",
        proptest::collection::vec(any::<u8>(), 0..20).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    let headers = proptest::collection::vec(header, 0..8);
    let line_end = prop_oneof![Just("\r\n"), Just("\n"), Just("\r")];
    (method, target, version, headers, line_end).prop_map(|(method, target, version, headers, eol)| {
        let mut head = format!("{method} {target} {version}{eol}");
        for h in headers {
            head.push_str(&h);
            head.push_str(eol);
        }
        head.push_str(eol);
        head.into_bytes()
    })
}

fn check_head(bytes: &[u8]) -> Result<(), TestCaseError> {
    match parse_head(bytes) {
        Ok(None) => prop_assert!(bytes.len() < 16 * 1024, "a head over the limit must be refused"),
        Ok(Some(request)) => prop_assert_eq!(request.method(), Method::GET),
        Err(status) => {
            prop_assert!(status.is_client_error(), "{}", status);
            let code = error_code(error_response(status))?;
            prop_assert!(code == "bad_request" || code == "request_header_fields_too_large", "{}", code);
        }
    }
    Ok(())
}

proptest! {
    // 2048 cases, or PROPTEST_CASES (proptest applies its environment variables over this
    // configuration); a failure prints its shrunk input and is not saved to a file (docs/fuzzing.md).
    #![proptest_config(proptest::test_runner::contextualize_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(2048)
    }))]

    #[test]
    fn any_group_list_is_accepted_or_refused_in_the_contract_shape(raw in any::<String>()) {
        check_groups(&raw)?;
    }

    #[test]
    fn group_lists_of_near_valid_keys_are_accepted_or_refused_in_the_contract_shape(
        raw in "(region:north|region:south|team:hvac|region:east|Region:north|[a-z:_-]{0,6}|,| |%2C){0,8}"
    ) {
        check_groups(&raw)?;
    }

    #[test]
    fn any_bytes_as_a_request_head_are_a_get_or_a_refusal_in_the_contract_shape(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048)
    ) {
        check_head(&bytes)?;
    }

    #[test]
    fn a_burst_of_frames_decodes_to_the_same_frames_in_order(
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 1..40)
    ) {
        let burst: Vec<bytes::Bytes> = frames.iter().cloned().map(bytes::Bytes::from).collect();
        prop_assert_eq!(decode_chunks(&encode_burst(&burst, true))?, frames.clone());
        prop_assert_eq!(encode_burst(&burst, false), frames.concat());
    }

    #[test]
    fn plausible_request_heads_and_their_prefixes_are_a_get_or_a_refusal_in_the_contract_shape(
        bytes in head(), cut in any::<prop::sample::Index>()
    ) {
        check_head(&bytes)?;
        check_head(&bytes[..cut.index(bytes.len() + 1)])?;
    }
}

#[test]
fn an_oversized_head_is_refused_with_431() {
    let mut head = b"GET /api/events HTTP/1.1\r\nCookie: ".to_vec();
    head.resize(16 * 1024 + 1, b'x');
    assert_eq!(parse_head(&head).unwrap_err(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

#[test]
fn every_refusal_of_the_stream_transport_has_its_own_stable_code() {
    let code = |status| error_code(error_response(status)).expect("the error shape");
    assert_eq!(code(StatusCode::BAD_REQUEST), "bad_request");
    assert_eq!(code(StatusCode::REQUEST_TIMEOUT), "request_timeout");
    assert_eq!(code(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE), "request_header_fields_too_large");
}

/// Splits an HTTP/1.1 chunked body (without the last chunk) into its chunks, as a client would.
fn decode_chunks(mut body: &[u8]) -> Result<Vec<Vec<u8>>, TestCaseError> {
    let mut chunks = Vec::new();
    while !body.is_empty() {
        let line_end = body.windows(2).position(|w| w == b"\r\n").ok_or_else(|| TestCaseError::fail("no size line"))?;
        let size = std::str::from_utf8(&body[..line_end]).ok().and_then(|s| usize::from_str_radix(s, 16).ok());
        let size = size.ok_or_else(|| TestCaseError::fail("bad size line"))?;
        let data = body.get(line_end + 2..line_end + 2 + size).ok_or_else(|| TestCaseError::fail("short chunk"))?;
        prop_assert_eq!(body.get(line_end + 2 + size..line_end + 4 + size), Some(&b"\r\n"[..]));
        chunks.push(data.to_vec());
        body = &body[line_end + 4 + size..];
    }
    Ok(chunks)
}

//! `GET /api/openapi.json` describes the router as it is: every route in src/http is documented, every
//! documented operation is routed, and every method a documented path does not list is 405.

use crate::app::*;
use crate::helpers::*;
use reqwest::Method;
use serde_json::Value;
use std::collections::BTreeSet;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// The paths of every `.route("...")` in src/http, as served (the API router is nested under /api).
fn routed_paths() -> BTreeSet<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http");
    let mut paths = BTreeSet::new();
    for entry in std::fs::read_dir(dir).expect("src/http") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        let nested = !path.ends_with("health.rs");
        for piece in source.split(".route(\"").skip(1) {
            let route = piece.split('"').next().unwrap();
            paths.insert(if nested { format!("/api{route}") } else { route.to_owned() });
        }
    }
    paths
}

#[tokio::test]
async fn the_served_document_matches_the_router() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let response = http().get(app.url("/api/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let document: Value = response.json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1."), "OpenAPI 3.1");
    let paths = document["paths"].as_object().expect("paths");

    let documented: BTreeSet<String> = paths.keys().cloned().collect();
    assert_eq!(documented, routed_paths(), "documented paths vs. .route(...) in src/http");

    let job = uuid::Uuid::new_v4().to_string();
    for (path, operations) in paths {
        let url = app.url(&path.replace("{id}", &job));
        for method in METHODS {
            let response = http().request(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(), &url);
            let response = response.send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap();
            if operations.get(method).is_some() {
                let documented_statuses = operations[method]["responses"].as_object().unwrap();
                assert!(status != 405, "{method} {path} is documented but not routed");
                assert!(!body.contains("no such API route"), "{method} {path} is documented but not routed");
                assert!(
                    documented_statuses.contains_key(&status.to_string()),
                    "{method} {path}: {status} undocumented"
                );
            } else {
                assert_eq!(status, 405, "{method} {path} is routed but not documented: {body}");
            }
        }
    }
}

/// A JSON object with the same key twice parses, silently keeping the last one (serde_json, and the
/// fuzzer's parser alike): a response documented twice would lose one description without a word.
#[test]
fn the_document_names_no_key_twice_in_one_object() {
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
    struct NoDuplicates;
    impl<'de> serde::Deserialize<'de> for NoDuplicates {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(NoDuplicates)
        }
    }
    impl<'de> Visitor<'de> for NoDuplicates {
        type Value = NoDuplicates;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut seen = BTreeSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key.clone()) {
                    return Err(serde::de::Error::custom(format!("key {key:?} twice in one object")));
                }
                map.next_value::<NoDuplicates>()?;
            }
            Ok(NoDuplicates)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<NoDuplicates>()?.is_some() {}
            Ok(NoDuplicates)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(NoDuplicates)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(NoDuplicates)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(NoDuplicates)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(NoDuplicates)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(NoDuplicates)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(NoDuplicates)
        }
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/openapi.json");
    let text = std::fs::read_to_string(path).expect("openapi.json");
    if let Err(error) = serde_json::from_str::<NoDuplicates>(&text) {
        panic!("src/http/openapi.json: {error}");
    }
}

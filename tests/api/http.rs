//! The HTTP surface as an outside client sees it before any traffic: metric names, error shapes.

use crate::app::*;
use crate::helpers::*;
use serde_json::Value;

#[tokio::test]
async fn a_fresh_server_lists_every_contract_metric_and_answers_errors_in_the_contract_shape() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;

    let metrics = http().get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for name in [
        "smartscheduler_events_published_total",
        "smartscheduler_outbox_pending",
        "smartscheduler_publish_lag_seconds",
        "smartscheduler_sse_connections",
        "smartscheduler_sse_events_sent_total",
        "smartscheduler_sse_catchup_total",
    ] {
        assert!(metrics.lines().any(|l| l.starts_with(name)), "/metrics lacks {name}");
    }
    // The HTTP duration histogram appears once a request has been served (this scrape is one).
    let metrics = http().get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("smartscheduler_http_request_duration_seconds_bucket{"), "{metrics}");

    for (method, path, status, code) in [
        (reqwest::Method::DELETE, "/api/jobs", 405, "method_not_allowed"),
        (reqwest::Method::GET, "/api/no-such-route", 404, "not_found"),
        (reqwest::Method::GET, "/api/me", 401, "unauthorized"),
    ] {
        let response = http().request(method.clone(), app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{method} {path}");
    }
    assert_eq!(http().get(app.url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(http().get(app.url("/readyz")).send().await.unwrap().status(), 200);
}

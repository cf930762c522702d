//! Prometheus metrics. Their names are part of the external interface (docs/http-api.md, Metrics).

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Counter: events moved from the outbox to `event_log` by this process.
pub const EVENTS_PUBLISHED: &str = "smartscheduler_events_published_total";
/// Gauge: outbox rows waiting to be published.
pub const OUTBOX_PENDING: &str = "smartscheduler_outbox_pending";
/// Histogram, seconds: from an outbox row's creation to its publish.
pub const PUBLISH_LAG: &str = "smartscheduler_publish_lag_seconds";
/// Gauge: open event streams.
pub const SSE_CONNECTIONS: &str = "smartscheduler_sse_connections";
/// Counter, labelled `reason` (`per_dispatcher`, `instance`): event streams refused at a limit.
pub const SSE_STREAMS_REFUSED: &str = "smartscheduler_sse_streams_refused_total";
/// Counter: connections closed before their request head arrived, to make room (see `http::admission`).
pub const CONNECTIONS_EVICTED: &str = "smartscheduler_http_connections_evicted_total";
/// Counter: connections refused because every connection was taken.
pub const CONNECTIONS_REFUSED: &str = "smartscheduler_http_connections_refused_total";
/// Counter: events written to event streams.
pub const SSE_EVENTS_SENT: &str = "smartscheduler_sse_events_sent_total";
/// Counter: streams that fell behind the live fan-out and read from the database.
pub const SSE_CATCHUP: &str = "smartscheduler_sse_catchup_total";
/// Gauge: streams' catch-up reads of the database waiting for their turn.
pub const SSE_CATCHUP_WAITING: &str = "smartscheduler_sse_catchup_reads_waiting";
/// Counter: reads of `event_log` by streams (a resume inside the memory window reads none).
pub const SSE_BACKLOG_READS: &str = "smartscheduler_sse_backlog_db_reads_total";
/// Counter: `event: reset` sent to resuming clients.
pub const SSE_RESETS: &str = "smartscheduler_sse_resets_total";
/// Histogram, seconds, labelled `route`, `method`, `status`: HTTP request durations.
pub const HTTP_DURATION: &str = "smartscheduler_http_request_duration_seconds";
/// Counter: times the LISTEN connection was lost and re-established.
pub const LISTENER_RECONNECTS: &str = "smartscheduler_listener_reconnects_total";
/// Counter: outbox rows this process parked in `outbox_dead_letter` as unpublishable.
pub const OUTBOX_PARKED: &str = "smartscheduler_outbox_parked_total";
/// Gauge: rows in `outbox_dead_letter` (read at scrape time).
pub const OUTBOX_DEAD_LETTERS: &str = "smartscheduler_outbox_dead_letters";
/// Counter, labelled `trigger` (`start`, `periodic`, `unknown_kid`) and `outcome` (`ok`, `error`): reads of
/// the identity provider's JWKS.
pub const JWKS_FETCHES: &str = "smartscheduler_jwks_fetches_total";
pub use crate::supervisor::TASK_RESTARTS;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once per process and returns the handle that renders `/metrics`.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let latency = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(PUBLISH_LAG.into()), &latency)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), &latency))
                .map(|b| b.build_recorder())
                .expect("static bucket lists are non-empty");
            let handle = recorder.handle();
            // Another recorder may already be installed (tests embedding several servers): keep ours for rendering.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            register_at_zero();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(EVENTS_PUBLISHED, "Events moved from the outbox to event_log by this process.");
    metrics::describe_gauge!(OUTBOX_PENDING, "Rows in the outbox waiting to be published.");
    metrics::describe_histogram!(PUBLISH_LAG, "Seconds from an outbox row's creation to its publish.");
    metrics::describe_gauge!(SSE_CONNECTIONS, "Open event streams.");
    metrics::describe_counter!(SSE_STREAMS_REFUSED, "Event streams refused at the per-dispatcher or instance limit.");
    metrics::describe_counter!(
        CONNECTIONS_EVICTED,
        "Connections closed before their request head arrived, to make room."
    );
    metrics::describe_counter!(CONNECTIONS_REFUSED, "Connections refused because every connection was taken.");
    metrics::describe_counter!(SSE_EVENTS_SENT, "Events written to event streams.");
    metrics::describe_counter!(SSE_CATCHUP, "Streams that fell behind the live fan-out and read from the database.");
    metrics::describe_gauge!(
        SSE_CATCHUP_WAITING,
        "Catch-up reads of the database waiting for their turn in the queue."
    );
    metrics::describe_counter!(
        SSE_BACKLOG_READS,
        "Catch-up reads of event_log by streams (resumes inside the memory window read none)."
    );
    metrics::describe_counter!(SSE_RESETS, "event: reset sent to resuming clients.");
    metrics::describe_histogram!(HTTP_DURATION, "HTTP request duration by route and status.");
    metrics::describe_counter!(LISTENER_RECONNECTS, "Times the LISTEN connection was lost and re-established.");
    metrics::describe_counter!(
        OUTBOX_PARKED,
        "Outbox rows this process parked in outbox_dead_letter as unpublishable."
    );
    metrics::describe_gauge!(OUTBOX_DEAD_LETTERS, "Rows in outbox_dead_letter (read at scrape time).");
    metrics::describe_counter!(
        TASK_RESTARTS,
        "Background tasks restarted after a panic or an unexpected end, by task."
    );
}

/// Touches every contract metric so that `/metrics` lists it from the start (the exporter renders only
/// metrics it has seen): a scrape before the first event must still find the names.
fn register_at_zero() {
    for counter in [
        EVENTS_PUBLISHED,
        SSE_EVENTS_SENT,
        SSE_CATCHUP,
        SSE_BACKLOG_READS,
        LISTENER_RECONNECTS,
        OUTBOX_PARKED,
        CONNECTIONS_EVICTED,
        CONNECTIONS_REFUSED,
    ] {
        metrics::counter!(counter).absolute(0);
    }
    metrics::gauge!(SSE_CONNECTIONS).set(0.0);
    metrics::gauge!(SSE_CATCHUP_WAITING).set(0.0);
    metrics::gauge!(OUTBOX_PENDING).set(0.0);
    metrics::gauge!(OUTBOX_DEAD_LETTERS).set(0.0);
    let _ = metrics::histogram!(PUBLISH_LAG);
}

//! `smartscheduler outbox status`: the publish backlog, the last published position, publish rates, the
//! retention window and which relays and listeners are alive, with an overall verdict.
//!
//! [`gather`] reads everything in one read-only REPEATABLE READ transaction, so the numbers are one
//! consistent snapshot. The JSON field names of [`OutboxStatus`] are a stable interface (documented in
//! `docs/operations.md`); add fields, never rename them.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use std::io::Write;
use uuid::Uuid;

/// A heartbeat younger than this means the process is alive (the writers beat every 5 s).
pub const ALIVE_WITHIN_SECONDS: i64 = 15;
/// An outbox row older than this means publishing is stuck or too slow.
pub const MAX_PENDING_AGE_SECONDS: f64 = 30.0;
/// Partitions must exist at least this far ahead, or publishing will soon fail.
pub const MIN_PARTITION_HEADROOM_SECONDS: f64 = 24.0 * 3600.0;

/// Everything `outbox status` reports. Serialised in camelCase; the field names are stable.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxStatus {
    /// When the snapshot was taken (database clock).
    pub checked_at: DateTime<Utc>,
    /// Rows in `outbox`: committed events not yet published.
    pub pending: i64,
    /// Age in seconds of the oldest pending row (lowest outbox id); `null` when nothing is pending.
    pub oldest_pending_age_seconds: Option<f64>,
    /// The log's epoch (8 hex digits).
    pub epoch: String,
    /// `stream_meta.last_seq`: the last position's seq (0 before the first publish).
    pub last_seq: i64,
    /// `<epoch>-<last_seq>`: the position a client connecting now starts from.
    pub last_position: String,
    /// When the last batch was published; `null` before the first publish.
    pub last_published_at: Option<DateTime<Utc>>,
    /// Seconds since `last_published_at`; `null` before the first publish.
    pub last_published_age_seconds: Option<f64>,
    /// Events published during the last 60 s, divided by 60 (events/s; replayed copies count).
    pub publish_rate_last_minute: f64,
    /// Events published during the last 3600 s, divided by 3600 (events/s).
    pub publish_rate_last_hour: f64,
    /// `stream_meta.retention` as PostgreSQL prints it, for example `7 days`.
    pub retention: String,
    /// The retention window in seconds.
    pub retention_seconds: f64,
    /// Lowest seq still in `event_log`; `null` when the log is empty.
    pub oldest_kept_seq: Option<i64>,
    /// `<epoch>-<oldest_kept_seq>`; `null` when the log is empty.
    pub oldest_kept_position: Option<String>,
    /// Highest seq dropped by retention (0 if none): resuming from below it gets `event: reset` (expired).
    pub expired_through_seq: i64,
    /// `event_log` partitions exist up to this instant (exclusive).
    pub partitions_until: Option<DateTime<Utc>>,
    /// Rows in `outbox_dead_letter`: events the relay could not publish and parked (they reach no client).
    pub dead_letters: i64,
    /// When the last row was parked; `null` if none is.
    pub last_parked_at: Option<DateTime<Utc>>,
    /// Relays whose heartbeat is younger than 15 s.
    pub relays_alive: i64,
    /// Those relays.
    pub relays: Vec<NodeStatus>,
    /// The most recent relay heartbeat, alive or not (`null` if no relay ever ran on this database).
    pub last_relay_beat_at: Option<DateTime<Utc>>,
    /// Stream listeners (serve processes) whose heartbeat is younger than 15 s.
    pub listeners_alive: i64,
    /// Those listeners.
    pub listeners: Vec<NodeStatus>,
    /// False when any of `reasons` applies.
    pub healthy: bool,
    /// Why the stream is unhealthy (empty when healthy).
    pub reasons: Vec<String>,
    /// Things worth knowing that do not make the stream unhealthy, for example no listener alive.
    pub warnings: Vec<String>,
}

/// One live process from `node_heartbeats`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The process's id, new at every start.
    pub node_id: Uuid,
    /// The host it runs on.
    pub host: String,
    /// Its operating-system process id.
    pub pid: i32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub beat_at: DateTime<Utc>,
    /// Seconds since `beat_at`.
    pub beat_age_seconds: f64,
}

#[derive(sqlx::FromRow)]
struct Snapshot {
    checked_at: DateTime<Utc>,
    pending: i64,
    oldest_pending_age_seconds: Option<f64>,
    epoch: String,
    last_seq: i64,
    last_published_at: Option<DateTime<Utc>>,
    last_published_age_seconds: Option<f64>,
    published_last_minute: i64,
    published_last_hour: i64,
    retention: String,
    retention_seconds: f64,
    oldest_kept_seq: Option<i64>,
    expired_through_seq: i64,
    partitions_until: Option<DateTime<Utc>>,
    partition_headroom_seconds: Option<f64>,
    last_relay_beat_at: Option<DateTime<Utc>>,
    dead_letters: i64,
    last_parked_at: Option<DateTime<Utc>>,
}

/// Reads the status in one consistent, read-only snapshot.
pub async fn gather(pool: &PgPool) -> Result<OutboxStatus, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    // now() is the transaction start: every age below is measured from the same instant.
    // The oldest pending row is found by the primary key (ids grow with insert time), not by a scan.
    // The publish counts use the BRIN index on published_at and touch at most two daily partitions.
    let s: Snapshot = sqlx::query_as(
        "SELECT now() AS checked_at,
                (SELECT count(*) FROM outbox) AS pending,
                (SELECT greatest(0, extract(epoch FROM now() - created_at))::float8
                   FROM outbox ORDER BY id LIMIT 1) AS oldest_pending_age_seconds,
                m.epoch,
                m.last_seq,
                m.last_published_at,
                CASE WHEN m.last_published_at IS NOT NULL
                     THEN greatest(0, extract(epoch FROM now() - m.last_published_at))::float8
                END AS last_published_age_seconds,
                (SELECT count(*) FROM event_log WHERE published_at > now() - interval '1 minute')
                    AS published_last_minute,
                (SELECT count(*) FROM event_log WHERE published_at > now() - interval '1 hour')
                    AS published_last_hour,
                m.retention::text AS retention,
                extract(epoch FROM m.retention)::float8 AS retention_seconds,
                (SELECT min(seq) FROM event_log) AS oldest_kept_seq,
                m.expired_through_seq,
                CASE WHEN isfinite(m.partitions_until) THEN m.partitions_until END AS partitions_until,
                CASE WHEN isfinite(m.partitions_until)
                     THEN extract(epoch FROM m.partitions_until - now())::float8 END AS partition_headroom_seconds,
                (SELECT max(beat_at) FROM node_heartbeats WHERE role = 'relay') AS last_relay_beat_at,
                (SELECT count(*) FROM outbox_dead_letter) AS dead_letters,
                (SELECT max(parked_at) FROM outbox_dead_letter) AS last_parked_at
         FROM stream_meta m WHERE m.stream = 'main'",
    )
    .fetch_one(&mut *tx)
    .await?;
    let nodes: Vec<(String, NodeStatus)> = sqlx::query_as::<_, NodeRow>(
        "SELECT role, node_id, host, pid, started_at, beat_at,
                greatest(0, extract(epoch FROM now() - beat_at))::float8 AS beat_age_seconds
         FROM node_heartbeats
         WHERE beat_at > now() - make_interval(secs => $1)
         ORDER BY role, host, pid",
    )
    .bind(ALIVE_WITHIN_SECONDS as f64)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(NodeRow::split)
    .collect();
    tx.commit().await?;

    let (relays, listeners): (Vec<_>, Vec<_>) = nodes.into_iter().partition(|(role, _)| role == "relay");
    let relays: Vec<NodeStatus> = relays.into_iter().map(|(_, n)| n).collect();
    let listeners: Vec<NodeStatus> = listeners.into_iter().map(|(_, n)| n).collect();

    let mut status = OutboxStatus {
        checked_at: s.checked_at,
        pending: s.pending,
        oldest_pending_age_seconds: s.oldest_pending_age_seconds,
        last_position: format!("{}-{}", s.epoch, s.last_seq),
        epoch: s.epoch.clone(),
        last_seq: s.last_seq,
        last_published_at: s.last_published_at,
        last_published_age_seconds: s.last_published_age_seconds,
        publish_rate_last_minute: s.published_last_minute as f64 / 60.0,
        publish_rate_last_hour: s.published_last_hour as f64 / 3600.0,
        retention: s.retention,
        retention_seconds: s.retention_seconds,
        oldest_kept_seq: s.oldest_kept_seq,
        oldest_kept_position: s.oldest_kept_seq.map(|seq| format!("{}-{seq}", s.epoch)),
        expired_through_seq: s.expired_through_seq,
        partitions_until: s.partitions_until,
        dead_letters: s.dead_letters,
        last_parked_at: s.last_parked_at,
        relays_alive: relays.len() as i64,
        relays,
        last_relay_beat_at: s.last_relay_beat_at,
        listeners_alive: listeners.len() as i64,
        listeners,
        healthy: true,
        reasons: Vec::new(),
        warnings: Vec::new(),
    };
    assess(&mut status, s.partition_headroom_seconds);
    Ok(status)
}

#[derive(sqlx::FromRow)]
struct NodeRow {
    role: String,
    #[sqlx(flatten)]
    node: NodeStatus,
}

impl NodeRow {
    fn split(self) -> (String, NodeStatus) {
        (self.role, self.node)
    }
}

/// Fills `healthy`, `reasons` and `warnings` from the gathered numbers.
fn assess(status: &mut OutboxStatus, partition_headroom_seconds: Option<f64>) {
    let mut reasons = Vec::new();
    let mut warnings = Vec::new();
    if status.relays_alive == 0 {
        if status.pending > 0 {
            reasons.push(format!("no relay alive and {} event(s) pending", status.pending));
        } else {
            warnings.push("no relay alive: new events will not be published".to_owned());
        }
    }
    if let Some(age) = status.oldest_pending_age_seconds.filter(|age| *age > MAX_PENDING_AGE_SECONDS) {
        reasons.push(format!("oldest pending event is {age:.0} s old (limit {MAX_PENDING_AGE_SECONDS:.0} s)"));
    }
    match partition_headroom_seconds {
        Some(headroom) if headroom >= MIN_PARTITION_HEADROOM_SECONDS => {}
        Some(headroom) => reasons.push(format!(
            "event_log partitions end in {:.1} h: publishing fails after that (run smartscheduler retention)",
            headroom / 3600.0
        )),
        None => reasons.push("event_log has no partitions: run smartscheduler retention".to_owned()),
    }
    if status.dead_letters > 0 {
        reasons.push(format!(
            "{} outbox row(s) parked in outbox_dead_letter reach no client (inspect with sql/08_dead_letters.sql)",
            status.dead_letters
        ));
    }
    if status.listeners_alive == 0 {
        warnings.push("no listener alive: no browser receives events (no serve process is running)".to_owned());
    }
    status.healthy = reasons.is_empty();
    status.reasons = reasons;
    status.warnings = warnings;
}

/// Prints the status (an aligned table, or pretty JSON with `json`).
pub async fn print(pool: &PgPool, json: bool) -> anyhow::Result<()> {
    let status = gather(pool).await.context("cannot read the outbox status from the database")?;
    let text = if json {
        serde_json::to_string_pretty(&status).context("cannot serialise the status")? + "\n"
    } else {
        render(&status)
    };
    // A closed pipe (`outbox status --json | head`) is not a failure of the command.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("cannot write to stdout"),
        _ => Ok(()),
    }
}

/// The human table: one `label: value` line per fact, labels aligned.
pub fn render(s: &OutboxStatus) -> String {
    let rows: Vec<(&str, String)> = vec![
        ("pending", s.pending.to_string()),
        ("oldest pending", s.oldest_pending_age_seconds.map_or_else(|| "-".to_owned(), seconds)),
        ("last position", s.last_position.clone()),
        (
            "last published",
            match (s.last_published_at, s.last_published_age_seconds) {
                (Some(at), Some(age)) => format!("{} ({} ago)", at.to_rfc3339(), seconds(age)),
                _ => "never".to_owned(),
            },
        ),
        (
            "publish rate",
            format!("{:.2}/s last minute, {:.2}/s last hour", s.publish_rate_last_minute, s.publish_rate_last_hour),
        ),
        ("retention", format!("{} ({:.0} s)", s.retention, s.retention_seconds)),
        ("oldest kept", s.oldest_kept_position.clone().unwrap_or_else(|| "none (log empty)".to_owned())),
        ("expired through seq", s.expired_through_seq.to_string()),
        ("partitions until", s.partitions_until.map_or_else(|| "none".to_owned(), |t| t.to_rfc3339())),
        (
            "dead letters",
            match s.last_parked_at {
                Some(at) => format!("{} (last parked {})", s.dead_letters, at.to_rfc3339()),
                None => s.dead_letters.to_string(),
            },
        ),
        ("relays alive", nodes(s.relays_alive, &s.relays)),
        ("listeners alive", nodes(s.listeners_alive, &s.listeners)),
        ("healthy", if s.healthy { "yes".to_owned() } else { format!("NO: {}", s.reasons.join("; ")) }),
    ];
    let mut rows = rows;
    if !s.warnings.is_empty() {
        rows.push(("warnings", s.warnings.join("; ")));
    }
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0) + 1;
    rows.iter().map(|(label, value)| format!("{:width$} {value}\n", format!("{label}:"))).collect()
}

fn seconds(value: f64) -> String {
    if value < 10.0 { format!("{value:.1} s") } else { format!("{value:.0} s") }
}

fn nodes(count: i64, list: &[NodeStatus]) -> String {
    if list.is_empty() {
        return count.to_string();
    }
    let who: Vec<String> =
        list.iter().map(|n| format!("{}:{} (beat {} ago)", n.host, n.pid, seconds(n.beat_age_seconds))).collect();
    format!("{count} ({})", who.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty() -> OutboxStatus {
        OutboxStatus {
            checked_at: DateTime::<Utc>::MIN_UTC,
            pending: 0,
            oldest_pending_age_seconds: None,
            epoch: "7f3a9c21".into(),
            last_seq: 0,
            last_position: "7f3a9c21-0".into(),
            last_published_at: None,
            last_published_age_seconds: None,
            publish_rate_last_minute: 0.0,
            publish_rate_last_hour: 0.0,
            retention: "7 days".into(),
            retention_seconds: 604800.0,
            oldest_kept_seq: None,
            oldest_kept_position: None,
            expired_through_seq: 0,
            partitions_until: None,
            dead_letters: 0,
            last_parked_at: None,
            relays_alive: 0,
            relays: vec![],
            last_relay_beat_at: None,
            listeners_alive: 0,
            listeners: vec![],
            healthy: true,
            reasons: vec![],
            warnings: vec![],
        }
    }

    #[test]
    fn an_idle_stream_without_relay_is_healthy_with_a_warning() {
        let mut s = empty();
        assess(&mut s, Some(5.0 * 86400.0));
        assert!(s.healthy, "{:?}", s.reasons);
        assert_eq!(s.warnings.len(), 2);
    }

    #[test]
    fn a_backlog_without_relay_is_unhealthy() {
        let mut s = empty();
        s.pending = 3;
        s.oldest_pending_age_seconds = Some(31.0);
        assess(&mut s, Some(5.0 * 86400.0));
        assert!(!s.healthy);
        assert_eq!(s.reasons.len(), 2, "{:?}", s.reasons);
        assert!(s.reasons[0].starts_with("no relay alive"));
    }

    #[test]
    fn missing_partitions_are_unhealthy() {
        let mut s = empty();
        assess(&mut s, Some(3600.0));
        assert!(!s.healthy);
    }

    #[test]
    fn the_table_aligns_labels() {
        let mut s = empty();
        assess(&mut s, Some(5.0 * 86400.0));
        let text = render(&s);
        let value_column = |line: &str| {
            let after = line.find(':').map_or(0, |i| i + 1);
            after + line[after..].len() - line[after..].trim_start().len()
        };
        let columns: Vec<usize> = text.lines().map(value_column).collect();
        assert!(columns.windows(2).all(|w| w[0] == w[1]), "{text}");
        assert!(text.contains("pending:"), "{text}");
    }
}

//! `smartscheduler replay`: publish copies of past events again.
//!
//! A replay selects original events of the current epoch (never earlier copies: rows with `replay_of`
//! set are not selected) by position range or by publish time, narrowed by groups and job, and inserts a
//! copy of each into the `outbox`: a new event id, the same type, aggregate, groups and payload, and
//! `replay_of` = the original's position. The relay publishes the copies like any other event, at new
//! positions after the current end of the log, in the originals' order.
//!
//! Re-runs are idempotent: an original that already has a copy (in `outbox` or in `event_log`) is
//! skipped. So an interrupted replay completes when run again, and a finished one is a no-op.
//!
//! The copy runs inside PostgreSQL, one `INSERT .. SELECT` per batch (the outbox's set-based writer,
//! [`outbox::insert_rows_sql`]) and one transaction per batch; a transaction-scoped advisory lock serialises
//! concurrent replays so that two of them never copy the same original twice.
//!
//! This module does no terminal I/O: [`execute`] reports progress to a callback, and
//! [`super::replay_report`] prints what the command shows.

use crate::outbox::{self, GroupKey};
use crate::position::{Position, PositionError};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::sync::LazyLock;
use uuid::Uuid;

/// Originals copied per transaction.
pub const DEFAULT_BATCH_SIZE: i64 = 500;
/// Advisory lock key held by each replay batch ("SSREPLAY").
const REPLAY_LOCK: i64 = 0x5353_5245_504c_4159;

/// Why a replay cannot be parsed, resolved or run. The `Bad*` variants are mistakes in the request
/// ([`ReplayError::is_usage`]: exit code 2 from the command); the others are failures.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// `--from`/`--to` is not an `<epoch>-<seq>` position.
    #[error("{flag} {value:?} is not a position: {source}")]
    BadPosition {
        /// The flag that carried it (`--from` or `--to`).
        flag: &'static str,
        /// The text as given.
        value: String,
        /// What is wrong with it.
        #[source]
        source: PositionError,
    },
    /// `--since`/`--until` is neither an RFC 3339 time nor a duration before now.
    #[error(
        "{flag} {value:?} is neither an RFC 3339 time (for example 2026-11-25T08:00:00Z) nor a time before now \
         (for example 1h, 30m, 1h30m, 2days): {source}"
    )]
    BadTime {
        /// The flag that carried it (`--since` or `--until`).
        flag: &'static str,
        /// The text as given.
        value: String,
        /// What is wrong with it.
        #[source]
        source: chrono::ParseError,
    },
    /// A `--group` that is not a group key.
    #[error("--group {} is not a group key (^[a-z0-9][a-z0-9:_-]{{0,63}}$, for example region:north)", crate::validate::echo(.0))]
    BadGroup(String),
    /// The range is empty, reversed, mixes positions and times, or a time is outside years 1 to 9999; the
    /// message says which.
    #[error("{0}")]
    BadRange(String),
    /// A position of another epoch than the log's: it names other events (the log was recreated or
    /// restored).
    #[error(
        "{flag} {position} is of epoch {given}, but the log's epoch is {current}: the log was recreated or \
         restored and positions of another epoch name other events; select by time with --since/--until instead"
    )]
    EpochMismatch {
        /// The flag that carried it (`--from` or `--to`).
        flag: &'static str,
        /// The position as given.
        position: String,
        /// Its epoch.
        given: String,
        /// The log's epoch now.
        current: String,
    },
    /// Reading the log or writing the copies failed.
    #[error("database error during replay")]
    Database(#[from] sqlx::Error),
}

impl ReplayError {
    /// Mistakes in how the command was called (exit code 2), as opposed to failures.
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::BadPosition { .. } | Self::BadTime { .. } | Self::BadGroup(_) | Self::BadRange(_))
    }
}

/// Which originals to select, as the user gave it.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayRange {
    /// After `after` (exclusive) through `through` (inclusive; default: the current end of the log).
    Positions {
        /// Originals after this position (exclusive, like `Last-Event-ID`).
        after: Position,
        /// The last position replayed (inclusive); `None`: the end of the log when resolved.
        through: Option<Position>,
    },
    /// Published at or after `since` and before `until` (default: now).
    Times {
        /// Originals published at or after this time.
        since: DateTime<Utc>,
        /// Originals published before this time; `None`: up to when resolved.
        until: Option<DateTime<Utc>>,
    },
}

/// Which originals to replay, as the operator wrote them: unvalidated text, as `replay`'s flags carry it
/// (`--from`/`--to` positions or `--since`/`--until` RFC 3339 times, `--group` keys, `--job`).
/// [`ReplayRequest::parse`] validates it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayInput {
    /// Replay originals after this position (exclusive), `<epoch>-<seq>`.
    pub from: Option<String>,
    /// Last position to replay (inclusive); only with `from`.
    pub to: Option<String>,
    /// Replay originals published at or after this time (RFC 3339, or a duration before now: `1h`, `30m`).
    pub since: Option<String>,
    /// Replay originals published before this time (the same forms); only with `since`.
    pub until: Option<String>,
    /// Group keys: only originals whose groups overlap these (empty: every group).
    pub groups: Vec<String>,
    /// Only originals about this aggregate (job) id.
    pub job: Option<Uuid>,
}

/// A replay request: the range and the filters.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayRequest {
    /// Which originals: a position range or a publish-time range.
    pub range: ReplayRange,
    /// Only events whose groups overlap these (empty: every group).
    pub groups: Vec<GroupKey>,
    /// Only events about this aggregate (job) id.
    pub job: Option<Uuid>,
}

/// `now` minus `text` read as a duration (`1h`, `30m`), if it is one and the result is a time.
fn before(now: DateTime<Utc>, text: &str) -> Option<DateTime<Utc>> {
    let duration = humantime::parse_duration(text).ok()?;
    now.checked_sub_signed(chrono::TimeDelta::from_std(duration).ok()?)
}

impl ReplayRequest {
    /// Validates the operator's selection (no database access). Every error is a usage error
    /// ([`ReplayError::is_usage`]): malformed positions, times or groups, or a range that is empty or
    /// mixes positions and times.
    pub fn parse(args: &ReplayInput) -> Result<Self, ReplayError> {
        Self::parse_at(args, Utc::now())
    }

    /// [`Self::parse`] with `now` as the instant that relative times (`--since 1h`) count back from.
    ///
    /// # Errors
    /// As [`Self::parse`].
    pub fn parse_at(args: &ReplayInput, now: DateTime<Utc>) -> Result<Self, ReplayError> {
        let position = |flag: &'static str, value: &str| {
            value.parse::<Position>().map_err(|source| ReplayError::BadPosition {
                flag,
                value: value.to_owned(),
                source,
            })
        };
        // An RFC 3339 time with an offset can still fall outside years 1..=9999 once in UTC.
        // A relative time ("1h", "30m", "1h30m", "2days": humantime's units) is that long before `now`.
        let time = |flag: &'static str, value: &str| {
            let time = match DateTime::parse_from_rfc3339(value) {
                Ok(time) => time.with_timezone(&Utc),
                Err(source) => before(now, value.trim()).ok_or_else(|| ReplayError::BadTime {
                    flag,
                    value: value.to_owned(),
                    source,
                })?,
            };
            crate::validate::timestamp(flag, time).map_err(|e| ReplayError::BadRange(e.to_string()))
        };
        let range = match (&args.from, &args.since) {
            (Some(from), None) => {
                if args.until.is_some() {
                    return Err(ReplayError::BadRange("--until goes with --since, not with --from".into()));
                }
                let after = position("--from", from)?;
                let through = args.to.as_deref().map(|to| position("--to", to)).transpose()?;
                if let Some(through) = through
                    && through.epoch == after.epoch
                    && through.seq < after.seq
                {
                    return Err(ReplayError::BadRange(format!("--to {through} is before --from {after}")));
                }
                ReplayRange::Positions { after, through }
            }
            (None, Some(since)) => {
                if args.to.is_some() {
                    return Err(ReplayError::BadRange("--to goes with --from, not with --since".into()));
                }
                let since = time("--since", since)?;
                let until = args.until.as_deref().map(|until| time("--until", until)).transpose()?;
                if let Some(until) = until
                    && until < since
                {
                    return Err(ReplayError::BadRange(format!(
                        "--until {} is before --since {}",
                        until.to_rfc3339(),
                        since.to_rfc3339()
                    )));
                }
                ReplayRange::Times { since, until }
            }
            _ => return Err(ReplayError::BadRange("give either --from POSITION or --since TIME".into())),
        };
        let groups = args
            .groups
            .iter()
            .map(|g| GroupKey::parse(g).map_err(|_| ReplayError::BadGroup(g.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { range, groups, job: args.job })
    }
}

/// A request pinned to concrete seqs of the current epoch: originals with `after_seq < seq <= through_seq`.
/// Time ranges map exactly to seq ranges because `published_at` never decreases along `seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedReplay {
    /// The log's epoch (8 hex digits) the seqs belong to.
    pub epoch: String,
    /// Originals after this seq (exclusive).
    pub after_seq: i64,
    /// Originals up to this seq (inclusive); never beyond the end of the log when resolved, so copies
    /// published during the run are never in range.
    pub through_seq: i64,
    /// The group filter as text (empty: every group).
    pub groups: Vec<String>,
    /// The aggregate (job) filter.
    pub job: Option<Uuid>,
    /// Highest seq dropped by retention when resolved (originals at or below it are gone).
    pub expired_through_seq: i64,
}

impl ResolvedReplay {
    /// `seq` of this replay's epoch as a position, `<epoch>-<seq>`.
    pub fn position(&self, seq: i64) -> String {
        format!("{}-{seq}", self.epoch)
    }

    fn groups_filter(&self) -> Option<&[String]> {
        if self.groups.is_empty() { None } else { Some(&self.groups) }
    }

    fn copy_pattern(&self) -> String {
        format!("{}-%", self.epoch)
    }
}

/// Checks epochs and pins the range to seqs of the log as it is now (reads `stream_meta`, and `event_log`
/// for a time range). Errors: [`ReplayError::EpochMismatch`] for a position of another epoch,
/// [`ReplayError::Database`].
pub async fn resolve(pool: &PgPool, request: &ReplayRequest) -> Result<ResolvedReplay, ReplayError> {
    let (epoch, last_seq, expired_through_seq): (String, i64, i64) =
        sqlx::query_as("SELECT epoch, last_seq, expired_through_seq FROM stream_meta WHERE stream = 'main'")
            .fetch_one(pool)
            .await?;
    let (after_seq, through_seq) = match &request.range {
        ReplayRange::Positions { after, through } => {
            for (flag, position) in std::iter::once(("--from", after)).chain(through.iter().map(|t| ("--to", t))) {
                let given = position.epoch.to_string();
                if given != epoch {
                    return Err(ReplayError::EpochMismatch {
                        flag,
                        position: position.to_string(),
                        given,
                        current: epoch,
                    });
                }
            }
            // The end is pinned now, so that copies published during the run are never in range.
            (after.seq, through.map_or(last_seq, |t| t.seq).min(last_seq))
        }
        ReplayRange::Times { since, until } => {
            let (first, last): (Option<i64>, Option<i64>) = sqlx::query_as(
                "SELECT min(seq), max(seq) FROM event_log
                 WHERE published_at >= $1 AND published_at < coalesce($2, 'infinity'::timestamptz) AND seq <= $3",
            )
            .bind(since)
            .bind(until)
            .bind(last_seq)
            .fetch_one(pool)
            .await?;
            match (first, last) {
                (Some(first), Some(last)) => (first - 1, last),
                _ => (last_seq, last_seq),
            }
        }
    };
    Ok(ResolvedReplay {
        epoch,
        after_seq,
        through_seq: through_seq.max(after_seq),
        groups: request.groups.iter().map(|g| g.as_str().to_owned()).collect(),
        job: request.job,
        expired_through_seq,
    })
}

/// The seqs of originals that already have a copy ($5: `<epoch>-%`): published copies in the log after $1
/// (copies are always published after their original, so only the log after $1 can hold copies of
/// originals in range) and copies still waiting in the outbox.
static COPIES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT split_part(replay_of, '-', 2)::bigint AS seq FROM event_log WHERE seq > $1 AND replay_of LIKE $5
         UNION
         SELECT split_part(replay_of, '-', 2)::bigint FROM ({}) waiting",
        outbox::waiting_copies_sql(5)
    )
});

/// The originals in range ($1 exclusive .. $2 inclusive, $3 groups, $4 job), each marked `done` when it
/// already has a copy (see [`COPIES`]).
static SELECTION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH selected AS (
             SELECT e.seq, e.groups FROM event_log e
             WHERE e.seq > $1 AND e.seq <= $2 AND e.replay_of IS NULL
               AND ($3::text[] IS NULL OR e.groups && $3) AND ($4::uuid IS NULL OR e.aggregate_id = $4)
         ), copies AS MATERIALIZED ({copies}), marked AS (
             SELECT s.seq, s.groups, EXISTS (SELECT 1 FROM copies c WHERE c.seq = s.seq) AS done FROM selected s
         )",
        copies = COPIES.as_str()
    )
});

/// [`plan`]'s totals.
static PLAN_TOTALS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{}
         SELECT count(*), count(*) FILTER (WHERE done),
                min(seq) FILTER (WHERE NOT done), max(seq) FILTER (WHERE NOT done)
         FROM marked",
        SELECTION.as_str()
    )
});

/// [`plan`]'s per-group counts.
static PLAN_PER_GROUP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{}
         SELECT g, count(*), count(*) FILTER (WHERE NOT done)
         FROM marked, unnest(groups) AS g GROUP BY g ORDER BY g",
        SELECTION.as_str()
    )
});

/// One batch of [`execute`]: the next $6 originals after $1 (through $2, filtered by $3 and $4), a copy of
/// each that has none yet ($7: the epoch) written through the outbox's set-based writer in seq order, and
/// (originals examined, copies written, last seq examined).
static COPY_BATCH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH batch AS (
             SELECT e.seq, e.event_type, e.aggregate_id, e.groups, e.payload, e.occurred_at FROM event_log e
             WHERE e.seq > $1 AND e.seq <= $2 AND e.replay_of IS NULL
               AND ($3::text[] IS NULL OR e.groups && $3) AND ($4::uuid IS NULL OR e.aggregate_id = $4)
             ORDER BY e.seq LIMIT $6
         ), copies AS MATERIALIZED ({copies}), to_copy AS (
             SELECT b.seq AS ordinal, b.event_type, b.aggregate_id, b.groups,
                    -- The copy's occurredAt is the replay's time; the original's travels with it, in the
                    -- same form as occurredAt (RFC 3339, milliseconds, UTC), so a sheet sorted by occurrence
                    -- does not reorder after a replay. Originals only are copied, so it is always the first.
                    b.payload || jsonb_build_object('originalOccurredAt',
                        to_char(b.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')) AS payload,
                    $7 || '-' || b.seq AS replay_of
             FROM batch b
             WHERE NOT EXISTS (SELECT 1 FROM copies c WHERE c.seq = b.seq)
         ), inserted AS ({insert})
         SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM inserted), (SELECT max(seq) FROM batch)",
        copies = COPIES.as_str(),
        insert = outbox::insert_rows_sql("to_copy"),
    )
});

/// What a replay would do (the dry run), or what is left to do.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayPlan {
    /// Originals in range that match the filters.
    pub matched: i64,
    /// Of those, originals that already have a copy (skipped).
    pub already_replayed: i64,
    /// Originals that would be copied now.
    pub to_replay: i64,
    /// First seq that would be copied (`None`: nothing to copy).
    pub first_seq: Option<i64>,
    /// Last seq that would be copied (`None`: nothing to copy).
    pub last_seq: Option<i64>,
    /// Per group: (group, matched, to replay). An event in several groups counts in each.
    pub per_group: Vec<(String, i64, i64)>,
}

/// Counts what [`execute`] would copy now, without writing anything. Errors: the database's.
pub async fn plan(pool: &PgPool, replay: &ResolvedReplay) -> Result<ReplayPlan, sqlx::Error> {
    let (matched, already_replayed, first_seq, last_seq): (i64, i64, Option<i64>, Option<i64>) =
        sqlx::query_as(PLAN_TOTALS.as_str())
            .bind(replay.after_seq)
            .bind(replay.through_seq)
            .bind(replay.groups_filter())
            .bind(replay.job)
            .bind(replay.copy_pattern())
            .fetch_one(pool)
            .await?;
    let per_group: Vec<(String, i64, i64)> = sqlx::query_as(PLAN_PER_GROUP.as_str())
        .bind(replay.after_seq)
        .bind(replay.through_seq)
        .bind(replay.groups_filter())
        .bind(replay.job)
        .bind(replay.copy_pattern())
        .fetch_all(pool)
        .await?;
    Ok(ReplayPlan { matched, already_replayed, to_replay: matched - already_replayed, first_seq, last_seq, per_group })
}

/// How [`execute`] runs.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Originals examined per transaction.
    pub batch_size: i64,
    /// Stop after this many batches (tests use it to simulate an interrupted run).
    pub max_batches: Option<usize>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self { batch_size: DEFAULT_BATCH_SIZE, max_batches: None }
    }
}

/// Progress after each committed batch.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayProgress {
    /// Copies inserted into the outbox so far by this run.
    pub replayed: i64,
    /// Originals skipped so far because they already had a copy.
    pub skipped: i64,
    /// Every original up to this seq has been handled.
    pub through_seq: i64,
    /// False when the run stopped early (`max_batches`).
    pub complete: bool,
}

/// Copies the originals of `replay` into the outbox, batch after batch, in seq order.
/// `on_batch` is called after each committed batch. Returns the progress at the end (`complete` is false
/// when `max_batches` stopped it). Errors: the database's; the batches committed before an error stay, and a
/// re-run skips their originals.
pub async fn execute(
    pool: &PgPool,
    replay: &ResolvedReplay,
    options: &ReplayOptions,
    mut on_batch: impl FnMut(&ReplayProgress),
) -> Result<ReplayProgress, sqlx::Error> {
    let batch_size = options.batch_size.max(1);
    let mut progress = ReplayProgress { through_seq: replay.after_seq, ..ReplayProgress::default() };
    let mut batches = 0usize;
    loop {
        if options.max_batches.is_some_and(|max| batches >= max) {
            return Ok(progress);
        }
        let mut tx = pool.begin().await?;
        // Serialises replays: the copy check below then sees every copy another replay committed.
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(REPLAY_LOCK).execute(&mut *tx).await?;
        let (examined, inserted, batch_last): (i64, i64, Option<i64>) = sqlx::query_as(COPY_BATCH.as_str())
            .bind(progress.through_seq)
            .bind(replay.through_seq)
            .bind(replay.groups_filter())
            .bind(replay.job)
            .bind(replay.copy_pattern())
            .bind(batch_size)
            .bind(&replay.epoch)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        batches += 1;
        progress.replayed += inserted;
        progress.skipped += examined - inserted;
        match batch_last {
            Some(last) if examined == batch_size => progress.through_seq = last,
            _ => {
                progress.through_seq = replay.through_seq;
                progress.complete = true;
            }
        }
        on_batch(&progress);
        if progress.complete {
            return Ok(progress);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(since: &str, until: Option<&str>, now: DateTime<Utc>) -> Result<ReplayRange, ReplayError> {
        let input =
            ReplayInput { since: Some(since.into()), until: until.map(str::to_owned), ..ReplayInput::default() };
        ReplayRequest::parse_at(&input, now).map(|r| r.range)
    }

    #[test]
    fn relative_times_count_back_from_now_and_rfc3339_still_works() {
        let now = DateTime::parse_from_rfc3339("2026-12-05T12:00:00Z").unwrap().with_timezone(&Utc);
        let at = |text: &str| DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc);
        let cases = [
            ("1h", Some("30m"), at("2026-12-05T11:00:00Z"), Some(at("2026-12-05T11:30:00Z"))),
            ("1h30m", None, at("2026-12-05T10:30:00Z"), None),
            ("90s", Some("0s"), at("2026-12-05T11:58:30Z"), Some(now)),
            ("2days", None, at("2026-12-03T12:00:00Z"), None),
            (" 15m ", None, at("2026-12-05T11:45:00Z"), None),
            ("2026-12-01T08:00:00Z", Some("10m"), at("2026-12-01T08:00:00Z"), Some(at("2026-12-05T11:50:00Z"))),
        ];
        for (since, until, want_since, want_until) in cases {
            assert_eq!(
                times(since, until, now).unwrap(),
                ReplayRange::Times { since: want_since, until: want_until },
                "--since {since:?} --until {until:?}"
            );
        }
    }

    #[test]
    fn what_is_neither_a_time_nor_a_duration_is_a_usage_error_that_names_both_forms() {
        let now = Utc::now();
        for bad in ["yesterday", "1 fortnight", "-1h", "", "h"] {
            let error = times(bad, None, now).unwrap_err();
            assert!(matches!(error, ReplayError::BadTime { flag: "--since", .. }), "{bad:?}: {error}");
            assert!(error.is_usage());
            assert!(error.to_string().contains("RFC 3339") && error.to_string().contains("1h"), "{error}");
        }
        // A reversed relative range is refused like a reversed absolute one.
        assert!(matches!(times("30m", Some("1h"), now), Err(ReplayError::BadRange(_))));
        // So large that it falls before year 1: a usage error, never a panic.
        assert!(times("100000000days", None, now).unwrap_err().is_usage());
    }
}

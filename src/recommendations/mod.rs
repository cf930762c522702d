//! The recommendations domain: jobs, and the ranked contractors generated for them.
//!
//! [`generate`] is a writer of the event stream: it stores a recommendation set and its
//! `RecommendationReady` outbox event in one transaction, so the event is published if and only if
//! the set exists. The caller wakes the relay after it returns (see [`crate::outbox::RelayWaker`]).
//!
//! Ranking itself is pure and lives in [`scoring`]; its module doc explains the weights.

pub mod bench;
pub mod scoring;
#[cfg(test)]
pub(crate) mod test_support;

#[cfg(test)]
mod db_tests;

use chrono::{DateTime, Duration, NaiveTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use std::sync::LazyLock;
use std::time::{Duration as StdDuration, Instant};
use uuid::Uuid;

use crate::outbox::{self, GroupKey, NewEvent, OutboxError};
use crate::validate;
use scoring::{Booking, Candidate, JobNeeds};

/// The outbox event type written by [`generate`].
pub const RECOMMENDATION_READY: &str = "RecommendationReady";
/// Longest job title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Most skills a job may require.
pub const MAX_REQUIRED_SKILLS: usize = 20;
/// Longest job window.
pub const MAX_WINDOW: TimeDelta = TimeDelta::days(30);
/// Most jobs [`list_jobs`] returns.
pub const LIST_LIMIT: i64 = 200;
/// Entries in the event's `summary.top`.
const SUMMARY_TOP: usize = 3;

/// Everything that can go wrong here. The HTTP layer maps `Validation` and `UnknownRegion` to 400,
/// `JobNotFound` to 404, and the rest to 5xx.
#[derive(Debug, thiserror::Error)]
pub enum RecommendationError {
    /// Malformed input; `field` is the JSON name (for example `requiredSkills`).
    #[error("invalid {field}: {message}")]
    Validation { field: &'static str, message: String },
    #[error("unknown region {0:?}")]
    UnknownRegion(String),
    #[error("job {0} not found")]
    JobNotFound(Uuid),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

pub type Result<T, E = RecommendationError> = std::result::Result<T, E>;

fn invalid(field: &'static str, message: impl Into<String>) -> RecommendationError {
    RecommendationError::Validation { field, message: message.into() }
}

/// A point on Earth in degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
}

/// The body of `POST /api/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewJob {
    pub title: String,
    pub region: String,
    #[serde(default)]
    pub required_skills: Vec<String>,
    pub location: Location,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
}

impl NewJob {
    /// Checks everything that can be checked without the database (the region's existence is
    /// checked by [`create_job`]). Error messages name the JSON field.
    pub fn validate(&self) -> Result<()> {
        let title = self.title();
        check("title", validate::required_text("title", title, MAX_TITLE_CHARS))?;
        if !is_key(&self.region) {
            return Err(invalid(
                "region",
                format!(
                    "{:?} is not a region key (lowercase letters, digits, '_' and '-', for example north)",
                    self.region
                ),
            ));
        }
        check("requiredSkills", validate::count("requiredSkills", self.required_skills.len(), MAX_REQUIRED_SKILLS))?;
        for (i, skill) in self.required_skills.iter().enumerate() {
            if !is_key(skill) {
                return Err(invalid(
                    "requiredSkills",
                    format!("{skill:?} is not a skill (^[a-z0-9][a-z0-9_-]{{0,31}}$, for example hvac)"),
                ));
            }
            if self.required_skills[..i].contains(skill) {
                return Err(invalid("requiredSkills", format!("{skill:?} is listed twice")));
            }
        }
        let Location { lat, lon } = self.location;
        check("location.lat", validate::number("location.lat", lat, -90.0..=90.0))?;
        check("location.lon", validate::number("location.lon", lon, -180.0..=180.0))?;
        // Compared as stored (microseconds): an end a few nanoseconds after the start is the same instant
        // in PostgreSQL, and its CHECK (window_end > window_start) would refuse the row.
        let (start, end) = self.window()?;
        if end <= start {
            return Err(invalid("windowEnd", "must be after windowStart"));
        }
        if end - start > MAX_WINDOW {
            return Err(invalid("windowEnd", format!("the window may be at most {} days long", MAX_WINDOW.num_days())));
        }
        Ok(())
    }

    /// The title as stored: trimmed.
    fn title(&self) -> &str {
        self.title.trim()
    }

    /// The window as stored: inside the supported range, at microsecond precision.
    fn window(&self) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
        let start = check("windowStart", validate::timestamp("windowStart", self.window_start))?;
        let end = check("windowEnd", validate::timestamp("windowEnd", self.window_end))?;
        Ok((start, end))
    }
}

/// A domain check's refusal as this module's error, under the JSON field name.
fn check<T>(field: &'static str, result: validate::Result<T>) -> Result<T> {
    result.map_err(|e| invalid(field, e.message))
}

/// `^[a-z0-9][a-z0-9_-]{0,31}$`: region keys and skills.
fn is_key(s: &str) -> bool {
    validate::is_key(s)
}

/// A stored job, as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: Uuid,
    pub title: String,
    pub region: String,
    pub required_skills: Vec<String>,
    pub location: Location,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    /// `open`, `assigned`, `done` or `cancelled`.
    pub status: String,
    pub created_at: DateTime<Utc>,
}

/// One ranked contractor of a set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recommendation {
    /// 1 is the best match.
    pub rank: i32,
    pub contractor_id: Uuid,
    pub name: String,
    /// Weighted score in `[0, 1]` (see [`scoring`]).
    pub score: f64,
    pub distance_km: f64,
    pub eta_minutes: i32,
    pub matched_skills: Vec<String>,
}

/// One generation of recommendations for a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecommendationSet {
    pub recommendation_set_id: Uuid,
    pub job_id: Uuid,
    pub generated_at: DateTime<Utc>,
    pub recommendations: Vec<Recommendation>,
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    title: String,
    region: String,
    required_skills: Vec<String>,
    lat: f64,
    lon: f64,
    window_start: DateTime<Utc>,
    window_end: DateTime<Utc>,
    status: String,
    created_at: DateTime<Utc>,
}

impl From<JobRow> for Job {
    fn from(r: JobRow) -> Self {
        Job {
            id: r.id,
            title: r.title,
            region: r.region,
            required_skills: r.required_skills,
            location: Location { lat: r.lat, lon: r.lon },
            window_start: r.window_start,
            window_end: r.window_end,
            status: r.status,
            created_at: r.created_at,
        }
    }
}

/// Stores a new job after [`NewJob::validate`]. `created_by` is recorded when it names a known
/// dispatcher (else the column stays NULL). The title is stored trimmed.
pub async fn create_job(pool: &PgPool, new: &NewJob, created_by: &str) -> Result<Job> {
    new.validate()?;
    let (window_start, window_end) = new.window()?;
    // One statement: the region check and the insert. No row back means no such region.
    let row: Option<JobRow> = sqlx::query_as(
        "INSERT INTO jobs (title, region, required_skills, lat, lon, window_start, window_end, created_by)
         SELECT $1, r.key, $3, $4, $5, $6, $7, (SELECT d.id FROM dispatchers d WHERE d.id = $8)
         FROM regions r
         WHERE r.key = $2
         RETURNING id, title, region, required_skills, lat, lon, window_start, window_end, status, created_at",
    )
    .bind(new.title())
    .bind(&new.region)
    .bind(&new.required_skills)
    .bind(new.location.lat)
    .bind(new.location.lon)
    .bind(window_start)
    .bind(window_end)
    .bind(created_by)
    .fetch_optional(pool)
    .await?;
    row.map(Job::from).ok_or_else(|| RecommendationError::UnknownRegion(new.region.clone()))
}

/// Jobs of the given regions, newest first, at most [`LIST_LIMIT`].
pub async fn list_jobs(pool: &PgPool, regions: &[String]) -> Result<Vec<Job>> {
    if regions.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<JobRow> = sqlx::query_as(
        "SELECT id, title, region, required_skills, lat, lon, window_start, window_end, status, created_at
         FROM jobs
         WHERE region = ANY($1)
         ORDER BY created_at DESC, id
         LIMIT $2",
    )
    .bind(regions)
    .bind(LIST_LIMIT)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Job::from).collect())
}

/// Whether a region with this key exists (a job may be created only in one).
pub async fn region_exists(pool: &PgPool, key: &str) -> Result<bool> {
    Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM regions WHERE key = $1)").bind(key).fetch_one(pool).await?)
}

/// One job, or `None`.
pub async fn get_job(pool: &PgPool, id: Uuid) -> Result<Option<Job>> {
    let row: Option<JobRow> = sqlx::query_as(
        "SELECT id, title, region, required_skills, lat, lon, window_start, window_end, status, created_at
         FROM jobs
         WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Job::from))
}

/// Where [`generate_with`] should fail on purpose (tests of atomicity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailPoint {
    /// Run normally.
    #[default]
    Never,
    /// Fail in the outbox part of the statement that writes the set, its recommendations and its event
    /// (the database refuses the outbox row after the set's rows).
    AfterSetInsert,
    /// Fail after the set and the outbox event are written, just before COMMIT.
    BeforeCommit,
}

/// Whether a generation writes its outbox row. Only the benchmark's baseline (what a generation would
/// cost without its event) skips it; the API always writes it.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventWrite {
    /// The set and its `RecommendationReady` event, as always.
    #[default]
    Write,
    /// BENCHMARK ONLY: the set without its event (no client would ever hear of it).
    BenchOnlySkip,
}

/// How long each phase of one [`generate_with`] call took.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseTimings {
    /// BEGIN and `SELECT ... FOR UPDATE` of the job.
    pub lock_job: StdDuration,
    /// Loading the region's active, skilled contractors and their bookings.
    pub load_candidates: StdDuration,
    /// Pure ranking in memory.
    pub score: StdDuration,
    /// Building and validating the `RecommendationReady` event (in memory: its row is written by the
    /// `insert_set` statement).
    pub enqueue: StdDuration,
    /// The one statement that inserts the set, its recommendations and its outbox row.
    pub insert_set: StdDuration,
    /// COMMIT.
    pub commit: StdDuration,
    /// The whole call.
    pub total: StdDuration,
}

/// The result of [`generate_with`].
#[derive(Debug, Clone)]
pub struct Generation {
    pub set: RecommendationSet,
    /// Active contractors of the region that were considered (stored as
    /// `recommendation_sets.candidates`).
    pub candidates: usize,
    /// The outbox `event_id` of the `RecommendationReady` event (nil when the benchmark's baseline skipped it).
    pub event_id: Uuid,
    pub timings: PhaseTimings,
}

/// Generates and stores a recommendation set for the job, together with its `RecommendationReady`
/// event (one transaction). `generated_by` is recorded when it names a known dispatcher.
/// Logs one info line per generation (an operator's record of who generated what and how long it took).
pub async fn generate(pool: &PgPool, job_id: Uuid, generated_by: &str) -> Result<RecommendationSet> {
    generate_as(pool, job_id, generated_by, EventWrite::Write).await
}

/// [`generate`], with the benchmark's switch that skips the outbox row (see [`EventWrite`]).
#[doc(hidden)]
pub async fn generate_as(
    pool: &PgPool,
    job_id: Uuid,
    generated_by: &str,
    event_write: EventWrite,
) -> Result<RecommendationSet> {
    let generation = generate_writing(pool, job_id, generated_by, FailPoint::Never, event_write).await?;
    tracing::info!(
        job = %job_id,
        by = %generated_by,
        recommendations = generation.set.recommendations.len(),
        candidates = generation.candidates,
        ms = generation.timings.total.as_millis() as u64,
        "generated recommendations"
    );
    Ok(generation.set)
}

/// [`generate`], with a failure injection point and per-phase timings (for tests and the
/// benchmark).
///
/// Round trips: BEGIN, lock the job, load candidates, insert the set, its recommendations and its
/// outbox row (one statement), COMMIT. The event costs no round trip of its own.
pub async fn generate_with(pool: &PgPool, job_id: Uuid, generated_by: &str, fail: FailPoint) -> Result<Generation> {
    generate_writing(pool, job_id, generated_by, fail, EventWrite::Write).await
}

/// [`generate_with`], with the benchmark's switch that skips the outbox row. Never skip it outside
/// the benchmark's baseline: the set would exist without its event.
#[doc(hidden)]
pub async fn generate_writing(
    pool: &PgPool,
    job_id: Uuid,
    generated_by: &str,
    fail: FailPoint,
    event_write: EventWrite,
) -> Result<Generation> {
    let started = Instant::now();
    let mut timings = PhaseTimings::default();
    let mut phase = Instant::now();
    let mut lap = |slot: &mut StdDuration| {
        let now = Instant::now();
        *slot = now - phase;
        phase = now;
    };

    let mut tx = pool.begin().await?;
    // The row lock serialises generations of one job: the later one waits here, so its set has the
    // later generated_at and its outbox row the higher id (hence the higher seq once published).
    // region_active (the active contractors of the region, all of whom are considered) rides along
    // to save a round trip.
    let locked: Option<LockedJob> = sqlx::query_as(
        "SELECT j.id, j.title, j.region, j.required_skills, j.lat, j.lon, j.window_start, j.window_end,
                j.status, j.created_at,
                (SELECT count(*) FROM contractors c WHERE c.region = j.region AND c.active) AS region_active
         FROM jobs j
         WHERE j.id = $1
         FOR UPDATE OF j",
    )
    .bind(job_id)
    .fetch_optional(&mut *tx)
    .await?;
    let locked = locked.ok_or(RecommendationError::JobNotFound(job_id))?;
    let considered = usize::try_from(locked.region_active).unwrap_or_default();
    let job = Job::from(locked.job);
    lap(&mut timings.lock_job);

    let candidates = load_candidates(&mut tx, &job).await?;
    lap(&mut timings.load_candidates);

    let needs = JobNeeds {
        location: job.location,
        required_skills: &job.required_skills,
        window_start: job.window_start,
        window_end: job.window_end,
    };
    let ranked = scoring::rank(&needs, &candidates);
    lap(&mut timings.score);

    let set_id = Uuid::new_v4();
    let n = ranked.len();
    let mut ranks = Vec::with_capacity(n);
    let mut contractor_ids = Vec::with_capacity(n);
    let mut scores = Vec::with_capacity(n);
    let mut distances = Vec::with_capacity(n);
    let mut etas = Vec::with_capacity(n);
    let mut skills = Vec::with_capacity(n);
    for (i, s) in ranked.iter().enumerate() {
        ranks.push(i as i32 + 1);
        contractor_ids.push(s.contractor_id);
        scores.push(s.score);
        distances.push(s.distance_km);
        etas.push(s.eta_minutes);
        // Skills never contain a comma (see is_key), so a joined string round-trips.
        skills.push(s.matched_skills.join(","));
    }
    let recommendations: Vec<Recommendation> = ranked
        .into_iter()
        .zip(1..)
        .map(|(s, rank)| Recommendation {
            rank,
            contractor_id: s.contractor_id,
            name: s.name,
            score: s.score,
            distance_km: s.distance_km,
            eta_minutes: s.eta_minutes,
            matched_skills: s.matched_skills,
        })
        .collect();
    // The payload does not depend on generated_at, so the event is ready before the statement that
    // writes it together with the set.
    let payload = payload_of(job.id, set_id, &recommendations);
    let mut event = NewEvent::new(RECOMMENDATION_READY, job.id, vec![GroupKey::for_region(&job.region)?], payload)?;
    if fail == FailPoint::AfterSetInsert {
        // The statement then fails in its outbox part, after the set's rows.
        event = event.refused_by_the_database();
    }
    lap(&mut timings.enqueue);

    // One statement for the set, all its rows and (unless skipped) its outbox row: the event costs no
    // round trip of its own, and the three commit or fail together. matched_skills travels as
    // comma-joined text because UNNEST would flatten a two-dimensional array.
    let sql = match event_write {
        EventWrite::Write => GENERATE_SQL.as_str(),
        EventWrite::BenchOnlySkip => GENERATE_SQL_WITHOUT_EVENT.as_str(),
    };
    let query = sqlx::query_as(sql)
        .bind(set_id)
        .bind(job.id)
        .bind(generated_by)
        .bind(scoring::ALGORITHM)
        .bind(i32::try_from(considered).unwrap_or(i32::MAX))
        .bind(&ranks)
        .bind(&contractor_ids)
        .bind(&scores)
        .bind(&distances)
        .bind(&etas)
        .bind(&skills);
    let query = match event_write {
        EventWrite::Write => outbox::bind_event(query, &event),
        EventWrite::BenchOnlySkip => query,
    };
    let (generated_at, event_id): (DateTime<Utc>, Option<Uuid>) = query.fetch_one(&mut *tx).await?;
    lap(&mut timings.insert_set);

    let set = RecommendationSet { recommendation_set_id: set_id, job_id: job.id, generated_at, recommendations };

    if fail == FailPoint::BeforeCommit {
        inject_failure(&mut tx).await?;
    }

    tx.commit().await?;
    lap(&mut timings.commit);
    timings.total = started.elapsed();

    Ok(Generation { set, candidates: candidates.len(), event_id: event_id.unwrap_or_default(), timings })
}

/// Makes the transaction fail the way a real error would: a statement that PostgreSQL rejects.
async fn inject_failure(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT 1 / 0 -- injected failure (FailPoint)").execute(conn).await?;
    Ok(())
}

/// The `RecommendationReady` payload: `{"jobId", "summary": {"recommendationSetId", "count", "top"}}`.
pub fn event_payload(set: &RecommendationSet) -> serde_json::Value {
    payload_of(set.job_id, set.recommendation_set_id, &set.recommendations)
}

/// [`event_payload`] from the set's parts (before its `generated_at` is known).
fn payload_of(job_id: Uuid, set_id: Uuid, recommendations: &[Recommendation]) -> serde_json::Value {
    let top: Vec<_> = recommendations
        .iter()
        .take(SUMMARY_TOP)
        .map(|r| {
            json!({
                "contractorId": r.contractor_id,
                "name": r.name,
                "score": r.score,
                "etaMinutes": r.eta_minutes,
            })
        })
        .collect();
    json!({
        "jobId": job_id,
        "summary": {
            "recommendationSetId": set_id,
            "count": recommendations.len(),
            "top": top,
        },
    })
}

/// The set and its rows ($1-$11); [`GENERATE_SQL`] adds the outbox row to it.
const SET_AND_ROWS_CTE: &str = "WITH s AS (
         INSERT INTO recommendation_sets (id, job_id, generated_by, algorithm, candidates)
         VALUES ($1, $2, (SELECT d.id FROM dispatchers d WHERE d.id = $3), $4, $5)
         RETURNING generated_at
     ), r AS (
         INSERT INTO recommendations
             (set_id, rank, contractor_id, score, distance_km, eta_minutes, matched_skills)
         SELECT $1, t.rank, t.contractor_id, t.score, t.distance_km, t.eta_minutes,
                string_to_array(t.skills, ',')
         FROM UNNEST($6::int4[], $7::uuid[], $8::float8[], $9::float8[], $10::int4[], $11::text[])
              AS t (rank, contractor_id, score, distance_km, eta_minutes, skills)
     )";

/// A generation's one write: the set, its rows and its `RecommendationReady` outbox row ($12-$16, a plain
/// INSERT INTO outbox that the relay publishes like any other).
static GENERATE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{SET_AND_ROWS_CTE}, o AS ({})
         SELECT s.generated_at, o.event_id FROM s, o",
        outbox::insert_sql(12)
    )
});

/// The benchmark's baseline: [`GENERATE_SQL`] without the outbox row.
static GENERATE_SQL_WITHOUT_EVENT: LazyLock<String> =
    LazyLock::new(|| format!("{SET_AND_ROWS_CTE} SELECT s.generated_at, NULL::uuid FROM s"));

#[derive(sqlx::FromRow)]
struct LockedJob {
    #[sqlx(flatten)]
    job: JobRow,
    region_active: i64,
}

#[derive(sqlx::FromRow)]
struct CandidateRow {
    id: Uuid,
    name: String,
    home_lat: f64,
    home_lon: f64,
    skills: Vec<String>,
    rating: f64,
    work_start: NaiveTime,
    work_end: NaiveTime,
    max_daily_jobs: i32,
    active: bool,
    busy_starts: Vec<DateTime<Utc>>,
    busy_ends: Vec<DateTime<Utc>>,
}

/// The region's active contractors who hold every required skill, with their bookings that touch
/// the window's first UTC day or the window itself (all that scoring looks at). One query.
///
/// The skill and activity filters are repeated here (scoring applies them again) only so that the
/// per-contractor booking lookup runs for qualified contractors alone: about 3x faster.
async fn load_candidates(conn: &mut PgConnection, job: &Job) -> Result<Vec<Candidate>> {
    let day_start = job.window_start.date_naive().and_time(NaiveTime::MIN).and_utc();
    let until = job.window_end.max(day_start + Duration::days(1));
    let rows: Vec<CandidateRow> = sqlx::query_as(
        "SELECT c.id, c.name, c.home_lat, c.home_lon, c.skills, c.rating::float8 AS rating,
                c.work_start, c.work_end, c.max_daily_jobs, c.active,
                COALESCE(b.starts, '{}') AS busy_starts, COALESCE(b.ends, '{}') AS busy_ends
         FROM contractors c
         LEFT JOIN LATERAL (
             SELECT array_agg(a.starts_at ORDER BY a.starts_at) AS starts,
                    array_agg(a.ends_at ORDER BY a.starts_at) AS ends
             FROM contractor_assignments a
             WHERE a.contractor_id = c.id AND a.starts_at < $3 AND a.ends_at > $2
         ) b ON true
         WHERE c.region = $1 AND c.active AND c.skills @> $4",
    )
    .bind(&job.region)
    .bind(day_start)
    .bind(until)
    .bind(&job.required_skills)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Candidate {
            id: r.id,
            name: r.name,
            home: Location { lat: r.home_lat, lon: r.home_lon },
            skills: r.skills,
            rating: r.rating,
            work_start: r.work_start,
            work_end: r.work_end,
            max_daily_jobs: r.max_daily_jobs,
            active: r.active,
            bookings: r
                .busy_starts
                .into_iter()
                .zip(r.busy_ends)
                .map(|(starts_at, ends_at)| Booking { starts_at, ends_at })
                .collect(),
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct SetRow {
    set_id: Uuid,
    job_id: Uuid,
    generated_at: DateTime<Utc>,
    rank: Option<i32>,
    contractor_id: Option<Uuid>,
    name: Option<String>,
    score: Option<f64>,
    distance_km: Option<f64>,
    eta_minutes: Option<i32>,
    matched_skills: Option<Vec<String>>,
}

/// The job's latest recommendation set, or `None` when it has none (or the job does not exist).
pub async fn latest_set(pool: &PgPool, job_id: Uuid) -> Result<Option<RecommendationSet>> {
    let rows: Vec<SetRow> = sqlx::query_as(
        "SELECT s.id AS set_id, s.job_id, s.generated_at, r.rank, r.contractor_id, c.name,
                r.score, r.distance_km, r.eta_minutes, r.matched_skills
         FROM (SELECT id, job_id, generated_at
               FROM recommendation_sets
               WHERE job_id = $1
               ORDER BY generated_at DESC
               LIMIT 1) s
         LEFT JOIN recommendations r ON r.set_id = s.id
         LEFT JOIN contractors c ON c.id = r.contractor_id
         ORDER BY r.rank",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let mut set = RecommendationSet {
        recommendation_set_id: first.set_id,
        job_id: first.job_id,
        generated_at: first.generated_at,
        recommendations: Vec::with_capacity(rows.len()),
    };
    for r in rows {
        // A set with no recommendations comes back as one row of NULLs from the LEFT JOIN.
        let (Some(rank), Some(contractor_id)) = (r.rank, r.contractor_id) else {
            continue;
        };
        set.recommendations.push(Recommendation {
            rank,
            contractor_id,
            name: r.name.unwrap_or_default(),
            score: r.score.unwrap_or_default(),
            distance_km: r.distance_km.unwrap_or_default(),
            eta_minutes: r.eta_minutes.unwrap_or_default(),
            matched_skills: r.matched_skills.unwrap_or_default(),
        });
    }
    Ok(Some(set))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn valid() -> NewJob {
        NewJob {
            title: "No cooling at the clinic".into(),
            region: "north".into(),
            required_skills: vec!["hvac".into(), "electrical".into()],
            location: Location { lat: 47.7, lon: -122.3 },
            window_start: Utc.with_ymd_and_hms(2030, 6, 10, 9, 0, 0).unwrap(),
            window_end: Utc.with_ymd_and_hms(2030, 6, 10, 12, 0, 0).unwrap(),
        }
    }

    fn field_of(job: &NewJob) -> &'static str {
        match job.validate() {
            Err(RecommendationError::Validation { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_job_passes() {
        valid().validate().unwrap();
        let mut j = valid();
        j.required_skills.clear();
        j.validate().unwrap();
    }

    #[test]
    fn deserialises_the_contract_body() {
        let j: NewJob = serde_json::from_str(
            r#"{"title":"Fix","region":"north","requiredSkills":["hvac"],
                "location":{"lat":47.6,"lon":-122.3},
                "windowStart":"2030-06-10T09:00:00Z","windowEnd":"2030-06-10T12:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(j.required_skills, vec!["hvac"]);
        assert_eq!(j.location.lon, -122.3);
        // A misspelt field is refused rather than ignored.
        let typo = r#"{"title":"Fix","region":"north","requiredSkill":["hvac"],
                "location":{"lat":47.6,"lon":-122.3},
                "windowStart":"2030-06-10T09:00:00Z","windowEnd":"2030-06-10T12:00:00Z"}"#;
        assert!(serde_json::from_str::<NewJob>(typo).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        type Mutation = Box<dyn Fn(&mut NewJob)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|j| j.title = "   ".into()), "title"),
            (Box::new(|j| j.title = "x".repeat(201)), "title"),
            (Box::new(|j| j.region = "North".into()), "region"),
            (Box::new(|j| j.region = String::new()), "region"),
            (Box::new(|j| j.required_skills = vec!["HVAC".into()]), "requiredSkills"),
            (Box::new(|j| j.required_skills = vec!["-x".into()]), "requiredSkills"),
            (Box::new(|j| j.required_skills = vec!["a".repeat(33)]), "requiredSkills"),
            (Box::new(|j| j.required_skills = vec!["hvac".into(), "hvac".into()]), "requiredSkills"),
            (Box::new(|j| j.required_skills = (0..21).map(|i| format!("s{i}")).collect()), "requiredSkills"),
            (Box::new(|j| j.location.lat = 90.5), "location.lat"),
            (Box::new(|j| j.location.lat = f64::NAN), "location.lat"),
            (Box::new(|j| j.location.lon = -180.01), "location.lon"),
            (Box::new(|j| j.location.lon = f64::INFINITY), "location.lon"),
            (Box::new(|j| j.window_end = j.window_start), "windowEnd"),
            (Box::new(|j| j.window_end = j.window_start + TimeDelta::days(30) + TimeDelta::seconds(1)), "windowEnd"),
        ];
        for (i, (mutate, field)) in cases.iter().enumerate() {
            let mut j = valid();
            mutate(&mut j);
            assert_eq!(field_of(&j), *field, "case {i}");
        }
        // Limits themselves are fine.
        let mut j = valid();
        j.title = "é".repeat(200);
        j.required_skills = (0..20).map(|i| format!("s{i}")).collect();
        j.window_end = j.window_start + TimeDelta::days(30);
        j.location = Location { lat: -90.0, lon: 180.0 };
        j.validate().unwrap();
    }

    #[test]
    fn validation_messages_read_well() {
        let mut j = valid();
        j.title = "x".repeat(201);
        assert_eq!(j.validate().unwrap_err().to_string(), "invalid title: is 201 characters long; the limit is 200");
    }

    #[test]
    fn sets_serialise_in_camel_case() {
        let set = RecommendationSet {
            recommendation_set_id: Uuid::nil(),
            job_id: Uuid::nil(),
            generated_at: Utc.with_ymd_and_hms(2030, 6, 10, 9, 0, 0).unwrap(),
            recommendations: vec![Recommendation {
                rank: 1,
                contractor_id: Uuid::nil(),
                name: "A".into(),
                score: 0.5,
                distance_km: 1.25,
                eta_minutes: 7,
                matched_skills: vec!["hvac".into()],
            }],
        };
        let v = serde_json::to_value(&set).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["generatedAt", "jobId", "recommendationSetId", "recommendations"]);
        let r = v["recommendations"][0].as_object().unwrap();
        let mut rkeys: Vec<_> = r.keys().cloned().collect();
        rkeys.sort();
        assert_eq!(rkeys, ["contractorId", "distanceKm", "etaMinutes", "matchedSkills", "name", "rank", "score"]);
        let p = event_payload(&set);
        assert_eq!(p["summary"]["count"], 1);
        assert_eq!(p["summary"]["top"][0]["etaMinutes"], 7);
    }
}

#[cfg(test)]
mod fuzz {
    //! A job that passes validation is one PostgreSQL stores: the property behind "bad input is a 400, never
    //! a 500". The columns' domains are restated here from migrations/0003 and PostgreSQL's limits.
    use super::*;
    use chrono::Datelike;
    use proptest::prelude::*;

    fn timestamp() -> impl Strategy<Value = DateTime<Utc>> {
        prop_oneof![
            (-8_000_000_000_000i64..=8_000_000_000_000i64, 0u32..1_000_000_000u32),
            (1_700_000_000i64..1_900_000_000i64, 0u32..1_000_000_000u32),
        ]
        .prop_filter_map("representable", |(s, n)| DateTime::from_timestamp(s, n))
    }

    fn number() -> impl Strategy<Value = f64> {
        prop_oneof![any::<f64>(), -200.0f64..200.0, Just(f64::NAN), Just(-0.0), Just(90.0), Just(180.0)]
    }

    fn new_job() -> impl Strategy<Value = NewJob> {
        let title = prop_oneof![any::<String>(), "[ a-z\u{0}\u{e9}]{0,210}"];
        let key = prop_oneof!["[a-z0-9_-]{1,33}", any::<String>()];
        let start = timestamp();
        let length = prop_oneof![-10i64..10, 0i64..40 * 86_400_000_000_000];
        (title, key.clone(), proptest::collection::vec(key, 0..22), number(), number(), start, length).prop_map(
            |(title, region, required_skills, lat, lon, window_start, nanos)| NewJob {
                title,
                region,
                required_skills,
                location: Location { lat, lon },
                window_start,
                window_end: window_start.checked_add_signed(TimeDelta::nanoseconds(nanos)).unwrap_or(window_start),
            },
        )
    }

    proptest! {
        #![proptest_config(crate::fuzz_support::config(1024))]

        #[test]
        fn a_job_that_passes_validation_is_inside_every_column_domain(job in new_job()) {
            let Ok(()) = job.validate() else { return Ok(()) };
            let title = job.title();
            prop_assert!(!title.is_empty() && title.chars().count() <= 200 && !title.contains('\0'));
            prop_assert!(validate::is_key(&job.region));
            prop_assert!(job.required_skills.len() <= MAX_REQUIRED_SKILLS);
            prop_assert!(job.required_skills.iter().all(|s| validate::is_key(s)));
            prop_assert!((-90.0..=90.0).contains(&job.location.lat) && (-180.0..=180.0).contains(&job.location.lon));
            let (start, end) = job.window().expect("validated");
            // PostgreSQL's timestamptz spans 4713 BC to 294276 AD, at microseconds; jobs CHECK end > start.
            prop_assert!(start.timestamp_subsec_nanos() % 1000 == 0 && end.timestamp_subsec_nanos() % 1000 == 0);
            prop_assert!(start.year() >= 1 && end.year() <= 9999 && end > start);
        }
    }
}

//! The generation transaction: lock the job, load its candidates, rank them ([`super::scoring`]), and
//! write the set, its rows and its `RecommendationReady` outbox row in one statement, then commit.

use chrono::{DateTime, Duration, NaiveTime, Utc};
use sqlx::{PgConnection, PgPool};
use std::sync::LazyLock;
use std::time::{Duration as StdDuration, Instant};
use uuid::Uuid;

use super::error::{RecommendationError, Result};
use super::event::{RECOMMENDATION_READY, payload_of};
use super::job::{Job, JobRow, Location};
use super::region::region_group;
use super::scoring::{self, Booking, Candidate, JobNeeds};
use super::set::{Recommendation, RecommendationSet};
use crate::outbox::{self, NewEvent};

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
    /// The set as stored (and as [`super::latest_set`] reads it back).
    pub set: RecommendationSet,
    /// Active contractors of the region that were considered (stored as
    /// `recommendation_sets.candidates`).
    pub candidates: usize,
    /// The outbox `event_id` of the `RecommendationReady` event (nil when the benchmark's baseline skipped it).
    pub event_id: Uuid,
    /// How long each phase took.
    pub timings: PhaseTimings,
}

/// Generates and stores a recommendation set for the job, together with its `RecommendationReady`
/// event (one transaction). `generated_by` is recorded when it names a known dispatcher.
/// Logs one info line per generation (an operator's record of who generated what and how long it took).
/// Errors: [`RecommendationError::JobNotFound`], `Outbox` (the event was refused before the database),
/// `Database`; on any error nothing is written.
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
    let mut parts: [Vec<f64>; 4] = std::array::from_fn(|_| Vec::with_capacity(n));
    for (i, s) in ranked.iter().enumerate() {
        ranks.push(i as i32 + 1);
        contractor_ids.push(s.contractor_id);
        scores.push(s.score);
        distances.push(s.distance_km);
        etas.push(s.eta_minutes);
        // Skills never contain a comma (see is_key), so a joined string round-trips.
        skills.push(s.matched_skills.join(","));
        let p = s.parts;
        for (column, value) in parts.iter_mut().zip([p.proximity, p.skills, p.rating, p.capacity]) {
            column.push(value);
        }
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
            score_parts: Some(s.parts),
        })
        .collect();
    // The payload does not depend on generated_at, so the event is ready before the statement that
    // writes it together with the set.
    let payload = payload_of(job.id, set_id, &recommendations);
    let mut event = NewEvent::new(RECOMMENDATION_READY, job.id, vec![region_group(&job.region)?], payload)?;
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
        .bind(&skills)
        .bind(&parts[0])
        .bind(&parts[1])
        .bind(&parts[2])
        .bind(&parts[3]);
    let query = match event_write {
        EventWrite::Write => outbox::bind_event(query, &event),
        EventWrite::BenchOnlySkip => query,
    };
    let (generated_at, event_id): (DateTime<Utc>, Option<Uuid>) = query.fetch_one(&mut *tx).await?;
    lap(&mut timings.insert_set);

    let set = RecommendationSet {
        recommendation_set_id: set_id,
        job_id: job.id,
        generated_at,
        algorithm: scoring::ALGORITHM.to_owned(),
        score_weights: Some(scoring::WEIGHTS),
        recommendations,
    };

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

/// The set and its rows ($1-$15: $12-$15 the four score parts); [`GENERATE_SQL`] adds the outbox row to it.
const SET_AND_ROWS_CTE: &str = "WITH s AS (
         INSERT INTO recommendation_sets (id, job_id, generated_by, algorithm, candidates)
         VALUES ($1, $2, (SELECT d.id FROM dispatchers d WHERE d.id = $3), $4, $5)
         RETURNING generated_at
     ), r AS (
         INSERT INTO recommendations
             (set_id, rank, contractor_id, score, distance_km, eta_minutes, matched_skills,
              score_proximity, score_skills, score_rating, score_capacity)
         SELECT $1, t.rank, t.contractor_id, t.score, t.distance_km, t.eta_minutes,
                string_to_array(t.skills, ','), t.proximity, t.skill_fit, t.rating, t.capacity
         FROM UNNEST($6::int4[], $7::uuid[], $8::float8[], $9::float8[], $10::int4[], $11::text[],
                     $12::float8[], $13::float8[], $14::float8[], $15::float8[])
              AS t (rank, contractor_id, score, distance_km, eta_minutes, skills,
                    proximity, skill_fit, rating, capacity)
     )";

/// A generation's one write: the set, its rows and its `RecommendationReady` outbox row ($16-$20, a plain
/// INSERT INTO outbox that the relay publishes like any other).
static GENERATE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{SET_AND_ROWS_CTE}, o AS ({})
         SELECT s.generated_at, o.event_id FROM s, o",
        outbox::insert_sql(16)
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

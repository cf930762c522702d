//! Jobs: what a dispatcher needs done, where and when. [`NewJob`] is validated at the edge, so that a job
//! that passes is one PostgreSQL stores (bad input is a 400, never a 500); the queries store, list and
//! fetch jobs.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::error::{RecommendationError, Result, invalid};
use crate::validate;

/// Longest job title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Most skills a job may require.
pub const MAX_REQUIRED_SKILLS: usize = 20;
/// Longest job window.
pub const MAX_WINDOW: TimeDelta = TimeDelta::days(30);
/// Most jobs [`list_jobs`] returns.
pub const LIST_LIMIT: i64 = 200;

/// A point on Earth in degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// Latitude in degrees, -90 to 90 (north positive).
    pub lat: f64,
    /// Longitude in degrees, -180 to 180 (east positive).
    pub lon: f64,
}

/// The body of `POST /api/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewJob {
    /// What needs doing, 1 to [`MAX_TITLE_CHARS`] characters (stored trimmed).
    pub title: String,
    /// The key of an existing region, for example `north`.
    pub region: String,
    /// Skills a contractor must hold, at most [`MAX_REQUIRED_SKILLS`], each a key like `hvac`, no repeats
    /// (default: none).
    #[serde(default)]
    pub required_skills: Vec<String>,
    /// Where the job is.
    pub location: Location,
    /// When the work may start.
    pub window_start: DateTime<Utc>,
    /// When it must end: after the start, at most [`MAX_WINDOW`] later.
    pub window_end: DateTime<Utc>,
}

impl NewJob {
    /// Checks everything that can be checked without the database (the region's existence is
    /// checked by [`create_job`]). Errors: [`RecommendationError::Validation`], whose message names the
    /// JSON field.
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
                    format!(
                        "{} is not a skill (^[a-z0-9][a-z0-9_-]{{0,31}}$, for example hvac)",
                        crate::validate::echo(skill)
                    ),
                ));
            }
            if self.required_skills[..i].contains(skill) {
                return Err(invalid("requiredSkills", format!("{} is listed twice", crate::validate::echo(skill))));
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
    /// The job's id.
    pub id: Uuid,
    /// What needs doing (trimmed).
    pub title: String,
    /// The key of its region.
    pub region: String,
    /// Skills a contractor must hold.
    pub required_skills: Vec<String>,
    /// Where the job is.
    pub location: Location,
    /// When the work may start.
    pub window_start: DateTime<Utc>,
    /// When it must end.
    pub window_end: DateTime<Utc>,
    /// `open`, `assigned`, `done` or `cancelled`.
    pub status: String,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

/// A `jobs` row as queries return it (the generation reads it too, with its lock).
#[derive(sqlx::FromRow)]
pub(super) struct JobRow {
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
/// dispatcher (else the column stays NULL). The title is stored trimmed. Errors: `Validation`,
/// [`RecommendationError::UnknownRegion`], `Database`.
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

/// Jobs of the given regions (keys), newest first, at most [`LIST_LIMIT`]; none for no regions.
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

/// The job with this id, or `None`.
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
        // 1024 cases, or PROPTEST_CASES (proptest applies its environment variables over this
        // configuration); a failure prints its shrunk input and is not saved to a file (docs/fuzzing.md).
        #![proptest_config(proptest::test_runner::contextualize_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::with_cases(1024)
        }))]

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

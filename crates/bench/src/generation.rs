//! Section 8's benchmark of [`generate`](smartscheduler::recommendations::generate): how long one
//! generation takes with 1,000 active contractors in the job's region, and how much of it the outbox row
//! costs (the same generation without its event, alternating in the same run). [`populate`] also builds
//! section 10's region.

use anyhow::{Context, bail};
use chrono::{Duration, NaiveTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use std::fmt;
use std::time::Duration as StdDuration;
use uuid::Uuid;

use smartscheduler::recommendations::{
    EventWrite, FailPoint, Location, NewJob, PhaseTimings, create_job, generate_with, generate_writing,
};

/// Contractors created in the benchmark's region.
pub const BENCH_CONTRACTORS: usize = 1_000;
/// Generations run before measuring (connections, prepared statements, caches).
const WARM_UP: usize = 3;
const SKILLS: [&str; 8] = ["hvac", "electrical", "plumbing", "roofing", "appliance", "carpentry", "locksmith", "solar"];

/// Results of [`bench_generation`]; times in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationBench {
    /// Active contractors in the job's region ([`BENCH_CONTRACTORS`]).
    pub contractors: usize,
    /// Measured generations (each also run once without its event).
    pub iterations: usize,
    /// Recommendations in each set.
    pub recommendations: usize,
    /// Median of a whole generation with its event.
    pub total_median_ms: f64,
    /// 95th percentile of a whole generation with its event.
    pub total_p95_ms: f64,
    /// Median of the same generation without its outbox row (the benchmark's baseline), run alternately.
    pub without_event_median_ms: f64,
    /// Median with the outbox row over median without it, minus one, as a percentage: what the event
    /// costs a generation.
    pub outbox_share_pct: f64,
    /// Median of BEGIN and locking the job.
    pub lock_median_ms: f64,
    /// Median of loading the candidates.
    pub load_median_ms: f64,
    /// Median of ranking in memory.
    pub score_median_ms: f64,
    /// Median of the statement that writes the set, its rows and its outbox row.
    pub insert_median_ms: f64,
    /// Median of COMMIT.
    pub commit_median_ms: f64,
}

impl fmt::Display for GenerationBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "generate: {} contractors in the region, {} iterations, {} recommendations per set",
            self.contractors, self.iterations, self.recommendations
        )?;
        writeln!(f, "  total: median {:.2} ms, p95 {:.2} ms", self.total_median_ms, self.total_p95_ms)?;
        writeln!(
            f,
            "  phases (median): lock job {:.2} ms, load candidates {:.2} ms, score {:.2} ms, \
             insert set + rows + outbox row {:.2} ms, \
             commit {:.2} ms",
            self.lock_median_ms,
            self.load_median_ms,
            self.score_median_ms,
            self.insert_median_ms,
            self.commit_median_ms
        )?;
        write!(
            f,
            "  without the outbox row (baseline, same run): median {:.2} ms; with / without {:.3} ({:+.1}%)",
            self.without_event_median_ms,
            self.total_median_ms / self.without_event_median_ms.max(f64::MIN_POSITIVE),
            self.outbox_share_pct
        )
    }
}

/// In `pool` (a migrated database), creates a region of its own with [`BENCH_CONTRACTORS`] active
/// contractors (a third of them with a booking on the job's day) and one job, then runs
/// [`generate`](smartscheduler::recommendations::generate) `iterations` times, each followed by one
/// generation without the outbox row (the baseline), and reports the timings. Leaves the data behind.
/// Errors: `iterations` is 0, or a write failed.
pub async fn bench_generation(pool: &PgPool, iterations: usize) -> anyhow::Result<GenerationBench> {
    if iterations == 0 {
        bail!("iterations must be at least 1");
    }
    let region = format!("bench-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let jobs = populate(pool, &region, BENCH_CONTRACTORS, 1).await.context("create the benchmark region")?;
    let job_id = jobs[0];

    for write in [EventWrite::Write, EventWrite::BenchOnlySkip].repeat(WARM_UP) {
        generate_writing(pool, job_id, "bench", FailPoint::Never, write).await.context("warm-up generation")?;
    }
    let mut runs: Vec<PhaseTimings> = Vec::with_capacity(iterations);
    let mut baseline: Vec<StdDuration> = Vec::with_capacity(iterations);
    let mut recommendations = 0;
    for _ in 0..iterations {
        let g = generate_with(pool, job_id, "bench", FailPoint::Never).await.context("generation")?;
        recommendations = g.set.recommendations.len();
        runs.push(g.timings);
        let b = generate_writing(pool, job_id, "bench", FailPoint::Never, EventWrite::BenchOnlySkip)
            .await
            .context("generation without the event")?;
        baseline.push(b.timings.total);
    }

    let median = |f: fn(&PhaseTimings) -> StdDuration| percentile_ms(runs.iter().map(f).collect(), 50.0);
    let total_median_ms = median(|t| t.total);
    let without_event_median_ms = percentile_ms(baseline, 50.0);
    Ok(GenerationBench {
        contractors: BENCH_CONTRACTORS,
        iterations,
        recommendations,
        total_median_ms,
        total_p95_ms: percentile_ms(runs.iter().map(|t| t.total).collect(), 95.0),
        without_event_median_ms,
        outbox_share_pct: if without_event_median_ms > 0.0 {
            (total_median_ms / without_event_median_ms - 1.0) * 100.0
        } else {
            0.0
        },
        lock_median_ms: median(|t| t.lock_job),
        load_median_ms: median(|t| t.load_candidates),
        score_median_ms: median(|t| t.score),
        insert_median_ms: median(|t| t.insert_set),
        commit_median_ms: median(|t| t.commit),
    })
}

/// Nearest-rank percentile, in milliseconds.
fn percentile_ms(mut xs: Vec<StdDuration>, pct: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_unstable();
    let rank = ((pct / 100.0) * xs.len() as f64).ceil() as usize;
    let i = rank.clamp(1, xs.len()) - 1;
    xs[i].as_secs_f64() * 1000.0
}

/// Creates `region` with `contractors` active contractors near one centre (a third of them with a
/// morning booking on the jobs' day) and `jobs` hvac jobs tomorrow 13:00-16:00 UTC; returns the job ids.
/// Shared with the API benchmark (section 10). Errors: the database's (`region` must be a new region key).
pub async fn populate(pool: &PgPool, region: &str, contractors: usize, jobs: usize) -> anyhow::Result<Vec<Uuid>> {
    let centre = Location { lat: 47.6, lon: -122.3 };
    sqlx::query("INSERT INTO regions (key, name, center_lat, center_lon) VALUES ($1, $2, $3, $4)")
        .bind(region)
        .bind(format!("Benchmark {region}"))
        .bind(centre.lat)
        .bind(centre.lon)
        .execute(pool)
        .await?;

    let mut rng = StdRng::seed_from_u64(0x5eed_b0a7);
    let hours = [(7, 16), (8, 17), (10, 19)];
    let n = contractors;
    let (mut names, mut lats, mut lons, mut skills, mut ratings, mut starts, mut ends) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for i in 0..n {
        names.push(format!("Bench Contractor {i:04}"));
        lats.push(centre.lat + rng.random_range(-0.15..0.15));
        lons.push(centre.lon + rng.random_range(-0.2..0.2));
        let mut held: Vec<&str> = SKILLS.iter().copied().filter(|_| rng.random_bool(0.3)).collect();
        if held.is_empty() {
            held.push(SKILLS[i % SKILLS.len()]);
        }
        skills.push(held.join(","));
        ratings.push(f64::from(rng.random_range(300..=500)) / 100.0);
        let (s, e) = hours[i % hours.len()];
        starts.push(NaiveTime::from_hms_opt(s, 0, 0).context("work start")?);
        ends.push(NaiveTime::from_hms_opt(e, 0, 0).context("work end")?);
    }
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO contractors (name, region, home_lat, home_lon, skills, rating, work_start, work_end, max_daily_jobs)
         SELECT t.name, $1, t.lat, t.lon, string_to_array(t.skills, ','), t.rating, t.ws, t.we, 4
         FROM UNNEST($2::text[], $3::float8[], $4::float8[], $5::text[], $6::float8[], $7::time[], $8::time[])
              AS t (name, lat, lon, skills, rating, ws, we)
         RETURNING id",
    )
    .bind(region)
    .bind(&names)
    .bind(&lats)
    .bind(&lons)
    .bind(&skills)
    .bind(&ratings)
    .bind(&starts)
    .bind(&ends)
    .fetch_all(pool)
    .await?;

    // The job: tomorrow 13:00-16:00 UTC, hvac. A third of the contractors have a morning booking
    // that day (it counts toward their workload but does not clash).
    let day = (Utc::now() + Duration::days(1)).date_naive();
    let window_start = day.and_hms_opt(13, 0, 0).context("window start")?.and_utc();
    let booked: Vec<Uuid> = ids.iter().copied().step_by(3).collect();
    let booking_start = day.and_hms_opt(9, 0, 0).context("booking start")?.and_utc();
    sqlx::query(
        "INSERT INTO contractor_assignments (contractor_id, starts_at, ends_at)
         SELECT id, $2, $3 FROM UNNEST($1::uuid[]) AS t (id)",
    )
    .bind(&booked)
    .bind(booking_start)
    .bind(booking_start + Duration::hours(2))
    .execute(pool)
    .await?;

    let mut job_ids = Vec::with_capacity(jobs);
    for i in 0..jobs {
        let job = create_job(
            pool,
            &NewJob {
                title: format!("Benchmark {i}: rooftop unit not cooling"),
                region: region.to_owned(),
                required_skills: vec!["hvac".into()],
                location: Location { lat: centre.lat + 0.01, lon: centre.lon - 0.01 },
                window_start,
                window_end: window_start + Duration::hours(3),
            },
            "bench",
        )
        .await?;
        job_ids.push(job.id);
    }
    Ok(job_ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::Ctx;

    #[tokio::test]
    async fn the_benchmark_runs_and_reports() {
        let admin_url = std::env::var("SMARTSCHEDULER_TEST_ADMIN_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let ctx = Ctx::new(&admin_url, true);
        let db = ctx.fresh_db(8).await.unwrap();
        let b = bench_generation(&db.pool, 5).await.unwrap();
        println!("{b}");
        assert_eq!(b.contractors, 1_000);
        assert_eq!(b.iterations, 5);
        assert_eq!(b.recommendations, 10);
        assert!(b.total_p95_ms >= b.total_median_ms);
        assert!(b.without_event_median_ms > 0.0 && b.outbox_share_pct < 100.0);
        assert!(b.to_string().lines().count() >= 3);
        let sets: i64 =
            sqlx::query_scalar("SELECT count(*) FROM recommendation_sets").fetch_one(&db.pool).await.unwrap();
        // Every generation, with and without its event, warm-up included; only the former have a row.
        assert_eq!(sets, 2 * (5 + 3));
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&db.pool).await.unwrap();
        assert_eq!(events, 5 + 3);
        assert!(bench_generation(&db.pool, 0).await.is_err());
        ctx.drop_db(db).await;
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let xs: Vec<_> = (1..=20).map(StdDuration::from_millis).collect();
        assert_eq!(percentile_ms(xs.clone(), 50.0), 10.0);
        assert_eq!(percentile_ms(xs.clone(), 95.0), 19.0);
        assert_eq!(percentile_ms(xs, 100.0), 20.0);
        assert_eq!(percentile_ms(vec![], 50.0), 0.0);
    }
}

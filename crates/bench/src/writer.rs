//! Section 1: what the outbox row costs a realistic writer transaction.

use crate::common::{Ctx, Report, fmt_int, histogram, ms, pass_word, sum_workers};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use smartscheduler::outbox::{self, NewEvent};
use smartscheduler::recommendations::region_group;
use sqlx::PgPool;
use std::sync::LazyLock;
use std::time::{Duration, Instant};
use uuid::Uuid;

const CONTRACTORS: i64 = 200;
const JOBS: i64 = 64;
const PER_SET: usize = 10;

struct Fixture {
    contractors: Vec<Uuid>,
    jobs: Vec<Uuid>,
}

async fn fixture(pool: &PgPool) -> anyhow::Result<Fixture> {
    sqlx::query("INSERT INTO regions (key, name, center_lat, center_lon) VALUES ('north', 'North', 47.6, -122.3)")
        .execute(pool)
        .await?;
    let contractors: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO contractors (name, region, home_lat, home_lon, skills)
         SELECT 'Contractor ' || i, 'north', 47.6 + i * 0.0005, -122.3 - i * 0.0005, '{hvac,electrical}'
         FROM generate_series(1, $1) AS i RETURNING id",
    )
    .bind(CONTRACTORS)
    .fetch_all(pool)
    .await?;
    let jobs: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO jobs (title, region, required_skills, lat, lon, window_start, window_end)
         SELECT 'Bench job ' || i, 'north', '{hvac}', 47.6, -122.3, now(), now() + interval '2 hours'
         FROM generate_series(1, $1) AS i RETURNING id",
    )
    .bind(JOBS)
    .fetch_all(pool)
    .await?;
    Ok(Fixture { contractors, jobs })
}

/// How the recommendation transaction writes its outbox row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Baseline: no outbox row.
    Without,
    /// Ours: the outbox row inside the statement that writes the set and its rows (as `generate` does).
    Folded,
    /// The outbox row as its own statement (`outbox::enqueue`), one more round trip.
    Separate,
}

/// The set and its 10 rows ($1-$7), one statement; `Folded` adds the outbox row as a third CTE.
const SET_AND_ROWS: &str = "WITH s AS (
         INSERT INTO recommendation_sets (id, job_id, algorithm, candidates) VALUES ($1, $2, 'weighted-v1', $3)
     ), r AS (
         INSERT INTO recommendations (set_id, rank, contractor_id, score, distance_km, eta_minutes, matched_skills)
         SELECT $1, r, c, s, d, e, string_to_array(m, ',')
         FROM UNNEST($4::int4[], $5::uuid[], $6::float8[], $7::float8[], $8::int4[], $9::text[]) AS u(r, c, s, d, e, m)
     )";

static WITHOUT_SQL: LazyLock<String> = LazyLock::new(|| format!("{SET_AND_ROWS} SELECT NULL::uuid"));
static FOLDED_SQL: LazyLock<String> =
    LazyLock::new(|| format!("{SET_AND_ROWS}, o AS ({}) SELECT event_id FROM o", outbox::insert_sql(10)));

/// One recommendation transaction: a set and its 10 rows in one statement, and the outbox row as `shape`
/// says.
async fn transaction(pool: &PgPool, fx: &Fixture, rng: &mut StdRng, job: Uuid, shape: Shape) -> anyhow::Result<()> {
    let picked = rand::seq::index::sample(rng, fx.contractors.len(), PER_SET);
    let contractor_ids: Vec<Uuid> = picked.iter().map(|i| fx.contractors[i]).collect();
    let ranks: Vec<i32> = (1..=PER_SET as i32).collect();
    let scores: Vec<f64> = (0..PER_SET).map(|i| 0.95 - i as f64 * 0.03).collect();
    let distances: Vec<f64> = (0..PER_SET).map(|_| rng.random_range(0.5..40.0)).collect();
    let etas: Vec<i32> = distances.iter().map(|d| (d * 1.5) as i32 + 5).collect();
    let skills: Vec<&str> = vec!["hvac"; PER_SET];
    let set_id = Uuid::new_v4();
    let top: Vec<_> = (0..3)
        .map(|i| {
            json!({"contractorId": contractor_ids[i], "name": format!("Contractor {i}"),
                   "score": scores[i], "etaMinutes": etas[i]})
        })
        .collect();
    let event = NewEvent::new(
        "RecommendationReady",
        job,
        vec![region_group("north")?],
        json!({"jobId": job, "summary": {"recommendationSetId": set_id, "count": PER_SET, "top": top}}),
    )?;

    let mut tx = pool.begin().await?;
    let sql = if shape == Shape::Folded { FOLDED_SQL.as_str() } else { WITHOUT_SQL.as_str() };
    let query = sqlx::query_as::<_, (Option<Uuid>,)>(sql)
        .bind(set_id)
        .bind(job)
        .bind(CONTRACTORS as i32)
        .bind(&ranks)
        .bind(&contractor_ids)
        .bind(&scores)
        .bind(&distances)
        .bind(&etas)
        .bind(&skills);
    let query = if shape == Shape::Folded { outbox::bind_event(query, &event) } else { query };
    query.fetch_one(&mut *tx).await?;
    if shape == Shape::Separate {
        outbox::enqueue(&mut tx, &event).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Runs `writers` concurrent writers for `duration`; returns (transactions, latency histogram, wall time).
async fn drive(
    pool: &PgPool,
    fx: &std::sync::Arc<Fixture>,
    writers: usize,
    shape: Shape,
    duration: Duration,
) -> anyhow::Result<(u64, Histogram<u64>, Duration)> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let pool = pool.clone();
        let fx = fx.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(w as u64 + 1);
            let mut hist = histogram();
            let mut n = 0u64;
            // Bounded in time and in count.
            while Instant::now() < deadline && n < 1_000_000 {
                let job = fx.jobs[(w + n as usize * writers) % fx.jobs.len()];
                let t = Instant::now();
                transaction(&pool, &fx, &mut rng, job, shape).await?;
                hist.saturating_record(t.elapsed().as_micros() as u64);
                n += 1;
            }
            anyhow::Ok((n, hist))
        }));
    }
    let (total, hist) = sum_workers(tasks).await?;
    Ok((total, hist, started.elapsed()))
}

async fn reset(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE outbox, recommendation_sets CASCADE").execute(pool).await?;
    sqlx::query("VACUUM ANALYZE outbox").execute(pool).await?;
    sqlx::query("VACUUM ANALYZE recommendations").execute(pool).await?;
    Ok(())
}

pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let db = ctx.fresh_db(20).await?;
    let result = run_on(ctx, &db.pool, report).await;
    ctx.drop_db(db).await;
    result
}

async fn run_on(ctx: &Ctx, pool: &PgPool, report: &mut Report) -> anyhow::Result<()> {
    let fx = std::sync::Arc::new(fixture(pool).await?);
    // Each configuration runs in `rounds` alternating slices so that background noise hits both alike.
    // Short slices, many rounds: on a machine shared with other work the load changes within seconds.
    let (slice, rounds) = if ctx.quick { (Duration::from_millis(1000), 1) } else { (Duration::from_millis(1000), 6) };
    // Warm-up: connections, prepared statements, caches.
    drive(pool, &fx, 16, Shape::Folded, Duration::from_millis(500)).await?;

    let mut body = String::from(
        "A realistic recommendation transaction: one statement that inserts one `recommendation_sets` row and \
         its 10 `recommendations` rows (a data-modifying CTE over `UNNEST(...)`), then `COMMIT`. Ours: the \
         `RecommendationReady` outbox row as a third CTE of that statement (`outbox::insert_sql`, a plain \
         `INSERT INTO outbox`; what `recommendations::generate` does). Baseline: the same transaction without \
         the outbox row. For reference, the outbox row as a statement of its own (`outbox::enqueue`, one more \
         round trip; what `generate` did before). Writer alone (no relay running; the outbox is truncated \
         between runs). 200 contractors, 64 jobs. ",
    );
    body.push_str(&format!("Each configuration ran {rounds} × {:.1} s, alternating.\n\n", slice.as_secs_f64()));
    body.push_str(
        "| writers | without outbox tx/s | ours (folded) tx/s | without / ours | separate statement tx/s | without / separate | mean latency without / ours / separate | p99 without / ours / separate | outbox overhead (ours) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    let mut worst_overhead: f64 = f64::MIN;
    let mut per_round = Vec::new();
    for writers in [1usize, 16] {
        let shapes = [Shape::Without, Shape::Folded, Shape::Separate];
        let mut agg: Vec<(u64, Histogram<u64>, Duration)> =
            shapes.iter().map(|_| (0u64, histogram(), Duration::ZERO)).collect();
        let mut round_ratios = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let mut rates = [0.0; 3];
            for (i, shape) in shapes.into_iter().enumerate() {
                reset(pool).await?;
                let (n, h, took) = drive(pool, &fx, writers, shape, slice).await?;
                rates[i] = n as f64 / took.as_secs_f64();
                agg[i].0 += n;
                agg[i].1.add(h)?;
                agg[i].2 += took;
            }
            round_ratios.push(format!("{:.3}", rates[0] / rates[1]));
        }
        per_round.push(format!("{writers} writer(s): {}", round_ratios.join(", ")));
        let rate = |i: usize| agg[i].0 as f64 / agg[i].2.as_secs_f64();
        let (without, folded, separate) = (rate(0), rate(1), rate(2));
        let overhead = (without / folded - 1.0) * 100.0;
        worst_overhead = worst_overhead.max(overhead);
        let lat = |f: &dyn Fn(&Histogram<u64>) -> u64| agg.iter().map(|a| ms(f(&a.1))).collect::<Vec<_>>().join(" / ");
        body.push_str(&format!(
            "| {writers} | {} | {} | {:.3} | {} | {:.3} | {} | {} | {overhead:+.1}% |\n",
            fmt_int(without),
            fmt_int(folded),
            without / folded,
            fmt_int(separate),
            without / separate,
            lat(&|h| h.mean() as u64),
            lat(&|h| h.value_at_quantile(0.99)),
        ));
        report.summary_row(
            &format!("1. Outbox writer overhead, {writers} writer(s)"),
            "≤ 1.10× (without / with)",
            &format!("{:.3}×: {} vs {} tx/s ({overhead:+.1}%)", without / folded, fmt_int(without), fmt_int(folded)),
            Some(overhead <= 10.0),
        );
    }
    reset(pool).await?;
    body.push_str(&format!("\nWithout / ours per round: {}.\n", per_round.join("; ")));
    body.push_str(&format!(
        "\nTarget: without / with ≤ 1.10× (the outbox row costs at most 10% more time per transaction) → **{}** \
         (worst overhead {worst_overhead:+.1}%; a negative overhead is noise).\n",
        pass_word(worst_overhead <= 10.0)
    ));
    report.section("1. Writer cost of the outbox (issue 2)", &body);
    Ok(())
}

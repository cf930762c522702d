//! Recommendation sets: the ranked contractors of one generation for a job, and reading the latest one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::error::Result;
use super::scoring::{self, ScoreParts, ScoreWeights};

/// One ranked contractor of a set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recommendation {
    /// 1 is the best match.
    pub rank: i32,
    /// The contractor's id.
    pub contractor_id: Uuid,
    /// The contractor's display name.
    pub name: String,
    /// Weighted score in `[0, 1]` (see [`scoring`](super::scoring)).
    pub score: f64,
    /// Great-circle distance from the contractor's home to the job site, in km.
    pub distance_km: f64,
    /// Estimated minutes to reach the job site.
    pub eta_minutes: i32,
    /// The job's required skills that the contractor holds, in the job's order.
    pub matched_skills: Vec<String>,
    /// What `score` is made of; `None` (JSON `null`) for a set stored before migration 0016, which
    /// kept only the score.
    pub score_parts: Option<ScoreParts>,
}

/// One generation of recommendations for a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecommendationSet {
    /// The set's id (the `RecommendationReady` event names it).
    pub recommendation_set_id: Uuid,
    /// The job it is for.
    pub job_id: Uuid,
    /// When it was stored (the transaction's time: later generations of a job have later times).
    pub generated_at: DateTime<Utc>,
    /// The scoring algorithm that ranked it (`recommendation_sets.algorithm`, for example `weighted-v1`).
    pub algorithm: String,
    /// The weights of `algorithm`: each score is `Σ weight × part` of its `score_parts`. `None` for an
    /// algorithm this build does not know.
    pub score_weights: Option<ScoreWeights>,
    /// The ranked contractors, best first; empty when nobody can take the job.
    pub recommendations: Vec<Recommendation>,
}

#[derive(sqlx::FromRow)]
struct SetRow {
    set_id: Uuid,
    job_id: Uuid,
    generated_at: DateTime<Utc>,
    algorithm: String,
    rank: Option<i32>,
    contractor_id: Option<Uuid>,
    name: Option<String>,
    score: Option<f64>,
    distance_km: Option<f64>,
    eta_minutes: Option<i32>,
    matched_skills: Option<Vec<String>>,
    score_proximity: Option<f64>,
    score_skills: Option<f64>,
    score_rating: Option<f64>,
    score_capacity: Option<f64>,
}

impl SetRow {
    /// The row's parts: all four or none (a CHECK of migration 0016 allows nothing in between).
    fn score_parts(&self) -> Option<ScoreParts> {
        Some(ScoreParts {
            proximity: self.score_proximity?,
            skills: self.score_skills?,
            rating: self.score_rating?,
            capacity: self.score_capacity?,
        })
    }
}

/// The id of the job's latest recommendation set (the same one [`latest_set`] returns), or `None`.
/// Errors: the database's.
pub async fn latest_set_id(pool: &PgPool, job_id: Uuid) -> std::result::Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM recommendation_sets WHERE job_id = $1 ORDER BY generated_at DESC LIMIT 1")
        .bind(job_id)
        .fetch_optional(pool)
        .await
}

/// The job's latest recommendation set, or `None` when it has none (or the job does not exist).
/// Errors: `Database`.
pub async fn latest_set(pool: &PgPool, job_id: Uuid) -> Result<Option<RecommendationSet>> {
    let rows: Vec<SetRow> = sqlx::query_as(
        "SELECT s.id AS set_id, s.job_id, s.generated_at, s.algorithm, r.rank, r.contractor_id, c.name,
                r.score, r.distance_km, r.eta_minutes, r.matched_skills,
                r.score_proximity, r.score_skills, r.score_rating, r.score_capacity
         FROM (SELECT id, job_id, generated_at, algorithm
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
        algorithm: first.algorithm.clone(),
        score_weights: scoring::weights_of(&first.algorithm),
        recommendations: Vec::with_capacity(rows.len()),
    };
    for r in rows {
        // A set with no recommendations comes back as one row of NULLs from the LEFT JOIN.
        let (Some(rank), Some(contractor_id)) = (r.rank, r.contractor_id) else {
            continue;
        };
        let score_parts = r.score_parts();
        set.recommendations.push(Recommendation {
            rank,
            contractor_id,
            name: r.name.unwrap_or_default(),
            score: r.score.unwrap_or_default(),
            distance_km: r.distance_km.unwrap_or_default(),
            eta_minutes: r.eta_minutes.unwrap_or_default(),
            matched_skills: r.matched_skills.unwrap_or_default(),
            score_parts,
        });
    }
    Ok(Some(set))
}

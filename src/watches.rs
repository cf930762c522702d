//! Watched jobs: the jobs a dispatcher has starred, so that the console notifies them of new
//! recommendations for those jobs while it is hidden (issue 24, part 2).
//!
//! The server only stores the stars (table `watched_jobs`, migration 0014); the events are not changed. Every
//! console already receives every `RecommendationReady` of its groups, and deciding whether one is worth a
//! desktop notification needs the page's own state (is it visible, which tab leads), so the console decides.
//! A watch is per dispatcher, not per browser: a star set on one device shows on every other.

use sqlx::PgPool;
use uuid::Uuid;

/// Stars `job_id` for `dispatcher_id` (again: no change). The caller has checked that the job exists and
/// that the dispatcher may see its region.
///
/// # Errors
/// The database's; a foreign-key violation if the job or the dispatcher was removed meanwhile.
pub async fn watch(pool: &PgPool, dispatcher_id: &str, job_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO watched_jobs (dispatcher_id, job_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(dispatcher_id)
        .bind(job_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Removes the star (none: no change).
///
/// # Errors
/// The database's.
pub async fn unwatch(pool: &PgPool, dispatcher_id: &str, job_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM watched_jobs WHERE dispatcher_id = $1 AND job_id = $2")
        .bind(dispatcher_id)
        .bind(job_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// The jobs `dispatcher_id` watches among those of `regions` (the regions they hold now: a watch on a job
/// of a region they left is kept, but not shown, until they are back in it), by job id.
///
/// # Errors
/// The database's.
pub async fn watched_jobs(pool: &PgPool, dispatcher_id: &str, regions: &[String]) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT w.job_id FROM watched_jobs w JOIN jobs j ON j.id = w.job_id
         WHERE w.dispatcher_id = $1 AND j.region = ANY($2)
         ORDER BY w.job_id",
    )
    .bind(dispatcher_id)
    .bind(regions)
    .fetch_all(pool)
    .await
}

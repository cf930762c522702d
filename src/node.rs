//! This process as the database sees it: a liveness row per role (`node_heartbeats`), which
//! `outbox status` reads to tell operators which relays and listeners are alive and where.

use sqlx::PgPool;
use uuid::Uuid;

/// Records that this process's `role` (`relay`, `listener`) is alive now: upserts its row with the host
/// name and process id.
pub async fn beat(pool: &PgPool, node_id: Uuid, role: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO node_heartbeats (node_id, role, host, pid, started_at, beat_at)
         VALUES ($1, $2, $3, $4, now(), now())
         ON CONFLICT (node_id, role) DO UPDATE SET beat_at = now()",
    )
    .bind(node_id)
    .bind(role)
    .bind(hostname())
    .bind(std::process::id() as i32)
    .execute(pool)
    .await?;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".to_owned())
}

//! Withdrawing access: disabled dispatchers and revoked tokens (`dispatchers.disabled_at`,
//! `dispatchers.token_generation`, migration 0011).
//!
//! A token this server issued carries its dispatcher's generation (`gen`); it is honoured only while that
//! is still the dispatcher's generation. Generations come from one database sequence, so `revoke-tokens`
//! (the next value) and removing and re-adding a dispatcher (a new row, the next value) both leave every
//! earlier token behind, whatever the clocks say. Tokens of the identity provider carry no generation:
//! disabling the dispatcher is what withdraws them (and the provider's own revocation and short lifetimes).

use super::admission::Access;
use super::dispatchers::DispatcherError;
use crate::validate;
use sqlx::PgPool;
use std::collections::HashMap;

/// A dispatcher's standing as open streams need it: their current groups, and their access (`None`: no
/// such dispatcher, so no groups either).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Standing {
    /// Group keys, sorted.
    pub groups: Vec<String>,
    /// Disabled and generation; `None` when the dispatcher does not exist (any more).
    pub access: Option<Access>,
}

/// The current standing of each of `ids`, for open streams (one query). Every id asked about is in the
/// answer: an unknown one has no groups and no access.
pub async fn current_access(pool: &PgPool, ids: &[String]) -> Result<HashMap<String, Standing>, sqlx::Error> {
    let rows: Vec<(String, Option<i64>, bool, Vec<String>)> = sqlx::query_as(
        "SELECT i.id, d.token_generation, d.disabled_at IS NOT NULL,
                coalesce(array_agg(g.group_key ORDER BY g.group_key) FILTER (WHERE g.group_key IS NOT NULL), '{}')
         FROM unnest($1::text[]) AS i(id)
         LEFT JOIN dispatchers d ON d.id = i.id
         LEFT JOIN dispatcher_groups g ON g.dispatcher_id = d.id
         GROUP BY i.id, d.id",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, generation, disabled, groups)| {
            let access = generation.map(|token_generation| Access { disabled, token_generation });
            (id, Standing { groups, access })
        })
        .collect())
}

/// The generation a token for `id` must carry now, or `None` if there is no such dispatcher (an id
/// outside the column's pattern names none and is not sent to the database).
pub async fn token_generation(pool: &PgPool, id: &str) -> Result<Option<i64>, sqlx::Error> {
    if validate::dispatcher_id("id", id).is_err() {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT token_generation FROM dispatchers WHERE id = $1").bind(id).fetch_optional(pool).await
}

/// Runs `sql`, an `UPDATE dispatchers ... WHERE id = $1`, for an existing dispatcher. Errors: `BadId`,
/// `NotFound`, `Database`.
async fn update(pool: &PgPool, id: &str, sql: &'static str) -> Result<(), DispatcherError> {
    validate::dispatcher_id("id", id).map_err(|_| DispatcherError::BadId(id.to_owned()))?;
    let changed = sqlx::query(sql).bind(id).execute(pool).await?.rows_affected();
    if changed == 0 {
        return Err(DispatcherError::NotFound(id.to_owned()));
    }
    Ok(())
}

/// Disables a dispatcher: every request of theirs is refused (403 `dispatcher_disabled`), their open
/// streams end with `access-revoked` within 5 s. Idempotent (a disabled dispatcher keeps its first
/// `disabled_at`). Their tokens are not revoked: [`enable_dispatcher`] makes them valid again.
pub async fn disable_dispatcher(pool: &PgPool, id: &str) -> Result<(), DispatcherError> {
    update(pool, id, "UPDATE dispatchers SET disabled_at = coalesce(disabled_at, now()) WHERE id = $1").await
}

/// Enables a disabled dispatcher again (idempotent): their unrevoked, unexpired tokens work again.
pub async fn enable_dispatcher(pool: &PgPool, id: &str) -> Result<(), DispatcherError> {
    update(pool, id, "UPDATE dispatchers SET disabled_at = NULL WHERE id = $1").await
}

/// Revokes every token this server issued for a dispatcher so far (gives them the next generation):
/// requests with those tokens are 401 `token_revoked`, streams opened with them end with `access-revoked`
/// within 5 s. Tokens issued afterwards work. Identity-provider tokens are not affected (see the module).
pub async fn revoke_tokens(pool: &PgPool, id: &str) -> Result<(), DispatcherError> {
    update(pool, id, "UPDATE dispatchers SET token_generation = nextval('dispatcher_token_generation') WHERE id = $1")
        .await
}

/// Removes a dispatcher and their group memberships. Their tokens die with them: adding the id again
/// makes a new row with a new generation, which no earlier token carries.
pub async fn remove_dispatcher(pool: &PgPool, id: &str) -> Result<(), DispatcherError> {
    validate::dispatcher_id("id", id).map_err(|_| DispatcherError::BadId(id.to_owned()))?;
    let removed = sqlx::query("DELETE FROM dispatchers WHERE id = $1").bind(id).execute(pool).await?.rows_affected();
    if removed == 0 {
        return Err(DispatcherError::NotFound(id.to_owned()));
    }
    Ok(())
}

//! Dispatchers and their groups (`dispatchers`, `dispatcher_groups`).

use super::admission::Access;
use crate::coalesce::Coalescer;
use crate::outbox::{GroupKey, OutboxError};
use crate::validate;
use serde::Serialize;
use sqlx::PgPool;
use std::collections::HashMap;

/// A dispatcher: who signs in to the console, and the groups whose events they receive.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Dispatcher {
    /// The sign-in id (letters, digits, `.`, `_`, `@`, `-`; at most 64), also a token's `sub`.
    pub dispatcher_id: String,
    /// Display name.
    pub name: String,
    /// Group keys, sorted, for example `region:north`.
    pub groups: Vec<String>,
}

/// Why a dispatcher cannot be added or changed. `BadId`, `BadName` and `BadGroup` are refused input
/// (usage errors for the `dispatcher` command); `NotFound` and `Database` are failures.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    /// Not a dispatcher id; the text as given.
    #[error("invalid dispatcher id {}: letters, digits, '.', '_', '@', '-', at most 64", crate::validate::echo(.0))]
    BadId(String),
    /// The name is empty, longer than `MAX_NAME_CHARS` (200) characters or holds a NUL; why.
    #[error("a dispatcher's name must be 1 to {MAX_NAME_CHARS} characters without NUL: {0}")]
    BadName(String),
    /// A group that is not a group key.
    #[error(transparent)]
    BadGroup(#[from] OutboxError),
    /// No dispatcher has this id.
    #[error("no dispatcher {}", crate::validate::echo(.0))]
    NotFound(String),
    /// A query failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

/// Longest dispatcher name, in characters (the `dispatchers.name` CHECK).
pub const MAX_NAME_CHARS: usize = 200;

fn valid_id(id: &str) -> bool {
    validate::dispatcher_id("id", id).is_ok()
}

fn parse_groups(groups: &[String]) -> Result<Vec<String>, DispatcherError> {
    groups.iter().map(|g| GroupKey::parse(g).map(|k| k.as_str().to_owned()).map_err(Into::into)).collect()
}

/// One dispatcher with their current groups, or None. An id outside the column's pattern names no
/// dispatcher and is answered without asking the database (it could refuse such text, for example a NUL).
pub async fn dispatcher(pool: &PgPool, id: &str) -> Result<Option<Dispatcher>, sqlx::Error> {
    if !valid_id(id) {
        return Ok(None);
    }
    sqlx::query_as::<_, (String, String, Vec<String>)>(
        "SELECT d.id, d.name,
                coalesce(array_agg(g.group_key ORDER BY g.group_key) FILTER (WHERE g.group_key IS NOT NULL), '{}')
         FROM dispatchers d LEFT JOIN dispatcher_groups g ON g.dispatcher_id = d.id
         WHERE d.id = $1 GROUP BY d.id",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map(|row| row.map(|(dispatcher_id, name, groups)| Dispatcher { dispatcher_id, name, groups }))
}

/// A dispatcher as a request needs them: who they are and whether their token is honoured.
#[derive(Debug, Clone, PartialEq)]
pub struct DispatcherRecord {
    /// Id, name and groups.
    pub dispatcher: Dispatcher,
    /// Disabled and token generation.
    pub access: Access,
}

/// The dispatchers among `ids` that exist, with their current groups and access, by id (one query for all
/// of them). Ids outside the column's pattern are left out without asking the database.
pub async fn dispatchers_by_id(
    pool: &PgPool,
    ids: &[String],
) -> Result<HashMap<String, DispatcherRecord>, sqlx::Error> {
    let ids: Vec<&String> = ids.iter().filter(|id| valid_id(id)).collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query_as::<_, (String, String, Vec<String>, bool, i64)>(
        "SELECT d.id, d.name,
                coalesce(array_agg(g.group_key ORDER BY g.group_key) FILTER (WHERE g.group_key IS NOT NULL), '{}'),
                d.disabled_at IS NOT NULL, d.token_generation
         FROM dispatchers d LEFT JOIN dispatcher_groups g ON g.dispatcher_id = d.id
         WHERE d.id = ANY($1) GROUP BY d.id",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, name, groups, disabled, token_generation)| {
            let record = DispatcherRecord {
                dispatcher: Dispatcher { dispatcher_id: id.clone(), name, groups },
                access: Access { disabled, token_generation },
            };
            (id, record)
        })
        .collect())
}

/// Looks dispatchers up for requests, sharing one query among the requests that arrive together (a reconnect
/// storm, many tabs); each request is still answered by a read that began after it arrived, so a change of
/// membership or access counts from the next request on, as with a query of its own.
pub fn dispatcher_lookup(pool: PgPool) -> Coalescer<String, DispatcherRecord> {
    Coalescer::new(move |ids: Vec<String>| {
        let pool = pool.clone();
        Box::pin(async move { dispatchers_by_id(&pool, &ids).await })
    })
}

/// Every dispatcher with their groups and access, by id.
pub async fn list_dispatchers(pool: &PgPool) -> Result<Vec<DispatcherRecord>, sqlx::Error> {
    let rows = sqlx::query_as::<_, (String, String, Vec<String>, bool, i64)>(
        "SELECT d.id, d.name,
                coalesce(array_agg(g.group_key ORDER BY g.group_key) FILTER (WHERE g.group_key IS NOT NULL), '{}'),
                d.disabled_at IS NOT NULL, d.token_generation
         FROM dispatchers d LEFT JOIN dispatcher_groups g ON g.dispatcher_id = d.id
         GROUP BY d.id ORDER BY d.id",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(dispatcher_id, name, groups, disabled, token_generation)| DispatcherRecord {
            dispatcher: Dispatcher { dispatcher_id, name, groups },
            access: Access { disabled, token_generation },
        })
        .collect())
}

/// Adds a dispatcher, or renames an existing one; adds `groups` to their membership.
pub async fn add_dispatcher(
    pool: &PgPool,
    id: &str,
    name: &str,
    groups: &[String],
) -> Result<Dispatcher, DispatcherError> {
    if !valid_id(id) {
        return Err(DispatcherError::BadId(id.to_owned()));
    }
    let name =
        validate::required_text("name", name, MAX_NAME_CHARS).map_err(|e| DispatcherError::BadName(e.message))?;
    let groups = parse_groups(groups)?;
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO dispatchers (id, name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET name = $2")
        .bind(id)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    grant_groups(&mut tx, id, &groups).await?;
    tx.commit().await?;
    dispatcher(pool, id).await?.ok_or_else(|| DispatcherError::NotFound(id.to_owned()))
}

/// Adds `groups` to a dispatcher's membership (groups already held stay as they are).
async fn grant_groups(conn: &mut sqlx::PgConnection, id: &str, groups: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dispatcher_groups (dispatcher_id, group_key) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(groups)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds and removes groups of an existing dispatcher.
pub async fn set_groups(
    pool: &PgPool,
    id: &str,
    add: &[String],
    remove: &[String],
) -> Result<Dispatcher, DispatcherError> {
    if !valid_id(id) {
        return Err(DispatcherError::BadId(id.to_owned()));
    }
    let add = parse_groups(add)?;
    let remove = parse_groups(remove)?;
    let mut tx = pool.begin().await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM dispatchers WHERE id = $1)")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    if !exists {
        return Err(DispatcherError::NotFound(id.to_owned()));
    }
    sqlx::query("DELETE FROM dispatcher_groups WHERE dispatcher_id = $1 AND group_key = ANY($2)")
        .bind(id)
        .bind(&remove)
        .execute(&mut *tx)
        .await?;
    grant_groups(&mut tx, id, &add).await?;
    tx.commit().await?;
    dispatcher(pool, id).await?.ok_or_else(|| DispatcherError::NotFound(id.to_owned()))
}

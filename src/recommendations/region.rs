//! Regions: the areas jobs and contractors belong to, and the dispatcher group of each, `region:<key>`. A
//! dispatcher in that group sees the region's jobs and receives the events about them. The outbox knows
//! groups only as opaque keys; what a `region:` group means is said here.

use sqlx::PgPool;

use super::error::Result;
use crate::outbox::{GroupKey, OutboxError};

/// The prefix of a region's group key.
const REGION_GROUP_PREFIX: &str = "region:";

/// Whether a region with this key exists (a job may be created only in one).
pub async fn region_exists(pool: &PgPool, key: &str) -> Result<bool> {
    Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM regions WHERE key = $1)").bind(key).fetch_one(pool).await?)
}

/// The group that receives events about jobs of `region` (and whose dispatchers see them):
/// `region:<region>`. Errors with [`OutboxError::GroupKey`] when that is not a valid group key.
pub fn region_group(region: &str) -> Result<GroupKey, OutboxError> {
    GroupKey::parse(&format!("{REGION_GROUP_PREFIX}{region}"))
}

/// The region whose group `group` is (`north` for `region:north`), or `None` for any other group.
pub fn region_of_group(group: &str) -> Option<&str> {
    group.strip_prefix(REGION_GROUP_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_group_is_its_key_under_region() {
        assert_eq!(region_group("north").unwrap().as_str(), "region:north");
        assert!(matches!(region_group("North"), Err(OutboxError::GroupKey(_))));
        assert_eq!(region_of_group("region:north"), Some("north"));
        assert_eq!(region_of_group("team:hvac"), None);
    }
}

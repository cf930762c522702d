//! A fresh, migrated database per test. Connects to `SMARTSCHEDULER_TEST_ADMIN_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), creates `ss_test_<uuid>` and runs `migrations/`.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};
use std::str::FromStr;
use uuid::Uuid;

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A test database; call [`TestDb::drop_db`] at the end of the test to remove it.
pub(crate) struct TestDb {
    pub pool: PgPool,
    name: String,
    admin: PgConnectOptions,
}

fn admin_options() -> PgConnectOptions {
    let url = std::env::var("SMARTSCHEDULER_TEST_ADMIN_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
    PgConnectOptions::from_str(&url).expect("SMARTSCHEDULER_TEST_ADMIN_URL is not a PostgreSQL URL")
}

/// Creates and migrates a database of its own for one test.
pub(crate) async fn test_db() -> TestDb {
    let admin = admin_options();
    let name = format!("ss_test_{}", Uuid::new_v4().simple());
    let admin_pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(admin.clone())
        .await
        .expect("connect to the test admin database");
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin_pool)
        .await
        .expect("create the test database");
    admin_pool.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(admin.clone().database(&name))
        .await
        .expect("connect to the test database");
    sqlx::migrate!("./migrations").run(&pool).await.expect("migrate the test database");
    TestDb { pool, name, admin }
}

impl TestDb {
    /// Closes the pool and drops the database (best effort).
    pub(crate) async fn drop_db(self) {
        self.pool.close().await;
        if let Ok(admin_pool) = PgPoolOptions::new().max_connections(1).connect_with(self.admin).await {
            let _ = sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
                .execute(&admin_pool)
                .await;
            admin_pool.close().await;
        }
    }
}

//! PostgreSQL for tests: each test gets a schema of its own in the database named by
//! `PALISADE_TEST_DATABASE_URL` (`bash .ci/run` starts the local server and sets it).

#![allow(dead_code)]

use sqlx::{Connection, PgConnection};

/// Schemas made by tests start with this, followed by their creation time, so that the ones
/// left by runs that died can be recognised and dropped.
pub const PREFIX: &str = "palisade_t";

const NEEDS_PG: &str = "set PALISADE_TEST_DATABASE_URL to a PostgreSQL database these tests may \
     create schemas in, e.g. postgres://postgres@127.0.0.1:5432/test (bash .ci/run does)";

/// The database tests may use; panics when none is configured (tests that need it are
/// `#[ignore]`d, so they only run when asked to, and then must not pass without it).
pub fn url() -> String {
    match std::env::var("PALISADE_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!("{NEEDS_PG}"),
    }
}

/// Whether the HTTP suite runs on PostgreSQL (`PALISADE_TEST_BACKEND=postgres`).
pub fn http_suite_on_postgres() -> bool {
    std::env::var("PALISADE_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// A fresh schema name (created by the first backend that connects with it). Schemas of runs
/// an hour old or more are dropped on the way.
pub async fn fresh_schema() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    drop_stale_schemas(&url(), now).await;
    format!("{PREFIX}{now}_{:016x}", rand::random::<u64>())
}

async fn drop_stale_schemas(url: &str, now: u64) {
    let Ok(mut admin) = PgConnection::connect(url).await else {
        return;
    };
    let names: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)")
            .bind(PREFIX)
            .fetch_all(&mut admin)
            .await
            .unwrap_or_default();
    for name in names {
        let made = name[PREFIX.len()..]
            .split('_')
            .next()
            .and_then(|s| s.parse::<u64>().ok());
        let plain = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if made.is_some_and(|made| made + 3600 < now) && plain {
            // Another test run may be dropping it too.
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
            )))
            .execute(&mut admin)
            .await;
        }
    }
    admin.close().await.ok();
}

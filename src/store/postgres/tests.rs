//! Against a real server: each test works in a schema of its own (dropped at its end), so tests
//! run in parallel on one database without seeing each other.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};

use super::{PgBackend, PgOptions, migrator};
use crate::store::StoreError;

const NEEDS_PG: &str = "set PALISADE_TEST_DATABASE_URL to a PostgreSQL database these tests may \
     create schemas in, e.g. postgres://postgres@127.0.0.1:5432/test (bash .ci/run does)";

fn url() -> String {
    match std::env::var("PALISADE_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!("{NEEDS_PG}"),
    }
}

/// Schemas made by these tests start with this, followed by their creation time.
const PREFIX: &str = "palisade_t";

/// A fresh schema name (not created: [`PgBackend::connect`] creates it).
struct TestSchema {
    url: String,
    name: String,
}

impl TestSchema {
    async fn new() -> Self {
        let url = url();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let name = format!("{PREFIX}{now}_{:016x}", rand::random::<u64>());
        drop_stale_schemas(&url, now).await;
        TestSchema { url, name }
    }

    fn options(&self) -> PgOptions {
        PgOptions {
            schema: Some(self.name.clone()),
            pool_size: 4,
            ..PgOptions::default()
        }
    }

    async fn backend(&self) -> PgBackend {
        PgBackend::connect(&self.url, self.options())
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.url))
    }

    async fn admin(&self) -> PgConnection {
        PgConnection::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.url))
    }

    async fn drop(self) {
        let mut admin = self.admin().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.name
        )))
        .execute(&mut admin)
        .await
        .unwrap();
        admin.close().await.ok();
    }
}

/// Schemas of test runs that died before dropping theirs, an hour old or more.
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
        if made.is_some_and(|made| made + 3600 < now) && super::valid_schema(&name) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn nodes_starting_together_migrate_once() {
    let schema = TestSchema::new().await;
    let mut starts = Vec::new();
    for _ in 0..4 {
        let (url, options) = (schema.url.clone(), schema.options());
        starts.push(tokio::spawn(async move {
            PgBackend::connect(&url, options).await
        }));
    }
    let mut backends = Vec::new();
    for start in starts {
        backends.push(start.await.unwrap().expect("a node failed to start"));
    }
    let mut admin = schema.admin().await;
    let versions: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM \"{}\"._sqlx_migrations WHERE success ORDER BY version",
        schema.name
    )))
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(versions, [1, 2, 3, 4]);
    let heads: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}\".feed_head",
        schema.name
    )))
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(heads, 1);
    admin.close().await.ok();

    for backend in &backends {
        backend.close().await;
    }
    schema.drop().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn a_failed_migration_releases_the_migration_lock() {
    // A table in the way makes the first migration fail.
    let schema = TestSchema::new().await;
    let mut admin = schema.admin().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".rules (x int)",
        schema.name
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    admin.close().await.ok();
    match PgBackend::connect(&schema.url, schema.options()).await {
        Err(StoreError::Migration(message)) => assert!(message.contains("rules"), "{message}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("migrated over an existing table"),
    }
    // The lock is per database: were it still held, this would wait for ever.
    let fresh = TestSchema::new().await;
    let backend = tokio::time::timeout(Duration::from_secs(30), fresh.backend())
        .await
        .expect("the failed migration left the migration lock held");
    backend.close().await;
    fresh.drop().await;
    schema.drop().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn rule_counts_are_backfilled() {
    let schema = TestSchema::new().await;
    // A store at version 3, from before tenants counted their rules.
    let connect = sqlx::postgres::PgConnectOptions::from_str(&schema.url)
        .unwrap()
        .options([("search_path", schema.name.as_str())]);
    let mut conn = PgConnection::connect_with(&connect).await.unwrap();
    migrator(Some(&schema.name))
        .run_to(3, &mut conn)
        .await
        .unwrap();
    sqlx::raw_sql(
        "INSERT INTO tenants (name, created_at) VALUES ('a', 0), ('b', 0), ('c', 0);
         INSERT INTO rules (tenant_id, action, kind, target, source, created_at, updated_at)
         SELECT t.id, 'block', 'asn', 'AS' || n, 'signal', 0, 0
         FROM tenants t, generate_series(1, 3) n WHERE t.name = 'a'
         UNION ALL SELECT t.id, 'block', 'asn', 'AS1', 'signal', 0, 0
         FROM tenants t WHERE t.name = 'b'",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let backend = schema.backend().await;
    let want = vec![
        ("a".to_owned(), 3),
        ("b".to_owned(), 1),
        ("c".to_owned(), 0),
    ];
    assert_eq!(tenant_counts(&mut conn).await, want);
    // Running the backfill again changes nothing.
    sqlx::raw_sql(include_str!("schema_v4.sql"))
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(tenant_counts(&mut conn).await, want);
    conn.close().await.ok();

    backend.close().await;
    schema.drop().await;
}

async fn tenant_counts(conn: &mut PgConnection) -> Vec<(String, i64)> {
    sqlx::query("SELECT name, rules FROM tenants ORDER BY name")
        .fetch_all(conn)
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.get::<String, _>(0), row.get::<i64, _>(1)))
        .collect()
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // Port 1 on loopback: nothing listens there, so the connection is refused.
    let options = PgOptions {
        acquire_timeout: Duration::from_secs(2),
        ..PgOptions::default()
    };
    match PgBackend::connect("postgres://palisade@127.0.0.1:1/none", options).await {
        Err(StoreError::Unavailable(_)) => {}
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

#[test]
fn schema_names_are_plain_identifiers() {
    assert!(super::valid_schema("palisade"));
    assert!(super::valid_schema("_t1"));
    for bad in [
        "",
        "1a",
        "Caps",
        "a-b",
        "a\"b",
        "pg_catalog",
        &"a".repeat(64),
    ] {
        assert!(!super::valid_schema(bad), "{bad:?}");
    }
}

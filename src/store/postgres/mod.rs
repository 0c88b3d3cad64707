//! A shared store in PostgreSQL, for several Palisade nodes over one database.
//!
//! # Schema
//! Migrations (`schema_v*.sql` beside this file) run at [`PgBackend::connect`], on a connection
//! of their own, under the migrator's advisory lock, so several nodes may start at once.

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlSafeStr;
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{StoreError, StoreResult};

/// How to connect.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// The schema holding Palisade's tables: every connection gets it as its `search_path`, and
    /// it is created when missing. `None`: the server's default `search_path`.
    pub schema: Option<String>,
    /// Most connections the pool opens.
    pub pool_size: u32,
    /// How long a request waits for a pooled connection before the store counts as unavailable.
    pub acquire_timeout: Duration,
    /// Shown in `pg_stat_activity`, to tell this node's connections apart.
    pub application_name: String,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            schema: None,
            pool_size: 8,
            acquire_timeout: Duration::from_secs(5),
            application_name: "palisade".into(),
        }
    }
}

/// The PostgreSQL store.
pub struct PgBackend {
    pool: PgPool,
}

/// The migrations, in order. Each runs once per schema, in its own transaction. Never edit one
/// that has shipped: the migrator refuses to start when an applied migration's text changed.
fn migrator(schema: Option<&str>) -> Migrator {
    let step = |version, description: &'static str, sql: &'static str| {
        Migration::new(
            version,
            Cow::Borrowed(description),
            MigrationType::Simple,
            sql.into_sql_str(),
            false,
        )
    };
    let mut migrator = Migrator::with_migrations(vec![
        step(1, "tables", include_str!("schema_v1.sql")),
        step(2, "reports", include_str!("schema_v2.sql")),
        step(3, "health and retention", include_str!("schema_v3.sql")),
        step(4, "rule counts", include_str!("schema_v4.sql")),
    ]);
    if let Some(schema) = schema {
        // Created after the migrator took its lock, so nodes starting together do not race
        // on CREATE SCHEMA either.
        migrator.create_schema(quote_ident(schema));
    }
    migrator
}

/// A schema name as the `search_path`, the channel name and SQL text will all take it: an
/// ordinary lower-case identifier.
fn valid_schema(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
        && !name.starts_with("pg_")
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl PgBackend {
    /// Connects, brings the schema up to date, and opens the pool.
    pub async fn connect(url: &str, options: PgOptions) -> StoreResult<PgBackend> {
        if let Some(schema) = &options.schema
            && !valid_schema(schema)
        {
            return Err(StoreError::Database(format!(
                "schema name {schema:?}: use lower-case letters, digits and _ (at most 63)"
            )));
        }
        let mut connect = PgConnectOptions::from_str(url)
            .map_err(db)?
            .application_name(&options.application_name);
        if let Some(schema) = &options.schema {
            // A startup option rather than a SET: it is the session's default, so even RESET
            // ALL or DISCARD ALL keep it.
            connect = connect.options([("search_path", schema.as_str())]);
        }

        migrate(&connect, options.schema.as_deref(), options.acquire_timeout).await?;

        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(db)?;
        Ok(PgBackend { pool })
    }

    /// Closes every connection (waiting for those in use to come back).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Runs the migrations on a connection of their own (a pool of one, used for nothing else). The
/// migrator holds a session-level advisory lock (one per database) while it works, and a failed
/// migration returns before it unlocks: on a shared pool's connection the lock would outlive
/// the failure and block every other node's start. Closing the connection, whatever happened,
/// releases it.
async fn migrate(
    connect: &PgConnectOptions,
    schema: Option<&str>,
    acquire_timeout: Duration,
) -> StoreResult<()> {
    let dedicated = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(acquire_timeout)
        .connect_with(connect.clone())
        .await
        .map_err(db)?;
    let result = migrator(schema).run(&dedicated).await;
    dedicated.close().await;
    result.map_err(|e| match e {
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) if unavailable(&e) => {
            StoreError::Unavailable(format!("migration: {e}"))
        }
        e => StoreError::Migration(e.to_string()),
    })
}

/// SQLSTATEs that mean the server went away or refuses work for now: class 08 (connection
/// exception) and 57P01..57P05 (administrator or crash shutdown, cannot connect now, database
/// dropped, idle session timeout).
fn unavailable_code(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P0")
}

/// Whether the error says the database cannot be reached or stopped answering: refused or lost
/// connections, no pooled connection to give, or the server saying so.
fn unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| unavailable_code(&c)),
        _ => false,
    }
}

/// sqlx's errors in the store's terms.
fn db(e: sqlx::Error) -> StoreError {
    match e {
        e if unavailable(&e) => StoreError::Unavailable(e.to_string()),
        e => StoreError::Database(e.to_string()),
    }
}

//! A shared store in PostgreSQL, for several Palisade nodes over one database.
//!
//! [`PgBackend`] implements [`Backend`]: reads go to a connection pool, writes run in
//! [`Transaction`]s that the engine drives. It stores rows and numbers changes; what a write
//! means is decided above it, exactly as for SQLite.
//!
//! # Write transactions run one at a time
//! Every write transaction locks the single row of `feed_head` with its first statement and
//! holds that lock until it ends. Two things follow:
//! - Change numbers follow commit order with no gaps, across processes and nodes. The number a
//!   transaction hands out is the head it read under the lock plus one, and the next writer can
//!   only read the head after this one committed (PostgreSQL makes a commit visible before it
//!   releases the committer's locks). A follower reading "changes after N" therefore always sees
//!   a prefix of the log: never a number above one that is still to come.
//! - The engine's merges read a rule, decide, then write it. With writers serialised nothing can
//!   change the rule between the read and the write, so no per-row locking or retry on
//!   serialisation failures is needed, and transactions run at READ COMMITTED, each statement
//!   seeing everything committed before it.
//!
//! The price is that writes do not run in parallel and commits cannot share a WAL flush: small
//! transactions are bounded by one disk flush each (a few hundred per second on an ordinary
//! disk), while batches of a thousand rows lose little, since the flush is paid once per batch.
//! Within one process, write transactions also queue on a local lock before taking a pool
//! connection, so writers waiting for their turn do not hold every connection readers need.
//! A task that opens a second write transaction while its first is still open therefore waits
//! for ever. A node that stops mid-transaction holds every writer up until the server ends its
//! session ([`PgOptions::idle_in_transaction_timeout`]).
//!
//! # Followers
//! A transaction that appended changes sends `pg_notify` on a channel named after the schema
//! just before it commits; [`Backend::change_signal`] wakes on those, except on the ones this
//! backend sent itself (its writer hands its own changes on). Notifications sent while the
//! listening connection was down are lost, so the signal also fires after every reconnect:
//! followers re-read the log by number whenever it fires.
//!
//! # Schema
//! Migrations (`schema_v*.sql` beside this file) run at [`PgBackend::connect`], on a connection
//! of their own, under the migrator's advisory lock, so several nodes may start at once.

mod transaction;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{QueryBuilder, Row, SqlSafeStr};

use super::audit::AuditRecord;
use super::backend::{Backend, RuleChunks, Transaction};
use super::{
    BouncerRecord, Change, ChangeOp, CursorMove, DecisionDelta, Page, Pull, QueueStats,
    QueuedReport, ReportKind, RuleCount, RuleQuery, Snapshot, StoreError, StoreResult,
    StreamCursor,
};
use crate::keys::{ApiKey, KeyDigest, Principal, Role, TenantName};
use crate::rules::{Kind, Rule, RuleAction, RuleId, Source, Target, TenantId, UnixMillis};

use transaction::PgTransaction;

/// How to connect.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// The schema holding Palisade's tables: every connection gets it as its `search_path`, and
    /// it is created when missing. `None`: the server's default `search_path`.
    pub schema: Option<String>,
    /// Most connections the pool opens (write transactions use one each while they run; the
    /// change listener has its own).
    pub pool_size: u32,
    /// How long a request waits for a pooled connection before the store counts as unavailable.
    pub acquire_timeout: Duration,
    /// Shown in `pg_stat_activity`, to tell this node's connections apart.
    pub application_name: String,
    /// The server ends a session of this store that sits inside a transaction without sending
    /// anything for this long. Write transactions hold the database's one write lock, so a
    /// node that hangs or drops off the network mid-transaction would otherwise stop every
    /// writer until TCP gives up on its socket (hours, by default). `None`: no limit.
    pub idle_in_transaction_timeout: Option<Duration>,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            schema: None,
            pool_size: 8,
            acquire_timeout: Duration::from_secs(5),
            application_name: "palisade".into(),
            idle_in_transaction_timeout: Some(Duration::from_secs(60)),
        }
    }
}

/// The PostgreSQL store.
pub struct PgBackend {
    pool: PgPool,
    /// Where the pool's connections go, for the listener's own connection.
    connect: PgConnectOptions,
    /// How this backend's commits announce themselves, and how its listener knows its own.
    announcer: Arc<Announcer>,
    /// Local turn-taking of write transactions (see the module documentation).
    write_turn: Arc<tokio::sync::Mutex<transaction::WriteTurn>>,
    /// Started on the first call of [`Backend::change_signal`]: tools that never follow the log
    /// do not hold a listening connection.
    listener: OnceLock<Listener>,
    runtime: tokio::runtime::Handle,
}

struct Listener {
    signal: Arc<tokio::sync::Notify>,
    task: tokio::task::AbortHandle,
}

impl Drop for PgBackend {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.get() {
            listener.task.abort();
        }
    }
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
        step(5, "bouncers", include_str!("schema_v5.sql")),
        step(
            6,
            "rule key led by the target",
            include_str!("schema_v6.sql"),
        ),
        step(7, "retention by primary key", include_str!("schema_v7.sql")),
        step(8, "audit records", include_str!("schema_v8.sql")),
        step(
            9,
            "rules keyed by tenant and id",
            include_str!("schema_v9.sql"),
        ),
        step(
            10,
            "audit entries compressed with LZ4",
            include_str!("schema_v10.sql"),
        ),
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

/// The notification channel of a schema: stores in other schemas of the same database (tests
/// in parallel) must not wake each other. Channel names are identifiers, at most 63 bytes.
fn channel_name(schema: Option<&str>) -> String {
    const BASE: &str = "palisade_changes";
    match schema {
        None => BASE.to_owned(),
        Some(schema) if BASE.len() + 1 + schema.len() <= 63 => format!("{BASE}.{schema}"),
        Some(schema) => {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(schema.as_bytes());
            let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            format!("{BASE}.{hex}")
        }
    }
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
        // Startup options rather than SETs: they are the session's defaults, so even RESET ALL
        // or DISCARD ALL keep them.
        if let Some(schema) = &options.schema {
            connect = connect.options([("search_path", schema.as_str())]);
        }
        if let Some(limit) = options.idle_in_transaction_timeout {
            let millis = limit.as_millis().clamp(1, i32::MAX as u128);
            connect = connect.options([("idle_in_transaction_session_timeout", millis)]);
        }

        migrate(&connect, options.schema.as_deref(), options.acquire_timeout).await?;

        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.clone())
            .await
            .map_err(db)?;
        Ok(PgBackend {
            pool,
            connect,
            announcer: Arc::new(Announcer {
                channel: channel_name(options.schema.as_deref()),
                origin: format!("{:016x}", rand::random::<u64>()),
            }),
            write_turn: Default::default(),
            listener: OnceLock::new(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Closes every connection (waiting for those in use to come back) and stops the listener.
    pub async fn close(&self) {
        if let Some(listener) = self.listener.get() {
            listener.task.abort();
        }
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

/// SQLSTATEs that mean the server went away, refuses work for now, or ended the session: class
/// 08 (connection exception), 57P01..57P05 (administrator or crash shutdown, cannot connect now,
/// database dropped, idle session timeout) and 25P03 (the session sat in a transaction longer
/// than `idle_in_transaction_timeout`; the connection is closed like the others).
fn unavailable_code(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P0") || code == "25P03"
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
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt(e.to_string()),
        e => StoreError::Database(e.to_string()),
    }
}

/// A stored value that does not read back as what it should be. Carried as a decode error so
/// row mappers can run inside sqlx's row stream; [`db`] turns it into [`StoreError::Corrupt`].
fn corrupt(what: String) -> sqlx::Error {
    sqlx::Error::Decode(what.into())
}

fn parse_action(text: &str) -> Result<RuleAction, sqlx::Error> {
    RuleAction::parse(text).ok_or_else(|| corrupt(format!("rule action {text:?}")))
}

fn parse_target(kind: &str, text: &str) -> Result<Target, sqlx::Error> {
    Kind::parse(kind)
        .and_then(|kind| Target::from_stored(kind, text))
        .ok_or_else(|| corrupt(format!("rule target {kind}:{text}")))
}

/// Most rules have no tags; reading back a million of them should not parse a million `[]`.
fn parse_tags(text: &str) -> Result<Vec<String>, sqlx::Error> {
    if text == "[]" {
        return Ok(Vec::new());
    }
    serde_json::from_str(text).map_err(|e| corrupt(format!("rule tags: {e}")))
}

fn json_tags(tags: &[String]) -> String {
    serde_json::to_string(tags).unwrap_or_else(|_| "[]".into())
}

/// Columns [`rule_from_row`] reads, in its order. (Macros rather than constants, so that
/// statements are `concat!`ed into static text.)
macro_rules! rule_columns {
    () => {
        "id, tenant_id, action, kind, target, expires_at, name, description, source, \
         created_at, updated_at, dataset, tags::text, reports"
    };
}
use rule_columns;

fn rule_from_row(row: PgRow) -> Result<Rule, sqlx::Error> {
    let action: &str = row.try_get(2)?;
    let kind: &str = row.try_get(3)?;
    let target: &str = row.try_get(4)?;
    let source: &str = row.try_get(8)?;
    let reports: i64 = row.try_get(13)?;
    Ok(Rule {
        id: row.try_get(0)?,
        tenant: TenantId(row.try_get(1)?),
        action: parse_action(action)?,
        target: parse_target(kind, target)?,
        expires_at: row.try_get::<Option<i64>, _>(5)?.map(UnixMillis),
        name: row.try_get(6)?,
        description: row.try_get(7)?,
        source: Source::parse(source).ok_or_else(|| corrupt(format!("rule source {source:?}")))?,
        created_at: UnixMillis(row.try_get(9)?),
        updated_at: UnixMillis(row.try_get(10)?),
        dataset: row.try_get(11)?,
        tags: parse_tags(row.try_get(12)?)?,
        reports: u32::try_from(reports)
            .map_err(|_| corrupt(format!("rule report count {reports}")))?,
    })
}

/// Columns [`change_from_row`] reads, in its order.
macro_rules! change_columns {
    () => {
        "seq, tenant_id, rule_id, op, action, kind, target, expires_at, at, name, source, dataset, description"
    };
}

fn change_from_row(row: PgRow) -> Result<Change, sqlx::Error> {
    let seq: i64 = row.try_get(0)?;
    let op: &str = row.try_get(3)?;
    let action: &str = row.try_get(4)?;
    let kind: &str = row.try_get(5)?;
    let target: &str = row.try_get(6)?;
    Ok(Change {
        seq: u64::try_from(seq).map_err(|_| corrupt(format!("change number {seq}")))?,
        tenant: TenantId(row.try_get(1)?),
        rule_id: row.try_get(2)?,
        op: ChangeOp::parse(op).ok_or_else(|| corrupt(format!("change op {op:?}")))?,
        action: parse_action(action)?,
        target: parse_target(kind, target)?,
        expires_at: row.try_get::<Option<i64>, _>(7)?.map(UnixMillis),
        at: UnixMillis(row.try_get(8)?),
        name: row.try_get(9)?,
        source: match row.try_get::<Option<&str>, _>(10)? {
            None => Source::Signal,
            Some(text) => {
                Source::parse(text).ok_or_else(|| corrupt(format!("change source {text:?}")))?
            }
        },
        dataset: row.try_get(11)?,
        description: row.try_get(12)?,
    })
}

/// Columns [`bouncer_from_row`] reads.
macro_rules! bouncer_columns {
    () => {
        "key_id, tenant_id, last_pull, user_agent, address, version, cursor_seq, cursor_at"
    };
}

fn bouncer_from_row(row: PgRow) -> Result<BouncerRecord, sqlx::Error> {
    let seq: Option<i64> = row.try_get(6)?;
    let at: Option<i64> = row.try_get(7)?;
    let cursor = match (seq, at) {
        (Some(seq), Some(at)) => Some(StreamCursor {
            seq: u64::try_from(seq).map_err(|_| corrupt(format!("bouncer cursor {seq}")))?,
            at: UnixMillis(at),
        }),
        _ => None,
    };
    Ok(BouncerRecord {
        key_id: row.try_get(0)?,
        tenant: TenantId(row.try_get(1)?),
        last_pull: UnixMillis(row.try_get(2)?),
        user_agent: row.try_get(3)?,
        address: row.try_get(4)?,
        version: row.try_get(5)?,
        cursor,
    })
}

/// Columns [`key_from_row`] reads, from `api_keys k JOIN tenants t`.
macro_rules! key_columns {
    () => {
        "k.id, k.name, k.role, t.name, k.tenant_id, k.created_at, k.revoked_at"
    };
}
use key_columns;

fn key_from_row(row: PgRow) -> Result<ApiKey, sqlx::Error> {
    let role: &str = row.try_get(2)?;
    let tenant: &str = row.try_get(3)?;
    Ok(ApiKey {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        role: Role::parse(role).ok_or_else(|| corrupt(format!("role {role:?}")))?,
        tenant: TenantName::parse(tenant).ok_or_else(|| corrupt(format!("tenant {tenant:?}")))?,
        tenant_id: TenantId(row.try_get(4)?),
        created_at: UnixMillis(row.try_get(5)?),
        revoked_at: row.try_get::<Option<i64>, _>(6)?.map(UnixMillis),
    })
}

/// Columns [`live_key_from_row`] reads, from `api_keys k JOIN tenants t`.
macro_rules! live_key_columns {
    () => {
        "k.key_hash, k.id, k.name, k.role, t.name, k.tenant_id"
    };
}

fn live_key_from_row(row: PgRow) -> Result<(KeyDigest, Principal), sqlx::Error> {
    let hash: &[u8] = row.try_get(0)?;
    let key_id: i64 = row.try_get(1)?;
    let role: &str = row.try_get(3)?;
    let tenant: &str = row.try_get(4)?;
    let digest: KeyDigest = hash
        .try_into()
        .map_err(|_| corrupt(format!("key {key_id} hash length")))?;
    Ok((
        digest,
        Principal {
            key_id,
            key_name: row.try_get(2)?,
            role: Role::parse(role).ok_or_else(|| corrupt(format!("role {role:?}")))?,
            tenant: TenantName::parse(tenant)
                .ok_or_else(|| corrupt(format!("tenant {tenant:?}")))?,
            tenant_id: TenantId(row.try_get(5)?),
        },
    ))
}

/// Columns [`report_from_row`] reads, in its order.
macro_rules! report_columns {
    () => {
        "id, tenant_id, key_id, kind, payload, received_at"
    };
}
use report_columns;

fn report_from_row(row: PgRow) -> Result<QueuedReport, sqlx::Error> {
    let kind: &str = row.try_get(3)?;
    Ok(QueuedReport {
        id: row.try_get(0)?,
        tenant: TenantId(row.try_get(1)?),
        key_id: row.try_get(2)?,
        kind: ReportKind::parse(kind).ok_or_else(|| corrupt(format!("report kind {kind:?}")))?,
        payload: row.try_get(4)?,
        received_at: UnixMillis(row.try_get(5)?),
    })
}

/// A count or limit as SQL takes it.
fn sql_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl Backend for PgBackend {
    async fn begin(&self) -> StoreResult<Box<dyn Transaction>> {
        let turn = Arc::clone(&self.write_turn).lock_owned().await;
        let announcer = Arc::clone(&self.announcer);
        let tx = PgTransaction::begin(&self.pool, turn, announcer).await?;
        Ok(Box::new(tx))
    }

    async fn rule(
        &self,
        tenant: TenantId,
        id: RuleId,
        now: UnixMillis,
    ) -> StoreResult<Option<Rule>> {
        sqlx::query(concat!(
            "SELECT ",
            rule_columns!(),
            " FROM rules
             WHERE id = $1 AND tenant_id = $2 AND (expires_at IS NULL OR expires_at > $3)"
        ))
        .bind(id)
        .bind(tenant.0)
        .bind(now.0)
        .try_map(rule_from_row)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)
    }

    async fn rules(&self, tenant: TenantId, query: RuleQuery) -> StoreResult<Page<Rule>> {
        let mut sql = QueryBuilder::new(concat!(
            "SELECT ",
            rule_columns!(),
            " FROM rules WHERE tenant_id = "
        ));
        sql.push_bind(tenant.0)
            .push(" AND id > ")
            .push_bind(query.after.unwrap_or(0))
            .push(" AND (expires_at IS NULL OR expires_at > ")
            .push_bind(query.now.0)
            .push(")");
        let mut filter = |column: &str, value: String| {
            sql.push(format_args!(" AND {column} = ")).push_bind(value);
        };
        if let Some(kind) = query.kind {
            filter("kind", kind.as_str().to_owned());
        }
        if let Some(target) = query.target {
            filter("kind", target.kind().as_str().to_owned());
            filter("target", target.to_string());
        }
        if let Some(name) = query.name {
            filter("name", name);
        }
        if let Some(action) = query.action {
            filter("action", action.as_str().to_owned());
        }
        if let Some(source) = query.source {
            filter("source", source.as_str().to_owned());
        }
        if let Some(dataset) = query.dataset {
            filter("dataset", dataset);
        }
        if let Some(tag) = query.tag {
            sql.push(" AND tags @> jsonb_build_array(")
                .push_bind(tag)
                .push("::text)");
        }
        sql.push(" ORDER BY id LIMIT ")
            .push_bind(sql_limit(query.limit).saturating_add(1));
        let items = sql
            .build()
            .try_map(rule_from_row)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        Ok(Page::of(items, query.limit, |r| r.id))
    }

    async fn audit_record_sizes(
        &self,
        tenant: TenantId,
        at_most: i64,
        limit: usize,
    ) -> StoreResult<Vec<(i64, usize)>> {
        sqlx::query(
            "SELECT id, entry_count FROM audit_records
             WHERE tenant_id = $1 AND id <= $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(tenant.0)
        .bind(at_most)
        .bind(sql_limit(limit))
        .try_map(|row: PgRow| {
            let count: i32 = row.try_get(1)?;
            Ok((row.try_get(0)?, count.max(0) as usize))
        })
        .fetch_all(&self.pool)
        .await
        .map_err(db)
    }

    async fn audit_records(
        &self,
        tenant: TenantId,
        oldest: i64,
        newest: i64,
    ) -> StoreResult<Vec<AuditRecord>> {
        sqlx::query(
            "SELECT id, at, key_id, request_id, entries FROM audit_records
             WHERE tenant_id = $1 AND id BETWEEN $2 AND $3 ORDER BY id DESC",
        )
        .bind(tenant.0)
        .bind(oldest)
        .bind(newest)
        .try_map(|row: PgRow| {
            Ok(AuditRecord {
                id: row.try_get(0)?,
                at: UnixMillis(row.try_get(1)?),
                key_id: row.try_get(2)?,
                request_id: row.try_get(3)?,
                entries: row.try_get(4)?,
            })
        })
        .fetch_all(&self.pool)
        .await
        .map_err(db)
    }

    async fn changes_since(&self, seq: u64, limit: usize) -> StoreResult<Vec<Change>> {
        sqlx::query(concat!(
            "SELECT ",
            change_columns!(),
            " FROM rule_changes WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .bind(sql_limit(limit))
        .try_map(change_from_row)
        .fetch_all(&self.pool)
        .await
        .map_err(db)
    }

    async fn snapshot(&self, now: UnixMillis) -> StoreResult<Snapshot> {
        // One REPEATABLE READ transaction: both statements read the same snapshot, so the rules
        // are exactly those the log describes up to `seq` (a write transaction updates rules
        // and feed_head together, and commits them together).
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(db)?;
        let seq: i64 = sqlx::query_scalar("SELECT seq FROM feed_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        let rules = sqlx::query(concat!(
            "SELECT ",
            rule_columns!(),
            " FROM rules WHERE expires_at IS NULL OR expires_at > $1"
        ))
        .bind(now.0)
        .try_map(rule_from_row)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Snapshot {
            seq: u64::try_from(seq)
                .map_err(|_| StoreError::Corrupt(format!("change log head {seq}")))?,
            rules,
        })
    }

    async fn keys(&self) -> StoreResult<Vec<ApiKey>> {
        sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys k JOIN tenants t ON t.id = k.tenant_id ORDER BY k.id"
        ))
        .try_map(key_from_row)
        .fetch_all(&self.pool)
        .await
        .map_err(db)
    }

    async fn live_keys(&self) -> StoreResult<Vec<(KeyDigest, Principal)>> {
        sqlx::query(concat!(
            "SELECT ",
            live_key_columns!(),
            " FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.revoked_at IS NULL"
        ))
        .try_map(live_key_from_row)
        .fetch_all(&self.pool)
        .await
        .map_err(db)
    }

    async fn live_key(&self, digest: KeyDigest) -> StoreResult<Option<Principal>> {
        let found = sqlx::query(concat!(
            "SELECT ",
            live_key_columns!(),
            " FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
             WHERE k.key_hash = $1 AND k.revoked_at IS NULL"
        ))
        .bind(&digest[..])
        .try_map(live_key_from_row)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(found.map(|(_, principal)| principal))
    }

    async fn rule_counts(&self, tenant: TenantId, now: UnixMillis) -> StoreResult<Vec<RuleCount>> {
        let rows: Vec<(String, String, bool, i64)> = sqlx::query_as(
            "SELECT kind, action,
                    kind = 'ip' AND NOT (target LIKE '%/128' OR (target NOT LIKE '%:%' AND target LIKE '%/32')),
                    count(*)
             FROM rules WHERE tenant_id = $1 AND (expires_at IS NULL OR expires_at > $2)
             GROUP BY 1, 2, 3",
        )
        .bind(tenant.0)
        .bind(now.0)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.into_iter()
            .map(|(kind, action, range, count)| {
                Ok(RuleCount {
                    kind: Kind::parse(&kind)
                        .ok_or_else(|| StoreError::Corrupt(format!("kind {kind}")))?,
                    range,
                    action: RuleAction::parse(&action)
                        .ok_or_else(|| StoreError::Corrupt(format!("action {action}")))?,
                    count: count as u64,
                })
            })
            .collect()
    }

    async fn queue_stats(&self, tenant: Option<TenantId>) -> StoreResult<QueueStats> {
        let (depth, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), min(received_at) FROM report_queue
             WHERE $1::bigint IS NULL OR tenant_id = $1",
        )
        .bind(tenant.map(|t| t.0))
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(QueueStats {
            depth: depth as u64,
            oldest: oldest.map(UnixMillis),
        })
    }

    async fn waiting_reports(
        &self,
        tenant: TenantId,
        limit: usize,
    ) -> StoreResult<Vec<QueuedReport>> {
        sqlx::query(concat!(
            "SELECT ",
            report_columns!(),
            " FROM report_queue WHERE tenant_id = $1 ORDER BY id LIMIT $2"
        ))
        .bind(tenant.0)
        .bind(sql_limit(limit))
        .try_map(report_from_row)
        .fetch_all(&self.pool)
        .await
        .map_err(db)
    }

    async fn bouncers(&self) -> StoreResult<Vec<BouncerRecord>> {
        sqlx::query(concat!(
            "SELECT ",
            bouncer_columns!(),
            " FROM bouncers ORDER BY key_id"
        ))
        .try_map(bouncer_from_row)
        .fetch_all(&self.pool)
        .await
        .map_err(db)
    }

    async fn bouncer(&self, key_id: i64) -> StoreResult<Option<BouncerRecord>> {
        sqlx::query(concat!(
            "SELECT ",
            bouncer_columns!(),
            " FROM bouncers WHERE key_id = $1"
        ))
        .bind(key_id)
        .try_map(bouncer_from_row)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)
    }

    async fn record_pull(&self, pull: Pull, cursor: CursorMove) -> StoreResult<bool> {
        let (mode, to, from) = match cursor {
            CursorMove::Keep => (0i32, None, None),
            CursorMove::Set(to) => (1, Some(to), None),
            CursorMove::Advance { from, to } => (2, Some(to), from),
        };
        let seq = |c: Option<StreamCursor>| c.map(|c| i64::try_from(c.seq).unwrap_or(i64::MAX));
        let written = sqlx::query(
            "INSERT INTO bouncers (key_id, tenant_id, last_pull, user_agent, address, version,
                                   cursor_seq, cursor_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (key_id) DO UPDATE SET
                 tenant_id = excluded.tenant_id, last_pull = excluded.last_pull,
                 user_agent = excluded.user_agent, address = excluded.address,
                 version = excluded.version,
                 cursor_seq = CASE WHEN $9 = 0 THEN bouncers.cursor_seq ELSE excluded.cursor_seq END,
                 cursor_at = CASE WHEN $9 = 0 THEN bouncers.cursor_at ELSE excluded.cursor_at END
             WHERE $9 <> 2 OR (bouncers.cursor_seq IS NOT DISTINCT FROM $10
                               AND bouncers.cursor_at IS NOT DISTINCT FROM $11)",
        )
        .bind(pull.key_id)
        .bind(pull.tenant.0)
        .bind(pull.at.0)
        .bind(pull.user_agent)
        .bind(pull.address)
        .bind(pull.version)
        .bind(seq(to))
        .bind(to.map(|c| c.at.0))
        .bind(mode)
        .bind(seq(from))
        .bind(from.map(|c| c.at.0))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(written.rows_affected() > 0)
    }

    async fn decision_delta(
        &self,
        tenant: TenantId,
        since: StreamCursor,
        now: UnixMillis,
        limit: usize,
    ) -> StoreResult<DecisionDelta> {
        // One REPEATABLE READ transaction, as for a snapshot: the changes, the expired rules and
        // the head describe one moment.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(db)?;
        let (head, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT seq FROM feed_head WHERE id = 1), (SELECT min(seq) FROM rule_changes)",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        let changes = sqlx::query(concat!(
            "SELECT ",
            change_columns!(),
            " FROM rule_changes WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        ))
        .bind(tenant.0)
        .bind(i64::try_from(since.seq).unwrap_or(i64::MAX))
        .bind(sql_limit(limit))
        .try_map(change_from_row)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let expired = sqlx::query(concat!(
            "SELECT ",
            rule_columns!(),
            " FROM rules WHERE expires_at > $2 AND expires_at <= $3 AND tenant_id = $1
               AND action = 'block'"
        ))
        .bind(tenant.0)
        .bind(since.at.0)
        .bind(now.0)
        .try_map(rule_from_row)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let head = match changes.last() {
            Some(last) if changes.len() >= limit => last.seq,
            _ => u64::try_from(head)
                .map_err(|_| StoreError::Corrupt(format!("change log head {head}")))?,
        };
        Ok(DecisionDelta {
            head,
            changes,
            expired,
            oldest: oldest.and_then(|seq| u64::try_from(seq).ok()),
        })
    }

    async fn active_blocks(
        &self,
        tenant: TenantId,
        now: UnixMillis,
        chunk: usize,
    ) -> StoreResult<(u64, RuleChunks)> {
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(db)?;
        let head: i64 = sqlx::query_scalar("SELECT seq FROM feed_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        let head = u64::try_from(head)
            .map_err(|_| StoreError::Corrupt(format!("change log head {head}")))?;
        let (chunks, receiver) = tokio::sync::mpsc::channel(2);
        let chunk = chunk.max(1);
        tokio::spawn(async move {
            // Pages by id, all in the one transaction, so every page sees the same instant.
            let mut after = 0i64;
            loop {
                let page = sqlx::query(concat!(
                    "SELECT ",
                    rule_columns!(),
                    " FROM rules WHERE tenant_id = $1 AND id > $2 AND action = 'block'
                       AND (expires_at IS NULL OR expires_at > $3) ORDER BY id LIMIT $4"
                ))
                .bind(tenant.0)
                .bind(after)
                .bind(now.0)
                .bind(sql_limit(chunk))
                .try_map(rule_from_row)
                .fetch_all(&mut *tx)
                .await
                .map_err(db);
                let last_page = match &page {
                    Ok(rules) if rules.is_empty() => break,
                    Ok(rules) => {
                        after = rules.last().map_or(after, |r| r.id);
                        rules.len() < chunk
                    }
                    Err(_) => true,
                };
                if chunks.send(page).await.is_err() || last_page {
                    break;
                }
            }
            let _ = tx.rollback().await;
        });
        Ok((head, receiver))
    }

    fn change_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        let listener = self.listener.get_or_init(|| {
            let signal = Arc::new(tokio::sync::Notify::new());
            let task = self.runtime.spawn(listen(
                self.connect.clone(),
                Arc::clone(&self.announcer),
                Arc::clone(&signal),
            ));
            Listener {
                signal,
                task: task.abort_handle(),
            }
        });
        Some(Arc::clone(&listener.signal))
    }
}

/// Wakes every follower waiting now, and leaves a wake-up for one that is busy reading (it
/// would otherwise miss this one and wait for its next poll). A spare wake-up costs a re-read
/// that finds nothing.
fn wake(signal: &tokio::sync::Notify) {
    signal.notify_waiters();
    signal.notify_one();
}

/// Where a write transaction announces its commit: a notification on the schema's channel
/// whose payload is `"<origin> <new head>"`, the origin naming the backend that sent it.
pub(super) struct Announcer {
    pub channel: String,
    pub origin: String,
}

impl Announcer {
    fn payload(&self, head: i64) -> String {
        format!("{} {head}", self.origin)
    }

    /// Whether a notification's payload was sent by this backend.
    fn sent(&self, payload: &str) -> bool {
        payload
            .split_once(' ')
            .is_some_and(|(from, _)| from == self.origin)
    }
}

/// Listens on the announcer's channel for as long as the backend lives, waking `signal` on every
/// notification and after every (re)connection: what was sent while no connection listened is
/// lost, so followers must re-read the log then. Notifications this backend's own commits sent
/// wake nobody: the writer hands those changes on itself, and a follower woken by them would
/// race it to read the same rows back from the log.
async fn listen(
    connect: PgConnectOptions,
    announcer: Arc<Announcer>,
    signal: Arc<tokio::sync::Notify>,
) {
    // A pool of one, used by the listener only to reconnect.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(connect);
    let mut retry = Duration::from_millis(100);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect to listen for changes; retrying");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = listener.listen(&announcer.channel).await {
            tracing::warn!(error = %e, "cannot listen for changes; retrying");
            drop(listener);
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(Duration::from_secs(5));
            continue;
        }
        retry = Duration::from_millis(100);
        wake(&signal);
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    if !announcer.sent(notification.payload()) {
                        wake(&signal);
                    }
                }
                // The connection was lost; the listener reconnected and listens again.
                Ok(None) => {
                    tracing::info!("the change listener reconnected");
                    wake(&signal);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the change listener lost its connection");
                    break;
                }
            }
        }
        // Start again from a fresh listener (and connection) after a short pause.
        drop(listener);
        tokio::time::sleep(retry).await;
    }
}

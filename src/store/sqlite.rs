//! The embedded store: one SQLite file in WAL mode.
//!
//! One thread owns the only writing connection and takes work from a channel. Whatever has queued
//! up while it committed is committed together in the next transaction (group commit), each
//! request inside its own savepoint so one failure cannot take another's writes with it. Reads go
//! to a small pool of read-only connections, which WAL lets run beside the writer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use r2d2::Pool;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use rusqlite_migration::{M, Migrations};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{
    AuditEntry, BatchItem, Change, ChangeOp, ChangeSink, NewKey, Page, ProcessedReport, QueueStats,
    QueuedReport, ReportKind, RuleQuery, RuleWrite, Snapshot, Store, StoreError, StoreResult,
    WriteBatch,
};
use crate::engine::merge::{Merged, key_of, merge};
use crate::keys::{ApiKey, KeyDigest, Principal, Role, TenantName};
use crate::rules::{Kind, NewRule, Rule, RuleAction, RuleId, Source, Target, TenantId, UnixMillis};

pub const DB_FILE: &str = "palisade.db";

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::SqliteFailure(ref f, _)
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::CannotOpen
                        | rusqlite::ErrorCode::DatabaseBusy
                        | rusqlite::ErrorCode::DatabaseLocked
                        | rusqlite::ErrorCode::SystemIoFailure
                ) =>
            {
                StoreError::Unavailable(e.to_string())
            }
            e => StoreError::Database(e.to_string()),
        }
    }
}

impl From<rusqlite_migration::Error> for StoreError {
    fn from(e: rusqlite_migration::Error) -> Self {
        StoreError::Migration(e.to_string())
    }
}

impl From<r2d2::Error> for StoreError {
    fn from(e: r2d2::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// How long a connection waits for another process's lock (the CLI managing keys while the
/// server runs) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Upper bound of items committed in one group transaction. Large enough that 1000-event batches
/// from several clients share a commit, small enough that no request waits long behind others.
const MAX_GROUP_ITEMS: usize = 8_000;

/// WAL size, in 4 KiB pages, at which the writer copies the WAL back into the database.
const WAL_CHECKPOINT_PAGES: i64 = 16_384;

/// When SQLite makes a commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Survives a crash of the process (kill -9); a power cut may lose the last commits.
    Normal,
    /// Also survives a power cut: every commit waits for fsync of the WAL.
    #[default]
    Full,
}

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub synchronous: Synchronous,
    /// Page cache of the writing connection, in MiB.
    pub cache_mib: u32,
    /// Audit entries keep events up to this size whole (see [`super::audit_text`]).
    pub audit_event_bytes: usize,
    /// Below this much free space on the data directory's file system, probes fail: a nearly
    /// full disk still takes a probe's tiny write but refuses a batch of signals.
    pub min_free_bytes: u64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::default(),
            cache_mib: 64,
            audit_event_bytes: 8192,
            min_free_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Creates the data directory (0700) and the database file (0600) before SQLite does, so that
/// no other local user can read rules or key digests; SQLite gives its WAL and shared-memory
/// files the database file's mode. Files left readable by others (by an older version) are
/// tightened. Returns the database's path.
fn prepare_files(data_dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)?;
    let path = data_dir.join(DB_FILE);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)?;
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        if let Ok(meta) = std::fs::metadata(&file)
            && meta.permissions().mode() & 0o077 != 0
        {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
            tracing::warn!(file = %file.display(), "the file was readable by other users; made it 0600");
        }
    }
    Ok(path)
}

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("schema_v1.sql")),
        M::up(include_str!("schema_v2.sql")),
        M::up(include_str!("schema_v3.sql")),
    ])
}

pub struct SqliteStore {
    writer: mpsc::Sender<Job>,
    readers: Pool<SqliteConnectionManager>,
    path: PathBuf,
    min_free_bytes: u64,
}

impl SqliteStore {
    /// Opens (creating when needed) the database in `data_dir`, migrates it, and starts the
    /// writer thread. Committed changes go to `sink`.
    pub fn open(
        data_dir: &Path,
        options: SqliteOptions,
        sink: Arc<dyn ChangeSink>,
    ) -> StoreResult<Self> {
        let path = prepare_files(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let synchronous = match options.synchronous {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        conn.pragma_update(None, "synchronous", synchronous)?;
        // Inserts into large indexes touch pages all over the file; with SQLite's 2 MB default
        // cache, a group commit spills and rewrites the same pages several times.
        conn.pragma_update(None, "cache_size", -(options.cache_mib as i64) * 1024)?;
        migrations().to_latest(&mut conn)?;
        // Checkpoint every 64 MB of WAL rather than every 4 MB: a page that many commits touch
        // (an index leaf) is copied back once per checkpoint, not once per 4 MB of writes.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;

        let manager = SqliteConnectionManager::file(&path).with_init(|c| {
            c.busy_timeout(BUSY_TIMEOUT)?;
            c.pragma_update(None, "query_only", true)
        });
        let readers = Pool::builder()
            .max_size(8)
            .min_idle(Some(1))
            .build(manager)?;

        let (tx, rx) = mpsc::channel(1024);
        let (publish_tx, publish_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("palisade-publish".into())
            .spawn(move || publish(sink, publish_rx))
            .map_err(|e| StoreError::Task(e.to_string()))?;
        let writer = Writer {
            conn,
            audit: Audit {
                max_event_bytes: options.audit_event_bytes,
            },
            publish: publish_tx,
        };
        std::thread::Builder::new()
            .name("palisade-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Task(e.to_string()))?;
        Ok(Self {
            writer: tx,
            readers,
            path,
            min_free_bytes: options.min_free_bytes,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn submit(&self, op: Op) -> StoreResult<Output> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Job { op, reply })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.get()?;
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// A write for the writer thread. Ops are kept intact while they run so that a group can be
/// replayed op by op after a failure.
enum Op {
    Write(WriteBatch),
    DeleteRule {
        tenant: TenantId,
        id: RuleId,
        key_id: i64,
        request_id: String,
        at: UnixMillis,
    },
    Purge {
        now: UnixMillis,
        limit: usize,
    },
    PurgeAudit {
        before: UnixMillis,
        limit: usize,
    },
    PurgeChanges {
        before: UnixMillis,
        limit: usize,
    },
    Probe(UnixMillis),
    CreateKey(NewKey),
    RevokeKey {
        id: i64,
        at: UnixMillis,
    },
    EnqueueReport(QueuedReport),
    ProcessReports(Vec<ProcessedReport>),
}

/// What an op produced; the trait method that sent it knows which variant to expect.
enum Output {
    Changes(Vec<Change>),
    Change(Option<Change>),
    Key(ApiKey),
    MaybeKey(Option<ApiKey>),
    Id(i64),
    Count(usize),
}

impl Output {
    fn changes(&self) -> &[Change] {
        match self {
            Output::Changes(changes) => changes,
            Output::Change(change) => change.as_slice(),
            Output::Key(_) | Output::MaybeKey(_) | Output::Id(_) | Output::Count(_) => &[],
        }
    }
}

fn unexpected() -> StoreError {
    StoreError::Task("the writer answered with the wrong kind of result".into())
}

struct Job {
    op: Op,
    reply: oneshot::Sender<StoreResult<Output>>,
}

impl Op {
    fn weight(&self) -> usize {
        match self {
            Op::Write(batch) => batch.items.len().max(1),
            Op::ProcessReports(reports) => {
                reports.iter().map(|r| r.writes.len()).sum::<usize>().max(1)
            }
            _ => 1,
        }
    }

    fn run(&self, conn: &Connection, audit: &Audit) -> StoreResult<Output> {
        match self {
            Op::Write(batch) => write_batch(conn, audit, batch).map(Output::Changes),
            Op::DeleteRule {
                tenant,
                id,
                key_id,
                request_id,
                at,
            } => {
                delete_rule(conn, audit, *tenant, *id, *key_id, request_id, *at).map(Output::Change)
            }
            Op::Purge { now, limit } => purge_expired(conn, *now, *limit).map(Output::Changes),
            Op::PurgeAudit { before, limit } => {
                purge_oldest(conn, "audit", "id", *before, *limit).map(Output::Count)
            }
            Op::PurgeChanges { before, limit } => {
                purge_oldest(conn, "rule_changes", "seq", *before, *limit).map(Output::Count)
            }
            Op::Probe(at) => probe(conn, *at).map(|()| Output::Count(0)),
            Op::CreateKey(key) => create_key(conn, key).map(Output::Key),
            Op::RevokeKey { id, at } => revoke_key(conn, *id, *at).map(Output::MaybeKey),
            Op::EnqueueReport(report) => enqueue_report(conn, audit, report).map(Output::Id),
            Op::ProcessReports(reports) => process_reports(conn, reports).map(Output::Changes),
        }
    }
}

struct Writer {
    conn: Connection,
    audit: Audit,
    /// Committed groups go to the publisher thread, which hands their changes to the sink and
    /// only then answers the requests: the sink's work overlaps the next group's commit.
    publish: std::sync::mpsc::Sender<Committed>,
}

type ReplyTo = oneshot::Sender<StoreResult<Output>>;

/// A group whose transaction has ended, in commit order.
struct Committed {
    changes: Vec<Change>,
    answers: Vec<(ReplyTo, StoreResult<Output>)>,
}

/// Applies committed changes to the sink in commit order, then acknowledges their requests.
fn publish(sink: Arc<dyn ChangeSink>, committed: std::sync::mpsc::Receiver<Committed>) {
    for group in committed {
        if !group.changes.is_empty() {
            let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                sink.apply(&group.changes)
            }));
            if applied.is_err() {
                // The changes are committed but the index may now miss some: answering would
                // acknowledge writes that look-ups do not see. A restart rebuilds the index.
                tracing::error!(
                    "applying committed changes failed; stopping so a restart rebuilds the index"
                );
                std::process::abort();
            }
        }
        for (reply, answer) in group.answers {
            // The requester may have gone away (client disconnected); the write stands.
            let _ = reply.send(answer);
        }
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.blocking_recv() {
            let mut weight = first.op.weight();
            let mut group = vec![first];
            while weight < MAX_GROUP_ITEMS {
                match rx.try_recv() {
                    Ok(job) => {
                        weight += job.op.weight();
                        group.push(job);
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
    }

    /// Commits a group in one transaction. Ops only fail on database errors (validation is done
    /// before they are queued), so the common path has no savepoints: a savepoint makes SQLite
    /// copy every page it touches into a sub-journal, which cost more than the inserts. When an
    /// op does fail, the group is rolled back and replayed one op per transaction, so only the
    /// failing op is refused.
    fn commit_group(&mut self, group: Vec<Job>) {
        let (ops, replies): (Vec<Op>, Vec<_>) = group.into_iter().map(|j| (j.op, j.reply)).unzip();
        match self.run_together(&ops) {
            Ok(outputs) => self.committed(replies.into_iter().zip(outputs.into_iter().map(Ok))),
            Err(e) if ops.len() == 1 => {
                tracing::error!(error = %e, "write failed; nothing was acknowledged");
                let message = e.to_string();
                self.committed(
                    replies
                        .into_iter()
                        .map(|r| (r, Err(StoreError::Task(message.clone())))),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, ops = ops.len(), "group commit failed; retrying its writes one by one");
                for (op, reply) in ops.into_iter().zip(replies) {
                    let result = self.run_together(std::slice::from_ref(&op));
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "write failed; nothing was acknowledged");
                    }
                    let answer = result.map(|mut outputs| outputs.remove(0));
                    self.committed(std::iter::once((reply, answer)));
                }
            }
        }
    }

    fn committed(&self, answers: impl IntoIterator<Item = (ReplyTo, StoreResult<Output>)>) {
        let answers: Vec<_> = answers.into_iter().collect();
        let changes = answers
            .iter()
            .filter_map(|(_, answer)| answer.as_ref().ok())
            .flat_map(|output| output.changes().iter().cloned())
            .collect();
        if self.publish.send(Committed { changes, answers }).is_err() {
            // Committed but never to be acknowledged or indexed: stop rather than carry on
            // answering "nothing was written" for writes that were.
            tracing::error!("the change publisher is gone; stopping");
            std::process::abort();
        }
    }

    /// Runs ops in one transaction and commits it.
    fn run_together(&mut self, ops: &[Op]) -> StoreResult<Vec<Output>> {
        let tx = self.conn.transaction()?;
        let outputs = ops
            .iter()
            .map(|op| op.run(&tx, &self.audit))
            .collect::<StoreResult<Vec<_>>>()?;
        tx.commit()?;
        Ok(outputs)
    }
}

/// How audit entries are written.
struct Audit {
    max_event_bytes: usize,
}

/// One audit entry: what a key sent and what became of it.
struct AuditRow<'a> {
    tenant: TenantId,
    key_id: i64,
    request_id: &'a str,
    at: UnixMillis,
    index: Option<usize>,
    event: &'a str,
    error: Option<&'a str>,
}

impl Audit {
    fn insert(&self, conn: &Connection, row: AuditRow<'_>) -> StoreResult<()> {
        conn.prepare_cached(
            "INSERT INTO audit (tenant_id, key_id, request_id, at, entry_index, event, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            row.tenant.0,
            row.key_id,
            row.request_id,
            row.at.0,
            row.index.map(|i| i as i64),
            super::audit_text(row.event, self.max_event_bytes),
            row.error
        ])?;
        Ok(())
    }
}

fn write_batch(conn: &Connection, audit: &Audit, batch: &WriteBatch) -> StoreResult<Vec<Change>> {
    let mut changes = Vec::new();
    for (index, BatchItem { event, write }) in batch.items.iter().enumerate() {
        let error = match write {
            Ok(write) => {
                changes.extend(apply_write(conn, batch.tenant, write, batch.at)?);
                None
            }
            Err(reason) => Some(reason.as_str()),
        };
        audit.insert(
            conn,
            AuditRow {
                tenant: batch.tenant,
                key_id: batch.key_id,
                request_id: &batch.request_id,
                at: batch.at,
                index: Some(index),
                event,
                error,
            },
        )?;
    }
    Ok(changes)
}

fn apply_write(
    conn: &Connection,
    tenant: TenantId,
    write: &RuleWrite,
    at: UnixMillis,
) -> StoreResult<Option<Change>> {
    let (action, target) = key_of(write);
    let stored = stored_rule(conn, tenant, action, &target)?;
    let change = match merge(stored.as_ref(), write, tenant, at) {
        Merged::Unchanged => return Ok(None),
        Merged::Create(new) => {
            let id = insert_rule(conn, &new)?;
            Change::of(&new.with_id(id), ChangeOp::Put, at)
        }
        Merged::Update(rule) => {
            update_rule(conn, &rule)?;
            Change::of(&rule, ChangeOp::Put, at)
        }
        Merged::Remove(rule) => {
            conn.prepare_cached("DELETE FROM rules WHERE id = ?1")?
                .execute([rule.id])?;
            Change::of(&rule, ChangeOp::Delete, at)
        }
    };
    Ok(Some(log_change(conn, change)?))
}

/// The stored rule for `(tenant, action, target)`, expired or not. Writes look up first and
/// then update or insert: `INSERT .. ON CONFLICT .. RETURNING` would make SQLite build a
/// temporary table for every row.
fn stored_rule(
    conn: &Connection,
    tenant: TenantId,
    action: RuleAction,
    target: &Target,
) -> StoreResult<Option<Rule>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RULE_COLUMNS} FROM rules
         WHERE tenant_id = ?1 AND action = ?2 AND kind = ?3 AND target = ?4"
    ))?;
    let mut rows = stmt.query(params![
        tenant.0,
        action.as_str(),
        target.kind().as_str(),
        target.to_string()
    ])?;
    rows.next()?.map(rule_from_row).transpose()
}

fn insert_rule(conn: &Connection, rule: &NewRule) -> StoreResult<RuleId> {
    conn.prepare_cached(
        "INSERT INTO rules (tenant_id, action, kind, target, expires_at, name, description,
                            source, dataset, tags, reports, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        rule.tenant.0,
        rule.action.as_str(),
        rule.target.kind().as_str(),
        rule.target.to_string(),
        rule.expires_at.map(|t| t.0),
        rule.name,
        rule.description,
        rule.source.as_str(),
        rule.dataset,
        json_tags(&rule.tags),
        rule.reports,
        rule.created_at.0,
        rule.updated_at.0
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Rewrites every mutable field of a stored rule.
fn update_rule(conn: &Connection, rule: &Rule) -> StoreResult<()> {
    conn.prepare_cached(
        "UPDATE rules SET expires_at = ?2, name = ?3, description = ?4, source = ?5,
                          dataset = ?6, tags = ?7, reports = ?8, created_at = ?9, updated_at = ?10
         WHERE id = ?1",
    )?
    .execute(params![
        rule.id,
        rule.expires_at.map(|t| t.0),
        rule.name,
        rule.description,
        rule.source.as_str(),
        rule.dataset,
        json_tags(&rule.tags),
        rule.reports,
        rule.created_at.0,
        rule.updated_at.0
    ])?;
    Ok(())
}

/// Appends to the change log; the row id is the change's sequence number.
fn log_change(conn: &Connection, mut change: Change) -> StoreResult<Change> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO rule_changes (tenant_id, rule_id, op, action, kind, target, expires_at, name, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    insert.execute(params![
        change.tenant.0,
        change.rule_id,
        change.op.as_str(),
        change.action.as_str(),
        change.target.kind().as_str(),
        change.target.to_string(),
        change.expires_at.map(|t| t.0),
        change.name,
        change.at.0
    ])?;
    change.seq = conn.last_insert_rowid() as u64;
    Ok(change)
}

fn delete_rule(
    conn: &Connection,
    audit: &Audit,
    tenant: TenantId,
    id: RuleId,
    key_id: i64,
    request_id: &str,
    at: UnixMillis,
) -> StoreResult<Option<Change>> {
    let removed = conn
        .prepare_cached(
            "DELETE FROM rules
             WHERE id = ?1 AND tenant_id = ?2 AND (expires_at IS NULL OR expires_at > ?3)
             RETURNING action, kind, target, expires_at, name",
        )?
        .query_row(params![id, tenant.0, at.0], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<i64>>(3)?,
                row.get::<_, Option<String>>(4)?,
            ))
        })
        .optional()?;
    let Some((action, kind, target_text, expires_at, name)) = removed else {
        return Ok(None);
    };
    let change = Change {
        seq: 0,
        tenant,
        rule_id: id,
        op: ChangeOp::Delete,
        action: parse_action(&action)?,
        target: parse_target(&kind, &target_text)?,
        expires_at: expires_at.map(UnixMillis),
        name,
        at,
    };
    let change = log_change(conn, change)?;
    let event = serde_json::json!({ "op": "delete_rule", "id": id }).to_string();
    audit.insert(
        conn,
        AuditRow {
            tenant,
            key_id,
            request_id,
            at,
            index: None,
            event: &event,
            error: None,
        },
    )?;
    Ok(Some(change))
}

fn purge_expired(conn: &Connection, now: UnixMillis, limit: usize) -> StoreResult<Vec<Change>> {
    let expired = conn
        .prepare_cached(
            "DELETE FROM rules WHERE id IN
                (SELECT id FROM rules WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)
             RETURNING id, tenant_id, action, kind, target, expires_at, name",
        )?
        .query_map(params![now.0, limit as i64], |row| {
            Ok((
                row.get::<_, RuleId>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, Option<i64>>(5)?,
                row.get::<_, Option<String>>(6)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut changes = Vec::with_capacity(expired.len());
    for (rule_id, tenant, action, kind, target_text, expires_at, name) in expired {
        let change = Change {
            seq: 0,
            tenant: TenantId(tenant),
            rule_id,
            op: ChangeOp::Expire,
            action: parse_action(&action)?,
            target: parse_target(&kind, &target_text)?,
            expires_at: expires_at.map(UnixMillis),
            name,
            at: now,
        };
        changes.push(log_change(conn, change)?);
    }
    Ok(changes)
}

/// Deletes up to `limit` rows of `table` made before `before`, oldest first (through the
/// table's index on `at`).
fn purge_oldest(
    conn: &Connection,
    table: &str,
    key: &str,
    before: UnixMillis,
    limit: usize,
) -> StoreResult<usize> {
    let deleted = conn
        .prepare_cached(&format!(
            "DELETE FROM {table} WHERE {key} IN
                (SELECT {key} FROM {table} WHERE at < ?1 ORDER BY at LIMIT ?2)"
        ))?
        .execute(params![before.0, limit as i64])?;
    Ok(deleted)
}

fn probe(conn: &Connection, at: UnixMillis) -> StoreResult<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO health (id, at) VALUES (1, ?1)")?
        .execute([at.0])?;
    Ok(())
}

fn tenant_id(conn: &Connection, tenant: &TenantName, at: UnixMillis) -> StoreResult<TenantId> {
    conn.prepare_cached("INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?1, ?2)")?
        .execute(params![tenant.as_str(), at.0])?;
    let id = conn
        .prepare_cached("SELECT id FROM tenants WHERE name = ?1")?
        .query_row([tenant.as_str()], |row| row.get(0))?;
    Ok(TenantId(id))
}

fn create_key(conn: &Connection, key: &NewKey) -> StoreResult<ApiKey> {
    let tenant_id = tenant_id(conn, &key.tenant, key.at)?;
    conn.prepare_cached(
        "INSERT INTO api_keys (tenant_id, name, role, key_hash, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        tenant_id.0,
        key.name,
        key.role.as_str(),
        &key.digest[..],
        key.at.0
    ])?;
    Ok(ApiKey {
        id: conn.last_insert_rowid(),
        name: key.name.clone(),
        role: key.role,
        tenant: key.tenant.clone(),
        tenant_id,
        created_at: key.at,
        revoked_at: None,
    })
}

/// Most rules have no tags; reading back a million of them should not parse a million `[]`.
fn parse_tags(text: &str) -> StoreResult<Vec<String>> {
    if text == "[]" {
        return Ok(Vec::new());
    }
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("rule tags: {e}")))
}

fn json_tags(tags: &[String]) -> String {
    serde_json::to_string(tags).unwrap_or_else(|_| "[]".into())
}

fn enqueue_report(conn: &Connection, audit: &Audit, report: &QueuedReport) -> StoreResult<i64> {
    conn.prepare_cached(
        "INSERT INTO report_queue (tenant_id, key_id, kind, payload, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        report.tenant.0,
        report.key_id,
        report.kind.as_str(),
        report.payload,
        report.received_at.0
    ])?;
    let id = conn.last_insert_rowid();
    let event = format!(
        r#"{{"op":"{}","queue_id":{id},"request":{}}}"#,
        report.kind.as_str(),
        report.payload
    );
    audit.insert(
        conn,
        AuditRow {
            tenant: report.tenant,
            key_id: report.key_id,
            request_id: &format!("report-{id}"),
            at: report.received_at,
            index: None,
            event: &event,
            error: None,
        },
    )?;
    Ok(id)
}

fn process_reports(conn: &Connection, reports: &[ProcessedReport]) -> StoreResult<Vec<Change>> {
    let mut changes = Vec::new();
    for report in reports {
        let removed = conn
            .prepare_cached("DELETE FROM report_queue WHERE id = ?1")?
            .execute([report.queue_id])?;
        if removed == 0 {
            continue;
        }
        for write in &report.writes {
            changes.extend(apply_write(conn, report.tenant, write, report.at)?);
        }
    }
    Ok(changes)
}

const KEY_COLUMNS: &str = "k.id, k.name, k.role, t.name, k.tenant_id, k.created_at, k.revoked_at";

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<KeyRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
    ))
}

type KeyRow = (i64, String, String, String, i64, i64, Option<i64>);

fn to_api_key(row: KeyRow) -> StoreResult<ApiKey> {
    let (id, name, role, tenant, tenant_id, created_at, revoked_at) = row;
    Ok(ApiKey {
        id,
        name,
        role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role:?}")))?,
        tenant: TenantName::parse(&tenant)
            .ok_or_else(|| StoreError::Corrupt(format!("tenant {tenant:?}")))?,
        tenant_id: TenantId(tenant_id),
        created_at: UnixMillis(created_at),
        revoked_at: revoked_at.map(UnixMillis),
    })
}

fn revoke_key(conn: &Connection, id: i64, at: UnixMillis) -> StoreResult<Option<ApiKey>> {
    conn.prepare_cached(
        "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
    )?
    .execute(params![id, at.0])?;
    let row = conn
        .prepare_cached(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.id = ?1"
        ))?
        .query_row([id], key_from_row)
        .optional()?;
    row.map(to_api_key).transpose()
}

fn parse_action(text: &str) -> StoreResult<RuleAction> {
    RuleAction::parse(text).ok_or_else(|| StoreError::Corrupt(format!("rule action {text:?}")))
}

fn parse_target(kind: &str, text: &str) -> StoreResult<Target> {
    Kind::parse(kind)
        .and_then(|kind| Target::from_stored(kind, text))
        .ok_or_else(|| StoreError::Corrupt(format!("rule target {kind}:{text}")))
}

const RULE_COLUMNS: &str = "id, tenant_id, action, kind, target, expires_at, name, description, source, \
     created_at, updated_at, dataset, tags, reports";

fn rule_from_row(row: &Row<'_>) -> StoreResult<Rule> {
    let action: String = row.get(2)?;
    let kind: String = row.get(3)?;
    let target: String = row.get(4)?;
    let source: String = row.get(8)?;
    Ok(Rule {
        id: row.get(0)?,
        tenant: TenantId(row.get(1)?),
        action: parse_action(&action)?,
        target: parse_target(&kind, &target)?,
        expires_at: row.get::<_, Option<i64>>(5)?.map(UnixMillis),
        name: row.get(6)?,
        description: row.get(7)?,
        source: Source::parse(&source)
            .ok_or_else(|| StoreError::Corrupt(format!("rule source {source:?}")))?,
        created_at: UnixMillis(row.get(9)?),
        updated_at: UnixMillis(row.get(10)?),
        dataset: row.get(11)?,
        tags: parse_tags(row.get_ref(12)?.as_str().map_err(rusqlite::Error::from)?)?,
        reports: row.get::<_, i64>(13)? as u32,
    })
}

fn change_from_row(row: &Row<'_>) -> StoreResult<Change> {
    let op: String = row.get(3)?;
    let action: String = row.get(4)?;
    let kind: String = row.get(5)?;
    let target: String = row.get(6)?;
    Ok(Change {
        seq: row.get::<_, i64>(0)? as u64,
        tenant: TenantId(row.get(1)?),
        rule_id: row.get(2)?,
        op: ChangeOp::parse(&op).ok_or_else(|| StoreError::Corrupt(format!("change op {op:?}")))?,
        action: parse_action(&action)?,
        target: parse_target(&kind, &target)?,
        expires_at: row.get::<_, Option<i64>>(7)?.map(UnixMillis),
        at: UnixMillis(row.get(8)?),
        name: row.get(9)?,
    })
}

/// Fetches one row more than asked to learn whether a next page exists.
fn paginate<T>(mut items: Vec<T>, limit: usize, cursor_of: impl Fn(&T) -> i64) -> Page<T> {
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(cursor_of)
    } else {
        None
    };
    Page { items, next_cursor }
}

#[async_trait]
impl Store for SqliteStore {
    async fn write(&self, batch: WriteBatch) -> StoreResult<Vec<Change>> {
        match self.submit(Op::Write(batch)).await? {
            Output::Changes(changes) => Ok(changes),
            _ => Err(unexpected()),
        }
    }

    async fn delete_rule(
        &self,
        tenant: TenantId,
        id: RuleId,
        key_id: i64,
        request_id: String,
        at: UnixMillis,
    ) -> StoreResult<Option<Change>> {
        let op = Op::DeleteRule {
            tenant,
            id,
            key_id,
            request_id,
            at,
        };
        match self.submit(op).await? {
            Output::Change(change) => Ok(change),
            _ => Err(unexpected()),
        }
    }

    async fn purge_expired(&self, now: UnixMillis, limit: usize) -> StoreResult<Vec<Change>> {
        match self.submit(Op::Purge { now, limit }).await? {
            Output::Changes(changes) => Ok(changes),
            _ => Err(unexpected()),
        }
    }

    async fn rule(
        &self,
        tenant: TenantId,
        id: RuleId,
        now: UnixMillis,
    ) -> StoreResult<Option<Rule>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {RULE_COLUMNS} FROM rules
                 WHERE id = ?1 AND tenant_id = ?2 AND (expires_at IS NULL OR expires_at > ?3)"
            ))?;
            let mut rows = stmt.query(params![id, tenant.0, now.0])?;
            rows.next()?.map(rule_from_row).transpose()
        })
        .await
    }

    async fn rules(&self, tenant: TenantId, query: RuleQuery) -> StoreResult<Page<Rule>> {
        self.read(move |conn| {
            let mut sql = format!(
                "SELECT {RULE_COLUMNS} FROM rules
                 WHERE tenant_id = ?1 AND id > ?2 AND (expires_at IS NULL OR expires_at > ?3)"
            );
            let mut args: Vec<SqlValue> = vec![
                tenant.0.into(),
                query.after.unwrap_or(0).into(),
                query.now.0.into(),
            ];
            let mut filter = |column: &str, value: SqlValue| {
                args.push(value);
                sql.push_str(&format!(" AND {column} = ?{}", args.len()));
            };
            if let Some(kind) = query.kind {
                filter("kind", kind.as_str().to_owned().into());
            }
            if let Some(target) = query.target {
                filter("kind", target.kind().as_str().to_owned().into());
                filter("target", target.to_string().into());
            }
            if let Some(name) = &query.name {
                filter("name", name.clone().into());
            }
            if let Some(action) = query.action {
                filter("action", action.as_str().to_owned().into());
            }
            if let Some(source) = query.source {
                filter("source", source.as_str().to_owned().into());
            }
            if let Some(dataset) = &query.dataset {
                filter("dataset", dataset.clone().into());
            }
            if let Some(tag) = &query.tag {
                args.push(tag.clone().into());
                sql.push_str(&format!(
                    " AND EXISTS (SELECT 1 FROM json_each(rules.tags) WHERE value = ?{})",
                    args.len()
                ));
            }
            args.push((query.limit as i64 + 1).into());
            sql.push_str(&format!(" ORDER BY id LIMIT ?{}", args.len()));
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(params_from_iter(args))?;
            let mut items = Vec::new();
            while let Some(row) = rows.next()? {
                items.push(rule_from_row(row)?);
            }
            Ok(paginate(items, query.limit, |r| r.id))
        })
        .await
    }

    async fn audit(
        &self,
        tenant: TenantId,
        before: Option<i64>,
        limit: usize,
    ) -> StoreResult<Page<AuditEntry>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, at, key_id, request_id, entry_index, event, error FROM audit
                 WHERE tenant_id = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
            )?;
            let items = stmt
                .query_map(
                    params![tenant.0, before.unwrap_or(i64::MAX), limit as i64 + 1],
                    |row| {
                        Ok(AuditEntry {
                            id: row.get(0)?,
                            at: UnixMillis(row.get(1)?),
                            key_id: row.get(2)?,
                            request_id: row.get(3)?,
                            index: row.get::<_, Option<i64>>(4)?.map(|i| i as u32),
                            event: row.get(5)?,
                            error: row.get(6)?,
                        })
                    },
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(paginate(items, limit, |e| e.id))
        })
        .await
    }

    async fn changes_since(&self, seq: u64, limit: usize) -> StoreResult<Vec<Change>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, tenant_id, rule_id, op, action, kind, target, expires_at, at, name
                 FROM rule_changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let mut rows = stmt.query(params![seq as i64, limit as i64])?;
            let mut changes = Vec::new();
            while let Some(row) = rows.next()? {
                changes.push(change_from_row(row)?);
            }
            Ok(changes)
        })
        .await
    }

    async fn snapshot(&self, now: UnixMillis) -> StoreResult<Snapshot> {
        self.read(move |conn| {
            // One read transaction: the rules and the sequence number describe the same moment.
            let tx = conn.unchecked_transaction()?;
            let seq: i64 = tx
                .query_row(
                    "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'rule_changes'), 0)",
                    [],
                    |row| row.get(0),
                )
                .optional()?
                .unwrap_or(0);
            let mut stmt = tx.prepare(&format!(
                "SELECT {RULE_COLUMNS} FROM rules WHERE expires_at IS NULL OR expires_at > ?1"
            ))?;
            let mut rows = stmt.query([now.0])?;
            let mut rules = Vec::new();
            while let Some(row) = rows.next()? {
                rules.push(rule_from_row(row)?);
            }
            drop(rows);
            drop(stmt);
            tx.finish()?;
            Ok(Snapshot {
                seq: seq as u64,
                rules,
            })
        })
        .await
    }

    async fn create_key(&self, key: NewKey) -> StoreResult<ApiKey> {
        match self.submit(Op::CreateKey(key)).await? {
            Output::Key(key) => Ok(key),
            _ => Err(unexpected()),
        }
    }

    async fn keys(&self) -> StoreResult<Vec<ApiKey>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys k JOIN tenants t ON t.id = k.tenant_id ORDER BY k.id"
            ))?;
            let rows = stmt
                .query_map([], key_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(to_api_key).collect()
        })
        .await
    }

    async fn revoke_key(&self, id: i64, at: UnixMillis) -> StoreResult<Option<ApiKey>> {
        match self.submit(Op::RevokeKey { id, at }).await? {
            Output::MaybeKey(key) => Ok(key),
            _ => Err(unexpected()),
        }
    }

    async fn enqueue_report(&self, report: QueuedReport) -> StoreResult<i64> {
        match self.submit(Op::EnqueueReport(report)).await? {
            Output::Id(id) => Ok(id),
            _ => Err(unexpected()),
        }
    }

    async fn queued_reports(&self, limit: usize) -> StoreResult<Vec<QueuedReport>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, tenant_id, key_id, kind, payload, received_at FROM report_queue
                 ORDER BY id LIMIT ?1",
            )?;
            let rows = stmt
                .query_map([limit as i64], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, i64>(5)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(id, tenant, key_id, kind, payload, received_at)| {
                    Ok(QueuedReport {
                        id,
                        tenant: TenantId(tenant),
                        key_id,
                        kind: ReportKind::parse(&kind)
                            .ok_or_else(|| StoreError::Corrupt(format!("report kind {kind:?}")))?,
                        payload,
                        received_at: UnixMillis(received_at),
                    })
                })
                .collect()
        })
        .await
    }

    async fn process_reports(&self, reports: Vec<ProcessedReport>) -> StoreResult<Vec<Change>> {
        match self.submit(Op::ProcessReports(reports)).await? {
            Output::Changes(changes) => Ok(changes),
            _ => Err(unexpected()),
        }
    }

    async fn queue_stats(&self, tenant: Option<TenantId>) -> StoreResult<QueueStats> {
        self.read(move |conn| {
            let (depth, oldest): (i64, Option<i64>) = conn.query_row(
                "SELECT COUNT(*), MIN(received_at) FROM report_queue
                 WHERE ?1 IS NULL OR tenant_id = ?1",
                [tenant.map(|t| t.0)],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            Ok(QueueStats {
                depth: depth as u64,
                oldest: oldest.map(UnixMillis),
            })
        })
        .await
    }

    async fn purge_audit(&self, before: UnixMillis, limit: usize) -> StoreResult<usize> {
        match self.submit(Op::PurgeAudit { before, limit }).await? {
            Output::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn purge_changes(&self, before: UnixMillis, limit: usize) -> StoreResult<usize> {
        match self.submit(Op::PurgeChanges { before, limit }).await? {
            Output::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn probe(&self, at: UnixMillis) -> StoreResult<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let stat = rustix::fs::statvfs(dir).map_err(|e| StoreError::DataDir {
            path: dir.display().to_string(),
            source: e.into(),
        })?;
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        if free < self.min_free_bytes {
            return Err(StoreError::DiskFull {
                free,
                wanted: self.min_free_bytes,
            });
        }
        match self.submit(Op::Probe(at)).await? {
            Output::Count(_) => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn live_keys(&self) -> StoreResult<Vec<(KeyDigest, Principal)>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {LIVE_KEY_COLUMNS} FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
                 WHERE k.revoked_at IS NULL"
            ))?;
            let rows = stmt
                .query_map([], live_key_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(to_live_key).collect()
        })
        .await
    }

    async fn live_key(&self, digest: KeyDigest) -> StoreResult<Option<Principal>> {
        self.read(move |conn| {
            let row = conn
                .prepare_cached(&format!(
                    "SELECT {LIVE_KEY_COLUMNS} FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
                     WHERE k.key_hash = ?1 AND k.revoked_at IS NULL"
                ))?
                .query_row([&digest[..]], live_key_from_row)
                .optional()?;
            row.map(|row| to_live_key(row).map(|(_, principal)| principal))
                .transpose()
        })
        .await
    }
}

const LIVE_KEY_COLUMNS: &str = "k.key_hash, k.id, k.name, k.role, t.name, k.tenant_id";

type LiveKeyRow = (Vec<u8>, i64, String, String, String, i64);

fn live_key_from_row(row: &Row<'_>) -> rusqlite::Result<LiveKeyRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn to_live_key(row: LiveKeyRow) -> StoreResult<(KeyDigest, Principal)> {
    let (hash, key_id, key_name, role, tenant, tenant_id) = row;
    let digest: KeyDigest = hash
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("key {key_id} hash length")))?;
    let key = to_api_key((key_id, key_name, role, tenant, tenant_id, 0, None))?;
    Ok((
        digest,
        Principal {
            key_id,
            key_name: key.name,
            role: key.role,
            tenant: key.tenant,
            tenant_id: key.tenant_id,
        },
    ))
}

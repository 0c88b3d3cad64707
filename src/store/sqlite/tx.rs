//! A write transaction on the one writing connection, which a thread of its own owns.
//!
//! [`Direct`] runs each operation straight on the connection: the engine's whole group of
//! writes runs that way on the thread, in one hop (see `SqliteBackend::transact`).
//! [`SqliteTransaction`] is the same transaction driven from elsewhere, one operation per hop.

use std::sync::mpsc::Sender;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, OptionalExtension, ToSql, params};
use tokio::sync::{OwnedMutexGuard, oneshot};

use super::Call;
use super::rows::{self, KEY_COLUMNS, REPORT_COLUMNS, RULE_COLUMNS, json_tags};
use super::rule_keys::{RuleKey, RuleKeys};
use super::wal_sync::WalSync;
use crate::keys::{ApiKey, TenantName};
use crate::rules::{NewRule, Rule, RuleAction, RuleId, Target, TenantId, UnixMillis};
use crate::store::audit::NewAuditRecord;
use crate::store::backend::Transaction;
use crate::store::{Change, CursorMove, NewKey, Pull, QueuedReport, StoreError, StoreResult};

/// The open transaction, on the connection's own thread.
pub(super) struct Direct<'c> {
    pub(super) conn: &'c mut Connection,
    pub(super) keys: &'c RuleKeys,
}

impl<'c> Direct<'c> {
    /// IMMEDIATE takes the write lock now, so another process (the command line) waits at the
    /// start instead of failing halfway.
    pub(super) fn begin(conn: &'c mut Connection, keys: &'c RuleKeys) -> StoreResult<Self> {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let tx = Direct { conn, keys };
        if let Err(e) = tx.keys.began(tx.conn) {
            tx.rollback();
            return Err(e);
        }
        Ok(tx)
    }

    /// Commits, or rolls back when the commit fails.
    pub(super) fn finish(self) -> StoreResult<()> {
        match self.conn.execute_batch("COMMIT") {
            Ok(()) => {
                self.keys.committed();
                Ok(())
            }
            Err(e) => {
                self.rollback();
                Err(e.into())
            }
        }
    }

    pub(super) fn rollback(self) {
        if let Err(e) = self.conn.execute_batch("ROLLBACK") {
            tracing::error!(error = %e, "rolling back a write transaction failed");
        }
        self.keys.rolled_back();
    }
}

#[async_trait]
impl Transaction for Direct<'_> {
    async fn rules_by_key(
        &mut self,
        tenant: TenantId,
        keys: &[(RuleAction, Target)],
    ) -> StoreResult<Vec<Rule>> {
        let ids: Vec<RuleId> = {
            let map = self.keys.current(self.conn)?;
            let map = map.as_ref().expect("read by current");
            keys.iter()
                .filter_map(|&(action, target)| map.get(&(tenant, action, target)))
                .collect()
        };
        rules_by_id(self.conn, &ids)
    }

    async fn rule_by_id(&mut self, tenant: TenantId, id: RuleId) -> StoreResult<Option<Rule>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {RULE_COLUMNS} FROM rules WHERE id = ?1 AND tenant_id = ?2"
        ))?;
        let mut found = stmt.query(params![id, tenant.0])?;
        found.next()?.map(rows::rule).transpose()
    }

    async fn expired_rules(&mut self, now: UnixMillis, limit: usize) -> StoreResult<Vec<Rule>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {RULE_COLUMNS} FROM rules
             WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2"
        ))?;
        let mut found = stmt.query(params![now.0, limit as i64])?;
        let mut expired = Vec::new();
        while let Some(row) = found.next()? {
            expired.push(rows::rule(row)?);
        }
        Ok(expired)
    }

    async fn insert_rules(&mut self, rules: &[NewRule]) -> StoreResult<Vec<RuleId>> {
        let mut map = self.keys.current(self.conn)?;
        let map = map.as_mut().expect("read by current");
        let first = next_rule_id(self.conn)?;
        let ids: Vec<RuleId> = (first..).take(rules.len()).collect();
        // Checked before any row is stored, as a UNIQUE index would refuse the statement (the
        // keys noted meanwhile go with the transaction's rollback).
        for (rule, &id) in rules.iter().zip(&ids) {
            if !map.insert_absent(key_of(rule), id) {
                return Err(StoreError::Database(
                    "a rule with this key is stored already".into(),
                ));
            }
        }
        store_numbered(self.conn, rules, first)?;
        Ok(ids)
    }

    async fn insert_absent_rules(&mut self, rules: &[NewRule]) -> StoreResult<Vec<Option<RuleId>>> {
        let mut map = self.keys.current(self.conn)?;
        let map = map.as_mut().expect("read by current");
        // The ids are known before the rows are stored, so that each key is looked up once,
        // and a key given twice (should a caller ever repeat one) is stored once.
        let first = next_rule_id(self.conn)?;
        let mut next = first;
        let ids: Vec<Option<RuleId>> = rules
            .iter()
            .map(|rule| {
                map.insert_absent(key_of(rule), next).then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        let to_store = rules.iter().zip(&ids).filter(|(_, id)| id.is_some());
        store_numbered(self.conn, to_store.map(|(rule, _)| rule), first)?;
        Ok(ids)
    }

    async fn update_rules(&mut self, rules: &[Rule]) -> StoreResult<()> {
        update_rules(self.conn, rules)
    }

    async fn delete_rules(&mut self, rules: &[(TenantId, RuleId)]) -> StoreResult<()> {
        // The id alone is the row id here. The key is read back for the map of keys.
        let mut map = self.keys.current(self.conn)?;
        let map = map.as_mut().expect("read by current");
        let mut key = self
            .conn
            .prepare_cached("SELECT tenant_id, action, kind, target FROM rules WHERE id = ?1")?;
        let mut delete = self
            .conn
            .prepare_cached("DELETE FROM rules WHERE id = ?1")?;
        for (_, id) in rules {
            let Some(row) = key.query([id])?.next()?.map(rows::rule_key).transpose()? else {
                continue;
            };
            delete.execute([id])?;
            map.remove(row, *id);
        }
        Ok(())
    }

    async fn rule_count(&mut self, tenant: TenantId) -> StoreResult<u64> {
        let count: Option<i64> = self
            .conn
            .prepare_cached("SELECT rules FROM tenants WHERE id = ?1")?
            .query_row([tenant.0], |row| row.get(0))
            .optional()?;
        Ok(count.unwrap_or(0).max(0) as u64)
    }

    async fn add_rule_count(&mut self, tenant: TenantId, delta: i64) -> StoreResult<()> {
        if delta != 0 {
            self.conn
                .prepare_cached("UPDATE tenants SET rules = MAX(rules + ?2, 0) WHERE id = ?1")?
                .execute(params![tenant.0, delta])?;
        }
        Ok(())
    }

    async fn append_changes(&mut self, changes: &mut [Change]) -> StoreResult<()> {
        append_changes(self.conn, changes)?;
        if let Some(last) = changes.last() {
            self.keys.appended(last.seq as i64);
        }
        Ok(())
    }

    async fn append_audit(&mut self, records: &[NewAuditRecord]) -> StoreResult<()> {
        let packed: Vec<(&NewAuditRecord, Vec<u8>)> = records
            .iter()
            .map(|record| (record, rows::packed_audit_entries(&record.entries)))
            .collect();
        append_rows(self.conn, &AUDIT_APPEND, &packed, |mut row| {
            row.column(0, |(r, _)| r.tenant.0)?;
            row.column(1, |(r, _)| r.key_id)?;
            row.column(2, |(r, _)| &r.request_id)?;
            row.column(3, |(r, _)| r.at.0)?;
            row.column(4, |(r, _)| r.entry_count)?;
            row.column(5, |(_, entries)| entries)
        })
    }

    async fn purge_audit(&mut self, before: UnixMillis, limit: usize) -> StoreResult<usize> {
        purge_oldest(self.conn, "audit_records", "id", before, limit)
    }

    async fn purge_changes(&mut self, before: UnixMillis, limit: usize) -> StoreResult<usize> {
        purge_oldest(self.conn, "rule_changes", "seq", before, limit)
    }

    async fn tenant_id(&mut self, name: &TenantName, at: UnixMillis) -> StoreResult<TenantId> {
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?1, ?2)")?
            .execute(params![name.as_str(), at.0])?;
        let id = self
            .conn
            .prepare_cached("SELECT id FROM tenants WHERE name = ?1")?
            .query_row([name.as_str()], |row| row.get(0))?;
        Ok(TenantId(id))
    }

    async fn insert_key(&mut self, tenant: TenantId, key: &NewKey) -> StoreResult<ApiKey> {
        self.conn
            .prepare_cached(
                "INSERT INTO api_keys (tenant_id, name, role, key_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                tenant.0,
                key.name,
                key.role.as_str(),
                &key.digest[..],
                key.at.0
            ])?;
        Ok(key.stored(self.conn.last_insert_rowid(), tenant))
    }

    async fn revoke_key(&mut self, id: i64, at: UnixMillis) -> StoreResult<Option<ApiKey>> {
        self.conn
            .prepare_cached(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            )?
            .execute(params![id, at.0])?;
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
             WHERE k.id = ?1"
        ))?;
        let mut found = stmt.query([id])?;
        found.next()?.map(rows::api_key).transpose()
    }

    async fn enqueue_report(&mut self, report: &QueuedReport) -> StoreResult<i64> {
        self.conn
            .prepare_cached(
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
        Ok(self.conn.last_insert_rowid())
    }

    async fn claim_reports(&mut self, limit: usize) -> StoreResult<Vec<QueuedReport>> {
        // The only writer holds the database: nothing else can claim these meanwhile.
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {REPORT_COLUMNS} FROM report_queue ORDER BY id LIMIT ?1"
        ))?;
        let mut found = stmt.query([limit as i64])?;
        let mut queued = Vec::new();
        while let Some(row) = found.next()? {
            queued.push(rows::queued_report(row)?);
        }
        Ok(queued)
    }

    async fn delete_reports(&mut self, ids: &[i64]) -> StoreResult<()> {
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM report_queue WHERE id = ?1")?;
        for id in ids {
            stmt.execute([id])?;
        }
        Ok(())
    }

    async fn probe(&mut self, at: UnixMillis) -> StoreResult<()> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO health (id, at) VALUES (1, ?1)")?
            .execute([at.0])?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> StoreResult<()> {
        (*self).finish()
    }
}

/// The open transaction driven from another thread: each operation is one hop to the
/// connection's thread, where it runs as [`Direct`] does.
pub struct SqliteTransaction {
    calls: Sender<Call>,
    keys: Arc<RuleKeys>,
    wal_sync: Option<Arc<WalSync>>,
    /// One write transaction at a time on the connection.
    _turn: OwnedMutexGuard<()>,
    open: bool,
}

impl SqliteTransaction {
    pub(super) async fn begin(
        calls: Sender<Call>,
        keys: Arc<RuleKeys>,
        wal_sync: Option<Arc<WalSync>>,
        turn: OwnedMutexGuard<()>,
    ) -> StoreResult<Self> {
        let mut tx = Self {
            calls,
            keys: keys.clone(),
            wal_sync,
            _turn: turn,
            open: false,
        };
        tx.run(move |c| Direct::begin(c, &keys).map(|_| ())).await?;
        tx.open = true;
        Ok(tx)
    }

    /// Runs `work` on the connection's thread, as the open transaction.
    async fn on_thread<T, W>(&mut self, work: W) -> StoreResult<T>
    where
        T: Send + 'static,
        W: for<'c> FnOnce(
                &'c mut Direct<'_>,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = StoreResult<T>> + Send + 'c>,
            > + Send
            + 'static,
    {
        let keys = self.keys.clone();
        self.run(move |conn| futures_executor::block_on(work(&mut Direct { conn, keys: &keys })))
            .await
    }

    async fn run<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (reply, answer) = oneshot::channel();
        self.calls
            .send(Box::new(move |conn: &mut Connection| {
                let _ = reply.send(work(conn));
            }))
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }
}

impl Drop for SqliteTransaction {
    fn drop(&mut self) {
        if self.open {
            // Sent before the turn is given up, so it runs before the next transaction begins.
            let keys = self.keys.clone();
            let _ = self.calls.send(Box::new(move |conn: &mut Connection| {
                Direct { conn, keys: &keys }.rollback();
            }));
        }
    }
}

#[async_trait]
impl Transaction for SqliteTransaction {
    async fn rules_by_key(
        &mut self,
        tenant: TenantId,
        keys: &[(RuleAction, Target)],
    ) -> StoreResult<Vec<Rule>> {
        let keys = keys.to_vec();
        self.on_thread(move |tx| Box::pin(async move { tx.rules_by_key(tenant, &keys).await }))
            .await
    }

    async fn rule_by_id(&mut self, tenant: TenantId, id: RuleId) -> StoreResult<Option<Rule>> {
        self.on_thread(move |tx| Box::pin(tx.rule_by_id(tenant, id)))
            .await
    }

    async fn expired_rules(&mut self, now: UnixMillis, limit: usize) -> StoreResult<Vec<Rule>> {
        self.on_thread(move |tx| Box::pin(tx.expired_rules(now, limit)))
            .await
    }

    async fn insert_rules(&mut self, rules: &[NewRule]) -> StoreResult<Vec<RuleId>> {
        let rules = rules.to_vec();
        self.on_thread(move |tx| Box::pin(async move { tx.insert_rules(&rules).await }))
            .await
    }

    async fn insert_absent_rules(&mut self, rules: &[NewRule]) -> StoreResult<Vec<Option<RuleId>>> {
        let rules = rules.to_vec();
        self.on_thread(move |tx| Box::pin(async move { tx.insert_absent_rules(&rules).await }))
            .await
    }

    async fn update_rules(&mut self, rules: &[Rule]) -> StoreResult<()> {
        let rules = rules.to_vec();
        self.on_thread(move |tx| Box::pin(async move { tx.update_rules(&rules).await }))
            .await
    }

    async fn delete_rules(&mut self, rules: &[(TenantId, RuleId)]) -> StoreResult<()> {
        let rules = rules.to_vec();
        self.on_thread(move |tx| Box::pin(async move { tx.delete_rules(&rules).await }))
            .await
    }

    async fn rule_count(&mut self, tenant: TenantId) -> StoreResult<u64> {
        self.on_thread(move |tx| Box::pin(tx.rule_count(tenant)))
            .await
    }

    async fn add_rule_count(&mut self, tenant: TenantId, delta: i64) -> StoreResult<()> {
        self.on_thread(move |tx| Box::pin(tx.add_rule_count(tenant, delta)))
            .await
    }

    async fn append_changes(&mut self, changes: &mut [Change]) -> StoreResult<()> {
        let mut owned = changes.to_vec();
        let numbered = self
            .on_thread(move |tx| {
                Box::pin(async move {
                    tx.append_changes(&mut owned).await?;
                    Ok(owned)
                })
            })
            .await?;
        changes.clone_from_slice(&numbered);
        Ok(())
    }

    async fn append_audit(&mut self, records: &[NewAuditRecord]) -> StoreResult<()> {
        let records = records.to_vec();
        self.on_thread(move |tx| Box::pin(async move { tx.append_audit(&records).await }))
            .await
    }

    async fn purge_audit(&mut self, before: UnixMillis, limit: usize) -> StoreResult<usize> {
        self.on_thread(move |tx| Box::pin(tx.purge_audit(before, limit)))
            .await
    }

    async fn purge_changes(&mut self, before: UnixMillis, limit: usize) -> StoreResult<usize> {
        self.on_thread(move |tx| Box::pin(tx.purge_changes(before, limit)))
            .await
    }

    async fn tenant_id(&mut self, name: &TenantName, at: UnixMillis) -> StoreResult<TenantId> {
        let name = name.clone();
        self.on_thread(move |tx| Box::pin(async move { tx.tenant_id(&name, at).await }))
            .await
    }

    async fn insert_key(&mut self, tenant: TenantId, key: &NewKey) -> StoreResult<ApiKey> {
        let key = key.clone();
        self.on_thread(move |tx| Box::pin(async move { tx.insert_key(tenant, &key).await }))
            .await
    }

    async fn revoke_key(&mut self, id: i64, at: UnixMillis) -> StoreResult<Option<ApiKey>> {
        self.on_thread(move |tx| Box::pin(tx.revoke_key(id, at)))
            .await
    }

    async fn enqueue_report(&mut self, report: &QueuedReport) -> StoreResult<i64> {
        let report = report.clone();
        self.on_thread(move |tx| Box::pin(async move { tx.enqueue_report(&report).await }))
            .await
    }

    async fn claim_reports(&mut self, limit: usize) -> StoreResult<Vec<QueuedReport>> {
        self.on_thread(move |tx| Box::pin(tx.claim_reports(limit)))
            .await
    }

    async fn delete_reports(&mut self, ids: &[i64]) -> StoreResult<()> {
        let ids = ids.to_vec();
        self.on_thread(move |tx| Box::pin(async move { tx.delete_reports(&ids).await }))
            .await
    }

    async fn probe(&mut self, at: UnixMillis) -> StoreResult<()> {
        self.on_thread(move |tx| Box::pin(tx.probe(at))).await
    }

    async fn commit(mut self: Box<Self>) -> StoreResult<()> {
        let keys = self.keys.clone();
        let wal_sync = self.wal_sync.clone();
        let committed = self
            .run(move |conn| {
                Direct { conn, keys: &keys }.finish()?;
                synced(wal_sync.as_deref())
            })
            .await;
        // Committed, or rolled back by `finish`, unless the writer thread is gone.
        if !matches!(committed, Err(StoreError::WriterGone)) {
            self.open = false;
        }
        committed
    }
}

/// Syncs a commit made outside the writer's group commits before it is answered, as SQLite's
/// FULL setting would have in the commit (see [`WalSync`]); these are few and small.
pub(super) fn synced(wal_sync: Option<&WalSync>) -> StoreResult<()> {
    let Some(wal_sync) = wal_sync else {
        return Ok(());
    };
    wal_sync.committed();
    wal_sync.sync()
}

/// Where new rules are stored: the 13 columns [`bind_rule`] binds.
static NEW_RULE_APPEND: LazyLock<Append> = LazyLock::new(|| {
    Append::new(
        "INSERT INTO rules (tenant_id, action, kind, target, expires_at, name, description,
                            source, dataset, tags, reports, created_at, updated_at)",
        13,
    )
});

/// Stores each rule, in order, `ROWS_PER_APPEND` to a statement as the change log's rows are,
/// with the ids `first`, `first + 1`, ... that AUTOINCREMENT gives them (see
/// [`next_rule_id`]); checked after, so that a difference is an error that rolls the
/// transaction back rather than a key map that names the wrong rules.
fn store_numbered<'r>(
    conn: &Connection,
    rules: impl IntoIterator<Item = &'r NewRule>,
    first: RuleId,
) -> StoreResult<()> {
    let rules: Vec<&NewRule> = rules.into_iter().collect();
    if rules.is_empty() {
        return Ok(());
    }
    append_rows(conn, &NEW_RULE_APPEND, &rules, |row| bind_rule(row))?;
    let last = conn.last_insert_rowid();
    if last != first + rules.len() as i64 - 1 {
        return Err(StoreError::Corrupt(format!(
            "new rules were numbered up to {last}, not {first} to {}",
            first + rules.len() as i64 - 1
        )));
    }
    Ok(())
}

/// The id the next rule stored gets: AUTOINCREMENT gives one above both the largest id it
/// ever gave (kept in `sqlite_sequence`) and the largest in the table, one after the other as
/// the one writer stores rows.
fn next_rule_id(conn: &Connection) -> StoreResult<RuleId> {
    Ok(conn
        .prepare_cached(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'rules'), 0),
                        coalesce((SELECT max(id) FROM rules), 0)) + 1",
        )?
        .query_row([], |row| row.get(0))?)
}

fn key_of(rule: &NewRule) -> RuleKey {
    (rule.tenant, rule.action, rule.target)
}

/// Stored rules by id, in any order; ids with no rule are left out.
fn rules_by_id(conn: &Connection, ids: &[RuleId]) -> StoreResult<Vec<Rule>> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {RULE_COLUMNS} FROM rules WHERE id = ?1"))?;
    let mut stored = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(row) = stmt.query([id])?.next()? {
            stored.push(rows::rule(row)?);
        }
    }
    Ok(stored)
}

/// A new rule's columns, in the order of [`NEW_RULE_APPEND`].
fn bind_rule(mut row: RowBinding<'_, '_, '_, &NewRule>) -> rusqlite::Result<()> {
    row.column(0, |r| r.tenant.0)?;
    row.column(1, |r| r.action.as_str())?;
    row.column(2, |r| r.target.kind().as_str())?;
    row.column(3, |r| TargetText(r.target))?;
    row.column(4, |r| r.expires_at.map(|t| t.0))?;
    row.column(5, |r| &r.name)?;
    row.column(6, |r| &r.description)?;
    row.column(7, |r| r.source.as_str())?;
    row.column(8, |r| &r.dataset)?;
    row.column(9, |r| TagsJson(&r.tags))?;
    row.column(10, |r| r.reports)?;
    row.column(11, |r| r.created_at.0)?;
    row.column(12, |r| r.updated_at.0)
}

/// One row's columns, bound from parameter `at` on. A statement keeps its parameters from run
/// to run, and most columns repeat from one row of a batch to the next (the tenant, action,
/// source, times): a column whose value equals the one `previous` (the row last bound to the
/// same parameters) had is left as it is. Binding costs several hundred instructions a value,
/// and an ingested event binds about thirty.
struct RowBinding<'s, 'c, 'r, T> {
    stmt: &'s mut rusqlite::Statement<'c>,
    at: usize,
    row: &'r T,
    previous: Option<&'r T>,
}

impl<'s, 'c, 'r, T> RowBinding<'s, 'c, 'r, T> {
    fn new(
        stmt: &'s mut rusqlite::Statement<'c>,
        at: usize,
        row: &'r T,
        previous: Option<&'r T>,
    ) -> Self {
        Self {
            stmt,
            at,
            row,
            previous,
        }
    }

    /// Binds the row's column `offset` (from 0) to `value` of it.
    fn column<V: ToSql + PartialEq>(
        &mut self,
        offset: usize,
        value: impl Fn(&'r T) -> V,
    ) -> rusqlite::Result<()> {
        let bound = value(self.row);
        if self
            .previous
            .is_some_and(|previous| value(previous) == bound)
        {
            return Ok(());
        }
        self.stmt.raw_bind_parameter(self.at + offset, bound)
    }
}

/// A target bound as its stored text; compared as a target, without making the text.
#[derive(PartialEq)]
struct TargetText(Target);

impl ToSql for TargetText {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0.text()))
    }
}

/// Tags bound as their stored JSON; compared as tags.
#[derive(PartialEq)]
struct TagsJson<'a>(&'a [String]);

impl ToSql for TagsJson<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(json_tags(self.0)))
    }
}

fn update_rules(conn: &Connection, rules: &[Rule]) -> StoreResult<()> {
    let mut stmt = conn.prepare_cached(
        "UPDATE rules SET expires_at = ?2, name = ?3, description = ?4, source = ?5,
                          dataset = ?6, tags = ?7, reports = ?8, created_at = ?9, updated_at = ?10
         WHERE id = ?1",
    )?;
    for rule in rules {
        stmt.execute(params![
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
    }
    Ok(())
}

/// Appends to the change log; the row id is the change's sequence number. AUTOINCREMENT and
/// the single writer make the numbers grow in commit order, without gaps: the rows of one
/// call are numbered one after the other, up to the last row id inserted.
fn append_changes(conn: &Connection, changes: &mut [Change]) -> StoreResult<()> {
    append_rows(conn, &CHANGE_APPEND, changes, |mut row| {
        row.column(0, |c| c.tenant.0)?;
        row.column(1, |c| c.rule_id)?;
        row.column(2, |c| c.op.as_str())?;
        row.column(3, |c| c.action.as_str())?;
        row.column(4, |c| c.target.kind().as_str())?;
        row.column(5, |c| TargetText(c.target))?;
        row.column(6, |c| c.expires_at.map(|t| t.0))?;
        row.column(7, |c| &c.name)?;
        row.column(8, |c| c.at.0)?;
        row.column(9, |c| c.source.as_str())?;
        row.column(10, |c| &c.dataset)?;
        row.column(11, |c| &c.description)
    })?;
    let last = conn.last_insert_rowid() as u64;
    let first = (last + 1).saturating_sub(changes.len() as u64);
    for (seq, change) in (first..).zip(changes.iter_mut()) {
        change.seq = seq;
    }
    Ok(())
}

/// Rows per `INSERT` of an append. SQLite pays some work per statement run (opening a cursor
/// on the table and on each index, writing back the AUTOINCREMENT counter), and rows appended
/// one statement each pay it once per row; measured on the audit and change rows of an
/// ingest, 64 rows per statement took a quarter off the database's time for dense addresses.
const ROWS_PER_APPEND: usize = 64;

/// The two forms of an append's `INSERT`: one row, and `ROWS_PER_APPEND` rows.
struct Append {
    one_row: String,
    many_rows: String,
    columns: usize,
}

impl Append {
    fn new(into: &str, columns: usize) -> Self {
        let row = format!("({})", vec!["?"; columns].join(", "));
        Self {
            one_row: format!("{into} VALUES {row}"),
            many_rows: format!("{into} VALUES {}", vec![row; ROWS_PER_APPEND].join(", ")),
            columns,
        }
    }
}

static CHANGE_APPEND: LazyLock<Append> = LazyLock::new(|| {
    Append::new(
        "INSERT INTO rule_changes (tenant_id, rule_id, op, action, kind, target, expires_at,
                                   name, at, source, dataset, description)",
        12,
    )
});

static AUDIT_APPEND: LazyLock<Append> = LazyLock::new(|| {
    Append::new(
        "INSERT INTO audit_records (tenant_id, key_id, request_id, at, entry_count, entries)",
        6,
    )
});

/// Inserts `rows` in order, `ROWS_PER_APPEND` per statement and the rest one by one (a
/// statement per leftover count would crowd the writer's statement cache); `bind` binds one
/// row's columns.
fn append_rows<T>(
    conn: &Connection,
    append: &Append,
    rows: &[T],
    bind: impl for<'s, 'c, 'r> Fn(RowBinding<'s, 'c, 'r, T>) -> rusqlite::Result<()>,
) -> StoreResult<()> {
    let mut full = rows.chunks_exact(ROWS_PER_APPEND);
    if full.len() > 0 {
        let mut stmt = conn.prepare_cached(&append.many_rows)?;
        let mut previous: Option<&[T]> = None;
        for chunk in &mut full {
            for (i, row) in chunk.iter().enumerate() {
                let at = 1 + i * append.columns;
                bind(RowBinding::new(&mut stmt, at, row, previous.map(|p| &p[i])))?;
            }
            stmt.raw_execute()?;
            previous = Some(chunk);
        }
    }
    let rest = full.remainder();
    if !rest.is_empty() {
        let mut stmt = conn.prepare_cached(&append.one_row)?;
        let mut previous = None;
        for row in rest {
            bind(RowBinding::new(&mut stmt, 1, row, previous))?;
            stmt.raw_execute()?;
            previous = Some(row);
        }
    }
    Ok(())
}

/// Deletes up to `limit` rows of `table` made before `before`, oldest first: the rows below the
/// first one made at or after `before`, in the order of their row id `key`, which grows with
/// `at`. A row made under a clock that stepped back waits for the newer rows before it, so no
/// row made at or after `before` ever goes. Reads at most `limit` rows whatever the table
/// holds. (PostgreSQL runs the same statement: `PgTransaction::purge_oldest`.)
fn purge_oldest(
    conn: &Connection,
    table: &str,
    key: &str,
    before: UnixMillis,
    limit: usize,
) -> StoreResult<usize> {
    Ok(conn
        .prepare_cached(&format!(
            "WITH oldest AS (SELECT {key}, at FROM {table} ORDER BY {key} LIMIT ?2)
             DELETE FROM {table}
             WHERE {key} IN (SELECT {key} FROM oldest)
               AND {key} < COALESCE((SELECT min({key}) FROM oldest WHERE at >= ?1),
                                    9223372036854775807)"
        ))?
        .execute(params![before.0, limit as i64])?)
}

/// Records a pull of decisions (see [`crate::store::backend::Backend::record_pull`]).
pub fn record_pull(conn: &Connection, pull: &Pull, cursor: CursorMove) -> StoreResult<bool> {
    let (mode, to, from) = match cursor {
        CursorMove::Keep => (0, None, None),
        CursorMove::Set(to) => (1, Some(to), None),
        CursorMove::Advance { from, to } => (2, Some(to), from),
    };
    let written = conn
        .prepare_cached(
            "INSERT INTO bouncers (key_id, tenant_id, last_pull, user_agent, address, version,
                                   cursor_seq, cursor_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (key_id) DO UPDATE SET
                 tenant_id = excluded.tenant_id, last_pull = excluded.last_pull,
                 user_agent = excluded.user_agent, address = excluded.address,
                 version = excluded.version,
                 cursor_seq = CASE WHEN ?9 = 0 THEN bouncers.cursor_seq ELSE excluded.cursor_seq END,
                 cursor_at = CASE WHEN ?9 = 0 THEN bouncers.cursor_at ELSE excluded.cursor_at END
             WHERE ?9 <> 2 OR (bouncers.cursor_seq IS ?10 AND bouncers.cursor_at IS ?11)",
        )?
        .execute(params![
            pull.key_id,
            pull.tenant.0,
            pull.at.0,
            pull.user_agent,
            pull.address,
            pull.version,
            to.map(|c| c.seq as i64),
            to.map(|c| c.at.0),
            mode,
            from.map(|c| c.seq as i64),
            from.map(|c| c.at.0),
        ])?;
    Ok(written > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purges_exactly_the_rows_made_before_the_instant() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE log (seq INTEGER PRIMARY KEY, at INTEGER NOT NULL)")
            .unwrap();
        // Ids with holes (deleted rows); several rows per instant.
        for seq in (1..=300).filter(|s| s % 7 != 0) {
            conn.execute("INSERT INTO log VALUES (?1, ?2)", [seq, seq / 3])
                .unwrap();
        }
        let count = |c: &Connection| -> i64 {
            c.query_row("SELECT COUNT(*) FROM log", [], |r| r.get(0))
                .unwrap()
        };
        let old = |before: i64| (1..=300).filter(|s| s % 7 != 0 && s / 3 < before).count();
        let total = count(&conn) as usize;
        assert_eq!(
            purge_oldest(&conn, "log", "seq", UnixMillis(0), 10).unwrap(),
            0
        );
        assert_eq!(
            purge_oldest(&conn, "log", "seq", UnixMillis(40), 10).unwrap(),
            10
        );
        assert_eq!(
            purge_oldest(&conn, "log", "seq", UnixMillis(40), 1000).unwrap(),
            old(40) - 10
        );
        assert_eq!(count(&conn) as usize, total - old(40));
        assert_eq!(
            purge_oldest(&conn, "log", "seq", UnixMillis(1000), 1000).unwrap(),
            total - old(40)
        );
        assert_eq!(
            purge_oldest(&conn, "log", "seq", UnixMillis(1000), 10).unwrap(),
            0
        );
    }

    #[test]
    fn a_row_made_after_the_instant_holds_back_the_rows_behind_it() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE log (seq INTEGER PRIMARY KEY, at INTEGER NOT NULL);
             INSERT INTO log VALUES (1, 10), (2, 10), (3, 50), (4, 10), (5, 10);",
        )
        .unwrap();
        let left = |c: &Connection| -> Vec<i64> {
            c.prepare("SELECT seq FROM log ORDER BY seq")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(
            purge_oldest(&conn, "log", "seq", UnixMillis(40), 1000).unwrap(),
            2
        );
        assert_eq!(left(&conn), [3, 4, 5]);
        assert_eq!(
            purge_oldest(&conn, "log", "seq", UnixMillis(40), 1000).unwrap(),
            0
        );
        assert_eq!(
            purge_oldest(&conn, "log", "seq", UnixMillis(60), 1).unwrap(),
            1
        );
        assert_eq!(left(&conn), [4, 5]);
    }
}

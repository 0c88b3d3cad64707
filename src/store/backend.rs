//! What a storage backend provides: reads, and write transactions made of row operations. The
//! engine decides every write (what a write does to a rule, what is audited, what the change
//! log says); a backend stores rows and numbers changes, nothing else, so SQLite and
//! PostgreSQL cannot disagree about what a write means.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

use super::audit::{self, AuditRecord, NewAuditRecord};
use super::{
    AuditEntry, BouncerRecord, Change, CursorMove, DecisionDelta, NewKey, Page, Pull, QueueStats,
    QueuedReport, RuleCount, RuleQuery, Snapshot, StoreResult, StreamCursor,
};
use crate::keys::{ApiKey, KeyDigest, Principal, TenantName};
use crate::rules::{NewRule, Rule, RuleAction, RuleId, Target, TenantId, UnixMillis};

/// One write transaction. The engine opens it, reads and writes rows through it, and commits
/// it; dropped without [`Transaction::commit`], it is rolled back. Write transactions of one
/// database run one at a time, so what a transaction reads stays true until it commits.
#[async_trait]
pub trait Transaction: Send {
    /// The stored rules (expired or not) of `tenant` with these `(action, target)` keys, in
    /// any order.
    async fn rules_by_key(
        &mut self,
        tenant: TenantId,
        keys: &[(RuleAction, Target)],
    ) -> StoreResult<Vec<Rule>>;

    /// One stored rule of `tenant` by id, expired or not.
    async fn rule_by_id(&mut self, tenant: TenantId, id: RuleId) -> StoreResult<Option<Rule>>;

    /// Up to `limit` rules (of any tenant) expired at `now`.
    async fn expired_rules(&mut self, now: UnixMillis, limit: usize) -> StoreResult<Vec<Rule>>;

    /// Stores new rules; returns their ids, in order. Ids are never reused.
    async fn insert_rules(&mut self, rules: &[NewRule]) -> StoreResult<Vec<RuleId>>;

    /// Stores each of `rules` whose key (tenant, action, target) no stored rule has, and leaves
    /// the stored rule alone where one has it. Returns, in order, the id of each rule stored
    /// and `None` for each key that was taken. The keys of `rules` are distinct.
    async fn insert_absent_rules(&mut self, rules: &[NewRule]) -> StoreResult<Vec<Option<RuleId>>>;

    /// Rewrites stored rules (found by tenant and id) with these fields.
    async fn update_rules(&mut self, rules: &[Rule]) -> StoreResult<()>;

    /// Deletes stored rules, found by tenant and id (PostgreSQL keys rules by both).
    async fn delete_rules(&mut self, rules: &[(TenantId, RuleId)]) -> StoreResult<()>;

    /// How many rules `tenant` stores (expired and not yet purged included).
    async fn rule_count(&mut self, tenant: TenantId) -> StoreResult<u64>;

    /// Moves the count [`Transaction::rule_count`] answers by `delta`.
    async fn add_rule_count(&mut self, tenant: TenantId, delta: i64) -> StoreResult<()>;

    /// Appends changes to the change log, numbering them (`seq`) in order, each one above every
    /// number any transaction committed before this one. Readers of the log never meet a
    /// number below one they have seen that they did not see.
    async fn append_changes(&mut self, changes: &mut [Change]) -> StoreResult<()>;

    /// Appends audit records, numbering them in order, each above every record stored before.
    async fn append_audit(&mut self, records: &[NewAuditRecord]) -> StoreResult<()>;

    /// Deletes up to `limit` audit records made before `before`, oldest first.
    async fn purge_audit(&mut self, before: UnixMillis, limit: usize) -> StoreResult<usize>;

    /// Deletes up to `limit` change-log entries made before `before`, oldest first.
    async fn purge_changes(&mut self, before: UnixMillis, limit: usize) -> StoreResult<usize>;

    /// The id of the tenant named `name`, created at `at` when it is new.
    async fn tenant_id(&mut self, name: &TenantName, at: UnixMillis) -> StoreResult<TenantId>;

    async fn insert_key(&mut self, tenant: TenantId, key: &NewKey) -> StoreResult<ApiKey>;

    /// Marks a key revoked at `at` (once); `None` when there is no such key.
    async fn revoke_key(&mut self, id: i64, at: UnixMillis) -> StoreResult<Option<ApiKey>>;

    /// Queues a report; returns its queue id.
    async fn enqueue_report(&mut self, report: &QueuedReport) -> StoreResult<i64>;

    /// The oldest queued reports, up to `limit`, that no other open transaction has claimed;
    /// they stay claimed until this transaction ends.
    async fn claim_reports(&mut self, limit: usize) -> StoreResult<Vec<QueuedReport>>;

    async fn delete_reports(&mut self, ids: &[i64]) -> StoreResult<()>;

    /// A tiny write that proves the store accepts writes.
    async fn probe(&mut self, at: UnixMillis) -> StoreResult<()>;

    async fn commit(self: Box<Self>) -> StoreResult<()>;
}

/// What a write transaction produced, for the one who asked.
pub type TxOutput = Box<dyn Any + Send>;

/// The work of one write transaction: reads and writes through it, then answers.
pub type TxWork = Box<
    dyn for<'t> FnOnce(
            &'t mut dyn Transaction,
        ) -> Pin<Box<dyn Future<Output = StoreResult<TxOutput>> + Send + 't>>
        + Send,
>;

/// A storage backend: reads, and write transactions.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Opens a write transaction.
    async fn begin(&self) -> StoreResult<Box<dyn Transaction>>;

    /// Runs `work` in one write transaction, committed when the work succeeds and rolled back
    /// when it fails. A backend may run it wherever its transactions are cheapest (SQLite: on
    /// the thread that owns the connection, in one hop).
    async fn transact(&self, work: TxWork) -> StoreResult<TxOutput> {
        let mut tx = self.begin().await?;
        let output = work(&mut *tx).await?;
        tx.commit().await?;
        Ok(output)
    }

    /// One active rule of the tenant.
    async fn rule(
        &self,
        tenant: TenantId,
        id: RuleId,
        now: UnixMillis,
    ) -> StoreResult<Option<Rule>>;

    async fn rules(&self, tenant: TenantId, query: RuleQuery) -> StoreResult<Page<Rule>>;

    /// The tenant's rules active at `now`, counted by kind and action (one row per pair that
    /// has any).
    async fn rule_counts(&self, tenant: TenantId, now: UnixMillis) -> StoreResult<Vec<RuleCount>>;

    /// Audit entries, newest first; `before` is the cursor.
    async fn audit(
        &self,
        tenant: TenantId,
        before: Option<i64>,
        limit: usize,
    ) -> StoreResult<Page<AuditEntry>> {
        audit::page(self, tenant, before, limit).await
    }

    /// The ids and entry counts of up to `limit` of the tenant's audit records numbered at
    /// most `at_most`, newest first.
    async fn audit_record_sizes(
        &self,
        tenant: TenantId,
        at_most: i64,
        limit: usize,
    ) -> StoreResult<Vec<(i64, usize)>>;

    /// The tenant's audit records numbered `oldest` to `newest`, newest first.
    async fn audit_records(
        &self,
        tenant: TenantId,
        oldest: i64,
        newest: i64,
    ) -> StoreResult<Vec<AuditRecord>>;

    /// The change log after `seq`, oldest first.
    async fn changes_since(&self, seq: u64, limit: usize) -> StoreResult<Vec<Change>>;

    /// All rules active at `now`, and the change they are current up to, read at one instant.
    async fn snapshot(&self, now: UnixMillis) -> StoreResult<Snapshot>;

    async fn keys(&self) -> StoreResult<Vec<ApiKey>>;

    /// Digests and owners of every unrevoked key.
    async fn live_keys(&self) -> StoreResult<Vec<(KeyDigest, Principal)>>;

    /// The owner of one unrevoked key, by digest.
    async fn live_key(&self, digest: KeyDigest) -> StoreResult<Option<Principal>>;

    /// Every bouncer record, by key id.
    async fn bouncers(&self) -> StoreResult<Vec<BouncerRecord>>;

    async fn bouncer(&self, key_id: i64) -> StoreResult<Option<BouncerRecord>>;

    /// Records a pull (creating the record on a key's first). `false`: the cursor was to
    /// advance but was no longer where the pull read it; nothing was written.
    async fn record_pull(&self, pull: Pull, cursor: CursorMove) -> StoreResult<bool>;

    /// The tenant's changes after `since.seq` (at most `limit` of them) and its block rules
    /// that expired in `(since.at, now]`, read at one instant.
    async fn decision_delta(
        &self,
        tenant: TenantId,
        since: StreamCursor,
        now: UnixMillis,
        limit: usize,
    ) -> StoreResult<DecisionDelta>;

    /// The tenant's block rules active at `now`, in id order, in chunks of `chunk`, all read at
    /// one instant, and the change that instant is current up to. The reading stops when the
    /// receiver is dropped.
    async fn active_blocks(
        &self,
        tenant: TenantId,
        now: UnixMillis,
        chunk: usize,
    ) -> StoreResult<(u64, RuleChunks)>;

    /// Depth and oldest entry of the report queue; of one tenant, or of all.
    async fn queue_stats(&self, tenant: Option<TenantId>) -> StoreResult<QueueStats>;

    /// The tenant's oldest `limit` reports waiting for the worker, oldest first.
    async fn waiting_reports(
        &self,
        tenant: TenantId,
        limit: usize,
    ) -> StoreResult<Vec<QueuedReport>>;

    /// Returns once every transaction [`Backend::transact`] committed before the call would
    /// survive a power cut. A backend whose commits are durable when they return (PostgreSQL)
    /// has nothing to wait for; SQLite syncs its log here, so that its one writer need not wait
    /// for the disk in each commit.
    async fn durable(&self) -> StoreResult<()> {
        Ok(())
    }

    /// Whether the backend has room to take writes beyond what a probe's tiny write shows
    /// (SQLite: free space on the data directory's disk).
    async fn capacity(&self) -> StoreResult<()> {
        Ok(())
    }

    /// Readies, in the background, what the first write would otherwise wait for (SQLite: the
    /// map of stored rules' keys). A server calls it at start; a one-off command need not.
    fn prepare_for_writes(&self) {}

    /// Woken when another process or node may have committed changes, so followers need not
    /// wait for their next poll; `None` when the backend cannot tell.
    fn change_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
}

pub type SharedBackend = Arc<dyn Backend>;

/// Rules read in chunks by a task of the backend; an error ends the chunks.
pub type RuleChunks = tokio::sync::mpsc::Receiver<StoreResult<Vec<Rule>>>;

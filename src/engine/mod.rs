//! The engine: the use cases of Palisade above the storage backends. HTTP handlers and the
//! command line only translate to and from these methods; backends only read and write rows.
//!
//! - [`merge`]: what a write does to a rule, once, whatever the backend.
//! - [`ops`]: every write as operations on a backend transaction (rows, audit, change log).
//! - [`writer`]: group commit, and acknowledgement only after the feed has the changes.
//! - [`feed`]: the change feed in commit order, to the index and any other subscriber.
//! - [`use_cases`]: what adapters call: submit signals, submit a report.
//! - [`check`]: the decision for an address, with the rules behind it, from the index.

pub mod check;
pub mod feed;
pub mod merge;
pub mod ops;
pub mod use_cases;
mod writer;

use std::sync::Arc;

use tokio::sync::{Notify, mpsc, oneshot};

use crate::keys::ApiKey;
use crate::reports::{Invalid, ReportPolicy};
use crate::rules::{RuleId, TenantId, UnixMillis};
use crate::signal::{BatchProblem, SignalPolicy};
use crate::store::backend::SharedBackend;
use crate::store::{Actor, Change, NewKey, QueuedReport, StoreError, StoreResult, WriteBatch};
pub use feed::{ChangeSink, Feed};
pub use ops::{AuditDraft, Op, Output, ProcessedReports, WriteOutcome, WritePolicy};
pub use use_cases::{SignalOutcome, off_worker};

/// How the engine checks what it is sent.
#[derive(Clone, Default)]
pub struct Policies {
    pub write: WritePolicy,
    pub signals: SignalPolicy,
    pub reports: ReportPolicy,
}

/// Why a use case failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The body is not a batch of events at all.
    #[error("{0}")]
    NotABatch(BatchProblem),
    /// A report body with these problems.
    #[error("invalid report")]
    InvalidReport(Vec<Invalid>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Writes queued for the writer before requests wait to queue.
const QUEUE: usize = 1024;

pub struct Engine {
    backend: SharedBackend,
    feed: Arc<Feed>,
    jobs: mpsc::Sender<writer::Job>,
    policies: Policies,
    /// Woken when a report is queued, so the worker need not wait for its next poll.
    report_queued: Arc<Notify>,
}

fn unexpected() -> StoreError {
    StoreError::Task("the writer answered with the wrong kind of result".into())
}

impl Engine {
    /// Starts the writer for `backend`; committed changes go to `feed`.
    pub fn start(backend: SharedBackend, feed: Arc<Feed>, policies: Policies) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(writer::run(
            backend.clone(),
            feed.clone(),
            policies.write,
            queue,
        ));
        Self {
            backend,
            feed,
            jobs,
            policies,
            report_queued: Arc::new(Notify::new()),
        }
    }

    /// Notified whenever a report is queued (for the report worker).
    pub fn report_queued(&self) -> &Arc<Notify> {
        &self.report_queued
    }

    /// Reads go straight to the backend.
    pub fn backend(&self) -> &SharedBackend {
        &self.backend
    }

    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// The guard rails every rule written from outside passes.
    pub fn guard(&self) -> &crate::signal::Guard {
        &self.policies.signals.guard
    }

    async fn submit(&self, op: Op) -> StoreResult<Output> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(writer::Job { op, reply })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Commits the valid writes and the audit entries of every item, atomically; the feed
    /// has the changes before this returns.
    pub async fn write(&self, batch: WriteBatch) -> StoreResult<WriteOutcome> {
        let policy = self.policies.write;
        let event_bytes = batch.items.iter().map(|item| item.event.len()).sum();
        let (batch, audit) = use_cases::off_worker(event_bytes, move || {
            let audit = AuditDraft::of(&batch, &policy);
            (batch, audit)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?;
        match self.submit(Op::Write { batch, audit }).await? {
            Output::Written(outcome) => Ok(outcome),
            _ => Err(unexpected()),
        }
    }

    /// Deletes one active rule of the tenant by id (audited). `None`: no such rule.
    pub async fn delete_rule(
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
            Output::Deleted(change) => Ok(change),
            _ => Err(unexpected()),
        }
    }

    /// Purges up to `limit` rules expired at `now`.
    pub async fn purge_expired(&self, now: UnixMillis, limit: usize) -> StoreResult<Vec<Change>> {
        match self.submit(Op::Purge { now, limit }).await? {
            Output::Changes(changes) => Ok(changes),
            _ => Err(unexpected()),
        }
    }

    pub async fn purge_audit(&self, before: UnixMillis, limit: usize) -> StoreResult<usize> {
        match self.submit(Op::PurgeAudit { before, limit }).await? {
            Output::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    pub async fn purge_changes(&self, before: UnixMillis, limit: usize) -> StoreResult<usize> {
        match self.submit(Op::PurgeChanges { before, limit }).await? {
            Output::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    /// Makes a key, audited as `by`'s.
    pub async fn create_key(&self, key: NewKey, by: Actor) -> StoreResult<ApiKey> {
        match self.submit(Op::CreateKey { key, by }).await? {
            Output::Key(key) => Ok(key),
            _ => Err(unexpected()),
        }
    }

    /// `None`: no key with that id.
    /// Revokes a key, audited as `by`'s.
    pub async fn revoke_key(
        &self,
        id: i64,
        at: UnixMillis,
        by: Actor,
    ) -> StoreResult<Option<ApiKey>> {
        match self.submit(Op::RevokeKey { id, at, by }).await? {
            Output::MaybeKey(key) => Ok(key),
            _ => Err(unexpected()),
        }
    }

    /// Commits an accepted report (and its audit entry) to the queue; returns its queue id.
    pub async fn enqueue_report(&self, report: QueuedReport) -> StoreResult<i64> {
        match self.submit(Op::EnqueueReport(report)).await? {
            Output::QueueId(id) => Ok(id),
            _ => Err(unexpected()),
        }
    }

    /// Applies the oldest queued reports and takes them off the queue, in one transaction.
    pub async fn process_reports(
        &self,
        limit: usize,
        max_writes: usize,
        at: UnixMillis,
    ) -> StoreResult<ProcessedReports> {
        let op = Op::ProcessReports {
            limit,
            max_writes,
            at,
        };
        match self.submit(op).await? {
            Output::Reports(processed) => Ok(processed),
            _ => Err(unexpected()),
        }
    }

    /// Whether the store takes writes now: room on its disk, and a tiny write committed.
    pub async fn probe(&self, at: UnixMillis) -> StoreResult<()> {
        self.backend.capacity().await?;
        match self.submit(Op::Probe(at)).await? {
            Output::Done => Ok(()),
            _ => Err(unexpected()),
        }
    }
}

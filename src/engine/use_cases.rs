//! The use cases adapters call: a batch of signals, an abuse report. They validate what a
//! caller sent, commit it through the writer, and say what became of each part, in domain
//! terms; the HTTP API and the console turn that into their own answers.

use axum::body::Bytes;

use super::{Engine, EngineError};
use crate::keys::Principal;
use crate::rules::UnixMillis;
use crate::signal::EntryError;
use crate::store::{QueuedReport, ReportKind, WriteBatch};
use crate::telemetry::names;

/// Bodies from this size up are parsed and validated on the blocking pool, so that one large
/// request never holds an async worker that look-ups are waiting on.
pub const LARGE_INPUT: usize = 64 * 1024;

/// Runs CPU work of a request on the blocking pool when its input is large.
pub async fn off_worker<T: Send + 'static>(
    input_bytes: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EngineError> {
    if input_bytes < LARGE_INPUT {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| EngineError::Internal(format!("request work failed: {e}")))
}

/// What a batch of signals came to: how many events, and which were refused and why (invalid,
/// or over the tenant's rule quota), by position. The others are committed.
#[derive(Debug)]
pub struct SignalOutcome {
    pub total: usize,
    pub refused: Vec<(usize, EntryError)>,
}

impl Engine {
    /// Validates a `POST /v1/signal` body from `caller` and commits its valid events, auditing
    /// every event received. A body that is not a batch at all is refused whole.
    pub async fn submit_signals(
        &self,
        caller: &Principal,
        body: Bytes,
        request_id: String,
        now: UnixMillis,
    ) -> Result<SignalOutcome, EngineError> {
        let policy = self.policies.signals.clone();
        let batch = off_worker(body.len(), move || policy.validate_batch(&body, now))
            .await?
            .map_err(|problem| {
                metrics::counter!(names::SIGNAL_BATCHES_REFUSED, "reason" => problem.code())
                    .increment(1);
                EngineError::NotABatch(problem)
            })?;
        let total = batch.items.len();
        let mut refused = batch.refused;
        // Written even when every event was refused: the audit log records what was received.
        let outcome = self
            .write(WriteBatch {
                tenant: caller.tenant_id,
                key_id: caller.key_id,
                request_id,
                at: now,
                items: batch.items,
            })
            .await
            .inspect_err(|_| {
                metrics::counter!(names::SIGNALS, "result" => "failed", "reason" => "store")
                    .increment(total as u64);
            })?;
        let quota = self.policies.write.rules_per_tenant;
        refused.extend(
            outcome
                .over_quota
                .into_iter()
                .map(|index| (index, EntryError::over_quota(quota))),
        );
        refused.sort_by_key(|(index, _)| *index);
        metrics::counter!(names::SIGNALS, "result" => "applied", "reason" => "")
            .increment((total - refused.len()) as u64);
        for (_, error) in &refused {
            metrics::counter!(names::SIGNALS, "result" => "refused", "reason" => error.problem.code())
                .increment(1);
        }
        Ok(SignalOutcome { total, refused })
    }

    /// Validates a report-endpoint body from `caller` and queues it durably; the report worker
    /// applies it shortly after. Returns its queue id.
    pub async fn submit_report(
        &self,
        caller: &Principal,
        kind: ReportKind,
        body: Bytes,
        now: UnixMillis,
    ) -> Result<i64, EngineError> {
        let policy = self.policies.reports.clone();
        let counted = |result: &'static str, reason: String| {
            metrics::counter!(names::REPORTS, "kind" => kind.as_str(), "result" => result, "reason" => reason)
                .increment(1);
        };
        let payload = off_worker(body.len(), move || {
            policy
                .validate(kind, &body)
                .map(|payload| serde_json::to_string(&payload))
        })
        .await?
        .map_err(|problems| {
            // Field names are the client's: only the known ones become labels.
            let reason = problems
                .first()
                .map(|p| p.field.as_str())
                .filter(|f| ["body", "addresses", "ttl", "type", "tags"].contains(f))
                .unwrap_or("unknown_field");
            counted("refused", reason.to_owned());
            EngineError::InvalidReport(problems)
        })?
        .map_err(|e| EngineError::Internal(format!("encoding a report: {e}")))?;
        let id = self
            .enqueue_report(QueuedReport {
                id: 0,
                tenant: caller.tenant_id,
                key_id: caller.key_id,
                kind,
                payload,
                received_at: now,
            })
            .await
            .inspect_err(|_| counted("failed", "store".into()))?;
        counted("queued", String::new());
        self.report_queued.notify_one();
        Ok(id)
    }
}

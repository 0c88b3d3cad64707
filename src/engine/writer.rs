//! The writer: one task that commits every write of this process, in groups. Whatever has
//! queued up while one group committed goes into the next transaction together (group commit),
//! so small requests share one durable commit. Committed groups go to a second task that hands
//! their changes to the feed, and has the backend make them durable, and only then answers the
//! requests: that work overlaps the next group's commit, and no request is acknowledged before
//! look-ups see its changes or before they would survive a power cut.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::feed::Feed;
use super::ops::{Op, Output, WritePolicy};
use crate::store::backend::{SharedBackend, TxOutput, TxWork};
use crate::store::{Change, StoreError, StoreResult};

/// Upper bound of rows written in one group transaction. Large enough that 1000-event batches
/// from several clients share a commit, small enough that no request waits long behind others.
const MAX_GROUP_ROWS: usize = 8_000;

/// Wait before handing on committed changes again when reading the log for them failed.
const PUBLISH_RETRY: Duration = Duration::from_millis(200);

pub struct Job {
    pub op: Op,
    pub reply: oneshot::Sender<StoreResult<Output>>,
}

type Answer = (oneshot::Sender<StoreResult<Output>>, StoreResult<Output>);

/// A group whose transaction has ended, in commit order.
struct Committed {
    answers: Vec<Answer>,
}

pub async fn run(
    backend: SharedBackend,
    feed: Arc<Feed>,
    policy: WritePolicy,
    mut jobs: mpsc::Receiver<Job>,
) {
    let (committed_tx, committed_rx) = mpsc::channel(16);
    let publisher = tokio::spawn(publish(feed, backend.clone(), committed_rx));
    while let Some(first) = jobs.recv().await {
        let mut rows = first.op.weight();
        let mut group = vec![first];
        while rows < MAX_GROUP_ROWS {
            match jobs.try_recv() {
                Ok(job) => {
                    rows += job.op.weight();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        for committed in commit_group(&backend, &policy, group).await {
            if committed_tx.send(committed).await.is_err() {
                return;
            }
        }
    }
    drop(committed_tx);
    let _ = publisher.await;
}

/// Commits a group in one transaction. Ops only fail on database errors (validation is done
/// before they are queued), so the common path commits everything at once; when an op does
/// fail, the group is rolled back and replayed one op per transaction, so only the failing
/// op is refused.
async fn commit_group(
    backend: &SharedBackend,
    policy: &WritePolicy,
    group: Vec<Job>,
) -> Vec<Committed> {
    let (ops, replies): (Vec<Op>, Vec<_>) = group.into_iter().map(|j| (j.op, j.reply)).unzip();
    let ops = Arc::new(ops);
    match run_together(backend, policy, ops.clone()).await {
        Ok(outputs) => vec![committed(
            replies.into_iter().zip(outputs.into_iter().map(Ok)),
        )],
        Err(e) if ops.len() == 1 => {
            tracing::error!(error = %e, "write failed; nothing was acknowledged");
            vec![committed(
                replies.into_iter().map(|r| (r, Err(e.clone_kind()))),
            )]
        }
        Err(e) => {
            tracing::warn!(error = %e, ops = ops.len(), "group commit failed; retrying its writes one by one");
            let Ok(ops) = Arc::try_unwrap(ops) else {
                // The work was not handed back (the backend's writer is gone): nothing to replay.
                return vec![committed(
                    replies.into_iter().map(|r| (r, Err(e.clone_kind()))),
                )];
            };
            let mut done = Vec::with_capacity(ops.len());
            for (op, reply) in ops.into_iter().zip(replies) {
                let result = run_together(backend, policy, Arc::new(vec![op])).await;
                if let Err(e) = &result {
                    tracing::error!(error = %e, "write failed; nothing was acknowledged");
                }
                let answer = result.map(|mut outputs| outputs.remove(0));
                done.push(committed(std::iter::once((reply, answer))));
            }
            done
        }
    }
}

fn committed(answers: impl IntoIterator<Item = Answer>) -> Committed {
    Committed {
        answers: answers.into_iter().collect(),
    }
}

/// Runs ops in one transaction and commits it.
async fn run_together(
    backend: &SharedBackend,
    policy: &WritePolicy,
    ops: Arc<Vec<Op>>,
) -> StoreResult<Vec<Output>> {
    let policy = *policy;
    let work: TxWork = Box::new(move |tx| {
        Box::pin(async move {
            let mut outputs = Vec::with_capacity(ops.len());
            for op in ops.iter() {
                outputs.push(op.run(tx, &policy).await?);
            }
            Ok(Box::new(outputs) as TxOutput)
        })
    });
    let started = std::time::Instant::now();
    let result = backend.transact(work).await;
    metrics::histogram!(crate::telemetry::names::STORE_COMMIT_DURATION)
        .record(started.elapsed().as_secs_f64());
    if result.is_err() {
        metrics::counter!(crate::telemetry::names::STORE_COMMIT_FAILURES).increment(1);
    }
    result?
        .downcast::<Vec<Output>>()
        .map(|outputs| *outputs)
        .map_err(|_| {
            StoreError::Task("a transaction answered with the wrong kind of result".into())
        })
}

/// Hands committed changes to the feed in commit order and has the backend make the commits
/// durable, both at once, then acknowledges their requests. All groups committed since the last
/// round go to the feed at once: the index copies each part of its tables a write touches once
/// per round, however many groups touched it.
async fn publish(
    feed: Arc<Feed>,
    backend: SharedBackend,
    mut committed: mpsc::Receiver<Committed>,
) {
    let mut round = Vec::new();
    while committed.recv_many(&mut round, 64).await > 0 {
        // The changes are lent by the answers and given back after: the requests' outcomes
        // carry them, and copying them would allocate every rule's texts again.
        let mut lent = Vec::new();
        let mut changes: Vec<Change> = Vec::new();
        for output in outputs(&mut round) {
            let taken = output.take_changes();
            lent.push(taken.len());
            if changes.is_empty() {
                changes = taken;
            } else {
                changes.extend(taken);
            }
        }
        let handed_on = async {
            if !changes.is_empty() {
                let started = std::time::Instant::now();
                // The changes are committed: answering before the feed has them would
                // acknowledge writes that look-ups do not see, so keep trying (only reading
                // the log can fail).
                while let Err(e) = feed.publish(&changes).await {
                    tracing::error!(error = %e, "handing on committed changes failed; retrying");
                    tokio::time::sleep(PUBLISH_RETRY).await;
                }
                metrics::histogram!(crate::telemetry::names::FEED_PUBLISH_DURATION)
                    .record(started.elapsed().as_secs_f64());
            }
        };
        let durable = async {
            let started = std::time::Instant::now();
            let durable = backend.durable().await;
            metrics::histogram!(crate::telemetry::names::STORE_SYNC_DURATION)
                .record(started.elapsed().as_secs_f64());
            durable
        };
        let ((), durable) = tokio::join!(handed_on, durable);
        // From the last output back, so that the first takes the rest without a copy.
        let mut outputs: Vec<&mut Output> = outputs(&mut round).collect();
        for (output, count) in outputs.iter_mut().zip(lent).rev() {
            let own = if count == changes.len() {
                std::mem::take(&mut changes)
            } else {
                changes.split_off(changes.len() - count)
            };
            output.restore_changes(own);
        }
        drop(outputs);
        if let Err(e) = durable {
            // Committed, but not known to survive a power cut: not acknowledged.
            for (_, answer) in round.iter_mut().flat_map(|group| group.answers.iter_mut()) {
                if answer.is_ok() {
                    *answer = Err(e.clone_kind());
                }
            }
        }
        for group in round.drain(..) {
            for (reply, answer) in group.answers {
                // The requester may have gone away (client disconnected); the write stands.
                let _ = reply.send(answer);
            }
        }
    }
}

/// The outputs of a round's successful ops, in commit order.
fn outputs(round: &mut [Committed]) -> impl Iterator<Item = &mut Output> {
    round
        .iter_mut()
        .flat_map(|group| group.answers.iter_mut())
        .filter_map(|(_, answer)| answer.as_mut().ok())
}

impl StoreError {
    /// The same error for another waiter (errors carry no shared state worth keeping).
    pub fn clone_kind(&self) -> StoreError {
        match self {
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            StoreError::DiskFull { free, wanted } => StoreError::DiskFull {
                free: *free,
                wanted: *wanted,
            },
            StoreError::WriterGone => StoreError::WriterGone,
            other => StoreError::Database(other.to_string()),
        }
    }
}

//! The change feed: every committed rule change, in commit order, to everything in this
//! process that follows the rules (the decision index now; metrics and the console later).
//! Bouncer streams read the same log through the backend instead, from a cursor each bouncer
//! keeps in the store, so that any node can answer a bouncer's next pull.
//!
//! The backend's change log is the truth. Changes this process commits are handed on at once;
//! changes other processes or nodes commit are read from the log when the backend signals them
//! or at the next poll. Either way they go out strictly in sequence: a change is never handed
//! on before every change numbered below it, so a gap (another node's commit this process has
//! not read yet) is filled from the log first. A follower so far behind that the log no longer
//! holds what it missed (retention) starts over from a snapshot.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Mutex, broadcast};

use crate::clock::Clock;
use crate::store::backend::SharedBackend;
use crate::store::{Change, Snapshot, StoreResult};

/// Receives the feed: changes in sequence order, and whole snapshots when it must start over.
pub trait ChangeSink: Send + Sync + 'static {
    fn apply(&self, changes: &[Change]);

    /// Replaces everything with the rules of `snapshot` (at start-up, and after falling
    /// further behind than the change log's retention).
    fn reset(&self, snapshot: &Snapshot);
}

/// Changes read from the log at a time.
const PAGE: usize = 10_000;

/// Changes kept for subscribers that read the feed asynchronously; one that falls further
/// behind misses some and must start over.
const BROADCAST_CAPACITY: usize = 1024;

pub struct Feed {
    backend: SharedBackend,
    clock: Arc<dyn Clock>,
    sinks: Vec<Arc<dyn ChangeSink>>,
    /// The last change handed on; held while handing on, so there is one order.
    applied: Mutex<u64>,
    /// The same number, for readers that must not wait.
    applied_now: AtomicU64,
    broadcast: broadcast::Sender<Arc<[Change]>>,
}

impl Feed {
    pub fn new(
        backend: SharedBackend,
        clock: Arc<dyn Clock>,
        sinks: Vec<Arc<dyn ChangeSink>>,
    ) -> Self {
        Self {
            backend,
            clock,
            sinks,
            applied: Mutex::new(0),
            applied_now: AtomicU64::new(0),
            broadcast: broadcast::channel(BROADCAST_CAPACITY).0,
        }
    }

    /// The last change handed on.
    pub fn applied(&self) -> u64 {
        self.applied_now.load(Ordering::Acquire)
    }

    /// Batches handed on that the slowest subscriber has not read yet.
    pub fn subscriber_backlog(&self) -> usize {
        self.broadcast.len()
    }

    /// Every change handed on from now, in batches, in order.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<[Change]>> {
        self.broadcast.subscribe()
    }

    /// Loads the rules as they stand and hands them to every sink: the start.
    pub async fn load(&self) -> StoreResult<()> {
        let mut applied = self.applied.lock().await;
        self.reset(&mut applied).await
    }

    async fn reset(&self, applied: &mut u64) -> StoreResult<()> {
        let snapshot = self.backend.snapshot(self.clock.now()).await?;
        for sink in &self.sinks {
            sink.reset(&snapshot);
        }
        *applied = snapshot.seq;
        self.applied_now.store(snapshot.seq, Ordering::Release);
        Ok(())
    }

    /// Hands on changes this process has just committed (in commit order), after any committed
    /// before them that have not been handed on yet. The common case hands them on as they
    /// are, without a copy; they stay the caller's.
    pub async fn publish(&self, changes: &[Change]) -> StoreResult<()> {
        if self.sinks.is_empty() && self.broadcast.receiver_count() == 0 {
            // Nothing follows this feed (a command-line tool): no need to read the log.
            return Ok(());
        }
        let mut applied = self.applied.lock().await;
        let Some(start) = changes.iter().position(|c| c.seq > *applied) else {
            return Ok(());
        };
        let fresh = &changes[start..];
        let contiguous = fresh[0].seq == *applied + 1
            && fresh.windows(2).all(|pair| pair[1].seq == pair[0].seq + 1);
        if contiguous {
            self.hand_on(&mut applied, Cow::Borrowed(fresh));
            return Ok(());
        }
        let until = fresh.iter().map(|c| c.seq).max().unwrap_or(0);
        while *applied < until {
            if self.read_log(&mut applied).await? == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Reads and hands on whatever the log holds beyond what was handed on; returns how many
    /// changes that was.
    pub async fn catch_up(&self) -> StoreResult<usize> {
        let mut applied = self.applied.lock().await;
        let mut total = 0;
        loop {
            let read = self.read_log(&mut applied).await?;
            total += read;
            if read < PAGE {
                return Ok(total);
            }
        }
    }

    /// One page of the log after `applied`.
    async fn read_log(&self, applied: &mut u64) -> StoreResult<usize> {
        let page = self.backend.changes_since(*applied, PAGE).await?;
        let Some(first) = page.first() else {
            return Ok(0);
        };
        if first.seq != *applied + 1 {
            tracing::warn!(
                handed_on = *applied,
                oldest_in_log = first.seq,
                "the change log no longer holds changes this process missed; reloading all rules"
            );
            self.reset(applied).await?;
            return Ok(page.len());
        }
        let read = page.len();
        self.hand_on(applied, Cow::Owned(page));
        Ok(read)
    }

    fn hand_on(&self, applied: &mut u64, changes: Cow<'_, [Change]>) {
        let Some(last) = changes.last().map(|c| c.seq) else {
            return;
        };
        for sink in &self.sinks {
            sink.apply(&changes);
        }
        *applied = last;
        self.applied_now.store(last, Ordering::Release);
        // A shared slice of the changes is a copy of them all: under ingest a round's are
        // hundreds of kilobytes, on the path of every acknowledgement. Only for a listener.
        if self.broadcast.receiver_count() > 0 {
            // One that went away since is fine.
            let _ = self.broadcast.send(changes.into_owned().into());
        }
    }
}

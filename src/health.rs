//! Readiness: whether this node should get traffic. Liveness (`/healthz`) only says the process
//! answers; `/readyz` also says the decision index is loaded and the store accepts writes, so
//! a load balancer stops sending writes to a node whose disk is full or read-only instead of
//! collecting 503s from it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// What keeps the node from being ready, if anything.
#[derive(Debug)]
pub struct Readiness {
    index_loaded: AtomicBool,
    /// Why the last write probe failed, or that none has run yet; `None` once one succeeds.
    store_problem: Mutex<Option<String>>,
    probed: AtomicBool,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    /// Not ready until the index is loaded and a write probe has succeeded.
    pub fn new() -> Self {
        Self {
            index_loaded: AtomicBool::new(false),
            store_problem: Mutex::new(Some("no write has been tried yet".into())),
            probed: AtomicBool::new(false),
        }
    }

    pub fn index_loaded(&self) {
        self.index_loaded.store(true, Ordering::Release);
    }

    /// Records the outcome of a write probe; logs loudly when the answer changes.
    pub fn store_probed(&self, outcome: Result<(), String>) {
        let mut problem = self.store_problem.lock().unwrap_or_else(|e| e.into_inner());
        let first = !self.probed.swap(true, Ordering::AcqRel);
        match (problem.is_some() && !first, outcome) {
            (_, Ok(())) => {
                if problem.is_some() && !first {
                    tracing::info!("the store accepts writes again: ready");
                }
                *problem = None;
            }
            (false, Err(e)) => {
                tracing::error!(error = %e, "the store does not accept writes: not ready (/readyz answers 503), and writes answer 503 until this is fixed");
                *problem = Some(e);
            }
            (true, Err(e)) => *problem = Some(e),
        }
    }

    /// The reasons the node is not ready; empty when it is.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.index_loaded.load(Ordering::Acquire) {
            problems.push("the decision index is not loaded yet".to_owned());
        }
        if let Some(e) = &*self.store_problem.lock().unwrap_or_else(|e| e.into_inner()) {
            problems.push(format!("the store does not accept writes: {e}"));
        }
        problems
    }
}

//! What several benchmarks build the same way.

use std::sync::Arc;

use palisade::clock::SystemClock;
use palisade::config::Config;
use palisade::engine::{Engine, Feed, Policies};
use palisade::rules::{TenantId, UnixMillis};
use palisade::signal::{SignalPolicy, parse_batch};
use palisade::store::backend::SharedBackend;
use palisade::store::{BatchItem, WriteBatch};

/// A `POST /v1/signal` body parsed and validated at `at` as the handler does, as tenant 1's
/// write batch.
pub fn write_batch(body: &str, policy: &SignalPolicy, at: UnixMillis) -> WriteBatch {
    let items = parse_batch(body.as_bytes())
        .unwrap()
        .into_iter()
        .map(|raw| BatchItem {
            event: raw.get().to_owned(),
            write: policy
                .validate(raw, at)
                .map(|c| c.into_write())
                .map_err(|e| e.field_message()),
        })
        .collect();
    WriteBatch {
        tenant: TenantId(1),
        key_id: 1,
        request_id: "bench".into(),
        at,
        items,
    }
}

/// The engine over `backend` with the default policies; nothing follows its feed.
pub fn engine_over(backend: SharedBackend) -> Engine {
    let feed = Arc::new(Feed::new(
        backend.clone(),
        Arc::new(SystemClock),
        Vec::new(),
    ));
    let policies = Policies {
        write: Config::default().write_policy(),
        ..Policies::default()
    };
    Engine::start(backend, feed, policies)
}

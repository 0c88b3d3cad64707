//! The write path and the rebuild path against a real SQLite file.
//!
//! - `ingest/validate_1000`: parsing and validating a 1000-event batch.
//! - `ingest/commit_1000`: committing one 1000-event batch (new /32 blocks, audit rows, change
//!   log) through the engine's writer to SQLite, on a store that keeps growing.
//! - `rebuild/1m_rules`: reading 1,000,000 rules back from SQLite and building the index.
//!
//! `cargo bench --bench store`

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;

mod support;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palisade::engine::Engine;
use palisade::index::{Index, NoGeo};
use palisade::rules::UnixMillis;
use palisade::signal::SignalPolicy;
use palisade::store::WriteBatch;
use palisade::store::backend::SharedBackend;
use palisade::store::sqlite::{SqliteBackend, SqliteOptions};

const NOW: UnixMillis = UnixMillis(1_800_000_000_000);

fn batch_body(first: u32) -> String {
    let events: Vec<String> = (0..1000u32)
        .map(|i| {
            format!(
                r#"{{"type":"access_rules","action":"block","ip":"{}","expiration":3600,"description":"bench","name":"bench"}}"#,
                Ipv4Addr::from(first + i)
            )
        })
        .collect();
    format!("[{}]", events.join(","))
}

fn batch(body: &str, policy: &SignalPolicy) -> WriteBatch {
    support::write_batch(body, policy, NOW)
}

/// An engine writing to a SQLite file in `dir`; nothing follows its feed.
fn engine(dir: &std::path::Path, options: SqliteOptions) -> (Engine, SharedBackend) {
    let backend: SharedBackend = Arc::new(SqliteBackend::open(dir, options).unwrap());
    (support::engine_over(backend.clone()), backend)
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let policy = SignalPolicy::default();

    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(1000));
    let body = batch_body(u32::from(Ipv4Addr::new(11, 0, 0, 0)));
    group.bench_function("validate_1000", |b| {
        b.iter(|| black_box(batch(&body, &policy)))
    });

    let dir = tempfile::tempdir().unwrap();
    let (store, _) = runtime.block_on(async { engine(dir.path(), SqliteOptions::default()) });
    let mut next = u32::from(Ipv4Addr::new(11, 0, 0, 0));
    group.sample_size(30);
    group.bench_function("commit_1000", |b| {
        b.iter_batched(
            || {
                next += 1000;
                batch(&batch_body(next), &policy)
            },
            |batch| runtime.block_on(store.write(batch)).unwrap(),
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
    drop(store);

    // 1,000,000 rules on disk, then read back and indexed as at start-up.
    let dir = tempfile::tempdir().unwrap();
    let (store, backend) = runtime.block_on(async {
        engine(
            dir.path(),
            SqliteOptions {
                synchronous: palisade::store::sqlite::Synchronous::Normal,
                ..SqliteOptions::default()
            },
        )
    });
    let mut first = u32::from(Ipv4Addr::new(20, 0, 0, 0));
    runtime.block_on(async {
        for _ in 0..1000 {
            store
                .write(batch(&batch_body(first), &policy))
                .await
                .unwrap();
            first += 1000;
        }
    });
    let mut group = c.benchmark_group("rebuild");
    group.sample_size(10);
    group.bench_function("1m_rules", |b| {
        b.iter(|| {
            let snapshot = runtime.block_on(backend.snapshot(NOW)).unwrap();
            assert_eq!(snapshot.rules.len(), 1_000_000);
            let index = Index::new(Arc::new(NoGeo));
            index.rebuild(snapshot).unwrap();
            black_box(index)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

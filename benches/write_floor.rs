//! What SQLite itself costs per ingested event, for the rows Palisade writes and for less,
//! beside the engine's own commit in the same run: the floor any change to the write path
//! is measured against.
//!
//! Every case starts from a fresh file with Palisade's schema holding `PREFILL` rules for
//! scattered /32 addresses (about what ten seconds of the HTTP ingest benchmark leaves), then
//! times transactions of 4,000 more scattered addresses (four clients' 1000-event batches,
//! one group commit), committed with `synchronous = FULL` as the server does:
//!
//! - `floor/rule_rows`: one `rules` row per event (its row, its unique key, its tenant and
//!   expiry indexes) and nothing else.
//! - `floor/rule_change_audit_rows`: what the engine writes per event, as bare statements:
//!   the rule, its change-log row and its audit row.
//! - `floor/append_only`: one change-log row per event and no rule row: the cost of a
//!   log-structured layout that keeps rules by key somewhere else.
//! - `engine/commit_4000`: the engine's writer committing four 1000-event batches sent together (reads of the
//!   stored keys, merge, quota, the three rows per event).
//!
//! `cargo bench --bench write_floor`

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palisade::clock::SystemClock;
use palisade::config::Config;
use palisade::engine::{Engine, Feed, Policies};
use palisade::rules::{TenantId, UnixMillis};
use palisade::signal::{SignalPolicy, parse_batch};
use palisade::store::backend::SharedBackend;
use palisade::store::sqlite::{DB_FILE, SqliteBackend, SqliteOptions};
use palisade::store::{BatchItem, WriteBatch};
use rusqlite::{Connection, params};

const PREFILL: u32 = 500_000;
const GROUP: u32 = 4_000;
const NOW: UnixMillis = UnixMillis(1_800_000_000_000);

/// The load generator's scattered addresses: 11.0.0.0-126.255.255.255, no two alike in
/// practice (a multiply-xorshift bijection, then a modulo).
fn scattered(n: u32) -> Ipv4Addr {
    let x = n.wrapping_mul(0x9E37_79B1);
    Ipv4Addr::from((11u32 << 24) + (x ^ (x >> 15)) % (116u32 << 24))
}

/// A file with Palisade's schema and nothing in it, and a connection set up as the server's
/// writing connection is.
fn fresh_file(dir: &Path) -> Connection {
    drop(SqliteBackend::open(dir, SqliteOptions::default()).unwrap());
    let conn = Connection::open(dir.join(DB_FILE)).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -65536;
         PRAGMA wal_autocheckpoint = 16384;
         INSERT INTO tenants (id, name, created_at) VALUES (1, 'default', 0);",
    )
    .unwrap();
    conn
}

#[derive(Clone, Copy)]
struct Rows {
    rule: bool,
    change: bool,
    audit: bool,
}

/// Writes the rows of events `first..first + count` in one transaction.
fn write_rows(conn: &mut Connection, rows: Rows, first: u32, count: u32) {
    let tx = conn.transaction().unwrap();
    {
        let mut rule = tx
            .prepare_cached(
                "INSERT INTO rules (tenant_id, action, kind, target, expires_at, name,
                                    description, source, dataset, tags, reports, created_at,
                                    updated_at)
                 VALUES (1, 'block', 'ip', ?1, ?2, 'bench', 'bench', 'signal', NULL, '[]', 0,
                         ?3, ?3)",
            )
            .unwrap();
        let mut change = tx
            .prepare_cached(
                "INSERT INTO rule_changes (tenant_id, rule_id, op, action, kind, target,
                                           expires_at, name, at, source, dataset, description)
                 VALUES (1, ?1, 'put', 'block', 'ip', ?2, ?3, 'bench', ?4, 'signal', NULL,
                         'bench')",
            )
            .unwrap();
        let mut audit = tx
            .prepare_cached(
                "INSERT INTO audit (tenant_id, key_id, request_id, at, entry_index, event, error)
                 VALUES (1, 1, 'bench', ?1, ?2, ?3, NULL)",
            )
            .unwrap();
        for n in first..first + count {
            let target = format!("{}/32", scattered(n));
            let expires = NOW.0 + 3_600_000;
            let mut id = i64::from(n);
            if rows.rule {
                rule.execute(params![target, expires, NOW.0]).unwrap();
                id = tx.last_insert_rowid();
            }
            if rows.change {
                change.execute(params![id, target, expires, NOW.0]).unwrap();
            }
            if rows.audit {
                let event = format!(
                    r#"{{"type":"access_rules","action":"block","ip":"{}","expiration":3600,"description":"bench","name":"bench"}}"#,
                    scattered(n)
                );
                audit.execute(params![NOW.0, n % 1000, event]).unwrap();
            }
        }
    }
    tx.commit().unwrap();
}

/// Bytes this process has caused to be written to storage so far (`/proc/self/io`).
fn bytes_written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|line| line.strip_prefix("write_bytes: "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Prints the storage writes per event of what ran since `(bytes, events)` were taken: with
/// scattered keys, each event dirties a page of the key index, so this bounds the rate a disk
/// of known bandwidth can take.
fn report_writes(name: &str, bytes_before: u64, events: u64) {
    let bytes = bytes_written().saturating_sub(bytes_before);
    println!(
        "{name}: {:.1} KiB written to storage per event ({events} events)",
        bytes as f64 / 1024.0 / events.max(1) as f64
    );
}

fn floor_case(c: &mut Criterion, name: &str, rows: Rows) {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = fresh_file(dir.path());
    for first in (0..PREFILL).step_by(100_000) {
        write_rows(&mut conn, rows, first, 100_000);
    }
    let mut next = PREFILL;
    let bytes_before = bytes_written();
    let mut group = c.benchmark_group("floor");
    group.throughput(Throughput::Elements(u64::from(GROUP)));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function(name, |b| {
        b.iter_custom(|iterations| {
            let started = Instant::now();
            for _ in 0..iterations {
                write_rows(&mut conn, rows, next, GROUP);
                next += GROUP;
            }
            started.elapsed()
        })
    });
    group.finish();
    report_writes(
        &format!("floor/{name}"),
        bytes_before,
        u64::from(next - PREFILL),
    );
}

fn batch(first: u32, count: u32, policy: &SignalPolicy) -> WriteBatch {
    let events: Vec<String> = (first..first + count)
        .map(|n| {
            format!(
                r#"{{"type":"access_rules","action":"block","ip":"{}","expiration":3600,"description":"bench","name":"bench"}}"#,
                scattered(n)
            )
        })
        .collect();
    let body = format!("[{}]", events.join(","));
    let items = parse_batch(body.as_bytes())
        .unwrap()
        .into_iter()
        .map(|raw| BatchItem {
            event: raw.get().to_owned(),
            write: policy
                .validate(raw, NOW)
                .map(|c| c.into_write())
                .map_err(|e| e.field_message()),
        })
        .collect();
    WriteBatch {
        tenant: TenantId(1),
        key_id: 1,
        request_id: "bench".into(),
        at: NOW,
        items,
    }
}

fn engine_case(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let policy = SignalPolicy::default();
    let dir = tempfile::tempdir().unwrap();
    let engine = runtime.block_on(async {
        let backend: SharedBackend =
            Arc::new(SqliteBackend::open(dir.path(), SqliteOptions::default()).unwrap());
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
    });
    // Four clients' batches in flight together, as the HTTP benchmark sends them: the writer
    // commits them as one group.
    let commit_group = |batches: Vec<WriteBatch>| {
        runtime.block_on(async {
            for written in
                futures::future::join_all(batches.into_iter().map(|b| engine.write(b))).await
            {
                written.unwrap();
            }
        })
    };
    let batches = |first: u32| -> Vec<WriteBatch> {
        (0..GROUP / 1000)
            .map(|i| batch(first + i * 1000, 1000, &policy))
            .collect()
    };
    for first in (0..PREFILL).step_by(GROUP as usize) {
        commit_group(batches(first));
    }
    let mut next = PREFILL;
    let bytes_before = bytes_written();
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(u64::from(GROUP)));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("commit_4000", |b| {
        b.iter_batched(
            || {
                next += GROUP;
                batches(next - GROUP)
            },
            commit_group,
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
    report_writes(
        "engine/commit_4000",
        bytes_before,
        u64::from(next - PREFILL),
    );
}

fn bench(c: &mut Criterion) {
    let all = Rows {
        rule: true,
        change: true,
        audit: true,
    };
    floor_case(
        c,
        "rule_rows",
        Rows {
            change: false,
            audit: false,
            ..all
        },
    );
    floor_case(c, "rule_change_audit_rows", all);
    floor_case(
        c,
        "append_only",
        Rows {
            rule: false,
            audit: false,
            ..all
        },
    );
    engine_case(c);
}

criterion_group!(benches, bench);
criterion_main!(benches);

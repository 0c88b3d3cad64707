//! What the database itself costs per ingested event, for the rows Palisade writes and for less,
//! beside the engine's own commit in the same run: the floor any change to the write path
//! is measured against.
//!
//! Every case starts from a fresh file with Palisade's schema holding `PREFILL` rules for
//! scattered /32 addresses (about what ten seconds of the HTTP ingest benchmark leaves), then
//! times groups of 4,000 more scattered addresses (four clients' 1000-event batches; the bare
//! statements commit each group in one transaction), with `synchronous = FULL` as the server
//! commits:
//!
//! - `floor/rule_rows`: one `rules` row per event (its row, its unique key, its tenant and
//!   expiry indexes) and nothing else.
//! - `floor/rule_change_audit_rows`: what the engine writes per event, as bare statements:
//!   the rule, its change-log row and, per 1000 events, the request's audit record.
//! - `floor/append_only`: one change-log row per event and no rule row: the cost of a
//!   log-structured layout that keeps rules by key somewhere else.
//! - `engine/commit_4000`: the engine's writer committing four 1000-event batches sent
//!   together (reads of the stored keys, merge, quota, two rows per event and an audit record
//!   per batch).
//!
//! With `PALISADE_TEST_DATABASE_URL` set, the same on PostgreSQL (`floor_pg/*`,
//! `engine/commit_4000_pg`), each in a schema of its own.
//!
//! `cargo bench --bench write_floor`

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palisade::engine::Engine;
use palisade::rules::UnixMillis;
use palisade::signal::SignalPolicy;
use palisade::store::WriteBatch;
use palisade::store::audit::AuditEntries;
use palisade::store::postgres::{PgBackend, PgOptions};
use palisade::store::sqlite::{DB_FILE, SqliteBackend, SqliteOptions};
use rusqlite::{Connection, params};

const PREFILL: u32 = 500_000;
const GROUP: u32 = 4_000;
const NOW: UnixMillis = UnixMillis(1_800_000_000_000);

/// Scattered addresses as the load generator sends them, but never two alike (a repeated key
/// would be an update, or a constraint error in the bare-statement cases): a multiply and
/// an xor-shift, both bijections on 30 bits, over 11.0.0.0-74.255.255.255.
fn scattered(n: u32) -> Ipv4Addr {
    const BITS: u32 = (1 << 30) - 1;
    let x = n.wrapping_mul(0x9E37_79B1) & BITS;
    Ipv4Addr::from((11u32 << 24) + (x ^ (x >> 15)))
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
                "INSERT INTO audit_records (tenant_id, key_id, request_id, at, entry_count,
                                            entries)
                 VALUES (1, 1, 'bench', ?1, 1000, ?2)",
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
            if let Some(entries) = rows.audit.then(|| audit_record(n)).flatten() {
                audit.execute(params![NOW.0, entries]).unwrap();
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

/// Prints the bytes written per event since `before` was read from `written`: with scattered
/// keys each event dirties a page of the key index, so this bounds the rate a disk of known
/// bandwidth can take. `what` says whose writes `written` counts.
fn report_writes(name: &str, what: &str, written: &dyn Fn() -> u64, before: u64, events: u64) {
    let bytes = written().saturating_sub(before);
    println!(
        "{name}: {:.1} KiB {what} per event ({events} events)",
        bytes as f64 / 1024.0 / events.max(1) as f64
    );
}

/// Bytes of WAL the PostgreSQL server has generated so far.
fn pg_wal_bytes(runtime: &tokio::runtime::Runtime, pool: &sqlx::PgPool) -> u64 {
    runtime.block_on(async {
        let bytes: i64 =
            sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
                .fetch_one(pool)
                .await
                .unwrap();
        bytes as u64
    })
}

/// Whether the command line's filters (criterion's positional arguments) select the case
/// `id`: each case fills a store first, which a filtered-out case should not pay for.
fn wanted(id: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    filters.is_empty() || filters.iter().any(|filter| id.contains(filter.as_str()))
}

/// The audit record of the 1000-event request that event `n` ends, as the engine packs it;
/// `None` for the other events.
fn audit_record(n: u32) -> Option<String> {
    if n % 1000 != 999 {
        return None;
    }
    let mut entries = AuditEntries::with_capacity(1000, 1000 * 110);
    for m in n - 999..=n {
        entries.push(Some(m % 1000), &audit_event(m), None);
    }
    Some(entries.into_text())
}

/// Event `n` as a client sends it (and the audit keeps it).
fn audit_event(n: u32) -> String {
    format!(
        r#"{{"type":"access_rules","action":"block","ip":"{}","expiration":3600,"description":"bench","name":"bench"}}"#,
        scattered(n)
    )
}

/// The row layouts measured on each database.
fn layouts() -> [(&'static str, Rows); 3] {
    let all = Rows {
        rule: true,
        change: true,
        audit: true,
    };
    [
        (
            "rule_rows",
            Rows {
                change: false,
                audit: false,
                ..all
            },
        ),
        ("rule_change_audit_rows", all),
        (
            "append_only",
            Rows {
                rule: false,
                audit: false,
                ..all
            },
        ),
    ]
}

fn floor_case(c: &mut Criterion, name: &str, rows: Rows) {
    if !wanted(&format!("floor/{name}")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut conn = fresh_file(dir.path());
    time_layout(
        c,
        ("floor", name),
        ("written to storage", &bytes_written),
        |first, count| write_rows(&mut conn, rows, first, count),
    );
}

/// Fills a store through `write(first, count)` to `PREFILL` rules, then times `GROUP` more at
/// a time and prints the bytes `written` counts per event.
fn time_layout(
    c: &mut Criterion,
    (group_name, name): (&str, &str),
    written: (&str, &dyn Fn() -> u64),
    mut write: impl FnMut(u32, u32),
) {
    const CHUNK: u32 = 50_000;
    for first in (0..PREFILL).step_by(CHUNK as usize) {
        write(first, CHUNK);
    }
    let mut next = PREFILL;
    let bytes_before = written.1();
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Elements(u64::from(GROUP)));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function(name, |b| {
        b.iter_custom(|iterations| {
            let started = Instant::now();
            for _ in 0..iterations {
                write(next, GROUP);
                next += GROUP;
            }
            started.elapsed()
        })
    });
    group.finish();
    report_writes(
        &format!("{group_name}/{name}"),
        written.0,
        written.1,
        bytes_before,
        u64::from(next - PREFILL),
    );
}

fn batch(first: u32, count: u32, policy: &SignalPolicy) -> WriteBatch {
    let events: Vec<String> = (first..first + count).map(audit_event).collect();
    support::write_batch(&format!("[{}]", events.join(",")), policy, NOW)
}

/// `written`: bytes written so far by the database, and what they are.
fn engine_case(
    c: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    engine: Engine,
    written: (&str, &dyn Fn() -> u64),
) {
    if !wanted(&format!("engine/{name}")) {
        return;
    }
    let policy = SignalPolicy::default();
    // Four clients' batches in flight together, as the HTTP benchmark sends them; the writer
    // groups whatever has queued when it starts a commit (merging them into one batch of 4,000
    // measured the same).
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
    let bytes_before = written.1();
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(u64::from(GROUP)));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function(name, |b| {
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
        &format!("engine/{name}"),
        written.0,
        written.1,
        bytes_before,
        u64::from(next - PREFILL),
    );
}

fn bench(c: &mut Criterion) {
    for (name, rows) in layouts() {
        floor_case(c, name, rows);
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = runtime.block_on(async {
        support::engine_over(Arc::new(
            SqliteBackend::open(dir.path(), SqliteOptions::default()).unwrap(),
        ))
    });
    engine_case(
        c,
        &runtime,
        "commit_4000",
        sqlite,
        ("written to storage", &bytes_written),
    );
    if let Ok(url) = std::env::var("PALISADE_TEST_DATABASE_URL") {
        postgres_cases(c, &runtime, &url);
    }
}

/// A schema of its own on the PostgreSQL server at `url`, migrated.
fn pg_schema(runtime: &tokio::runtime::Runtime, url: &str) -> (PgBackend, String) {
    let schema = format!("bench_floor_{}_{}", std::process::id(), rand_suffix());
    let backend = runtime
        .block_on(PgBackend::connect(
            url,
            PgOptions {
                schema: Some(schema.clone()),
                ..PgOptions::default()
            },
        ))
        .unwrap();
    (backend, schema)
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

/// The same cases on PostgreSQL, where each table gets one `INSERT .. SELECT FROM UNNEST`
/// per transaction as the backend writes them: `floor_pg/*` for each layout and
/// `engine/commit_4000_pg`. Storage writes are the server's, not counted here.
fn postgres_cases(c: &mut Criterion, runtime: &tokio::runtime::Runtime, url: &str) {
    for (name, rows) in layouts() {
        if !wanted(&format!("floor_pg/{name}")) {
            continue;
        }
        let (backend, schema) = pg_schema(runtime, url);
        drop(backend);
        let pool = runtime.block_on(async {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .after_connect({
                    let schema = schema.clone();
                    move |conn, _| {
                        let schema = schema.clone();
                        Box::pin(async move {
                            sqlx::Executor::execute(
                                conn,
                                sqlx::AssertSqlSafe(format!("SET search_path = {schema}")),
                            )
                            .await
                            .map(|_| ())
                        })
                    }
                })
                .connect(url)
                .await
                .unwrap();
            sqlx::query(
                "INSERT INTO tenants (id, name, created_at) OVERRIDING SYSTEM VALUE
                 VALUES (1, 'default', 0) ON CONFLICT DO NOTHING",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool
        });
        time_layout(
            c,
            ("floor_pg", name),
            ("of WAL", &|| pg_wal_bytes(runtime, &pool)),
            |first, count| runtime.block_on(pg_rows(&pool, rows, first, count)),
        );
        drop_schema(runtime, &pool, &schema);
    }
    if !wanted("engine/commit_4000_pg") {
        return;
    }
    let (backend, schema) = pg_schema(runtime, url);
    let engine = runtime.block_on(async { support::engine_over(Arc::new(backend)) });
    let pool = runtime.block_on(sqlx::PgPool::connect(url)).unwrap();
    engine_case(
        c,
        runtime,
        "commit_4000_pg",
        engine,
        ("of WAL", &|| pg_wal_bytes(runtime, &pool)),
    );
    drop_schema(runtime, &pool, &schema);
}

/// Leaves the database as it was: each case's 500,000 rules and more would otherwise stay.
fn drop_schema(runtime: &tokio::runtime::Runtime, pool: &sqlx::PgPool, schema: &str) {
    runtime
        .block_on(
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(pool),
        )
        .unwrap();
}

async fn pg_rows(pool: &sqlx::PgPool, rows: Rows, first: u32, count: u32) {
    let targets: Vec<String> = (first..first + count)
        .map(|n| format!("{}/32", scattered(n)))
        .collect();
    // Numbers of its own for the change log (the backend takes them from its feed head).
    let ids: Vec<i64> = (first..first + count).map(i64::from).collect();
    let mut tx = pool.begin().await.unwrap();
    if rows.rule {
        sqlx::query(
            "INSERT INTO rules (tenant_id, action, kind, target, expires_at, name, description,
                                source, dataset, tags, reports, created_at, updated_at)
             SELECT 1, 'block', 'ip', target, $2, 'bench', 'bench', 'signal', NULL, '[]', 0,
                    $3, $3
             FROM UNNEST($1::text[]) AS u(target)",
        )
        .bind(&targets)
        .bind(NOW.0 + 3_600_000)
        .bind(NOW.0)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    if rows.change {
        sqlx::query(
            "INSERT INTO rule_changes (seq, tenant_id, rule_id, op, action, kind, target,
                                       expires_at, name, at, source, dataset, description)
             SELECT rule_id, 1, rule_id, 'put', 'block', 'ip', target, $3, 'bench', $4, 'signal', NULL,
                    'bench'
             FROM UNNEST($1::bigint[], $2::text[]) AS u(rule_id, target)",
        )
        .bind(&ids)
        .bind(&targets)
        .bind(NOW.0 + 3_600_000)
        .bind(NOW.0)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    if rows.audit {
        let records: Vec<String> = (first..first + count).filter_map(audit_record).collect();
        sqlx::query(
            "INSERT INTO audit_records (tenant_id, key_id, request_id, at, entry_count, entries)
             SELECT 1, 1, 'bench', $1, 1000, entries FROM UNNEST($2::text[]) AS u(entries)",
        )
        .bind(NOW.0)
        .bind(&records)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);

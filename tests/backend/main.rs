//! The conformance suite: the engine over each backend, the same cases for both. Every case is
//! run on a SQLite file, and (when asked for, as `bash .ci/run` does) on PostgreSQL. Several
//! engines on one database stand for several nodes.

#[path = "../common/pg.rs"]
mod pg;

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use palisade::clock::SystemClock;
use palisade::engine::{ChangeSink, Engine, Feed, Policies, WritePolicy};
use palisade::keys::{self, Role, TenantName};
use palisade::rules::{Kind, NewRule, Rule, RuleAction, Source, Target, TenantId, UnixMillis};
use palisade::store::audit::MAX_RECORD_ENTRIES;
use palisade::store::backend::SharedBackend;
use palisade::store::postgres::{PgBackend, PgOptions};
use palisade::store::sqlite::SqliteBackend;
use palisade::store::{
    Actor, AuditEntry, BatchItem, Change, ChangeOp, CursorMove, NewKey, Pull, QueuedReport,
    ReportKind, RuleQuery, RuleWrite, Snapshot, StreamCursor, WriteBatch,
};

/// One database, as either backend, that several engines ("nodes") can open.
enum Db {
    Sqlite(tempfile::TempDir),
    Postgres { url: String, schema: String },
}

impl Db {
    async fn sqlite() -> Self {
        Db::Sqlite(tempfile::tempdir().unwrap())
    }

    async fn postgres() -> Self {
        Db::Postgres {
            url: pg::url(),
            schema: pg::fresh_schema().await,
        }
    }

    async fn backend(&self) -> SharedBackend {
        match self {
            Db::Sqlite(dir) => {
                Arc::new(SqliteBackend::open(dir.path(), Default::default()).unwrap())
            }
            Db::Postgres { url, schema } => Arc::new(
                PgBackend::connect(
                    url,
                    PgOptions {
                        schema: Some(schema.clone()),
                        pool_size: 4,
                        ..PgOptions::default()
                    },
                )
                .await
                .unwrap(),
            ),
        }
    }

    /// A node: an engine and a feed that records what it is handed.
    async fn node(&self, policies: Policies) -> Node {
        let backend = self.backend().await;
        let seen = Arc::new(Recorder::default());
        let feed = Arc::new(Feed::new(
            backend.clone(),
            Arc::new(SystemClock),
            vec![seen.clone() as Arc<dyn ChangeSink>],
        ));
        feed.load().await.unwrap();
        let engine = Engine::start(backend.clone(), feed.clone(), policies);
        Node {
            engine,
            backend,
            feed,
            seen,
        }
    }
}

struct Node {
    engine: Engine,
    backend: SharedBackend,
    feed: Arc<Feed>,
    seen: Arc<Recorder>,
}

/// A feed subscriber that keeps every change it was handed, and checks their order.
#[derive(Default)]
struct Recorder {
    changes: Mutex<Vec<Change>>,
    resets: Mutex<Vec<u64>>,
}

impl ChangeSink for Recorder {
    fn apply(&self, changes: &[Change]) {
        let mut seen = self.changes.lock().unwrap();
        for change in changes {
            if let Some(last) = seen.last() {
                assert_eq!(
                    change.seq,
                    last.seq + 1,
                    "handed on out of order or with a gap"
                );
            }
            seen.push(change.clone());
        }
    }

    fn reset(&self, snapshot: &Snapshot) {
        self.resets.lock().unwrap().push(snapshot.seq);
        self.changes.lock().unwrap().clear();
    }
}

const T0: UnixMillis = UnixMillis(1_900_000_000_000);

fn ip(text: &str) -> Target {
    Target::parse_any(text).unwrap()
}

fn put(target: &str, expires_at: Option<i64>, name: Option<&str>) -> RuleWrite {
    RuleWrite::Put {
        action: RuleAction::Block,
        target: ip(target),
        expires_at: expires_at.map(UnixMillis),
        name: name.map(Into::into),
        description: None,
        source: Source::Signal,
        dataset: None,
    }
}

fn remove(target: &str) -> RuleWrite {
    RuleWrite::Remove {
        action: RuleAction::Block,
        target: ip(target),
    }
}

fn batch(tenant: TenantId, at: UnixMillis, writes: Vec<RuleWrite>) -> WriteBatch {
    WriteBatch {
        tenant,
        key_id: 1,
        request_id: "conformance".into(),
        at,
        items: writes
            .into_iter()
            .map(|write| BatchItem {
                event: "{}".into(),
                write: Ok(write),
            })
            .collect(),
    }
}

async fn tenant(node: &Node, name: &str) -> TenantId {
    let (_, digest) = keys::generate();
    node.engine
        .create_key(
            NewKey {
                name: "conformance".into(),
                role: Role::Writer,
                tenant: TenantName::parse(name).unwrap(),
                digest,
                at: T0,
            },
            Actor::command_line(),
        )
        .await
        .unwrap()
        .tenant_id
}

/// What each change did, and to which target.
fn ops_and_targets(changes: &[Change]) -> Vec<(ChangeOp, String)> {
    changes
        .iter()
        .map(|c| (c.op, c.target.to_string()))
        .collect()
}

async fn rules(node: &Node, tenant: TenantId, now: UnixMillis) -> Vec<Rule> {
    let query = RuleQuery {
        limit: 1000,
        now,
        ..RuleQuery::default()
    };
    node.backend.rules(tenant, query).await.unwrap().items
}

fn policies() -> Policies {
    Policies::default()
}

macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::Db::sqlite().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                #[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
                async fn $case() {
                    super::$case(super::Db::postgres().await).await
                }
            )*
        }
    };
}

on_every_backend!(
    writes_merge_into_rules,
    an_expired_rule_starts_a_new_life_and_is_purged_once,
    reports_merge_and_are_applied_exactly_once,
    the_feed_follows_every_node_in_commit_order,
    writes_committed_together_each_get_their_own_changes,
    concurrent_writes_to_one_target_end_in_one_rule,
    keys_are_made_found_and_revoked,
    quotas_hold_across_batches_and_nodes,
    retention_deletes_history_not_rules,
    retention_takes_the_oldest_entries_and_stops_at_a_newer_one,
    rules_are_counted_by_kind_and_action,
    bouncer_cursors_move_only_from_where_they_were_read,
    decision_deltas_and_active_blocks_read_one_instant,
    new_rules_are_stored_only_where_their_key_is_free,
    a_rule_created_in_a_batch_is_refreshed_or_removed_by_later_writes_of_it,
    a_large_batch_is_logged_and_audited_row_for_row,
    audit_pages_run_across_records_without_gaps_or_repeats,
    a_node_finds_the_rules_other_nodes_wrote_and_forgets_what_was_rolled_back,
);

async fn writes_merge_into_rules(db: Db) {
    let node = db.node(policies()).await;
    let t = tenant(&node, "merge").await;
    let outcome = node
        .engine
        .write(batch(
            t,
            T0,
            vec![
                put("192.0.2.1", Some(T0.0 + 60_000), Some("first")),
                put("192.0.2.2", None, None),
                // The same target twice in one batch: the second merges into the first.
                put("192.0.2.1", None, None),
                remove("192.0.2.9"),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(
        ops_and_targets(&outcome.changes),
        [
            (ChangeOp::Put, "192.0.2.1/32".into()),
            (ChangeOp::Put, "192.0.2.2/32".into()),
            (ChangeOp::Put, "192.0.2.1/32".into()),
        ]
    );
    let stored = rules(&node, t, T0).await;
    assert_eq!(stored.len(), 2);
    let first = stored.iter().find(|r| r.target == ip("192.0.2.1")).unwrap();
    assert_eq!(first.expires_at, None, "the later write's expiry");
    assert_eq!(
        first.name.as_deref(),
        Some("first"),
        "a name is kept when not given"
    );
    // Remove, then block again in one batch: a new rule, under a new id.
    let old_id = first.id;
    node.engine
        .write(batch(
            t,
            T0,
            vec![remove("192.0.2.1"), put("192.0.2.1", None, Some("again"))],
        ))
        .await
        .unwrap();
    let again = rules(&node, t, T0).await;
    let renewed = again.iter().find(|r| r.target == ip("192.0.2.1")).unwrap();
    assert_ne!(renewed.id, old_id);
    assert_eq!(renewed.name.as_deref(), Some("again"));
}

async fn an_expired_rule_starts_a_new_life_and_is_purged_once(db: Db) {
    let node = db.node(policies()).await;
    let t = tenant(&node, "expiry").await;
    node.engine
        .write(batch(
            t,
            T0,
            vec![put("198.51.100.7", Some(T0.0 + 1_000), Some("x"))],
        ))
        .await
        .unwrap();
    let later = UnixMillis(T0.0 + 1_000);
    assert!(
        rules(&node, t, later).await.is_empty(),
        "expired at its instant"
    );
    let snapshot = node.backend.snapshot(later).await.unwrap();
    assert!(snapshot.rules.is_empty());
    // Blocked again before the purge: nothing of the old life is kept, the id is.
    let id = rules(&node, t, T0).await[0].id;
    node.engine
        .write(batch(
            t,
            later,
            vec![put("198.51.100.7", Some(later.0 + 5_000), None)],
        ))
        .await
        .unwrap();
    let reborn = &rules(&node, t, later).await[0];
    assert_eq!(
        (reborn.id, reborn.name.clone(), reborn.created_at),
        (id, None, later)
    );
    let purged = node
        .engine
        .purge_expired(UnixMillis(later.0 + 5_000), 100)
        .await
        .unwrap();
    assert_eq!(purged.len(), 1);
    assert_eq!(purged[0].op, ChangeOp::Expire);
    assert!(
        node.engine
            .purge_expired(UnixMillis(later.0 + 5_000), 100)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn reports_merge_and_are_applied_exactly_once(db: Db) {
    let nodes = [
        db.node(policies()).await,
        db.node(policies()).await,
        db.node(policies()).await,
    ];
    let t = tenant(&nodes[0], "reports").await;
    for i in 0..150 {
        nodes[i % 3]
            .engine
            .enqueue_report(QueuedReport {
                id: 0,
                tenant: t,
                key_id: 1,
                kind: ReportKind::Report,
                payload: format!(
                    r#"{{"addresses":["203.0.113.{}","203.0.113.200"],"ttl":3600,"dataset":"ABUSE","tags":["t{}"]}}"#,
                    i % 100,
                    i % 3
                ),
                received_at: T0,
            })
            .await
            .unwrap();
    }
    // What waits is listed oldest first, per tenant.
    let other = tenant(&nodes[0], "other").await;
    let waiting = nodes[1].backend.waiting_reports(t, 5).await.unwrap();
    assert_eq!(waiting.len(), 5);
    assert!(waiting.windows(2).all(|w| w[0].id < w[1].id));
    assert!(
        waiting[0].payload.contains("203.0.113.0\""),
        "{}",
        waiting[0].payload
    );
    assert!(
        nodes[1]
            .backend
            .waiting_reports(other, 5)
            .await
            .unwrap()
            .is_empty()
    );
    // Every node works the queue at once, a few reports at a time.
    let workers = nodes.iter().map(|node| async move {
        let mut applied = 0;
        loop {
            let done = node.engine.process_reports(7, 10_000, T0).await.unwrap();
            if done.reports == 0 {
                return applied;
            }
            applied += done.reports;
        }
    });
    let applied: usize = futures::future::join_all(workers).await.into_iter().sum();
    assert_eq!(applied, 150);
    let stats = nodes[0].backend.queue_stats(None).await.unwrap();
    assert_eq!(stats.depth, 0);
    let stored = rules(&nodes[0], t, T0).await;
    let shared = stored
        .iter()
        .find(|r| r.target == ip("203.0.113.200"))
        .unwrap();
    assert_eq!(shared.reports, 150, "every report counted once");
    assert_eq!(shared.tags, ["t0", "t1", "t2"]);
    assert_eq!(stored.len(), 101);
}

async fn the_feed_follows_every_node_in_commit_order(db: Db) {
    let nodes = [
        db.node(policies()).await,
        db.node(policies()).await,
        db.node(policies()).await,
    ];
    let t = tenant(&nodes[0], "feed").await;
    // A subscriber of the first node's feed, beside its sinks.
    let mut subscribed = nodes[0].feed.subscribe();
    let already = nodes[0].feed.applied();
    // Three nodes write at once; each acknowledges only what its own feed has.
    let writers = nodes.iter().enumerate().map(|(n, node)| async move {
        let mut acknowledged = Vec::new();
        for round in 0..20 {
            let writes = (0..25)
                .map(|i| put(&format!("10.{n}.{round}.{i}"), None, None))
                .collect();
            let outcome = node.engine.write(batch(t, T0, writes)).await.unwrap();
            let applied = node.feed.applied();
            for change in &outcome.changes {
                assert!(change.seq <= applied, "acknowledged before the feed had it");
            }
            acknowledged.extend(outcome.changes);
        }
        acknowledged
    });
    let acknowledged: Vec<Change> = futures::future::join_all(writers)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(acknowledged.len(), 3 * 20 * 25);
    // Numbers: unique and without gaps across the nodes.
    let seqs: BTreeSet<u64> = acknowledged.iter().map(|c| c.seq).collect();
    assert_eq!(seqs.len(), acknowledged.len());
    assert_eq!(
        seqs.last().unwrap() - seqs.first().unwrap() + 1,
        seqs.len() as u64
    );
    // Every node's feed ends with every change, in order (the recorder checks the order).
    for node in &nodes {
        node.feed.catch_up().await.unwrap();
        let seen: HashSet<u64> = node
            .seen
            .changes
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.seq)
            .collect();
        assert!(seqs.iter().all(|seq| seen.contains(seq)));
    }
    // The subscriber got what the first node handed on after it subscribed, in order.
    let mut heard = Vec::new();
    while let Ok(changes) = subscribed.try_recv() {
        heard.extend(changes.iter().map(|c| c.seq));
    }
    let handed_on: Vec<u64> = (already + 1..=nodes[0].feed.applied()).collect();
    assert_eq!(heard, handed_on);
    // A node that starts now reads them all from a snapshot.
    let late = db.node(policies()).await;
    assert_eq!(late.feed.applied(), *seqs.last().unwrap());
    let snapshot = late.backend.snapshot(T0).await.unwrap();
    assert_eq!(snapshot.rules.len(), 3 * 20 * 25);
}

async fn writes_committed_together_each_get_their_own_changes(db: Db) {
    let node = db.node(policies()).await;
    let t = tenant(&node, "together").await;
    // Requests that arrive while a group commits share the next group, and groups committed
    // while a round is handed on share that round: each answer must still hold its own changes.
    for round in 0..20 {
        let writers = (1..=8).map(|w| {
            let targets: Vec<String> = (0..w).map(|i| format!("10.{round}.{w}.{i}")).collect();
            let writes = targets.iter().map(|ip| put(ip, None, None)).collect();
            let engine = &node.engine;
            async move { (targets, engine.write(batch(t, T0, writes)).await.unwrap()) }
        });
        for (targets, outcome) in futures::future::join_all(writers).await {
            let changed: Vec<String> = outcome
                .changes
                .iter()
                .map(|c| c.target.to_string().trim_end_matches("/32").to_owned())
                .collect();
            assert_eq!(changed, targets);
        }
    }
}

async fn concurrent_writes_to_one_target_end_in_one_rule(db: Db) {
    let nodes = [db.node(policies()).await, db.node(policies()).await];
    let t = tenant(&nodes[0], "race").await;
    let writers = nodes.iter().enumerate().map(|(n, node)| async move {
        for round in 0..30 {
            let expiry = T0.0 + 1_000_000 + (round * 2 + n as i64);
            node.engine
                .write(batch(t, T0, vec![put("192.0.2.77", Some(expiry), None)]))
                .await
                .unwrap();
        }
    });
    futures::future::join_all(writers).await;
    let stored = rules(&nodes[0], t, T0).await;
    assert_eq!(stored.len(), 1, "one rule per target, whoever wrote last");
    // The rule is the one the last change says it is.
    let log = nodes[0].backend.changes_since(0, 100_000).await.unwrap();
    let last = log
        .iter()
        .rev()
        .find(|c| c.target == ip("192.0.2.77"))
        .unwrap();
    assert_eq!(last.expires_at, stored[0].expires_at);
    assert_eq!(last.rule_id, stored[0].id);
}

async fn keys_are_made_found_and_revoked(db: Db) {
    let node = db.node(policies()).await;
    let (_, digest) = keys::generate();
    let key = node
        .engine
        .create_key(
            NewKey {
                name: "ids".into(),
                role: Role::Reader,
                tenant: TenantName::parse("acme").unwrap(),
                digest,
                at: T0,
            },
            Actor {
                key_id: 7,
                request_id: "req-revoke".into(),
            },
        )
        .await
        .unwrap();
    let other = db.node(policies()).await;
    let found = other.backend.live_key(digest).await.unwrap().unwrap();
    assert_eq!((found.key_id, found.role), (key.id, Role::Reader));
    assert_eq!(found.tenant.as_str(), "acme");
    assert!(
        other
            .backend
            .live_keys()
            .await
            .unwrap()
            .iter()
            .any(|(d, _)| *d == digest)
    );
    let by = Actor {
        key_id: 7,
        request_id: "req-revoke".into(),
    };
    let revoked = other
        .engine
        .revoke_key(key.id, T0, by.clone())
        .await
        .unwrap()
        .unwrap();
    assert!(revoked.revoked_at.is_some());
    // Both are audited in the key's tenant, as the key that asked.
    let audit = other.backend.audit(key.tenant_id, None, 10).await.unwrap();
    let ops: Vec<(&str, i64, &str)> = audit
        .items
        .iter()
        .map(|e| (e.event.as_str(), e.key_id, e.request_id.as_str()))
        .collect();
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert!(ops.iter().all(|(_, k, r)| *k == 7 && *r == "req-revoke"));
    assert!(ops[0].0.contains(r#""op":"revoke_key""#), "{ops:?}");
    assert!(ops[1].0.contains(r#""op":"create_key""#) && ops[1].0.contains(r#""name":"ids""#));
    assert!(node.backend.live_key(digest).await.unwrap().is_none());
    assert!(
        other
            .engine
            .revoke_key(999_999, T0, by)
            .await
            .unwrap()
            .is_none()
    );
}

async fn quotas_hold_across_batches_and_nodes(db: Db) {
    let quota = Policies {
        write: WritePolicy {
            rules_per_tenant: 5,
            ..WritePolicy::default()
        },
        ..Policies::default()
    };
    let a = db.node(quota.clone()).await;
    let b = db.node(quota).await;
    let t = tenant(&a, "quota").await;
    let first = a
        .engine
        .write(batch(
            t,
            T0,
            (1..=3)
                .map(|i| put(&format!("192.0.2.{i}"), None, None))
                .collect(),
        ))
        .await
        .unwrap();
    assert!(first.over_quota.is_empty());
    let second = b
        .engine
        .write(batch(
            t,
            T0,
            (4..=7)
                .map(|i| put(&format!("192.0.2.{i}"), None, None))
                .collect(),
        ))
        .await
        .unwrap();
    assert_eq!(second.over_quota, [2, 3]);
    // Purged rules make room again.
    a.engine
        .write(batch(t, T0, vec![remove("192.0.2.1")]))
        .await
        .unwrap();
    let third = b
        .engine
        .write(batch(t, T0, vec![put("192.0.2.8", None, None)]))
        .await
        .unwrap();
    assert!(third.over_quota.is_empty());
    assert_eq!(rules(&a, t, T0).await.len(), 5);
}

async fn retention_deletes_history_not_rules(db: Db) {
    let node = db.node(policies()).await;
    // A node that will have seen none of the changes below.
    let behind = db.node(policies()).await;
    let t = tenant(&node, "retention").await;
    node.engine
        .write(batch(t, T0, vec![put("192.0.2.1", None, None)]))
        .await
        .unwrap();
    let later = UnixMillis(T0.0 + 10 * 86_400_000);
    node.engine
        .write(batch(t, later, vec![put("192.0.2.2", None, None)]))
        .await
        .unwrap();
    let cutoff = UnixMillis(later.0 - 1);
    // The first write's entry and the audited making of the tenant's key, both before it.
    assert_eq!(node.engine.purge_audit(cutoff, 100).await.unwrap(), 2);
    assert_eq!(node.engine.purge_changes(cutoff, 100).await.unwrap(), 1);
    assert_eq!(rules(&node, t, later).await.len(), 2);
    let log = node.backend.changes_since(0, 100).await.unwrap();
    assert_eq!(log.len(), 1);
    // The node that saw nothing finds the log no longer holds what it missed, and starts
    // over from a snapshot.
    behind.feed.catch_up().await.unwrap();
    assert_eq!(behind.seen.resets.lock().unwrap().len(), 2);
    assert_eq!(behind.feed.applied(), log[0].seq);
}

/// Entries are purged in the order they were made, up to the first one made at or after the
/// cutoff: an entry made under a clock that stepped back waits for the newer ones before it.
async fn retention_takes_the_oldest_entries_and_stops_at_a_newer_one(db: Db) {
    let node = db.node(policies()).await;
    let t = tenant(&node, "retention-order").await;
    let later = UnixMillis(T0.0 + 10 * 86_400_000);
    let old = vec![
        put("192.0.2.1", None, None),
        put("192.0.2.2", None, None),
        put("192.0.2.3", None, None),
    ];
    for (at, writes) in [
        (T0, old),
        (later, vec![put("192.0.2.4", None, None)]),
        (T0, vec![put("192.0.2.5", None, None)]),
    ] {
        node.engine.write(batch(t, at, writes)).await.unwrap();
    }
    let cutoff = UnixMillis(later.0 - 1);
    assert_eq!(node.engine.purge_changes(cutoff, 2).await.unwrap(), 2);
    assert_eq!(node.engine.purge_changes(cutoff, 100).await.unwrap(), 1);
    assert_eq!(node.engine.purge_changes(cutoff, 100).await.unwrap(), 0);
    let targets: Vec<String> = node
        .backend
        .changes_since(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|c| c.target.text())
        .collect();
    assert_eq!(targets, ["192.0.2.4/32", "192.0.2.5/32"]);
    // The key's making, then the first batch (one record for its three events); the batch
    // made at T0 after the later one waits for it.
    assert_eq!(node.engine.purge_audit(cutoff, 1).await.unwrap(), 1);
    assert_eq!(node.engine.purge_audit(cutoff, 100).await.unwrap(), 1);
    assert_eq!(node.engine.purge_audit(cutoff, 100).await.unwrap(), 0);
    let left: Vec<UnixMillis> = node
        .backend
        .audit(t, None, 10)
        .await
        .unwrap()
        .items
        .iter()
        .map(|e| e.at)
        .collect();
    assert_eq!(left, [T0, later]);
}

async fn rules_are_counted_by_kind_and_action(db: Db) {
    let node = db.node(policies()).await;
    let t = tenant(&node, "counts").await;
    let other = tenant(&node, "counts-other").await;
    let allow = RuleWrite::Put {
        action: RuleAction::Allow,
        target: ip("2001:db8::1"),
        expires_at: None,
        name: None,
        description: None,
        source: Source::Signal,
        dataset: None,
    };
    let writes = vec![
        put("192.0.2.1", None, None),
        put("192.0.2.0/24", None, None),
        put("2001:db8::/32", None, None),
        put("AS64500", None, None),
        put("FR", None, None),
        put("198.51.100.1", Some(T0.0 + 1000), None),
        allow,
    ];
    node.engine.write(batch(t, T0, writes)).await.unwrap();
    node.engine
        .write(batch(other, T0, vec![put("192.0.2.1", None, None)]))
        .await
        .unwrap();
    let count = |counts: &[palisade::store::RuleCount], kind, range, action| {
        counts
            .iter()
            .find(|c| c.kind == kind && c.range == range && c.action == action)
            .map_or(0, |c| c.count)
    };
    let counts = node.backend.rule_counts(t, T0).await.unwrap();
    assert_eq!(count(&counts, Kind::Ip, false, RuleAction::Block), 2);
    assert_eq!(count(&counts, Kind::Ip, true, RuleAction::Block), 2);
    assert_eq!(count(&counts, Kind::Ip, false, RuleAction::Allow), 1);
    assert_eq!(count(&counts, Kind::Asn, false, RuleAction::Block), 1);
    assert_eq!(count(&counts, Kind::Country, false, RuleAction::Block), 1);
    // An expired rule no longer counts, purged or not.
    let later = node
        .backend
        .rule_counts(t, UnixMillis(T0.0 + 1000))
        .await
        .unwrap();
    assert_eq!(count(&later, Kind::Ip, false, RuleAction::Block), 1);
    let theirs = node.backend.rule_counts(other, T0).await.unwrap();
    assert_eq!(theirs.iter().map(|c| c.count).sum::<u64>(), 1);
}

async fn bouncer_cursors_move_only_from_where_they_were_read(db: Db) {
    let node = db.node(policies()).await;
    let other = db.node(policies()).await;
    let t = tenant(&node, "bouncers").await;
    let pull = |at: i64, agent: &str| Pull {
        key_id: 7,
        tenant: t,
        at: UnixMillis(at),
        user_agent: Some(agent.into()),
        address: Some("192.0.2.1".into()),
        version: None,
    };
    let cursor = |seq: u64, at: i64| StreamCursor {
        seq,
        at: UnixMillis(at),
    };
    assert_eq!(node.backend.bouncer(7).await.unwrap(), None);
    assert!(
        node.backend
            .record_pull(pull(1, "a"), CursorMove::Keep)
            .await
            .unwrap()
    );
    let first = node.backend.bouncer(7).await.unwrap().unwrap();
    assert_eq!((first.last_pull, first.cursor), (UnixMillis(1), None));
    let start = CursorMove::Set(cursor(5, 2));
    assert!(node.backend.record_pull(pull(2, "a"), start).await.unwrap());
    // Two nodes race to advance the same cursor: one wins, the other writes nothing.
    let (a, b) = (
        CursorMove::Advance {
            from: Some(cursor(5, 2)),
            to: cursor(9, 3),
        },
        CursorMove::Advance {
            from: Some(cursor(5, 2)),
            to: cursor(8, 4),
        },
    );
    assert!(node.backend.record_pull(pull(3, "a"), a).await.unwrap());
    assert!(!other.backend.record_pull(pull(4, "b"), b).await.unwrap());
    let record = other.backend.bouncer(7).await.unwrap().unwrap();
    assert_eq!(record.cursor, Some(cursor(9, 3)));
    assert_eq!(
        (record.last_pull, record.user_agent.as_deref()),
        (UnixMillis(3), Some("a"))
    );
    // A look-up records the pull and leaves the cursor.
    assert!(
        other
            .backend
            .record_pull(pull(5, "b"), CursorMove::Keep)
            .await
            .unwrap()
    );
    let record = node.backend.bouncer(7).await.unwrap().unwrap();
    assert_eq!(
        (record.last_pull, record.cursor),
        (UnixMillis(5), Some(cursor(9, 3)))
    );
    assert_eq!(node.backend.bouncers().await.unwrap(), vec![record]);
}

async fn decision_deltas_and_active_blocks_read_one_instant(db: Db) {
    let node = db.node(policies()).await;
    let t = tenant(&node, "deltas").await;
    let other = tenant(&node, "elsewhere").await;
    let soon = T0.0 + 1000;
    node.engine
        .write(batch(
            t,
            T0,
            vec![
                put("192.0.2.1", None, Some("one")),
                put("192.0.2.2", Some(soon), None),
            ],
        ))
        .await
        .unwrap();
    node.engine
        .write(batch(other, T0, vec![put("198.51.100.1", None, None)]))
        .await
        .unwrap();
    let (head, mut chunks) = node.backend.active_blocks(t, T0, 1).await.unwrap();
    let mut active = Vec::new();
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk.unwrap();
        assert_eq!(chunk.len(), 1, "chunks of the size asked for");
        active.extend(chunk.into_iter().map(|r| r.target.to_string()));
    }
    assert_eq!(active, ["192.0.2.1/32", "192.0.2.2/32"]);
    assert_eq!(
        head,
        node.backend
            .changes_since(0, 100)
            .await
            .unwrap()
            .last()
            .unwrap()
            .seq
    );

    node.engine
        .write(batch(
            t,
            T0,
            vec![remove("192.0.2.1"), put("192.0.2.3", None, None)],
        ))
        .await
        .unwrap();
    let since = StreamCursor { seq: head, at: T0 };
    let later = UnixMillis(soon + 1);
    let delta = node
        .backend
        .decision_delta(t, since, later, 100)
        .await
        .unwrap();
    let changed: Vec<(ChangeOp, String)> = delta
        .changes
        .iter()
        .map(|c| (c.op, c.target.to_string()))
        .collect();
    assert_eq!(
        changed,
        [
            (ChangeOp::Delete, "192.0.2.1/32".into()),
            (ChangeOp::Put, "192.0.2.3/32".into())
        ]
    );
    assert_eq!(delta.changes[0].name.as_deref(), Some("one"));
    assert_eq!(delta.changes[1].source, Source::Signal);
    let expired: Vec<String> = delta.expired.iter().map(|r| r.target.to_string()).collect();
    assert_eq!(expired, ["192.0.2.2/32"]);
    assert_eq!(delta.head, delta.changes[1].seq);
    assert!(delta.oldest.is_some_and(|oldest| oldest <= head));
    // Cut short: the head is the last change read.
    let short = node
        .backend
        .decision_delta(t, since, later, 1)
        .await
        .unwrap();
    assert_eq!((short.changes.len(), short.head), (1, delta.changes[0].seq));
}

async fn new_rules_are_stored_only_where_their_key_is_free(db: Db) {
    let node = db.node(policies()).await;
    let t = tenant(&node, "absent").await;
    node.engine
        .write(batch(
            t,
            T0,
            vec![
                put("192.0.2.1", None, Some("kept")),
                put("192.0.2.2", Some(T0.0 + 1_000), Some("expired")),
            ],
        ))
        .await
        .unwrap();
    let before = rules(&node, t, T0).await;
    let later = UnixMillis(T0.0 + 5_000);
    let new = |target: &str| NewRule {
        name: Some("new".into()),
        ..new_block(t, target, later)
    };
    let mut tx = node.backend.begin().await.unwrap();
    let ids = tx
        .insert_absent_rules(&[
            new("192.0.2.3"),
            new("192.0.2.1"),
            new("192.0.2.2"),
            new("192.0.2.4"),
        ])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let [Some(third), None, None, Some(fourth)] = ids[..] else {
        panic!("free keys stored, taken keys (live or expired) left alone: {ids:?}");
    };
    assert!(fourth > third, "ids grow in input order");
    assert!(third > before.iter().map(|r| r.id).max().unwrap());
    let mut after = node.backend.snapshot(T0).await.unwrap().rules;
    after.sort_by_key(|r| r.id);
    let names: Vec<(String, Option<String>)> = after
        .iter()
        .map(|r| (r.target.to_string(), r.name.clone()))
        .collect();
    assert_eq!(
        names,
        [
            ("192.0.2.1/32".to_string(), Some("kept".to_string())),
            ("192.0.2.2/32".into(), Some("expired".into())),
            ("192.0.2.3/32".into(), Some("new".into())),
            ("192.0.2.4/32".into(), Some("new".into())),
        ]
    );
    assert_eq!(
        after[0],
        before.iter().find(|r| r.id == after[0].id).unwrap().clone()
    );
}

async fn a_rule_created_in_a_batch_is_refreshed_or_removed_by_later_writes_of_it(db: Db) {
    let node = db.node(policies()).await;
    let t = tenant(&node, "same-batch").await;
    let outcome = node
        .engine
        .write(batch(
            t,
            T0,
            vec![
                put("192.0.2.1", None, Some("gone")),
                put("192.0.2.2", Some(T0.0 + 60_000), Some("kept")),
                remove("192.0.2.1"),
                put("192.0.2.2", None, None),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(
        ops_and_targets(&outcome.changes),
        [
            (ChangeOp::Put, "192.0.2.1/32".into()),
            (ChangeOp::Put, "192.0.2.2/32".into()),
            (ChangeOp::Delete, "192.0.2.1/32".into()),
            (ChangeOp::Put, "192.0.2.2/32".into()),
        ]
    );
    assert_eq!(outcome.created, 2);
    assert_eq!(outcome.changes[0].rule_id, outcome.changes[2].rule_id);
    let stored = rules(&node, t, T0).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (
            stored[0].target,
            stored[0].expires_at,
            stored[0].name.as_deref()
        ),
        (ip("192.0.2.2"), None, Some("kept"))
    );
    assert_eq!(stored[0].id, outcome.changes[1].rule_id);
    let mut tx = node.backend.begin().await.unwrap();
    assert_eq!(
        tx.rule_count(t).await.unwrap(),
        1,
        "the quota counts what is stored"
    );
}

/// A batch larger than the rows one statement appends: every change is stored under the number
/// its acknowledgement gave it, and every event is audited once, in order, with its outcome.
/// Rows are written in statements of several rows that keep their parameters from one run to
/// the next, so the names and expiries vary here in patterns that neither repeat row after row
/// nor every 64 rows: a value left over from an earlier row would show.
async fn a_large_batch_is_logged_and_audited_row_for_row(db: Db) {
    let node = db.node(policies()).await;
    let t = tenant(&node, "large").await;
    let head = node.feed.applied();
    let target = |i: u32| format!("10.9.{}.{}", i / 100, i % 100);
    let name = |i: u32| (!i.is_multiple_of(5)).then(|| format!("name {}", i % 3));
    let expiry = |i: u32| {
        i.is_multiple_of(2)
            .then_some(T0.0 + 60_000 * i64::from(1 + i % 9))
    };
    let items = (0..150)
        .map(|i| BatchItem {
            event: format!("event {i}"),
            write: if i % 7 == 3 {
                Err(format!("refused {i}"))
            } else {
                Ok(put(&target(i), expiry(i), name(i).as_deref()))
            },
        })
        .collect();
    let large = WriteBatch {
        items,
        request_id: "large".into(),
        ..batch(t, T0, Vec::new())
    };
    let outcome = node.engine.write(large).await.unwrap();
    let logged = node.backend.changes_since(head, 1000).await.unwrap();
    type Logged = (u64, String, Option<String>, Option<i64>);
    let numbered = |changes: &[Change]| -> Vec<Logged> {
        changes
            .iter()
            .map(|c| {
                let expiry = c.expires_at.map(|t| t.0);
                (c.seq, c.target.to_string(), c.name.clone(), expiry)
            })
            .collect()
    };
    assert_eq!(numbered(&outcome.changes), numbered(&logged));
    // Numbered one after the other, in the batch's order.
    let expected: Vec<Logged> = (0..150)
        .filter(|i| i % 7 != 3)
        .zip(head + 1..)
        .map(|(i, seq)| (seq, format!("{}/32", target(i)), name(i), expiry(i)))
        .collect();
    assert_eq!(numbered(&logged), expected);
    let stored_rules = rules(&node, t, T0).await;
    // Each change names the rule stored for its target: new rules are stored many to a
    // statement, and their ids are worked out from the last one.
    let ids: std::collections::HashMap<i64, String> = stored_rules
        .iter()
        .map(|r| (r.id, r.target.to_string()))
        .collect();
    for change in &logged {
        assert_eq!(ids.get(&change.rule_id), Some(&change.target.to_string()));
    }
    let mut stored: Vec<(String, Option<String>, Option<i64>)> = stored_rules
        .into_iter()
        .map(|r| (r.target.to_string(), r.name, r.expires_at.map(|t| t.0)))
        .collect();
    stored.sort();
    let mut expected: Vec<(String, Option<String>, Option<i64>)> = (0..150)
        .filter(|i| i % 7 != 3)
        .map(|i| (format!("{}/32", target(i)), name(i), expiry(i)))
        .collect();
    expected.sort();
    assert_eq!(stored, expected);
    let mut audited = node.backend.audit(t, None, 1000).await.unwrap().items;
    audited.retain(|e| e.request_id == "large");
    audited.reverse();
    let audited: Vec<(Option<u32>, String, Option<String>)> = audited
        .into_iter()
        .map(|e| (e.index, e.event, e.error))
        .collect();
    let expected: Vec<(Option<u32>, String, Option<String>)> = (0..150)
        .map(|i| {
            let error = (i % 7 == 3).then(|| format!("refused {i}"));
            (Some(i), format!("event {i}"), error)
        })
        .collect();
    assert_eq!(audited, expected);
}

/// A request's events are stored as one audit record (several for a batch larger than a
/// record holds), and read back one entry per event: pages of any size, ending anywhere in a
/// record, give every entry once, newest first.
async fn audit_pages_run_across_records_without_gaps_or_repeats(db: Db) {
    let node = db.node(policies()).await;
    let t = tenant(&node, "audit-pages").await;
    let sizes = [3, 1, MAX_RECORD_ENTRIES + 5, 2];
    for (n, size) in sizes.into_iter().enumerate() {
        let items = (0..size)
            .map(|i| BatchItem {
                event: format!(r#"{{"n":{n},"i":{i}}}"#),
                write: Ok(put(&format!("10.{n}.{}.{}", i / 256, i % 256), None, None)),
            })
            .collect();
        let request = WriteBatch {
            items,
            request_id: format!("request-{n}"),
            ..batch(t, UnixMillis(T0.0 + n as i64), Vec::new())
        };
        node.engine.write(request).await.unwrap();
    }
    let all = node.backend.audit(t, None, 5000).await.unwrap();
    assert_eq!(all.next_cursor, None);
    assert!(all.items.windows(2).all(|w| w[0].id > w[1].id));
    let ours: Vec<(String, Option<u32>, String)> = all
        .items
        .iter()
        .filter(|e| e.request_id.starts_with("request-"))
        .map(|e| (e.request_id.clone(), e.index, e.event.clone()))
        .collect();
    let expected: Vec<(String, Option<u32>, String)> = sizes
        .into_iter()
        .enumerate()
        .flat_map(|(n, size)| {
            (0..size).map(move |i| {
                let event = format!(r#"{{"n":{n},"i":{i}}}"#);
                (format!("request-{n}"), Some(i as u32), event)
            })
        })
        .rev()
        .collect();
    assert_eq!(ours, expected);
    for limit in [
        1,
        2,
        3,
        4,
        7,
        MAX_RECORD_ENTRIES,
        MAX_RECORD_ENTRIES + 1,
        4000,
    ] {
        let (mut paged, mut before) = (Vec::new(), None);
        loop {
            let page = node.backend.audit(t, before, limit).await.unwrap();
            assert!(page.items.len() <= limit);
            paged.extend(page.items);
            match page.next_cursor {
                Some(cursor) => before = Some(cursor),
                None => break,
            }
        }
        // Compared by ids first, so that a failure shows where rather than every entry.
        let ids = |entries: &[AuditEntry]| entries.iter().map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(ids(&paged), ids(&all.items), "pages of {limit}");
        assert_eq!(paged, all.items, "pages of {limit}");
    }
}

/// Writes find the rule of their key whichever node (or process) stored, changed or deleted
/// it, also when retention purged the log of those changes before this node wrote again; a
/// rule stored in a transaction that was rolled back does not take its key.
async fn a_node_finds_the_rules_other_nodes_wrote_and_forgets_what_was_rolled_back(db: Db) {
    let a = db.node(policies()).await;
    let b = db.node(policies()).await;
    let t = tenant(&a, "keys").await;
    // Both nodes have written (and so know the keys stored so far) before the other writes.
    write_at(&a, t, T0, vec![put("192.0.2.1", None, None)]).await;
    write_at(&b, t, T0, vec![put("192.0.2.2", None, None)]).await;
    write_at(
        &a,
        t,
        T0,
        vec![remove("192.0.2.2"), put("192.0.2.3", None, None)],
    )
    .await;
    // Listed by target on b before b writes again: what a committed, not what b last saw.
    assert_eq!(rules_of(&b, t, "192.0.2.3", None).await.len(), 1);
    assert!(rules_of(&b, t, "192.0.2.2", None).await.is_empty());
    let merged = write_at(&b, t, T0, vec![put("192.0.2.3", None, Some("named on b"))]).await;
    assert_eq!(merged.created, 0, "b merged into a's rule");
    let again = write_at(&b, t, T0, vec![put("192.0.2.2", None, None)]).await;
    assert_eq!(again.created, 1, "a deleted b's rule");
    for node in [&a, &b] {
        let found = rules_of(node, t, "192.0.2.3", None).await;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name.as_deref(), Some("named on b"));
        assert!(
            rules_of(node, t, "192.0.2.3", Some(RuleAction::Allow))
                .await
                .is_empty()
        );
        assert!(rules_of(node, t, "192.0.2.9", None).await.is_empty());
    }

    // A writes, and the log of it is purged before b writes again.
    let later = UnixMillis(T0.0 + 86_400_000);
    write_at(&a, t, later, vec![put("192.0.2.4", None, None)]).await;
    let purged = a
        .engine
        .purge_changes(UnixMillis(later.0 + 1), 1000)
        .await
        .unwrap();
    assert!(purged >= 5, "{purged}");
    let merged = write_at(
        &b,
        t,
        later,
        vec![put("192.0.2.4", None, Some("named on b"))],
    )
    .await;
    assert_eq!(merged.created, 0, "b read the keys again");

    // A rule stored in a transaction rolled back leaves its key free.
    let new = new_block(t, "192.0.2.5", later);
    let kept = rules_of(&b, t, "192.0.2.1", None).await[0].id;
    let mut tx = b.backend.begin().await.unwrap();
    assert!(
        tx.insert_absent_rules(std::slice::from_ref(&new))
            .await
            .unwrap()[0]
            .is_some()
    );
    tx.delete_rules(&[(t, kept)]).await.unwrap();
    // Listings read what is committed while a write transaction is open.
    assert!(rules_of(&b, t, "192.0.2.5", None).await.is_empty());
    assert_eq!(rules_of(&b, t, "192.0.2.1", None).await[0].id, kept);
    drop(tx);
    let created = write_at(&b, t, later, vec![put("192.0.2.5", None, None)]).await;
    assert_eq!(created.created, 1);
    let mut tx = b.backend.begin().await.unwrap();
    assert_eq!(tx.insert_absent_rules(&[new]).await.unwrap(), [None]);
    drop(tx);

    let mut stored: Vec<String> = rules(&a, t, later)
        .await
        .iter()
        .map(|r| r.target.to_string())
        .collect();
    stored.sort();
    assert_eq!(
        stored,
        [
            "192.0.2.1/32",
            "192.0.2.2/32",
            "192.0.2.3/32",
            "192.0.2.4/32",
            "192.0.2.5/32"
        ]
    );
}

/// A permanent block of `target` from a signal, as a write would store it at `at`.
fn new_block(t: TenantId, target: &str, at: UnixMillis) -> NewRule {
    NewRule {
        tenant: t,
        action: RuleAction::Block,
        target: ip(target),
        expires_at: None,
        name: None,
        description: None,
        source: Source::Signal,
        dataset: None,
        tags: Vec::new(),
        reports: 0,
        created_at: at,
        updated_at: at,
    }
}

async fn write_at(
    node: &Node,
    t: TenantId,
    at: UnixMillis,
    writes: Vec<RuleWrite>,
) -> palisade::engine::WriteOutcome {
    node.engine.write(batch(t, at, writes)).await.unwrap()
}

/// The tenant's rules listed by target (and action, when given).
async fn rules_of(node: &Node, t: TenantId, target: &str, action: Option<RuleAction>) -> Vec<Rule> {
    let query = RuleQuery {
        target: Some(ip(target)),
        action,
        limit: 10,
        now: T0,
        ..RuleQuery::default()
    };
    node.backend.rules(t, query).await.unwrap().items
}

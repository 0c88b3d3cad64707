//! Against a real server: each test works in a schema of its own (dropped at its end), so tests
//! run in parallel on one database without seeing each other.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};

use super::{Announcer, PgBackend, PgOptions, migrator};
use crate::keys::{Role, TenantName};
use crate::rules::{NewRule, Rule, RuleAction, Source, Target, TenantId, UnixMillis};
use crate::store::audit::{
    AuditEntries, NewAuditRecord, OLDER_ENTRIES, assert_older_entries_read_back,
};
use crate::store::backend::Backend;
use crate::store::{
    Change, ChangeOp, NewKey, QueueStats, QueuedReport, ReportKind, RuleQuery, StoreError,
};

#[path = "../../../tests/common/pg.rs"]
mod pg;

/// A fresh schema name (not created: [`PgBackend::connect`] creates it).
struct TestSchema {
    url: String,
    name: String,
}

impl TestSchema {
    async fn new() -> Self {
        TestSchema {
            url: pg::url(),
            name: pg::fresh_schema().await,
        }
    }

    fn options(&self) -> PgOptions {
        PgOptions {
            schema: Some(self.name.clone()),
            pool_size: 4,
            ..PgOptions::default()
        }
    }

    async fn backend(&self) -> PgBackend {
        PgBackend::connect(&self.url, self.options())
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.url))
    }

    async fn admin(&self) -> PgConnection {
        PgConnection::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.url))
    }

    /// A connection to the schema, migrated only up to `version` (a store made by an older
    /// release).
    async fn at_version(&self, version: i64) -> PgConnection {
        let connect = sqlx::postgres::PgConnectOptions::from_str(&self.url)
            .unwrap()
            .options([("search_path", self.name.as_str())]);
        let mut conn = PgConnection::connect_with(&connect).await.unwrap();
        migrator(Some(&self.name))
            .run_to(version, &mut conn)
            .await
            .unwrap();
        conn
    }

    async fn drop(self) {
        let mut admin = self.admin().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.name
        )))
        .execute(&mut admin)
        .await
        .unwrap();
        admin.close().await.ok();
    }
}

const T0: i64 = 1_700_000_000_000;

fn target(text: &str) -> Target {
    Target::parse_any(text).unwrap()
}

fn tenant_name(name: &str) -> TenantName {
    TenantName::parse(name).unwrap()
}

fn new_rule(tenant: TenantId, text: &str) -> NewRule {
    NewRule::block(tenant, target(text), UnixMillis(T0))
}

fn change(tenant: TenantId, rule_id: i64, text: &str, at: i64) -> Change {
    Change {
        seq: 0,
        tenant,
        rule_id,
        op: ChangeOp::Put,
        action: RuleAction::Block,
        target: target(text),
        expires_at: Some(UnixMillis(at + 60_000)),
        name: Some(format!("rule {rule_id}")),
        at: UnixMillis(at),
        source: Source::Signal,
        dataset: None,
        description: None,
    }
}

/// An applied request's entry, as made at `T0` by key 1.
fn audit_entry(tenant: TenantId, request_id: &str) -> NewAuditRecord {
    NewAuditRecord::single(tenant, 1, request_id.into(), UnixMillis(T0), "{}", None)
}

async fn make_tenant(backend: &PgBackend, name: &str) -> TenantId {
    let mut tx = backend.begin().await.unwrap();
    let id = tx
        .tenant_id(&tenant_name(name), UnixMillis(T0))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    id
}

fn query(limit: usize) -> RuleQuery {
    RuleQuery {
        limit,
        now: UnixMillis(T0),
        ..RuleQuery::default()
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn rules_round_trip() {
    let schema = TestSchema::new().await;
    let backend = schema.backend().await;
    let mut tx = backend.begin().await.unwrap();
    let acme = tx
        .tenant_id(&tenant_name("acme"), UnixMillis(T0))
        .await
        .unwrap();
    assert_eq!(
        tx.tenant_id(&tenant_name("acme"), UnixMillis(T0 + 1))
            .await
            .unwrap(),
        acme
    );
    let other = tx
        .tenant_id(&tenant_name("other"), UnixMillis(T0))
        .await
        .unwrap();
    assert_ne!(acme, other);

    let mut ip = new_rule(acme, "192.0.2.0/24");
    ip.expires_at = Some(UnixMillis(T0 + 60_000));
    ip.name = Some("scanner".into());
    ip.description = Some("seen on \"port\" 22 'twice' \\ é".into());
    ip.source = Source::Report;
    ip.dataset = Some("ABUSE".into());
    ip.tags = vec!["ssh".into(), "brute-force".into()];
    ip.reports = 4_000_000_000;
    let asn = new_rule(acme, "AS64500");
    let mut country = new_rule(acme, "FR");
    country.action = RuleAction::Allow;
    country.expires_at = Some(UnixMillis(T0 - 1));
    let v6 = new_rule(other, "2001:db8::/32");
    let inputs = vec![ip.clone(), asn.clone(), country.clone(), v6.clone()];
    let ids = tx.insert_rules(&inputs).await.unwrap();
    assert_eq!(ids.len(), 4);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids {ids:?}");
    for (input, id) in inputs.iter().zip(&ids) {
        let stored = tx.rule_by_id(input.tenant, *id).await.unwrap();
        assert_eq!(stored, Some(input.clone().with_id(*id)));
    }
    assert_eq!(tx.rule_by_id(other, ids[0]).await.unwrap(), None);

    let mut found = tx
        .rules_by_key(
            acme,
            &[
                (RuleAction::Block, ip.target),
                (RuleAction::Allow, ip.target),
                (RuleAction::Block, asn.target),
                (RuleAction::Allow, country.target),
                (RuleAction::Block, v6.target),
                (RuleAction::Block, asn.target),
            ],
        )
        .await
        .unwrap();
    found.sort_by_key(|r| r.id);
    assert_eq!(
        found,
        vec![
            ip.clone().with_id(ids[0]),
            asn.clone().with_id(ids[1]),
            country.clone().with_id(ids[2]),
        ]
    );
    assert!(tx.rules_by_key(acme, &[]).await.unwrap().is_empty());

    let mut changed = ip.clone().with_id(ids[0]);
    changed.expires_at = None;
    changed.name = None;
    changed.description = Some("merged".into());
    changed.dataset = Some("TOR".into());
    changed.tags = vec!["tor".into()];
    changed.reports = 5;
    changed.updated_at = UnixMillis(T0 + 5);
    tx.update_rules(std::slice::from_ref(&changed))
        .await
        .unwrap();
    assert_eq!(
        tx.rule_by_id(acme, ids[0]).await.unwrap(),
        Some(changed.clone())
    );

    assert_eq!(
        tx.expired_rules(UnixMillis(T0), 10).await.unwrap(),
        vec![country.clone().with_id(ids[2])]
    );
    assert!(
        tx.expired_rules(UnixMillis(T0), 0)
            .await
            .unwrap()
            .is_empty()
    );

    // A rule is found by its tenant and id: another tenant's id deletes nothing.
    tx.delete_rules(&[(acme, ids[1]), (other, ids[3]), (other, ids[0])])
        .await
        .unwrap();
    assert_eq!(tx.rule_by_id(acme, ids[1]).await.unwrap(), None);
    assert_eq!(tx.rule_by_id(other, ids[3]).await.unwrap(), None);
    assert_eq!(
        tx.rule_by_id(acme, ids[0]).await.unwrap(),
        Some(changed.clone())
    );

    assert_eq!(tx.rule_count(acme).await.unwrap(), 0);
    tx.add_rule_count(acme, 3).await.unwrap();
    tx.add_rule_count(acme, -1).await.unwrap();
    assert_eq!(tx.rule_count(acme).await.unwrap(), 2);
    assert_eq!(tx.rule_count(other).await.unwrap(), 0);
    assert_eq!(tx.rule_count(TenantId(999_999)).await.unwrap(), 0);
    tx.commit().await.unwrap();

    let now = UnixMillis(T0);
    assert_eq!(
        backend.rule(acme, ids[0], now).await.unwrap(),
        Some(changed)
    );
    // Expired, though not purged yet.
    assert_eq!(backend.rule(acme, ids[2], now).await.unwrap(), None);
    assert_eq!(backend.rule(other, ids[0], now).await.unwrap(), None);

    // The newest rule deleted, its id is still not given again.
    let mut tx = backend.begin().await.unwrap();
    tx.delete_rules(&[(acme, ids[2])]).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = backend.begin().await.unwrap();
    let again = tx.insert_rules(&[country.clone()]).await.unwrap();
    assert!(again[0] > ids[3], "{again:?} after {ids:?}");
    tx.commit().await.unwrap();

    backend.close().await;
    schema.drop().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn rules_are_listed_with_filters_and_pages() {
    let schema = TestSchema::new().await;
    let backend = schema.backend().await;
    let acme = make_tenant(&backend, "acme").await;
    let other = make_tenant(&backend, "other").await;

    let mut rules = Vec::new();
    for (i, text) in [
        "192.0.2.1/32",
        "192.0.2.0/24",
        "AS64500",
        "DE",
        "2001:db8::/48",
    ]
    .iter()
    .enumerate()
    {
        let mut rule = new_rule(acme, text);
        rule.name = Some(if i % 2 == 0 { "even" } else { "odd" }.into());
        rules.push(rule);
    }
    rules[1].action = RuleAction::Allow;
    rules[2].source = Source::Report;
    rules[2].dataset = Some("TOR".into());
    rules[2].tags = vec!["tor".into(), "exit".into()];
    rules[3].tags = vec!["exit-node".into()];
    let mut expired = new_rule(acme, "198.51.100.0/24");
    expired.expires_at = Some(UnixMillis(T0));
    rules.push(expired);
    let mut later = new_rule(acme, "203.0.113.0/24");
    later.expires_at = Some(UnixMillis(T0 + 1));
    rules.push(later);
    rules.push(new_rule(other, "192.0.2.1/32"));
    let mut tx = backend.begin().await.unwrap();
    let ids = tx.insert_rules(&rules).await.unwrap();
    tx.commit().await.unwrap();
    let stored: Vec<Rule> = rules
        .iter()
        .cloned()
        .zip(&ids)
        .map(|(r, id)| r.with_id(*id))
        .collect();

    let list = |q: RuleQuery| {
        let backend = &backend;
        async move {
            let page = backend.rules(acme, q).await.unwrap();
            (
                page.items.iter().map(|r| r.id).collect::<Vec<_>>(),
                page.next_cursor,
            )
        }
    };
    // Active at `now` only (expiry at exactly now is expired), in id order, this tenant only.
    let all = backend.rules(acme, query(100)).await.unwrap();
    assert_eq!(
        all.items,
        [0, 1, 2, 3, 4, 6].map(|i| stored[i].clone()).to_vec()
    );
    assert_eq!(all.next_cursor, None);

    let page = list(query(2)).await;
    assert_eq!(page, (vec![ids[0], ids[1]], Some(ids[1])));
    let page = list(RuleQuery {
        after: page.1,
        ..query(2)
    })
    .await;
    assert_eq!(page, (vec![ids[2], ids[3]], Some(ids[3])));
    let page = list(RuleQuery {
        after: page.1,
        ..query(2)
    })
    .await;
    assert_eq!(page, (vec![ids[4], ids[6]], None));

    let cases = [
        (
            RuleQuery {
                kind: Some(crate::rules::Kind::Ip),
                ..query(100)
            },
            vec![ids[0], ids[1], ids[4], ids[6]],
        ),
        (
            RuleQuery {
                target: Some(target("192.0.2.0/24")),
                ..query(100)
            },
            vec![ids[1]],
        ),
        (
            RuleQuery {
                name: Some("odd".into()),
                ..query(100)
            },
            vec![ids[1], ids[3]],
        ),
        (
            RuleQuery {
                action: Some(RuleAction::Allow),
                ..query(100)
            },
            vec![ids[1]],
        ),
        (
            RuleQuery {
                source: Some(Source::Report),
                ..query(100)
            },
            vec![ids[2]],
        ),
        (
            RuleQuery {
                dataset: Some("TOR".into()),
                ..query(100)
            },
            vec![ids[2]],
        ),
        (
            RuleQuery {
                tag: Some("exit".into()),
                ..query(100)
            },
            vec![ids[2]],
        ),
        (
            RuleQuery {
                tag: Some("exit-node".into()),
                name: Some("odd".into()),
                ..query(100)
            },
            vec![ids[3]],
        ),
        (
            RuleQuery {
                tag: Some("ex".into()),
                ..query(100)
            },
            vec![],
        ),
        (
            RuleQuery {
                now: UnixMillis(T0 - 1),
                ..query(100)
            },
            vec![ids[0], ids[1], ids[2], ids[3], ids[4], ids[5], ids[6]],
        ),
    ];
    for (q, want) in cases {
        assert_eq!(list(q.clone()).await.0, want, "{q:?}");
    }

    // A row that does not read back as a rule is reported as such.
    let mut admin = schema.admin().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE \"{}\".rules SET target = 'not-a-target' WHERE id = $1",
        schema.name
    )))
    .bind(ids[0])
    .execute(&mut admin)
    .await
    .unwrap();
    admin.close().await.ok();
    match backend.rule(acme, ids[0], UnixMillis(T0)).await {
        Err(StoreError::Corrupt(message)) => assert!(message.contains("not-a-target")),
        other => panic!("{other:?}"),
    }

    backend.close().await;
    schema.drop().await;
}

/// An append that PostgreSQL refuses fails the write, commits nothing (not even the audit
/// entries written before it), and leaves the store fit for the next transaction.
#[tokio::test]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn a_refused_append_commits_nothing() {
    let schema = TestSchema::new().await;
    let backend = schema.backend().await;
    let acme = make_tenant(&backend, "acme").await;
    // A change numbered as the next write's second change would be, made behind the lock's
    // back: that write's append runs into it.
    let mut admin = schema.admin().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{}\".rule_changes (seq, tenant_id, rule_id, op, action, kind, target, at,
                                          source)
         VALUES (2, $1, 1, 'put', 'block', 'ip', '192.0.2.1/32', 0, 'signal')",
        schema.name
    )))
    .bind(acme.0)
    .execute(&mut admin)
    .await
    .unwrap();
    admin.close().await.ok();
    let mut tx = backend.begin().await.unwrap();
    tx.append_audit(&[audit_entry(acme, "refused")])
        .await
        .unwrap();
    let mut changes = vec![
        change(acme, 1, "192.0.2.1/32", T0),
        change(acme, 2, "192.0.2.2/32", T0),
    ];
    assert!(tx.append_changes(&mut changes).await.is_err());
    drop(tx);
    // Nothing of it stayed, and the next write goes through.
    assert!(
        backend
            .audit(acme, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let mut tx = backend.begin().await.unwrap();
    let mut next = vec![change(acme, 3, "192.0.2.3/32", T0)];
    tx.append_changes(&mut next).await.unwrap();
    assert_eq!(next[0].seq, 1);
    tx.commit().await.unwrap();
    let seqs: Vec<u64> = backend
        .changes_since(0, 10)
        .await
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(seqs, [1, 2]);

    backend.close().await;
    schema.drop().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn changes_and_audit_round_trip() {
    let schema = TestSchema::new().await;
    let backend = schema.backend().await;
    let acme = make_tenant(&backend, "acme").await;
    let other = make_tenant(&backend, "other").await;

    let mut tx = backend.begin().await.unwrap();
    tx.append_changes(&mut []).await.unwrap();
    let mut first = vec![
        change(acme, 7, "192.0.2.0/24", T0),
        Change {
            op: ChangeOp::Delete,
            action: RuleAction::Allow,
            expires_at: None,
            name: None,
            ..change(acme, 3, "AS64500", T0 + 1)
        },
        Change {
            op: ChangeOp::Expire,
            ..change(other, 5, "FR", T0 + 2)
        },
    ];
    tx.append_changes(&mut first).await.unwrap();
    assert_eq!(first.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2, 3]);
    // Control characters, backslashes, quotes and text beyond ASCII arrive as written.
    let awkward = "tab\tnewline\nreturn\r backslash\\ \\N quote\" é 🛡";
    let mut second = vec![
        Change {
            name: Some(awkward.into()),
            description: Some(awkward.into()),
            dataset: Some("\\N".into()),
            ..change(acme, 8, "2001:db8::/32", T0 + 3)
        },
        change(acme, 9, "198.51.100.7/32", T0 + 4),
    ];
    tx.append_changes(&mut second).await.unwrap();
    assert_eq!(second.iter().map(|c| c.seq).collect::<Vec<_>>(), [4, 5]);
    tx.commit().await.unwrap();

    let all: Vec<Change> = first.iter().chain(&second).cloned().collect();
    assert_eq!(backend.changes_since(0, 100).await.unwrap(), all);
    assert_eq!(backend.changes_since(3, 1).await.unwrap(), all[3..4]);
    assert!(backend.changes_since(5, 100).await.unwrap().is_empty());

    // One record of a three-event batch, then three of one event each.
    type Entry = (Option<u32>, String, Option<String>);
    let event = |i: i64| format!(r#"{{"n":{i},"note":"{awkward}"}}"#);
    let batch: Vec<Entry> = (0..3)
        .map(|i| {
            (
                Some(i as u32),
                event(i),
                (i == 1).then(|| "not an address".into()),
            )
        })
        .collect();
    let mut records: Vec<(i64, Vec<Entry>)> = vec![(0, batch)];
    records.extend((3..6).map(|i| (i - 2, vec![(None, event(i), None)])));
    let records: Vec<NewAuditRecord> = records
        .iter()
        .map(|(n, entries)| {
            let mut packed = AuditEntries::with_capacity(entries.len(), 0);
            for (index, event, error) in entries {
                packed.push(*index, event, error.as_deref());
            }
            NewAuditRecord::new(acme, 11, format!("req-{n}"), UnixMillis(T0 + n), packed)
        })
        .collect();
    let want: Vec<_> = (0..6)
        .map(|i: i64| {
            let n = (i - 2).max(0);
            let (index, error) = match i {
                0..3 => (
                    Some(i as u32),
                    (i == 1).then(|| "not an address".to_owned()),
                ),
                _ => (None, None),
            };
            (
                11,
                format!("req-{n}"),
                UnixMillis(T0 + n),
                index,
                event(i),
                error,
            )
        })
        .collect();
    let mut tx = backend.begin().await.unwrap();
    tx.append_audit(&records).await.unwrap();
    tx.append_audit(&[NewAuditRecord {
        tenant: other,
        ..records[0].clone()
    }])
    .await
    .unwrap();
    tx.append_audit(&[]).await.unwrap();
    tx.commit().await.unwrap();

    // Newest first, in pages, this tenant only.
    let mut read = Vec::new();
    let mut before = None;
    loop {
        let page = backend.audit(acme, before, 2).await.unwrap();
        assert!(page.items.len() <= 2);
        read.extend(page.items);
        match page.next_cursor {
            Some(cursor) => before = Some(cursor),
            None => break,
        }
    }
    assert!(read.windows(2).all(|w| w[0].id > w[1].id));
    let read: Vec<_> = read
        .into_iter()
        .rev()
        .map(|e| (e.key_id, e.request_id, e.at, e.index, e.event, e.error))
        .collect();
    assert_eq!(read, want);

    // Retention: oldest records first, in the order they were made (of every tenant), at most
    // `limit`.
    let mut tx = backend.begin().await.unwrap();
    assert_eq!(tx.purge_audit(UnixMillis(T0 + 3), 2).await.unwrap(), 2);
    assert_eq!(tx.purge_changes(UnixMillis(T0 + 2), 10).await.unwrap(), 2);
    tx.commit().await.unwrap();
    let left: Vec<_> = backend
        .audit(acme, None, 10)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| e.at.0 - T0)
        .collect();
    // The two records made first went: the batch and the entry after it.
    assert_eq!(left, [3, 2]);
    assert_eq!(backend.changes_since(0, 100).await.unwrap(), all[2..]);

    // Purging the newest changes does not make their numbers available again.
    let mut tx = backend.begin().await.unwrap();
    assert_eq!(tx.purge_changes(UnixMillis(T0 + 100), 10).await.unwrap(), 3);
    let mut third = vec![change(acme, 10, "192.0.2.9/32", T0 + 5)];
    tx.append_changes(&mut third).await.unwrap();
    assert_eq!(third[0].seq, 6);
    tx.commit().await.unwrap();
    assert_eq!(backend.changes_since(0, 100).await.unwrap(), third);

    // A purge sees the changes its own transaction appended before it, and numbers go on.
    let mut tx = backend.begin().await.unwrap();
    let mut fourth = vec![change(acme, 11, "192.0.2.10/32", T0 + 6)];
    tx.append_changes(&mut fourth).await.unwrap();
    assert_eq!(tx.purge_changes(UnixMillis(T0 + 7), 10).await.unwrap(), 2);
    let mut fifth = vec![change(acme, 12, "192.0.2.11/32", T0 + 8)];
    tx.append_changes(&mut fifth).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!((fourth[0].seq, fifth[0].seq), (7, 8));
    assert_eq!(backend.changes_since(0, 100).await.unwrap(), fifth);

    backend.close().await;
    schema.drop().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn keys_round_trip() {
    let schema = TestSchema::new().await;
    let backend = schema.backend().await;
    let acme = tenant_name("acme");
    let key = |name: &str, digest: u8, role: Role| NewKey {
        name: name.into(),
        role,
        tenant: acme.clone(),
        digest: [digest; 32],
        at: UnixMillis(T0 + i64::from(digest)),
    };

    let mut tx = backend.begin().await.unwrap();
    let tenant = tx.tenant_id(&acme, UnixMillis(T0)).await.unwrap();
    let admin = tx
        .insert_key(tenant, &key("ops", 1, Role::Admin))
        .await
        .unwrap();
    let reader = tx
        .insert_key(tenant, &key("dashboard", 2, Role::Reader))
        .await
        .unwrap();
    assert!(admin.id < reader.id);
    assert_eq!(
        (
            admin.name.as_str(),
            admin.role,
            admin.tenant_id,
            admin.created_at
        ),
        ("ops", Role::Admin, tenant, UnixMillis(T0 + 1))
    );
    assert_eq!(admin.revoked_at, None);
    let revoked = tx.revoke_key(reader.id, UnixMillis(T0 + 10)).await.unwrap();
    assert_eq!(
        revoked,
        Some(crate::keys::ApiKey {
            revoked_at: Some(UnixMillis(T0 + 10)),
            ..reader.clone()
        })
    );
    // Once: a second revocation keeps the first instant.
    let again = tx.revoke_key(reader.id, UnixMillis(T0 + 20)).await.unwrap();
    assert_eq!(again, revoked);
    assert_eq!(tx.revoke_key(999_999, UnixMillis(T0)).await.unwrap(), None);
    // The same digest twice is refused.
    tx.commit().await.unwrap();

    assert_eq!(
        backend.keys().await.unwrap(),
        vec![admin.clone(), revoked.clone().unwrap()]
    );
    let live = backend.live_keys().await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].0, [1; 32]);
    let principal = crate::keys::Principal {
        key_id: admin.id,
        key_name: "ops".into(),
        role: Role::Admin,
        tenant: acme.clone(),
        tenant_id: tenant,
    };
    assert_eq!(live[0].1, principal);
    assert_eq!(backend.live_key([1; 32]).await.unwrap(), Some(principal));
    assert_eq!(backend.live_key([2; 32]).await.unwrap(), None);
    assert_eq!(backend.live_key([3; 32]).await.unwrap(), None);

    let mut tx = backend.begin().await.unwrap();
    match tx.insert_key(tenant, &key("copy", 1, Role::Writer)).await {
        Err(StoreError::Database(_)) => {}
        other => panic!("{other:?}"),
    }
    drop(tx);

    backend.close().await;
    schema.drop().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn report_queue_round_trip() {
    let schema = TestSchema::new().await;
    let backend = schema.backend().await;
    let acme = make_tenant(&backend, "acme").await;
    let other = make_tenant(&backend, "other").await;
    assert_eq!(
        backend.queue_stats(None).await.unwrap(),
        QueueStats::default()
    );

    let report = |tenant, kind, at| QueuedReport {
        id: 0,
        tenant,
        key_id: 4,
        kind,
        payload: r#"{"addresses":["192.0.2.1"]}"#.into(),
        received_at: UnixMillis(at),
    };
    let reports = [
        report(acme, ReportKind::Report, T0 + 5),
        report(other, ReportKind::Unban, T0 + 1),
        report(acme, ReportKind::FalseAdd, T0 + 9),
        report(acme, ReportKind::FalseRemove, T0 + 7),
    ];
    let mut tx = backend.begin().await.unwrap();
    let mut stored = Vec::new();
    for r in &reports {
        let id = tx.enqueue_report(r).await.unwrap();
        stored.push(QueuedReport { id, ..r.clone() });
    }
    tx.commit().await.unwrap();
    assert!(stored.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(
        backend.queue_stats(None).await.unwrap(),
        QueueStats {
            depth: 4,
            oldest: Some(UnixMillis(T0 + 1))
        }
    );
    assert_eq!(
        backend.queue_stats(Some(acme)).await.unwrap(),
        QueueStats {
            depth: 3,
            oldest: Some(UnixMillis(T0 + 5))
        }
    );

    let mut tx = backend.begin().await.unwrap();
    let claimed = tx.claim_reports(3).await.unwrap();
    assert_eq!(claimed, stored[..3]);
    tx.delete_reports(&[stored[0].id, stored[1].id])
        .await
        .unwrap();
    tx.delete_reports(&[]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        backend.queue_stats(None).await.unwrap(),
        QueueStats {
            depth: 2,
            oldest: Some(UnixMillis(T0 + 7))
        }
    );
    let mut tx = backend.begin().await.unwrap();
    assert_eq!(tx.claim_reports(10).await.unwrap(), stored[2..]);
    tx.probe(UnixMillis(T0)).await.unwrap();
    tx.probe(UnixMillis(T0 + 1)).await.unwrap();
    tx.commit().await.unwrap();

    backend.close().await;
    schema.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn concurrent_claims_never_hand_out_a_report_twice() {
    let schema = TestSchema::new().await;
    let backends = [
        Arc::new(schema.backend().await),
        Arc::new(schema.backend().await),
    ];
    let acme = make_tenant(&backends[0], "acme").await;
    let mut tx = backends[0].begin().await.unwrap();
    let mut queued = BTreeSet::new();
    for i in 0..200 {
        let id = tx
            .enqueue_report(&QueuedReport {
                id: 0,
                tenant: acme,
                key_id: 1,
                kind: ReportKind::Report,
                payload: format!(r#"{{"n":{i}}}"#),
                received_at: UnixMillis(T0 + i),
            })
            .await
            .unwrap();
        queued.insert(id);
    }
    tx.commit().await.unwrap();

    // Two workers, each on its own backend (and in each, two tasks), claiming, holding their
    // claim a moment, then deleting what they claimed.
    let mut workers = Vec::new();
    for w in 0..4 {
        let backend = Arc::clone(&backends[w % 2]);
        workers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let mut tx = backend.begin().await.unwrap();
                let claimed = tx.claim_reports(7).await.unwrap();
                if claimed.is_empty() {
                    return got;
                }
                let ids: Vec<i64> = claimed.iter().map(|r| r.id).collect();
                tokio::time::sleep(Duration::from_micros(rand::random_range(0..2000))).await;
                tx.delete_reports(&ids).await.unwrap();
                tx.commit().await.unwrap();
                got.extend(ids);
            }
        }));
    }
    let mut handed_out = Vec::new();
    for worker in workers {
        handed_out.extend(worker.await.unwrap());
    }
    let distinct: BTreeSet<i64> = handed_out.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        handed_out.len(),
        "a report was handed out twice"
    );
    assert_eq!(distinct, queued);

    for backend in &backends {
        backend.close().await;
    }
    schema.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn a_dropped_transaction_is_rolled_back() {
    let schema = TestSchema::new().await;
    let a = schema.backend().await;
    let b = schema.backend().await;
    let acme = make_tenant(&a, "acme").await;

    let mut tx = a.begin().await.unwrap();
    let ids = tx
        .insert_rules(&[new_rule(acme, "192.0.2.0/24")])
        .await
        .unwrap();
    tx.append_changes(&mut [change(acme, ids[0], "192.0.2.0/24", T0)])
        .await
        .unwrap();
    tx.append_audit(&[audit_entry(acme, "r")]).await.unwrap();
    tx.add_rule_count(acme, 1).await.unwrap();
    tx.tenant_id(&tenant_name("newcomer"), UnixMillis(T0))
        .await
        .unwrap();
    drop(tx);

    // The lock is released: another node's writer gets its turn, and sees none of it.
    let mut tx = tokio::time::timeout(Duration::from_secs(10), b.begin())
        .await
        .expect("the dropped transaction still holds the write lock")
        .unwrap();
    assert!(
        tx.rules_by_key(acme, &[(RuleAction::Block, target("192.0.2.0/24"))])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(tx.rule_count(acme).await.unwrap(), 0);
    let mut next = [change(acme, 1, "AS64500", T0)];
    tx.append_changes(&mut next).await.unwrap();
    assert_eq!(next[0].seq, 1, "a rolled-back transaction left a gap");
    tx.commit().await.unwrap();
    assert_eq!(b.changes_since(0, 10).await.unwrap(), next);
    assert!(b.audit(acme, None, 10).await.unwrap().items.is_empty());
    // Also in the same process.
    let mut tx = tokio::time::timeout(Duration::from_secs(10), a.begin())
        .await
        .expect("the local write turn was not given back")
        .unwrap();
    tx.probe(UnixMillis(T0)).await.unwrap();
    tx.commit().await.unwrap();

    a.close().await;
    b.close().await;
    schema.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn change_numbers_follow_commit_order_without_gaps_across_nodes() {
    let schema = TestSchema::new().await;
    let mut writers = Vec::new();
    for _ in 0..4 {
        writers.push(Arc::new(schema.backend().await));
    }
    let follower = schema.backend().await;
    let acme = make_tenant(&writers[0], "acme").await;

    const TRANSACTIONS: usize = 60;
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (w, backend) in writers.iter().enumerate() {
        let backend = Arc::clone(backend);
        tasks.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            for i in 0..TRANSACTIONS {
                let mut tx = backend.begin().await.unwrap();
                let mut changes: Vec<Change> = (0..1 + (i % 3))
                    .map(|k| change(acme, (w * 10_000 + i * 10 + k) as i64, "AS64500", T0))
                    .collect();
                tx.append_changes(&mut changes).await.unwrap();
                // Hold the numbers a moment before committing: if a later transaction could
                // commit first, the follower would see its numbers before these.
                tokio::time::sleep(Duration::from_micros(rand::random_range(0..1500))).await;
                tx.commit().await.unwrap();
                committed.push(changes.iter().map(|c| c.seq).collect::<Vec<_>>());
            }
            committed
        }));
    }
    let follow = {
        let done = Arc::clone(&done);
        async move {
            let mut last = 0;
            let mut reads = 0;
            loop {
                let finished = done.load(Ordering::SeqCst);
                let changes = follower.changes_since(last, 1000).await.unwrap();
                reads += 1;
                for c in &changes {
                    assert_eq!(
                        c.seq,
                        last + 1,
                        "the follower read change {} right after {last}: it will never see \
                         the ones in between",
                        c.seq
                    );
                    last = c.seq;
                }
                if finished && changes.is_empty() {
                    follower.close().await;
                    return (last, reads);
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
    };
    let follower = tokio::spawn(follow);
    let mut all = Vec::new();
    for task in tasks {
        let committed = task.await.unwrap();
        for seqs in &committed {
            assert!(
                seqs.windows(2).all(|w| w[1] == w[0] + 1),
                "one transaction's numbers are not consecutive: {seqs:?}"
            );
        }
        all.extend(committed.into_iter().flatten());
    }
    done.store(true, Ordering::SeqCst);
    let (last, reads) = follower.await.unwrap();
    all.sort_unstable();
    let total = all.len() as u64;
    assert_eq!(all, (1..=total).collect::<Vec<_>>(), "numbers with gaps");
    assert_eq!(last, total);
    assert!(reads > 10, "the follower read only {reads} times");

    for backend in &writers {
        backend.close().await;
    }
    schema.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn a_snapshot_is_one_consistent_read() {
    let schema = TestSchema::new().await;
    let writer = Arc::new(schema.backend().await);
    let reader = schema.backend().await;
    let acme = make_tenant(&writer, "acme").await;

    let mut tx = writer.begin().await.unwrap();
    let mut expired = new_rule(acme, "198.51.100.0/24");
    expired.expires_at = Some(UnixMillis(T0 - 1));
    let id = tx.insert_rules(&[expired]).await.unwrap()[0];
    tx.append_changes(&mut [change(acme, id, "198.51.100.0/24", T0)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let snapshot = reader.snapshot(UnixMillis(T0)).await.unwrap();
    assert_eq!((snapshot.seq, snapshot.rules.len()), (1, 0));

    // Every write adds one active rule and one change: in any snapshot the number of rules
    // is the number of changes minus the expired rule's.
    let writing = {
        let writer = Arc::clone(&writer);
        tokio::spawn(async move {
            for i in 0..100u32 {
                let text = format!("10.{}.{}.0/24", i / 256, i % 256);
                let mut tx = writer.begin().await.unwrap();
                let id = tx.insert_rules(&[new_rule(acme, &text)]).await.unwrap()[0];
                tx.append_changes(&mut [change(acme, id, &text, T0)])
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
        })
    };
    let mut seen = BTreeSet::new();
    while !writing.is_finished() {
        let snapshot = reader.snapshot(UnixMillis(T0)).await.unwrap();
        assert_eq!(snapshot.rules.len() as u64, snapshot.seq - 1);
        seen.insert(snapshot.seq);
    }
    writing.await.unwrap();
    let snapshot = reader.snapshot(UnixMillis(T0)).await.unwrap();
    assert_eq!((snapshot.seq, snapshot.rules.len()), (101, 100));
    assert!(
        snapshot
            .rules
            .iter()
            .all(|r| r.is_active_at(UnixMillis(T0)))
    );
    assert!(seen.len() > 1, "the snapshots never overlapped the writes");

    writer.close().await;
    reader.close().await;
    schema.drop().await;
}

/// Rules stored where their key is free are first tried without `ON CONFLICT` while keys keep
/// being free, and a taken key sends the batch back to `ON CONFLICT` within the same
/// transaction: whichever way each batch goes, free keys get a rule, taken ones `None`, and
/// every transaction commits what it stored.
#[tokio::test]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn rules_stored_where_keys_are_free_whichever_way_the_batch_goes() {
    let schema = TestSchema::new().await;
    let backend = schema.backend().await;
    let mut tx = backend.begin().await.unwrap();
    let t = tx
        .tenant_id(&tenant_name("a"), UnixMillis(0))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // (addresses in the batch, which of them are taken by then)
    let batches: [(&[u8], &[u8]); 5] = [
        (&[1, 2], &[]),     // all free: no ON CONFLICT
        (&[3, 1, 4], &[1]), // one taken: back to ON CONFLICT
        (&[5, 2], &[2]),    // after a taken key: ON CONFLICT from the start
        (&[6, 7], &[]),     // all free, under ON CONFLICT
        (&[8, 6, 9], &[6]), // free keys again, then one taken
    ];
    for (batch, taken) in batches {
        let rules: Vec<NewRule> = batch
            .iter()
            .map(|n| new_rule(t, &format!("192.0.2.{n}")))
            .collect();
        let mut tx = backend.begin().await.unwrap();
        let ids = tx.insert_absent_rules(&rules).await.unwrap();
        let stored: Vec<bool> = ids.iter().map(Option::is_some).collect();
        let free: Vec<bool> = batch.iter().map(|n| !taken.contains(n)).collect();
        assert_eq!(stored, free, "batch {batch:?}");
        tx.commit().await.unwrap();
    }
    let mut targets: Vec<String> = backend
        .snapshot(UnixMillis(T0))
        .await
        .unwrap()
        .rules
        .iter()
        .map(|rule| rule.target.to_string())
        .collect();
    targets.sort();
    let expected: Vec<String> = (1..=9).map(|n| format!("192.0.2.{n}/32")).collect();
    assert_eq!(targets, expected);
    backend.close().await;
    schema.drop().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn audit_entries_are_compressed_with_lz4_where_the_server_has_it() {
    let schema = TestSchema::new().await;
    let backend = schema.backend().await;
    let mut admin = schema.admin().await;
    // A server built without LZ4 refuses the setting (this session's only).
    let has_lz4 = sqlx::query("SET default_toast_compression = lz4")
        .execute(&mut admin)
        .await
        .is_ok();
    let compression: String = sqlx::query_scalar(
        "SELECT attcompression::text FROM pg_attribute
         WHERE attrelid = format('%I.audit_records', $1::text)::regclass
           AND attname = 'entries'",
    )
    .bind(&schema.name)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(
        compression,
        if has_lz4 { "l" } else { "" },
        "lz4: {has_lz4}"
    );
    admin.close().await.ok();
    backend.close().await;
    schema.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn nodes_starting_together_migrate_once() {
    let schema = TestSchema::new().await;
    let mut starts = Vec::new();
    for _ in 0..4 {
        let (url, options) = (schema.url.clone(), schema.options());
        starts.push(tokio::spawn(async move {
            PgBackend::connect(&url, options).await
        }));
    }
    let mut backends = Vec::new();
    for start in starts {
        backends.push(start.await.unwrap().expect("a node failed to start"));
    }
    let mut admin = schema.admin().await;
    let versions: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM \"{}\"._sqlx_migrations WHERE success ORDER BY version",
        schema.name
    )))
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    // Rules keyed by tenant and id, which listings read in order too; no index beside it.
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = 'rules'
         ORDER BY indexname",
    )
    .bind(&schema.name)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    let columns: Vec<&str> = indexes
        .iter()
        .map(|def| def.split_once(" USING btree ").unwrap().1)
        .collect();
    assert_eq!(
        columns,
        [
            "(expires_at) WHERE (expires_at IS NOT NULL)",
            "(tenant_id, id)",
            "(target, tenant_id, action, kind)"
        ]
    );
    admin.close().await.ok();
    // And they all work on the one schema.
    let acme = make_tenant(&backends[0], "acme").await;
    assert_eq!(make_tenant(&backends[3], "acme").await, acme);

    for backend in &backends {
        backend.close().await;
    }
    schema.drop().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn a_failed_migration_releases_the_migration_lock() {
    // A table in the way makes the first migration fail.
    let schema = TestSchema::new().await;
    let mut admin = schema.admin().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".rules (x int)",
        schema.name
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    admin.close().await.ok();
    match PgBackend::connect(&schema.url, schema.options()).await {
        Err(StoreError::Migration(message)) => assert!(message.contains("rules"), "{message}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("migrated over an existing table"),
    }
    // The lock is per database: were it still held, this would wait for ever.
    let fresh = TestSchema::new().await;
    let backend = tokio::time::timeout(Duration::from_secs(30), fresh.backend())
        .await
        .expect("the failed migration left the migration lock held");
    backend.close().await;
    fresh.drop().await;
    schema.drop().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn rule_counts_are_backfilled() {
    let schema = TestSchema::new().await;
    // A store at version 3, from before tenants counted their rules.
    let mut conn = schema.at_version(3).await;
    sqlx::raw_sql(
        "INSERT INTO tenants (name, created_at) VALUES ('a', 0), ('b', 0), ('c', 0);
         INSERT INTO rules (tenant_id, action, kind, target, source, created_at, updated_at)
         SELECT t.id, 'block', 'asn', 'AS' || n, 'signal', 0, 0
         FROM tenants t, generate_series(1, 3) n WHERE t.name = 'a'
         UNION ALL SELECT t.id, 'block', 'asn', 'AS1', 'signal', 0, 0
         FROM tenants t WHERE t.name = 'b'",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let backend = schema.backend().await;
    let want = vec![
        ("a".to_owned(), 3),
        ("b".to_owned(), 1),
        ("c".to_owned(), 0),
    ];
    assert_eq!(tenant_counts(&mut conn).await, want);
    let mut tx = backend.begin().await.unwrap();
    let a = tx
        .tenant_id(&tenant_name("a"), UnixMillis(0))
        .await
        .unwrap();
    assert_eq!(tx.rule_count(a).await.unwrap(), 3);
    drop(tx);
    // Running the backfill again changes nothing.
    sqlx::raw_sql(include_str!("schema_v4.sql"))
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(tenant_counts(&mut conn).await, want);
    conn.close().await.ok();

    backend.close().await;
    schema.drop().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn the_rule_key_is_led_by_the_target_after_an_upgrade() {
    let schema = TestSchema::new().await;
    let mut conn = schema.at_version(5).await;
    sqlx::raw_sql(
        "INSERT INTO tenants (name, created_at) VALUES ('a', 0);
         INSERT INTO rules (tenant_id, action, kind, target, source, created_at, updated_at)
         SELECT id, 'block', 'ip', '192.0.2.1/32', 'signal', 0, 0 FROM tenants",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let backend = schema.backend().await;
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint
         WHERE conrelid = 'rules'::regclass AND contype = 'u'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(keys, ["UNIQUE (target, tenant_id, action, kind)"]);
    // The key still holds one rule per (tenant, action, kind, target), and the engine's
    // ON CONFLICT still finds it.
    let mut tx = backend.begin().await.unwrap();
    let a = tx
        .tenant_id(&tenant_name("a"), UnixMillis(0))
        .await
        .unwrap();
    let rule = new_rule(a, "192.0.2.1");
    assert_eq!(tx.insert_absent_rules(&[rule]).await.unwrap(), [None]);
    drop(tx);
    conn.close().await.ok();
    backend.close().await;
    schema.drop().await;
}

async fn tenant_counts(conn: &mut PgConnection) -> Vec<(String, i64)> {
    sqlx::query("SELECT name, rules FROM tenants ORDER BY name")
        .fetch_all(conn)
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.get::<String, _>(0), row.get::<i64, _>(1)))
        .collect()
}

/// Waits for one wake-up of `signal`, up to `limit`.
async fn woken(signal: &tokio::sync::Notify, limit: Duration) -> bool {
    tokio::time::timeout(limit, signal.notified()).await.is_ok()
}

/// Takes the wake-up `signal` may hold from earlier events.
async fn drain(signal: &tokio::sync::Notify) {
    while woken(signal, Duration::from_millis(200)).await {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn commits_wake_the_followers_of_their_schema_only() {
    let schema = TestSchema::new().await;
    let elsewhere = TestSchema::new().await;
    let follower = schema.backend().await;
    let writer = schema.backend().await;
    let stranger = elsewhere.backend().await;
    let signal = follower
        .change_signal()
        .expect("PostgreSQL signals changes");
    assert!(
        woken(&signal, Duration::from_secs(10)).await,
        "no wake-up once listening"
    );
    drain(&signal).await;

    let acme = make_tenant(&writer, "acme").await;
    let other = make_tenant(&stranger, "acme").await;
    // Writes without changes wake nobody.
    assert!(!woken(&signal, Duration::from_millis(500)).await);

    let mut tx = stranger.begin().await.unwrap();
    tx.append_changes(&mut [change(other, 1, "AS64500", T0)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        !woken(&signal, Duration::from_millis(500)).await,
        "woken by another schema's commit"
    );

    // Rolled back: no wake-up.
    let mut tx = writer.begin().await.unwrap();
    tx.append_changes(&mut [change(acme, 1, "AS64500", T0)])
        .await
        .unwrap();
    drop(tx);
    assert!(!woken(&signal, Duration::from_millis(500)).await);

    let mut tx = writer.begin().await.unwrap();
    tx.append_changes(&mut [change(acme, 1, "AS64500", T0)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        woken(&signal, Duration::from_secs(10)).await,
        "not woken by a commit"
    );

    follower.close().await;
    writer.close().await;
    stranger.close().await;
    schema.drop().await;
    elsewhere.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn the_backend_recovers_when_its_connections_are_killed() {
    let schema = TestSchema::new().await;
    let options = PgOptions {
        application_name: schema.name.clone(),
        ..schema.options()
    };
    let backend = PgBackend::connect(&schema.url, options).await.unwrap();
    let writer = schema.backend().await;
    let acme = make_tenant(&writer, "acme").await;
    let signal = backend.change_signal().unwrap();
    assert!(woken(&signal, Duration::from_secs(10)).await);
    drain(&signal).await;
    backend.keys().await.unwrap();

    let mut admin = schema.admin().await;
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&schema.name)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    admin.close().await.ok();
    // At least the pooled connection and the listener's.
    assert!(
        killed.iter().filter(|k| **k).count() >= 2,
        "killed {killed:?}"
    );

    // Notifications sent while nobody listened are lost: the signal fires after the
    // listener is back, so followers re-read.
    assert!(
        woken(&signal, Duration::from_secs(15)).await,
        "no wake-up after the listener reconnected"
    );
    backend
        .keys()
        .await
        .expect("the pool did not replace its dead connection");
    let mut tx = backend.begin().await.expect("no write after the kill");
    tx.probe(UnixMillis(T0)).await.unwrap();
    tx.commit().await.unwrap();
    // And it listens again.
    drain(&signal).await;
    let mut tx = writer.begin().await.unwrap();
    tx.append_changes(&mut [change(acme, 1, "AS64500", T0)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        woken(&signal, Duration::from_secs(10)).await,
        "not listening after the reconnect"
    );

    backend.close().await;
    writer.close().await;
    schema.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn a_stalled_writer_does_not_stop_the_others_for_ever() {
    let schema = TestSchema::new().await;
    let options = PgOptions {
        idle_in_transaction_timeout: Some(Duration::from_millis(500)),
        ..schema.options()
    };
    let stalled = PgBackend::connect(&schema.url, options).await.unwrap();
    let other = schema.backend().await;
    let acme = make_tenant(&other, "acme").await;

    // A node that took the write lock and then went quiet (hung, or cut off).
    let mut tx = stalled.begin().await.unwrap();
    tx.append_changes(&mut [change(acme, 1, "AS64500", T0)])
        .await
        .unwrap();
    let mut next = tokio::time::timeout(Duration::from_secs(10), other.begin())
        .await
        .expect("a stalled transaction kept the write lock")
        .unwrap();
    let mut changes = [change(acme, 2, "AS64501", T0)];
    next.append_changes(&mut changes).await.unwrap();
    assert_eq!(changes[0].seq, 1);
    next.commit().await.unwrap();
    // The stalled transaction is gone, and says so when it wakes up.
    match tx.commit().await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(other.changes_since(0, 10).await.unwrap(), changes);

    stalled.close().await;
    other.close().await;
    schema.drop().await;
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // Port 1 on loopback: nothing listens there, so the connection is refused.
    let options = PgOptions {
        acquire_timeout: Duration::from_secs(2),
        ..PgOptions::default()
    };
    match PgBackend::connect("postgres://palisade@127.0.0.1:1/none", options).await {
        Err(StoreError::Unavailable(_)) => {}
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

#[test]
fn schema_names_are_plain_identifiers() {
    assert!(super::valid_schema("palisade"));
    assert!(super::valid_schema("_t1"));
    for bad in [
        "",
        "1a",
        "Caps",
        "a-b",
        "a\"b",
        "pg_catalog",
        &"a".repeat(64),
    ] {
        assert!(!super::valid_schema(bad), "{bad:?}");
    }
    assert_eq!(super::channel_name(None), "palisade_changes");
    assert_eq!(super::channel_name(Some("t1")), "palisade_changes.t1");
    let long = super::channel_name(Some(&"a".repeat(63)));
    assert!(long.len() <= 63, "{long}");
    assert_ne!(long, super::channel_name(Some(&"a".repeat(62))));
}

/// Rows per second of the engine's largest write: 1000 new rules, their 1000 changes and 1000
/// audit entries in one transaction. Run with `--nocapture` to see the figure.
#[tokio::test]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn batches_of_a_thousand_rows() {
    let schema = TestSchema::new().await;
    let backend = schema.backend().await;
    let acme = make_tenant(&backend, "acme").await;
    const BATCHES: usize = 10;
    const ROWS: usize = 1000;
    let mut writing = Duration::ZERO;
    let mut last_seq = 0;
    for b in 0..BATCHES {
        let rules: Vec<NewRule> = (0..ROWS)
            .map(|i| {
                let n = b * ROWS + i;
                let mut rule = new_rule(acme, &format!("10.{}.{}.0/24", n / 256, n % 256));
                rule.name = Some(format!("batch {b}"));
                rule.tags = vec!["bulk".into()];
                rule
            })
            .collect();
        let mut entries = AuditEntries::with_capacity(ROWS, ROWS * 48);
        for (i, rule) in rules.iter().enumerate() {
            let event = format!(r#"{{"type":"ip","action":"block","ip":"{}"}}"#, rule.target);
            entries.push(Some(i as u32), &event, None);
        }
        let audit = [NewAuditRecord::new(
            acme,
            1,
            format!("batch-{b}"),
            UnixMillis(T0),
            entries,
        )];

        let started = Instant::now();
        let mut tx = backend.begin().await.unwrap();
        let ids = tx.insert_rules(&rules).await.unwrap();
        let mut changes: Vec<Change> = rules
            .iter()
            .zip(&ids)
            .map(|(r, id)| Change::of(&r.clone().with_id(*id), ChangeOp::Put, UnixMillis(T0)))
            .collect();
        tx.append_changes(&mut changes).await.unwrap();
        tx.append_audit(&audit).await.unwrap();
        tx.add_rule_count(acme, ROWS as i64).await.unwrap();
        tx.commit().await.unwrap();
        writing += started.elapsed();

        // Ids and numbers are in input order.
        let mut tx = backend.begin().await.unwrap();
        let keys: Vec<_> = rules.iter().map(|r| (r.action, r.target)).collect();
        let by_target: HashMap<Target, i64> = tx
            .rules_by_key(acme, &keys)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.target, r.id))
            .collect();
        drop(tx);
        for (rule, id) in rules.iter().zip(&ids) {
            assert_eq!(by_target[&rule.target], *id);
        }
        for change in &changes {
            assert_eq!(change.seq, last_seq + 1);
            last_seq = change.seq;
        }
    }
    eprintln!(
        "{BATCHES} transactions of {ROWS} rules + {ROWS} changes + {ROWS} audit entries: \
         {writing:.2?}, {:.0} rules/s",
        (BATCHES * ROWS) as f64 / writing.as_secs_f64()
    );
    let snapshot = backend.snapshot(UnixMillis(T0)).await.unwrap();
    assert_eq!(snapshot.rules.len(), BATCHES * ROWS);
    assert_eq!(snapshot.seq, (BATCHES * ROWS) as u64);

    backend.close().await;
    schema.drop().await;
}

#[test]
fn a_backend_knows_its_own_announcements() {
    let announcer = Announcer {
        channel: "palisade_changes".into(),
        origin: "0123456789abcdef".into(),
    };
    let other = Announcer {
        channel: "palisade_changes".into(),
        origin: "fedcba9876543210".into(),
    };
    let payload = announcer.payload(42);
    assert!(announcer.sent(&payload));
    assert!(!other.sent(&payload));
    // A payload of an older version (the head only) is never taken for one's own.
    assert!(!announcer.sent("42"));
    assert!(!announcer.sent(""));
}

#[tokio::test]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn audit_entries_of_an_older_store_become_records_of_their_own() {
    let schema = TestSchema::new().await;
    // A store at version 7, from before the audit log kept one row per request.
    let mut conn = schema.at_version(7).await;
    sqlx::query("INSERT INTO tenants (name, created_at) VALUES ('acme', 0)")
        .execute(&mut conn)
        .await
        .unwrap();
    for (key_id, request_id, at, index, event, error) in OLDER_ENTRIES {
        sqlx::query(
            "INSERT INTO audit (tenant_id, key_id, request_id, at, entry_index, event, error)
             VALUES (1, $1, $2, $3, $4, $5, $6)",
        )
        .bind(key_id)
        .bind(request_id)
        .bind(at)
        .bind(index.map(i64::from))
        .bind(event)
        .bind(error)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    conn.close().await.ok();

    let backend = schema.backend().await;
    assert_older_entries_read_back(&backend.audit(TenantId(1), None, 10).await.unwrap());

    // Records made after the move are numbered above the moved ones.
    let mut tx = backend.begin().await.unwrap();
    tx.append_audit(&[audit_entry(TenantId(1), "after")])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let page = backend.audit(TenantId(1), None, 1).await.unwrap();
    assert_eq!(page.items[0].request_id, "after");
    assert!(
        page.next_cursor.unwrap()
            > backend
                .audit(TenantId(1), page.next_cursor, 1)
                .await
                .unwrap()
                .items[0]
                .id
    );
    backend.close().await;
    schema.drop().await;
}

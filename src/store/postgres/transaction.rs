//! One write transaction: the row operations the engine composes its writes of.
//!
//! Every operation on a slice is one statement, so one round trip whatever the slice's length:
//! the slice goes over as one array per column and comes apart again in `UNNEST`. An empty
//! slice costs no round trip at all.

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row};
use tokio::sync::OwnedMutexGuard;

use super::{
    Announcer, db, json_tags, key_columns, key_from_row, report_columns, report_from_row,
    rule_columns, rule_from_row, sql_limit,
};
use crate::keys::{ApiKey, TenantName};
use crate::rules::{NewRule, Rule, RuleAction, RuleId, Target, TenantId, UnixMillis};
use crate::store::audit::NewAuditRecord;
use crate::store::backend::Transaction;
use crate::store::{Change, NewKey, QueuedReport, StoreError, StoreResult};

/// This process's turn to write, and what its writers learn from one transaction for the next.
#[derive(Debug)]
pub(super) struct WriteTurn {
    /// Whether the last rules stored where their key was free all found it free. While they
    /// do (ingest of new addresses), the next ones are inserted without `ON CONFLICT`: its
    /// arbiter check searches the rule key's index once more per row, before the insert
    /// descends it again (a quarter of the database's CPU time under scattered ingest).
    keys_were_free: bool,
}

impl Default for WriteTurn {
    fn default() -> Self {
        Self {
            keys_were_free: true,
        }
    }
}

pub(super) struct PgTransaction {
    tx: sqlx::Transaction<'static, Postgres>,
    /// This process's turn to write, held until the transaction ends.
    turn: OwnedMutexGuard<WriteTurn>,
    /// Where commits that appended changes announce them.
    announcer: Arc<Announcer>,
    /// The last change number handed out, read under the `feed_head` lock.
    head: i64,
    /// Whether this transaction appended changes (and so must announce them).
    appended: bool,
}

impl PgTransaction {
    /// Opens a write transaction and waits for its turn among all writers of the database.
    pub(super) async fn begin(
        pool: &PgPool,
        turn: OwnedMutexGuard<WriteTurn>,
        announcer: Arc<Announcer>,
    ) -> StoreResult<Self> {
        // READ COMMITTED whatever the server's default: each statement then sees everything
        // committed before it, so what the lock below waited for is visible after it. (Under
        // REPEATABLE READ the lock wait would end in a serialisation failure.)
        let mut tx = pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED, READ WRITE")
            .await
            .map_err(db)?;
        // The first statement of every write transaction, held to its end: write transactions
        // of this database run one at a time, across processes and nodes. That is what numbers
        // changes in commit order without gaps (`append_changes`), and what keeps the engine's
        // read-decide-write cycles true without locking rows one by one: nothing another writer
        // does can land between this transaction's reads and its writes. Taking it first, before
        // any other lock, also means writers never wait on each other in a cycle.
        let head: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM feed_head WHERE id = 1 FOR UPDATE")
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        let head = head.ok_or_else(|| StoreError::Corrupt("feed_head has no row".into()))?;
        // Every statement of a write transaction finds its rows by key or id; statistics lag
        // behind a table that fills up fast, and a scan chosen from them would read a whole
        // table per batch under the one write lock.
        sqlx::query("SELECT set_config('enable_seqscan', 'off', true)")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        Ok(Self {
            tx,
            turn,
            announcer,
            head,
            appended: false,
        })
    }
}

/// The ids of `rules` in their order, from the `(id, tenant, action, kind, target)` rows their
/// insert returned (in any order); `None` for a rule no row was returned for. `targets` are the
/// rules' stored target texts, as bound: a returned row carries the same text, so rows are
/// matched by text without parsing it back.
fn ids_in_order(
    rules: &[NewRule],
    targets: &[String],
    found: &[PgRow],
) -> StoreResult<Vec<Option<RuleId>>> {
    let mut position: foldhash::HashMap<(i64, &str, &str, &str), usize> = rules
        .iter()
        .zip(targets)
        .enumerate()
        .map(|(i, (r, target))| {
            let key = (
                r.tenant.0,
                r.action.as_str(),
                r.target.kind().as_str(),
                target.as_str(),
            );
            (key, i)
        })
        .collect();
    let mut ids = vec![None; rules.len()];
    for row in found {
        let id: i64 = row.try_get(0).map_err(db)?;
        let key = (
            row.try_get(1).map_err(db)?,
            row.try_get(2).map_err(db)?,
            row.try_get(3).map_err(db)?,
            row.try_get(4).map_err(db)?,
        );
        match position.remove(&key) {
            Some(at) => ids[at] = Some(id),
            None => {
                return Err(StoreError::Database(format!(
                    "the insert returned rule {id}, which was not asked for"
                )));
            }
        }
    }
    Ok(ids)
}

/// The insert of new rules, in input order (so ids grow along the slice), with `$conflict`
/// between the rows and `RETURNING`.
macro_rules! insert_rules_sql {
    ($conflict:literal) => {
        concat!(
            "INSERT INTO rules (tenant_id, action, kind, target, expires_at, name, description,
                                source, dataset, tags, reports, created_at, updated_at)
             SELECT tenant_id, action, kind, target, expires_at, name, description, source,
                    dataset, tags::jsonb, reports, created_at, updated_at
             FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                         $11::bigint[], $12::bigint[], $13::bigint[])
                 WITH ORDINALITY AS u(tenant_id, action, kind, target, expires_at, name,
                                      description, source, dataset, tags, reports, created_at,
                                      updated_at, ord)
             ORDER BY ord ",
            $conflict,
            " RETURNING id, tenant_id, action, kind, target"
        )
    };
}

impl PgTransaction {
    /// Runs one of the [`insert_rules_sql`] statements; the id of each rule, `None` for the
    /// rows the statement did not store.
    async fn insert(
        &mut self,
        rules: &[NewRule],
        sql: &'static str,
    ) -> StoreResult<Vec<Option<RuleId>>> {
        self.insert_raw(rules, sql).await.map_err(db)?
    }

    /// [`PgTransaction::insert`], with the database's error as it came.
    async fn insert_raw(
        &mut self,
        rules: &[NewRule],
        sql: &'static str,
    ) -> Result<StoreResult<Vec<Option<RuleId>>>, sqlx::Error> {
        if rules.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let col = |f: fn(&NewRule) -> i64| rules.iter().map(f).collect::<Vec<i64>>();
        let word = |f: fn(&NewRule) -> &'static str| rules.iter().map(f).collect::<Vec<_>>();
        let opt_text =
            |f: for<'r> fn(&'r NewRule) -> Option<&'r str>| rules.iter().map(f).collect::<Vec<_>>();
        let targets: Vec<String> = rules.iter().map(|r| r.target.text()).collect();
        // The ids are matched to their input position through the rule's unique key rather
        // than by trusting the order RETURNING happens to produce. (Matching in SQL, joining
        // back to the input, doubled the statement's time: the planner cannot tell how long
        // the arrays are.)
        let found = sqlx::query(sql)
            .bind(col(|r| r.tenant.0))
            .bind(word(|r| r.action.as_str()))
            .bind(word(|r| r.target.kind().as_str()))
            .bind(targets.as_slice())
            .bind(
                rules
                    .iter()
                    .map(|r| r.expires_at.map(|t| t.0))
                    .collect::<Vec<_>>(),
            )
            .bind(opt_text(|r| r.name.as_deref()))
            .bind(opt_text(|r| r.description.as_deref()))
            .bind(word(|r| r.source.as_str()))
            .bind(opt_text(|r| r.dataset.as_deref()))
            .bind(rules.iter().map(|r| json_tags(&r.tags)).collect::<Vec<_>>())
            .bind(col(|r| i64::from(r.reports)))
            .bind(col(|r| r.created_at.0))
            .bind(col(|r| r.updated_at.0))
            .fetch_all(&mut *self.tx)
            .await?;
        Ok(ids_in_order(rules, &targets, &found))
    }

    async fn execute(&mut self, sql: &'static str) -> StoreResult<()> {
        sqlx::query(sql).execute(&mut *self.tx).await.map_err(db)?;
        Ok(())
    }
}

impl PgTransaction {
    /// Deletes up to `limit` rows of `table` made before `before`, oldest first: the rows below
    /// the first one made at or after `before`, in the order of their `key`, which grows with
    /// `at` (SQLite's `purge_oldest` is the same statement). Reads at most `limit` rows whatever
    /// the table holds, so a round of retention with nothing to delete costs next to nothing
    /// under the write lock.
    async fn purge_oldest(
        &mut self,
        table: &'static str,
        key: &'static str,
        before: UnixMillis,
        limit: usize,
    ) -> StoreResult<usize> {
        let done = sqlx::query(AssertSqlSafe(format!(
            "WITH oldest AS (SELECT {key}, at FROM {table} ORDER BY {key} LIMIT $2)
             DELETE FROM {table}
             WHERE {key} IN (SELECT {key} FROM oldest)
               AND {key} < COALESCE((SELECT min({key}) FROM oldest WHERE at >= $1),
                                    9223372036854775807)"
        )))
        .bind(before.0)
        .bind(sql_limit(limit))
        .execute(&mut *self.tx)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() as usize)
    }
}

#[async_trait]
impl Transaction for PgTransaction {
    async fn rules_by_key(
        &mut self,
        tenant: TenantId,
        keys: &[(RuleAction, Target)],
    ) -> StoreResult<Vec<Rule>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // A key asked for twice is one rule.
        let mut seen = std::collections::HashSet::with_capacity(keys.len());
        let keys: Vec<&(RuleAction, Target)> = keys.iter().filter(|k| seen.insert(*k)).collect();
        let actions: Vec<&str> = keys.iter().map(|(a, _)| a.as_str()).collect();
        let kinds: Vec<&str> = keys.iter().map(|(_, t)| t.kind().as_str()).collect();
        let targets: Vec<String> = keys.iter().map(|(_, t)| t.to_string()).collect();
        // One look-up in the unique index per key. Planned at each run (not prepared): a
        // prepared statement keeps one generic plan, and one made while the table was small
        // read all of the tenant's rules once per key (seconds per batch once the table had
        // grown, under the one write lock). OFFSET 0 keeps the planner from turning the
        // per-key subquery into a join that reads all of the tenant's rules once per batch.
        sqlx::query(concat!(
            "SELECT ",
            rule_columns!(),
            " FROM UNNEST($2::text[], $3::text[], $4::text[]) AS k(k_action, k_kind, k_target)
              CROSS JOIN LATERAL (SELECT * FROM rules
                  WHERE rules.tenant_id = $1 AND rules.action = k.k_action
                    AND rules.kind = k.k_kind AND rules.target = k.k_target
                  OFFSET 0) AS rules"
        ))
        .bind(tenant.0)
        .bind(actions)
        .bind(kinds)
        .bind(targets)
        .persistent(false)
        .try_map(rule_from_row)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db)
    }

    async fn rule_by_id(&mut self, tenant: TenantId, id: RuleId) -> StoreResult<Option<Rule>> {
        sqlx::query(concat!(
            "SELECT ",
            rule_columns!(),
            " FROM rules WHERE id = $1 AND tenant_id = $2"
        ))
        .bind(id)
        .bind(tenant.0)
        .try_map(rule_from_row)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(db)
    }

    async fn expired_rules(&mut self, now: UnixMillis, limit: usize) -> StoreResult<Vec<Rule>> {
        sqlx::query(concat!(
            "SELECT ",
            rule_columns!(),
            " FROM rules WHERE expires_at IS NOT NULL AND expires_at <= $1
              ORDER BY expires_at, id LIMIT $2"
        ))
        .bind(now.0)
        .bind(sql_limit(limit))
        .try_map(rule_from_row)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db)
    }

    async fn insert_rules(&mut self, rules: &[NewRule]) -> StoreResult<Vec<RuleId>> {
        self.insert(rules, insert_rules_sql!(""))
            .await?
            .into_iter()
            .map(|id| id.ok_or_else(|| StoreError::Database("an inserted rule has no id".into())))
            .collect()
    }

    async fn insert_absent_rules(&mut self, rules: &[NewRule]) -> StoreResult<Vec<Option<RuleId>>> {
        if rules.is_empty() {
            return Ok(Vec::new());
        }
        if self.turn.keys_were_free {
            // Under a savepoint: a key that turns out to be taken undoes only this attempt.
            self.execute("SAVEPOINT insert_absent").await?;
            match self.insert_raw(rules, insert_rules_sql!("")).await {
                Ok(ids) => {
                    self.execute("RELEASE SAVEPOINT insert_absent").await?;
                    return ids;
                }
                Err(e)
                    if e.as_database_error()
                        .is_some_and(|e| e.is_unique_violation()) =>
                {
                    self.execute("ROLLBACK TO SAVEPOINT insert_absent").await?;
                }
                Err(e) => return Err(db(e)),
            }
        }
        let ids = self
            .insert(
                rules,
                insert_rules_sql!("ON CONFLICT (tenant_id, action, kind, target) DO NOTHING"),
            )
            .await?;
        self.turn.keys_were_free = ids.iter().all(Option::is_some);
        Ok(ids)
    }

    async fn update_rules(&mut self, rules: &[Rule]) -> StoreResult<()> {
        if rules.is_empty() {
            return Ok(());
        }
        let col = |f: fn(&Rule) -> i64| rules.iter().map(f).collect::<Vec<i64>>();
        let opt_text =
            |f: fn(&Rule) -> Option<String>| rules.iter().map(f).collect::<Vec<Option<String>>>();
        // Every mutable field, as SQLite's update does; tenant, action and target are the
        // rule's identity and never change.
        sqlx::query(
            "UPDATE rules SET expires_at = u.expires_at, name = u.name,
                    description = u.description, source = u.source, dataset = u.dataset,
                    tags = u.tags::jsonb, reports = u.reports, created_at = u.created_at,
                    updated_at = u.updated_at
             FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[],
                         $11::bigint[])
                 AS u(id, expires_at, name, description, source, dataset, tags, reports,
                      created_at, updated_at, tenant_id)
             WHERE rules.tenant_id = u.tenant_id AND rules.id = u.id",
        )
        .bind(col(|r| r.id))
        .bind(
            rules
                .iter()
                .map(|r| r.expires_at.map(|t| t.0))
                .collect::<Vec<_>>(),
        )
        .bind(opt_text(|r| r.name.clone()))
        .bind(opt_text(|r| r.description.clone()))
        .bind(rules.iter().map(|r| r.source.as_str()).collect::<Vec<_>>())
        .bind(opt_text(|r| r.dataset.clone()))
        .bind(rules.iter().map(|r| json_tags(&r.tags)).collect::<Vec<_>>())
        .bind(col(|r| i64::from(r.reports)))
        .bind(col(|r| r.created_at.0))
        .bind(col(|r| r.updated_at.0))
        .bind(col(|r| r.tenant.0))
        .execute(&mut *self.tx)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn delete_rules(&mut self, rules: &[(TenantId, RuleId)]) -> StoreResult<()> {
        if rules.is_empty() {
            return Ok(());
        }
        let tenants: Vec<i64> = rules.iter().map(|(tenant, _)| tenant.0).collect();
        let ids: Vec<i64> = rules.iter().map(|&(_, id)| id).collect();
        sqlx::query(
            "DELETE FROM rules USING UNNEST($1::bigint[], $2::bigint[]) AS d(tenant_id, id)
             WHERE rules.tenant_id = d.tenant_id AND rules.id = d.id",
        )
        .bind(tenants)
        .bind(ids)
        .execute(&mut *self.tx)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn rule_count(&mut self, tenant: TenantId) -> StoreResult<u64> {
        let count: Option<i64> = sqlx::query_scalar("SELECT rules FROM tenants WHERE id = $1")
            .bind(tenant.0)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(db)?;
        let count = count.unwrap_or(0);
        u64::try_from(count)
            .map_err(|_| StoreError::Corrupt(format!("tenant {} rule count {count}", tenant.0)))
    }

    async fn add_rule_count(&mut self, tenant: TenantId, delta: i64) -> StoreResult<()> {
        if delta == 0 {
            return Ok(());
        }
        sqlx::query("UPDATE tenants SET rules = rules + $2 WHERE id = $1")
            .bind(tenant.0)
            .bind(delta)
            .execute(&mut *self.tx)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn append_changes(&mut self, changes: &mut [Change]) -> StoreResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let col = |f: fn(&Change) -> i64| changes.iter().map(f).collect::<Vec<i64>>();
        let text = |f: fn(&Change) -> &'static str| changes.iter().map(f).collect::<Vec<_>>();
        // Numbers continue from the head this transaction locked when it began; moving the head
        // and writing the rows is one statement. The head is the only source of numbers, and
        // it is locked until commit, so the next transaction's numbers start above these and it
        // commits after this one.
        let head: i64 = sqlx::query_scalar(
            "WITH head AS (
                UPDATE feed_head SET seq = seq + cardinality($1::bigint[]) WHERE id = 1
                RETURNING seq
             ), logged AS (
                INSERT INTO rule_changes (seq, tenant_id, rule_id, op, action, kind, target,
                                          expires_at, name, at, source, dataset, description)
                SELECT head.seq - cardinality($1::bigint[]) + u.ord, u.tenant_id, u.rule_id,
                       u.op, u.action, u.kind, u.target, u.expires_at, u.name, u.at,
                       u.source, u.dataset, u.description
                FROM head, UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[],
                                  $5::text[], $6::text[], $7::bigint[], $8::text[],
                                  $9::bigint[], $10::text[], $11::text[], $12::text[])
                    WITH ORDINALITY AS u(tenant_id, rule_id, op, action, kind, target,
                                         expires_at, name, at, source, dataset, description,
                                         ord)
             )
             SELECT seq FROM head",
        )
        .bind(col(|c| c.tenant.0))
        .bind(col(|c| c.rule_id))
        .bind(text(|c| c.op.as_str()))
        .bind(text(|c| c.action.as_str()))
        .bind(text(|c| c.target.kind().as_str()))
        .bind(changes.iter().map(|c| c.target.text()).collect::<Vec<_>>())
        .bind(
            changes
                .iter()
                .map(|c| c.expires_at.map(|t| t.0))
                .collect::<Vec<_>>(),
        )
        .bind(changes.iter().map(|c| c.name.clone()).collect::<Vec<_>>())
        .bind(col(|c| c.at.0))
        .bind(text(|c| c.source.as_str()))
        .bind(
            changes
                .iter()
                .map(|c| c.dataset.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            changes
                .iter()
                .map(|c| c.description.clone())
                .collect::<Vec<_>>(),
        )
        .fetch_one(&mut *self.tx)
        .await
        .map_err(db)?;
        let first = head - changes.len() as i64 + 1;
        if first != self.head + 1 {
            // Only a writer that skipped the lock could have moved the head meanwhile.
            return Err(StoreError::Database(format!(
                "the change log head moved from {} to {} during a write transaction",
                self.head,
                first - 1
            )));
        }
        for (change, seq) in changes.iter_mut().zip(first..) {
            change.seq = seq as u64;
        }
        self.head = head;
        self.appended = true;
        Ok(())
    }

    async fn append_audit(&mut self, records: &[NewAuditRecord]) -> StoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let col = |f: fn(&NewAuditRecord) -> i64| records.iter().map(f).collect::<Vec<i64>>();
        let text = |f: fn(&NewAuditRecord) -> &str| records.iter().map(f).collect::<Vec<&str>>();
        // In input order, so records get growing ids in the order they were made.
        sqlx::query(
            "INSERT INTO audit_records (tenant_id, key_id, request_id, at, entry_count, entries)
             SELECT tenant_id, key_id, request_id, at, entry_count, entries
             FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[],
                         $6::text[])
                 WITH ORDINALITY AS u(tenant_id, key_id, request_id, at, entry_count, entries,
                                      ord)
             ORDER BY ord",
        )
        .bind(col(|r| r.tenant.0))
        .bind(col(|r| r.key_id))
        .bind(text(|r| &r.request_id))
        .bind(col(|r| r.at.0))
        .bind(col(|r| i64::from(r.entry_count)))
        .bind(text(|r| &r.entries))
        .execute(&mut *self.tx)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn purge_audit(&mut self, before: UnixMillis, limit: usize) -> StoreResult<usize> {
        self.purge_oldest("audit_records", "id", before, limit)
            .await
    }

    async fn purge_changes(&mut self, before: UnixMillis, limit: usize) -> StoreResult<usize> {
        // feed_head keeps its number, so purging the newest entries never makes a number
        // available again.
        self.purge_oldest("rule_changes", "seq", before, limit)
            .await
    }

    async fn tenant_id(&mut self, name: &TenantName, at: UnixMillis) -> StoreResult<TenantId> {
        // Looks first and inserts only when missing: ON CONFLICT DO NOTHING would use up an
        // identity number on every call for an existing tenant.
        let id: i64 = sqlx::query_scalar(
            "WITH found AS (SELECT id FROM tenants WHERE name = $1),
                  made AS (INSERT INTO tenants (name, created_at)
                           SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM found)
                           RETURNING id)
             SELECT id FROM found UNION ALL SELECT id FROM made",
        )
        .bind(name.as_str())
        .bind(at.0)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(db)?;
        Ok(TenantId(id))
    }

    async fn insert_key(&mut self, tenant: TenantId, key: &NewKey) -> StoreResult<ApiKey> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO api_keys (tenant_id, name, role, key_hash, created_at)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(tenant.0)
        .bind(&key.name)
        .bind(key.role.as_str())
        .bind(&key.digest[..])
        .bind(key.at.0)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(db)?;
        Ok(key.stored(id, tenant))
    }

    async fn revoke_key(&mut self, id: i64, at: UnixMillis) -> StoreResult<Option<ApiKey>> {
        // The statement's snapshot predates its own update, so the new revocation time comes
        // from the update's RETURNING.
        sqlx::query(concat!(
            "WITH revoked AS (
                UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL
                RETURNING id, revoked_at
             )
             SELECT ",
            key_columns!(),
            ", revoked.revoked_at
             FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
                 LEFT JOIN revoked ON revoked.id = k.id
             WHERE k.id = $1"
        ))
        .bind(id)
        .bind(at.0)
        .try_map(|row: PgRow| {
            let now_revoked: Option<i64> = row.try_get(7)?;
            let mut key = key_from_row(row)?;
            if let Some(at) = now_revoked {
                key.revoked_at = Some(UnixMillis(at));
            }
            Ok(key)
        })
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(db)
    }

    async fn enqueue_report(&mut self, report: &QueuedReport) -> StoreResult<i64> {
        sqlx::query_scalar(
            "INSERT INTO report_queue (tenant_id, key_id, kind, payload, received_at)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(report.tenant.0)
        .bind(report.key_id)
        .bind(report.kind.as_str())
        .bind(&report.payload)
        .bind(report.received_at.0)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(db)
    }

    async fn claim_reports(&mut self, limit: usize) -> StoreResult<Vec<QueuedReport>> {
        // Row locks until this transaction ends; rows another transaction holds are passed
        // over rather than waited for.
        sqlx::query(concat!(
            "SELECT ",
            report_columns!(),
            " FROM report_queue ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
        ))
        .bind(sql_limit(limit))
        .try_map(report_from_row)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db)
    }

    async fn delete_reports(&mut self, ids: &[i64]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query("DELETE FROM report_queue WHERE id = ANY($1::bigint[])")
            .bind(ids)
            .execute(&mut *self.tx)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn probe(&mut self, at: UnixMillis) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO health (id, at) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET at = excluded.at",
        )
        .bind(at.0)
        .execute(&mut *self.tx)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> StoreResult<()> {
        let PgTransaction {
            mut tx,
            turn,
            announcer,
            head,
            appended,
        } = *self;
        if appended {
            // Delivered when (and only if) the transaction commits, to listeners of this
            // schema's channel.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&announcer.channel)
                .bind(announcer.payload(head))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        drop(turn);
        Ok(())
    }
}

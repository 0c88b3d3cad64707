//! Every write Palisade makes, as operations on a backend transaction: the rows to read, what
//! to write (through [`merge`]), what to audit and what the change log says. Both backends run
//! exactly this code.

use std::collections::HashMap;

use foldhash::{HashMapExt, HashSetExt};

use super::merge::{Merged, key_of, merge};
use crate::keys::ApiKey;
use crate::reports::{self, ReportPayload};
use crate::rules::{NewRule, Rule, RuleAction, RuleId, Target, TenantId, UnixMillis};
use crate::store::audit::{AuditEntries, MAX_RECORD_ENTRIES, NewAuditRecord};
use crate::store::backend::Transaction;
use crate::store::{
    Actor, BatchItem, Change, ChangeOp, NewKey, QueuedReport, RuleWrite, StoreResult, WriteBatch,
    audit_text,
};

/// How writes are checked and audited.
#[derive(Debug, Clone, Copy)]
pub struct WritePolicy {
    /// Audit entries keep events up to this size whole (see [`audit_text`]).
    pub audit_event_bytes: usize,
    /// Most rules one tenant may store; a write that would create one more is refused.
    pub rules_per_tenant: u64,
}

impl Default for WritePolicy {
    fn default() -> Self {
        Self {
            audit_event_bytes: 8192,
            rules_per_tenant: 5_000_000,
        }
    }
}

/// One unit of work for the writer; a group of them commits in one transaction.
#[derive(Debug)]
pub enum Op {
    Write {
        batch: WriteBatch,
        audit: AuditDraft,
    },
    DeleteRule {
        tenant: TenantId,
        id: RuleId,
        key_id: i64,
        request_id: String,
        at: UnixMillis,
    },
    Purge {
        now: UnixMillis,
        limit: usize,
    },
    PurgeAudit {
        before: UnixMillis,
        limit: usize,
    },
    PurgeChanges {
        before: UnixMillis,
        limit: usize,
    },
    CreateKey {
        key: NewKey,
        by: Actor,
    },
    RevokeKey {
        id: i64,
        at: UnixMillis,
        by: Actor,
    },
    EnqueueReport(QueuedReport),
    /// Applies up to `limit` queued reports (at least one, whatever its size, but no more than
    /// `max_writes` addresses in all) and takes them off the queue.
    ProcessReports {
        limit: usize,
        max_writes: usize,
        at: UnixMillis,
    },
    Probe(UnixMillis),
}

/// What an op produced.
#[derive(Debug)]
pub enum Output {
    Written(WriteOutcome),
    Deleted(Option<Change>),
    Changes(Vec<Change>),
    Count(usize),
    Key(ApiKey),
    MaybeKey(Option<ApiKey>),
    QueueId(i64),
    Reports(ProcessedReports),
    Done,
}

impl Output {
    /// Moves out the rule changes this output carries (the one change of a deletion is
    /// copied), so that they can be handed on without copying a round's thousands.
    pub fn take_changes(&mut self) -> Vec<Change> {
        match self {
            Output::Written(outcome) => std::mem::take(&mut outcome.changes),
            Output::Deleted(change) => change.iter().cloned().collect(),
            Output::Changes(changes) => std::mem::take(changes),
            Output::Reports(processed) => std::mem::take(&mut processed.changes),
            _ => Vec::new(),
        }
    }

    /// Puts back what [`Output::take_changes`] took.
    pub fn restore_changes(&mut self, changes: Vec<Change>) {
        match self {
            Output::Written(outcome) => outcome.changes = changes,
            Output::Changes(taken) => *taken = changes,
            Output::Reports(processed) => processed.changes = changes,
            _ => {}
        }
    }
}

/// What a write batch did.
#[derive(Debug, Default, Clone)]
pub struct WriteOutcome {
    pub changes: Vec<Change>,
    /// Rules the batch created (the other puts refreshed a rule in force).
    pub created: usize,
    /// Positions of valid items refused because the tenant has reached its rule quota.
    pub over_quota: Vec<usize>,
}

/// What a round of the report queue did.
#[derive(Debug, Default)]
pub struct ProcessedReports {
    /// Reports taken off the queue.
    pub reports: usize,
    pub changes: Vec<Change>,
    /// Addresses not blocked because their tenant had reached its rule quota.
    pub over_quota: usize,
}

impl Op {
    /// Rows this op writes, roughly: how much of a group's budget it takes.
    pub fn weight(&self) -> usize {
        match self {
            Op::Write { batch, .. } => batch.items.len().max(1),
            Op::ProcessReports { max_writes, .. } => *max_writes,
            _ => 1,
        }
    }

    pub async fn run(&self, tx: &mut dyn Transaction, policy: &WritePolicy) -> StoreResult<Output> {
        Ok(match self {
            Op::Write { batch, audit } => Output::Written(write(tx, policy, batch, audit).await?),
            Op::DeleteRule {
                tenant,
                id,
                key_id,
                request_id,
                at,
            } => Output::Deleted(
                delete_rule(tx, policy, *tenant, *id, *key_id, request_id, *at).await?,
            ),
            Op::Purge { now, limit } => Output::Changes(purge(tx, *now, *limit).await?),
            Op::PurgeAudit { before, limit } => {
                Output::Count(tx.purge_audit(*before, *limit).await?)
            }
            Op::PurgeChanges { before, limit } => {
                Output::Count(tx.purge_changes(*before, *limit).await?)
            }
            Op::CreateKey { key, by } => {
                let tenant = tx.tenant_id(&key.tenant, key.at).await?;
                let made = tx.insert_key(tenant, key).await?;
                audit_key(tx, "create_key", &made, by, key.at).await?;
                Output::Key(made)
            }
            Op::RevokeKey { id, at, by } => {
                let revoked = tx.revoke_key(*id, *at).await?;
                if let Some(key) = &revoked {
                    audit_key(tx, "revoke_key", key, by, *at).await?;
                }
                Output::MaybeKey(revoked)
            }
            Op::EnqueueReport(report) => Output::QueueId(enqueue(tx, policy, report).await?),
            Op::ProcessReports {
                limit,
                max_writes,
                at,
            } => Output::Reports(process_reports(tx, policy, *limit, *max_writes, *at).await?),
            Op::Probe(at) => {
                tx.probe(*at).await?;
                Output::Done
            }
        })
    }
}

/// The key a write names within its tenant.
type Key = (RuleAction, Target);

/// A rule as the writes of a group find it.
struct Stored {
    rule: Rule,
    /// Stored when the rows were loaded, for the first write of its key, which has not been
    /// planned yet: that write is the create that made it.
    created_by_first_write: bool,
}

impl Stored {
    fn created(rule: Rule) -> Self {
        Self {
            rule,
            created_by_first_write: true,
        }
    }

    fn found(rule: Rule) -> Self {
        Self {
            rule,
            created_by_first_write: false,
        }
    }
}

/// The rules of one tenant a group of writes touches, as the writes go. The maps hash with
/// foldhash, seeded per process (the targets come from clients): SipHash, over every key four
/// times per write, showed in the writer's profile under scattered ingest.
struct Rows {
    tenant: TenantId,
    stored: foldhash::HashMap<Key, Stored>,
    /// Keys written since the last flush: a second write to one of them flushes first, so
    /// that it merges into the row the first one made.
    pending_keys: foldhash::HashSet<Key>,
    creates: Vec<(usize, NewRule)>,
    updates: Vec<Rule>,
    deletes: Vec<(TenantId, RuleId)>,
    /// Per write, in order: the change it makes (rule id 0 until a create is stored).
    changes: Vec<Option<Change>>,
    /// Rules created so far.
    created: usize,
    /// Rules the tenant stores, kept current as writes are planned.
    count: u64,
    count_at_start: u64,
}

impl Rows {
    /// Reads the stored rules the writes' keys have. When the tenant has room for a rule per
    /// key, the rules the first write of each key would create are stored first, where their
    /// key is free, and only the keys that were taken are read: one step per new rule instead
    /// of a read and a write. (Each key holds one rule at most, so creates within that room
    /// can never pass the quota, which is checked write by write otherwise.)
    async fn load<'w>(
        tx: &mut dyn Transaction,
        tenant: TenantId,
        writes: impl Iterator<Item = &'w RuleWrite>,
        at: UnixMillis,
        quota: u64,
    ) -> StoreResult<Self> {
        // Sized up front: growing them rehashes every key several times over a large batch.
        let writes: Vec<&RuleWrite> = writes.collect();
        let mut keys = foldhash::HashSet::with_capacity(writes.len());
        let first_writes: Vec<&RuleWrite> = writes
            .into_iter()
            .filter(|write| keys.insert(key_of(write)))
            .collect();
        let distinct = keys.len();
        let count = tx.rule_count(tenant).await?;
        // Room for the rules created below as well, which join the stored ones.
        let mut stored = foldhash::HashMap::with_capacity(distinct);
        let mut to_read = Vec::new();
        if count.saturating_add(first_writes.len() as u64) <= quota {
            let mut creates = Vec::new();
            for write in first_writes {
                match merge(None, write, tenant, at) {
                    Merged::Create(new) => creates.push(new),
                    _ => to_read.push(key_of(write)),
                }
            }
            let ids = tx.insert_absent_rules(&creates).await?;
            for (new, id) in creates.into_iter().zip(ids) {
                match id {
                    Some(id) => {
                        let rule = new.with_id(id);
                        stored.insert((rule.action, rule.target), Stored::created(rule));
                    }
                    None => to_read.push((new.action, new.target)),
                }
            }
        } else {
            to_read = keys.into_iter().collect();
        }
        stored.extend(
            tx.rules_by_key(tenant, &to_read)
                .await?
                .into_iter()
                .map(|rule| ((rule.action, rule.target), Stored::found(rule))),
        );
        Ok(Self {
            tenant,
            stored,
            pending_keys: Default::default(),
            creates: Vec::new(),
            updates: Vec::new(),
            deletes: Vec::new(),
            changes: Vec::new(),
            created: 0,
            count,
            count_at_start: count,
        })
    }

    /// Plans one write; `false` when it would create a rule beyond the tenant's quota (it is
    /// then not planned).
    async fn plan(
        &mut self,
        tx: &mut dyn Transaction,
        write: &RuleWrite,
        at: UnixMillis,
        quota: u64,
    ) -> StoreResult<bool> {
        let key = key_of(write);
        if let Some(stored) = self.stored.get_mut(&key)
            && std::mem::take(&mut stored.created_by_first_write)
        {
            let rule = &stored.rule;
            self.count += 1;
            self.created += 1;
            self.changes
                .push(Some(Change::of(rule, ChangeOp::Put, rule.updated_at)));
            return Ok(true);
        }
        if self.pending_keys.contains(&key) {
            self.flush(tx).await?;
        }
        match merge(
            self.stored.get(&key).map(|s| &s.rule),
            write,
            self.tenant,
            at,
        ) {
            Merged::Unchanged => self.changes.push(None),
            Merged::Create(_) if self.count >= quota => return Ok(false),
            Merged::Create(new) => {
                self.count += 1;
                self.created += 1;
                self.changes.push(None);
                self.creates.push((self.changes.len() - 1, new));
                self.pending_keys.insert(key);
            }
            Merged::Update(rule) => {
                self.changes
                    .push(Some(Change::of(&rule, ChangeOp::Put, at)));
                self.stored.insert(key, Stored::found(rule.clone()));
                self.updates.push(rule);
                self.pending_keys.insert(key);
            }
            Merged::Remove(rule) => {
                self.count = self.count.saturating_sub(1);
                self.changes
                    .push(Some(Change::of(&rule, ChangeOp::Delete, at)));
                self.stored.remove(&key);
                self.deletes.push((rule.tenant, rule.id));
                self.pending_keys.insert(key);
            }
        }
        Ok(true)
    }

    /// Writes what has been planned. Within one flush every key appears once, so deletes,
    /// creates and updates may go in that order.
    async fn flush(&mut self, tx: &mut dyn Transaction) -> StoreResult<()> {
        if !self.deletes.is_empty() {
            tx.delete_rules(&std::mem::take(&mut self.deletes)).await?;
        }
        if !self.creates.is_empty() {
            let creates = std::mem::take(&mut self.creates);
            let rules: Vec<NewRule> = creates.iter().map(|(_, rule)| rule.clone()).collect();
            let ids = tx.insert_rules(&rules).await?;
            for ((slot, new), id) in creates.into_iter().zip(ids) {
                let rule = new.with_id(id);
                self.changes[slot] = Some(Change::of(&rule, ChangeOp::Put, rule.updated_at));
                self.stored
                    .insert((rule.action, rule.target), Stored::found(rule));
            }
        }
        if !self.updates.is_empty() {
            tx.update_rules(&std::mem::take(&mut self.updates)).await?;
        }
        self.pending_keys.clear();
        Ok(())
    }

    /// Writes the rest, the rule count and the change log; returns the changes, numbered.
    async fn finish(mut self, tx: &mut dyn Transaction) -> StoreResult<Vec<Change>> {
        self.flush(tx).await?;
        let delta = self.count as i64 - self.count_at_start as i64;
        tx.add_rule_count(self.tenant, delta).await?;
        let mut changes: Vec<Change> = self.changes.into_iter().flatten().collect();
        if !changes.is_empty() {
            tx.append_changes(&mut changes).await?;
        }
        Ok(changes)
    }
}

/// Why a valid write was refused for the quota, as audited.
fn over_quota_reason(quota: u64) -> String {
    format!("target: the tenant's quota of {quota} rules is reached")
}

/// A batch's audit records as they read when no write of it is refused for the quota, which is
/// nearly always. Escaping every event into JSON is a good part of a batch's audit; worked out
/// before the batch queues, it is done by the request's own task, in parallel with other
/// requests, rather than by the one writer. The writer redoes only a record holding a refusal.
#[derive(Debug)]
pub struct AuditDraft(Vec<NewAuditRecord>);

impl AuditDraft {
    pub fn of(batch: &WriteBatch, policy: &WritePolicy) -> Self {
        Self(
            batch
                .items
                .chunks(MAX_RECORD_ENTRIES)
                .enumerate()
                .map(|(n, items)| audit_record(batch, n * MAX_RECORD_ENTRIES, items, &[], policy))
                .collect(),
        )
    }
}

/// The audit record of `items`, the batch's events from position `first` on; `over_quota`:
/// the positions among them whose write was refused for the quota, ascending.
fn audit_record(
    batch: &WriteBatch,
    first: usize,
    items: &[BatchItem],
    over_quota: &[usize],
    policy: &WritePolicy,
) -> NewAuditRecord {
    let event_bytes = items
        .iter()
        .map(|item| item.event.len().min(policy.audit_event_bytes))
        .sum();
    let mut entries = AuditEntries::with_capacity(items.len(), event_bytes);
    let quota_reason = over_quota_reason(policy.rules_per_tenant);
    let mut over_quota = over_quota.iter().peekable();
    for (index, BatchItem { event, write }) in (first..).zip(items) {
        let error = match write {
            Err(reason) => Some(reason.as_str()),
            Ok(_) if over_quota.next_if_eq(&&index).is_some() => Some(quota_reason.as_str()),
            Ok(_) => None,
        };
        let text = audit_text(event, policy.audit_event_bytes);
        entries.push(Some(index as u32), &text, error);
    }
    NewAuditRecord::new(
        batch.tenant,
        batch.key_id,
        batch.request_id.clone(),
        batch.at,
        entries,
    )
}

async fn write(
    tx: &mut dyn Transaction,
    policy: &WritePolicy,
    batch: &WriteBatch,
    draft: &AuditDraft,
) -> StoreResult<WriteOutcome> {
    let writes = batch
        .items
        .iter()
        .filter_map(|item| item.write.as_ref().ok());
    let mut rows = Rows::load(tx, batch.tenant, writes, batch.at, policy.rules_per_tenant).await?;
    let mut over_quota = Vec::new();
    // One audit record per request, or per `MAX_RECORD_ENTRIES` events of a larger batch.
    let mut audit = Vec::with_capacity(draft.0.len());
    for ((n, items), drafted) in batch
        .items
        .chunks(MAX_RECORD_ENTRIES)
        .enumerate()
        .zip(&draft.0)
    {
        let first = n * MAX_RECORD_ENTRIES;
        let refused_before = over_quota.len();
        for (index, item) in (first..).zip(items) {
            if let Ok(write) = &item.write
                && !rows
                    .plan(tx, write, batch.at, policy.rules_per_tenant)
                    .await?
            {
                over_quota.push(index);
            }
        }
        audit.push(if over_quota.len() == refused_before {
            drafted.clone()
        } else {
            audit_record(batch, first, items, &over_quota[refused_before..], policy)
        });
    }
    let created = rows.created;
    let changes = rows.finish(tx).await?;
    tx.append_audit(&audit).await?;
    Ok(WriteOutcome {
        changes,
        created,
        over_quota,
    })
}

async fn delete_rule(
    tx: &mut dyn Transaction,
    policy: &WritePolicy,
    tenant: TenantId,
    id: RuleId,
    key_id: i64,
    request_id: &str,
    at: UnixMillis,
) -> StoreResult<Option<Change>> {
    let Some(rule) = tx
        .rule_by_id(tenant, id)
        .await?
        .filter(|rule| rule.is_active_at(at))
    else {
        return Ok(None);
    };
    tx.delete_rules(&[(tenant, rule.id)]).await?;
    tx.add_rule_count(tenant, -1).await?;
    let mut changes = [Change::of(&rule, ChangeOp::Delete, at)];
    tx.append_changes(&mut changes).await?;
    let event = serde_json::json!({ "op": "delete_rule", "id": id }).to_string();
    tx.append_audit(&[NewAuditRecord::single(
        tenant,
        key_id,
        request_id.to_owned(),
        at,
        &audit_text(&event, policy.audit_event_bytes),
        None,
    )])
    .await?;
    let [change] = changes;
    Ok(Some(change))
}

async fn purge(
    tx: &mut dyn Transaction,
    now: UnixMillis,
    limit: usize,
) -> StoreResult<Vec<Change>> {
    let expired = tx.expired_rules(now, limit).await?;
    if expired.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<(TenantId, RuleId)> = expired.iter().map(|rule| (rule.tenant, rule.id)).collect();
    tx.delete_rules(&keys).await?;
    let mut per_tenant: HashMap<TenantId, i64> = HashMap::new();
    for rule in &expired {
        *per_tenant.entry(rule.tenant).or_default() -= 1;
    }
    for (tenant, delta) in per_tenant {
        tx.add_rule_count(tenant, delta).await?;
    }
    let mut changes: Vec<Change> = expired
        .iter()
        .map(|rule| Change::of(rule, ChangeOp::Expire, now))
        .collect();
    tx.append_changes(&mut changes).await?;
    Ok(changes)
}

/// Keys made and revoked are audited in the key's tenant, like rule changes: who holds access
/// is the first thing an incident review asks.
async fn audit_key(
    tx: &mut dyn Transaction,
    op: &str,
    key: &ApiKey,
    by: &Actor,
    at: UnixMillis,
) -> StoreResult<()> {
    let event = serde_json::json!({
        "op": op,
        "key": {"id": key.id, "name": key.name, "role": key.role.as_str()},
    })
    .to_string();
    tx.append_audit(&[NewAuditRecord::single(
        key.tenant_id,
        by.key_id,
        by.request_id.clone(),
        at,
        &event,
        None,
    )])
    .await
}

async fn enqueue(
    tx: &mut dyn Transaction,
    policy: &WritePolicy,
    report: &QueuedReport,
) -> StoreResult<i64> {
    let id = tx.enqueue_report(report).await?;
    let event = format!(
        r#"{{"op":"{}","queue_id":{id},"request":{}}}"#,
        report.kind.as_str(),
        report.payload
    );
    tx.append_audit(&[NewAuditRecord::single(
        report.tenant,
        report.key_id,
        format!("report-{id}"),
        report.received_at,
        &audit_text(&event, policy.audit_event_bytes),
        None,
    )])
    .await?;
    Ok(id)
}

/// Takes reports off the queue and applies them in the same transaction: after a crash each
/// is applied exactly once, and on a shared database a report claimed by one node is skipped
/// by the others.
async fn process_reports(
    tx: &mut dyn Transaction,
    policy: &WritePolicy,
    limit: usize,
    max_writes: usize,
    at: UnixMillis,
) -> StoreResult<ProcessedReports> {
    let claimed = tx.claim_reports(limit).await?;
    let mut taken = Vec::new();
    let mut by_tenant: Vec<(TenantId, Vec<RuleWrite>)> = Vec::new();
    let mut writes_so_far = 0;
    for report in claimed {
        let writes = match serde_json::from_str::<ReportPayload>(&report.payload) {
            Ok(payload) => reports::writes(report.kind, &payload, report.received_at),
            Err(e) => {
                // Only a hand-edited database gets here; dropping the report keeps it from
                // blocking every report behind it.
                tracing::error!(queue_id = report.id, error = %e, "dropping an unreadable queued report");
                Vec::new()
            }
        };
        // Always at least one report, however large.
        if !taken.is_empty() && writes_so_far + writes.len().max(1) > max_writes {
            break;
        }
        writes_so_far += writes.len().max(1);
        taken.push(report.id);
        match by_tenant.last_mut() {
            Some((tenant, all)) if *tenant == report.tenant => all.extend(writes),
            _ => by_tenant.push((report.tenant, writes)),
        }
    }
    let mut processed = ProcessedReports {
        reports: taken.len(),
        ..Default::default()
    };
    for (tenant, writes) in by_tenant {
        let mut rows = Rows::load(tx, tenant, writes.iter(), at, policy.rules_per_tenant).await?;
        for write in &writes {
            if !rows.plan(tx, write, at, policy.rules_per_tenant).await? {
                processed.over_quota += 1;
            }
        }
        processed.changes.extend(rows.finish(tx).await?);
    }
    if processed.over_quota > 0 {
        tracing::warn!(
            addresses = processed.over_quota,
            quota = policy.rules_per_tenant,
            "reported addresses not blocked: their tenant has reached its rule quota"
        );
    }
    tx.delete_reports(&taken).await?;
    Ok(processed)
}

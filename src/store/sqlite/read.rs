//! Reads, each on a read-only connection of the pool (WAL lets them run beside the writer).

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::rows::{
    self, CHANGE_COLUMNS, KEY_COLUMNS, LIVE_KEY_COLUMNS, REPORT_COLUMNS, RULE_COLUMNS,
};
use crate::keys::{ApiKey, KeyDigest, Principal};
use crate::rules::{Kind, Rule, RuleAction, RuleId, TenantId, UnixMillis};
use crate::store::audit::AuditRecord;
use crate::store::{
    BouncerRecord, Change, DecisionDelta, Page, QueueStats, QueuedReport, RuleCount, RuleQuery,
    Snapshot, StoreError, StoreResult, StreamCursor,
};

pub fn rule(
    conn: &Connection,
    tenant: TenantId,
    id: RuleId,
    now: UnixMillis,
) -> StoreResult<Option<Rule>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RULE_COLUMNS} FROM rules
         WHERE id = ?1 AND tenant_id = ?2 AND (expires_at IS NULL OR expires_at > ?3)"
    ))?;
    let mut found = stmt.query(params![id, tenant.0, now.0])?;
    found.next()?.map(rows::rule).transpose()
}

/// `ids`, when given, are the only rules that can match (those the query's target has).
pub fn rules(
    conn: &Connection,
    tenant: TenantId,
    query: &RuleQuery,
    ids: Option<&[RuleId]>,
) -> StoreResult<Page<Rule>> {
    if ids.is_some_and(|ids| ids.is_empty()) {
        return Ok(Page::of(Vec::new(), query.limit, |r: &Rule| r.id));
    }
    let mut sql = format!(
        "SELECT {RULE_COLUMNS} FROM rules
         WHERE tenant_id = ?1 AND id > ?2 AND (expires_at IS NULL OR expires_at > ?3)"
    );
    let mut args: Vec<SqlValue> = vec![
        tenant.0.into(),
        query.after.unwrap_or(0).into(),
        query.now.0.into(),
    ];
    if let Some(ids) = ids {
        let first = args.len() + 1;
        args.extend(ids.iter().map(|id| SqlValue::from(*id)));
        let params: Vec<String> = (first..=args.len()).map(|i| format!("?{i}")).collect();
        sql.push_str(&format!(" AND id IN ({})", params.join(", ")));
    }
    let mut filter = |column: &str, value: SqlValue| {
        args.push(value);
        sql.push_str(&format!(" AND {column} = ?{}", args.len()));
    };
    if let Some(kind) = query.kind {
        filter("kind", kind.as_str().to_owned().into());
    }
    if let Some(target) = query.target {
        filter("kind", target.kind().as_str().to_owned().into());
        filter("target", target.to_string().into());
    }
    if let Some(name) = &query.name {
        filter("name", name.clone().into());
    }
    if let Some(action) = query.action {
        filter("action", action.as_str().to_owned().into());
    }
    if let Some(source) = query.source {
        filter("source", source.as_str().to_owned().into());
    }
    if let Some(dataset) = &query.dataset {
        filter("dataset", dataset.clone().into());
    }
    if let Some(tag) = &query.tag {
        args.push(tag.clone().into());
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM json_each(rules.tags) WHERE value = ?{})",
            args.len()
        ));
    }
    args.push((query.limit as i64 + 1).into());
    sql.push_str(&format!(" ORDER BY id LIMIT ?{}", args.len()));
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut found = stmt.query(params_from_iter(args))?;
    let mut items = Vec::new();
    while let Some(row) = found.next()? {
        items.push(rows::rule(row)?);
    }
    Ok(Page::of(items, query.limit, |r| r.id))
}

pub fn audit_record_sizes(
    conn: &Connection,
    tenant: TenantId,
    at_most: i64,
    limit: usize,
) -> StoreResult<Vec<(i64, usize)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, entry_count FROM audit_records
         WHERE tenant_id = ?1 AND id <= ?2 ORDER BY id DESC LIMIT ?3",
    )?;
    let sizes = stmt
        .query_map(params![tenant.0, at_most, limit as i64], |row| {
            Ok((row.get(0)?, row.get::<_, i64>(1)?.max(0) as usize))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(sizes)
}

pub fn audit_records(
    conn: &Connection,
    tenant: TenantId,
    oldest: i64,
    newest: i64,
) -> StoreResult<Vec<AuditRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, at, key_id, request_id, entries FROM audit_records
         WHERE tenant_id = ?1 AND id BETWEEN ?2 AND ?3 ORDER BY id DESC",
    )?;
    let mut found = stmt.query(params![tenant.0, oldest, newest])?;
    let mut records = Vec::new();
    while let Some(row) = found.next()? {
        records.push(AuditRecord {
            id: row.get(0)?,
            at: UnixMillis(row.get(1)?),
            key_id: row.get(2)?,
            request_id: row.get(3)?,
            entries: rows::audit_entries(row.get_ref(4)?)?,
        });
    }
    Ok(records)
}

pub fn changes_since(conn: &Connection, seq: u64, limit: usize) -> StoreResult<Vec<Change>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CHANGE_COLUMNS} FROM rule_changes WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    ))?;
    let mut found = stmt.query(params![seq as i64, limit as i64])?;
    let mut changes = Vec::new();
    while let Some(row) = found.next()? {
        changes.push(rows::change(row)?);
    }
    Ok(changes)
}

/// The last number the change log handed out (0 for none), including numbers of entries
/// since deleted by retention.
pub fn head(conn: &Connection) -> StoreResult<u64> {
    let seq: i64 = conn
        .query_row(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'rule_changes'), 0)",
            [],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or(0);
    Ok(seq as u64)
}

pub fn snapshot(conn: &Connection, now: UnixMillis) -> StoreResult<Snapshot> {
    // One read transaction: the rules and the sequence number describe the same moment.
    let tx = conn.unchecked_transaction()?;
    let seq = head(&tx)?;
    let mut stmt = tx.prepare(&format!(
        "SELECT {RULE_COLUMNS} FROM rules WHERE expires_at IS NULL OR expires_at > ?1"
    ))?;
    let mut found = stmt.query([now.0])?;
    let mut rules = Vec::new();
    while let Some(row) = found.next()? {
        rules.push(rows::rule(row)?);
    }
    drop(found);
    drop(stmt);
    tx.finish()?;
    Ok(Snapshot { seq, rules })
}

pub fn keys(conn: &Connection) -> StoreResult<Vec<ApiKey>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys k JOIN tenants t ON t.id = k.tenant_id ORDER BY k.id"
    ))?;
    let mut found = stmt.query([])?;
    let mut keys = Vec::new();
    while let Some(row) = found.next()? {
        keys.push(rows::api_key(row)?);
    }
    Ok(keys)
}

pub fn live_keys(conn: &Connection) -> StoreResult<Vec<(KeyDigest, Principal)>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {LIVE_KEY_COLUMNS} FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
         WHERE k.revoked_at IS NULL"
    ))?;
    let mut found = stmt.query([])?;
    let mut keys = Vec::new();
    while let Some(row) = found.next()? {
        keys.push(rows::live_key(row)?);
    }
    Ok(keys)
}

pub fn live_key(conn: &Connection, digest: &KeyDigest) -> StoreResult<Option<Principal>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {LIVE_KEY_COLUMNS} FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
         WHERE k.key_hash = ?1 AND k.revoked_at IS NULL"
    ))?;
    let mut found = stmt.query([&digest[..]])?;
    found
        .next()?
        .map(|row| rows::live_key(row).map(|(_, principal)| principal))
        .transpose()
}

pub fn rule_counts(
    conn: &Connection,
    tenant: TenantId,
    now: UnixMillis,
) -> StoreResult<Vec<RuleCount>> {
    let mut statement = conn.prepare_cached(RULE_COUNTS)?;
    let rows = statement.query_map(rusqlite::params![tenant.0, now.0], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, bool>(2)?,
            row.get::<_, i64>(3)?,
        ))
    })?;
    let mut counts = Vec::new();
    for row in rows {
        let (kind, action, range, count) = row?;
        counts.push(RuleCount {
            kind: Kind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("kind {kind}")))?,
            range,
            action: RuleAction::parse(&action)
                .ok_or_else(|| StoreError::Corrupt(format!("action {action}")))?,
            count: count as u64,
        });
    }
    Ok(counts)
}

/// Single addresses keep their `/32` (IPv4) or `/128` (IPv6, always written with a colon) in
/// the stored text (see `rules::Target`); an IPv6 `/32` is a range.
pub const RULE_COUNTS: &str = "SELECT kind, action,
        kind = 'ip' AND NOT (target LIKE '%/128' OR (target NOT LIKE '%:%' AND target LIKE '%/32')),
        count(*)
    FROM rules WHERE tenant_id = ?1 AND (expires_at IS NULL OR expires_at > ?2)
    GROUP BY 1, 2, 3";

pub fn waiting_reports(
    conn: &Connection,
    tenant: TenantId,
    limit: usize,
) -> StoreResult<Vec<QueuedReport>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {REPORT_COLUMNS} FROM report_queue WHERE tenant_id = ?1 ORDER BY id LIMIT ?2"
    ))?;
    let mut found = stmt.query(params![tenant.0, limit as i64])?;
    let mut queued = Vec::new();
    while let Some(row) = found.next()? {
        queued.push(rows::queued_report(row)?);
    }
    Ok(queued)
}

pub fn queue_stats(conn: &Connection, tenant: Option<TenantId>) -> StoreResult<QueueStats> {
    let (depth, oldest): (i64, Option<i64>) = conn.query_row(
        "SELECT COUNT(*), MIN(received_at) FROM report_queue WHERE ?1 IS NULL OR tenant_id = ?1",
        [tenant.map(|t| t.0)],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    Ok(QueueStats {
        depth: depth as u64,
        oldest: oldest.map(UnixMillis),
    })
}

const BOUNCER_COLUMNS: &str =
    "key_id, tenant_id, last_pull, user_agent, address, version, cursor_seq, cursor_at";

fn bouncer_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<BouncerRecord> {
    let seq: Option<i64> = row.get(6)?;
    let at: Option<i64> = row.get(7)?;
    Ok(BouncerRecord {
        key_id: row.get(0)?,
        tenant: TenantId(row.get(1)?),
        last_pull: UnixMillis(row.get(2)?),
        user_agent: row.get(3)?,
        address: row.get(4)?,
        version: row.get(5)?,
        cursor: seq.zip(at).map(|(seq, at)| StreamCursor {
            seq: seq as u64,
            at: UnixMillis(at),
        }),
    })
}

pub fn bouncers(conn: &Connection) -> StoreResult<Vec<BouncerRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {BOUNCER_COLUMNS} FROM bouncers ORDER BY key_id"
    ))?;
    let found = stmt.query_map([], bouncer_row)?;
    Ok(found.collect::<Result<_, _>>()?)
}

pub fn bouncer(conn: &Connection, key_id: i64) -> StoreResult<Option<BouncerRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {BOUNCER_COLUMNS} FROM bouncers WHERE key_id = ?1"
    ))?;
    Ok(stmt.query_row([key_id], bouncer_row).optional()?)
}

pub fn decision_delta(
    conn: &Connection,
    tenant: TenantId,
    since: StreamCursor,
    now: UnixMillis,
    limit: usize,
) -> StoreResult<DecisionDelta> {
    // One read transaction: the changes, the expired rules and the head describe one moment.
    let tx = conn.unchecked_transaction()?;
    let mut head = head(&tx)?;
    let oldest: Option<i64> = tx
        .prepare_cached("SELECT MIN(seq) FROM rule_changes")?
        .query_row([], |row| row.get(0))?;
    let mut changes = Vec::new();
    {
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT {CHANGE_COLUMNS} FROM rule_changes WHERE tenant_id = ?1 AND seq > ?2
             ORDER BY seq LIMIT ?3"
        ))?;
        let mut found = stmt.query(params![tenant.0, since.seq as i64, limit as i64])?;
        while let Some(row) = found.next()? {
            changes.push(rows::change(row)?);
        }
    }
    if changes.len() >= limit
        && let Some(last) = changes.last()
    {
        head = last.seq;
    }
    let mut expired = Vec::new();
    {
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT {RULE_COLUMNS} FROM rules
             WHERE expires_at > ?2 AND expires_at <= ?3 AND tenant_id = ?1 AND action = 'block'"
        ))?;
        let mut found = stmt.query(params![tenant.0, since.at.0, now.0])?;
        while let Some(row) = found.next()? {
            expired.push(rows::rule(row)?);
        }
    }
    tx.finish()?;
    Ok(DecisionDelta {
        head,
        changes,
        expired,
        oldest: oldest.map(|seq| seq as u64),
    })
}

/// Reads the tenant's active block rules in one read transaction, handing on the head first
/// and then the rules in chunks, until done or until nobody takes them any more.
pub fn active_blocks(
    conn: &Connection,
    tenant: TenantId,
    now: UnixMillis,
    chunk: usize,
    head_to: tokio::sync::oneshot::Sender<StoreResult<u64>>,
    chunks: &tokio::sync::mpsc::Sender<StoreResult<Vec<Rule>>>,
) -> StoreResult<()> {
    let tx = conn.unchecked_transaction()?;
    let seq = head(&tx)?;
    if head_to.send(Ok(seq)).is_err() {
        return Ok(());
    }
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {RULE_COLUMNS} FROM rules
         WHERE tenant_id = ?1 AND action = 'block' AND (expires_at IS NULL OR expires_at > ?2)
         ORDER BY id"
    ))?;
    let mut found = stmt.query(params![tenant.0, now.0])?;
    let mut rules = Vec::with_capacity(chunk);
    while let Some(row) = found.next()? {
        rules.push(rows::rule(row)?);
        if rules.len() >= chunk {
            let full = std::mem::replace(&mut rules, Vec::with_capacity(chunk));
            if chunks.blocking_send(Ok(full)).is_err() {
                return Ok(());
            }
        }
    }
    if !rules.is_empty() {
        let _ = chunks.blocking_send(Ok(rules));
    }
    Ok(())
}

//! Rows to domain types and back.

use rusqlite::Row;

use crate::keys::{ApiKey, KeyDigest, Principal, Role, TenantName};
use crate::rules::{Kind, Rule, RuleAction, Source, Target, TenantId, UnixMillis};
use crate::store::{Change, ChangeOp, QueuedReport, ReportKind, StoreError, StoreResult};

pub const RULE_COLUMNS: &str = "id, tenant_id, action, kind, target, expires_at, name, description, \
     source, created_at, updated_at, dataset, tags, reports";

pub const CHANGE_COLUMNS: &str = "seq, tenant_id, rule_id, op, action, kind, target, expires_at, at, name, source, dataset, \
     description";

pub const KEY_COLUMNS: &str =
    "k.id, k.name, k.role, t.name, k.tenant_id, k.created_at, k.revoked_at";

pub const REPORT_COLUMNS: &str = "id, tenant_id, key_id, kind, payload, received_at";

pub const LIVE_KEY_COLUMNS: &str = "k.key_hash, k.id, k.name, k.role, t.name, k.tenant_id";

pub fn parse_action(text: &str) -> StoreResult<RuleAction> {
    RuleAction::parse(text).ok_or_else(|| StoreError::Corrupt(format!("rule action {text:?}")))
}

pub fn parse_target(kind: &str, text: &str) -> StoreResult<Target> {
    Kind::parse(kind)
        .and_then(|kind| Target::from_stored(kind, text))
        .ok_or_else(|| StoreError::Corrupt(format!("rule target {kind}:{text}")))
}

/// Most rules have no tags; reading back a million of them should not parse a million `[]`.
pub fn parse_tags(text: &str) -> StoreResult<Vec<String>> {
    if text == "[]" {
        return Ok(Vec::new());
    }
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("rule tags: {e}")))
}

pub fn json_tags(tags: &[String]) -> String {
    if tags.is_empty() {
        return "[]".into();
    }
    serde_json::to_string(tags).unwrap_or_else(|_| "[]".into())
}

/// A rule from a row of [`RULE_COLUMNS`].
pub fn rule(row: &Row<'_>) -> StoreResult<Rule> {
    let action: String = row.get(2)?;
    let kind: String = row.get(3)?;
    let target: String = row.get(4)?;
    let source: String = row.get(8)?;
    Ok(Rule {
        id: row.get(0)?,
        tenant: TenantId(row.get(1)?),
        action: parse_action(&action)?,
        target: parse_target(&kind, &target)?,
        expires_at: row.get::<_, Option<i64>>(5)?.map(UnixMillis),
        name: row.get(6)?,
        description: row.get(7)?,
        source: Source::parse(&source)
            .ok_or_else(|| StoreError::Corrupt(format!("rule source {source:?}")))?,
        created_at: UnixMillis(row.get(9)?),
        updated_at: UnixMillis(row.get(10)?),
        dataset: row.get(11)?,
        tags: parse_tags(row.get_ref(12)?.as_str().map_err(rusqlite::Error::from)?)?,
        reports: row.get::<_, i64>(13)? as u32,
    })
}

/// The key (tenant, action, target) from a row of `tenant_id, action, kind, target`.
pub fn rule_key(row: &Row<'_>) -> StoreResult<(TenantId, RuleAction, Target)> {
    let text =
        |i| -> StoreResult<&str> { Ok(row.get_ref(i)?.as_str().map_err(rusqlite::Error::from)?) };
    Ok((
        TenantId(row.get(0)?),
        parse_action(text(1)?)?,
        parse_target(text(2)?, text(3)?)?,
    ))
}

/// A change from a row of [`CHANGE_COLUMNS`].
pub fn change(row: &Row<'_>) -> StoreResult<Change> {
    let op: String = row.get(3)?;
    let action: String = row.get(4)?;
    let kind: String = row.get(5)?;
    let target: String = row.get(6)?;
    Ok(Change {
        seq: row.get::<_, i64>(0)? as u64,
        tenant: TenantId(row.get(1)?),
        rule_id: row.get(2)?,
        op: ChangeOp::parse(&op).ok_or_else(|| StoreError::Corrupt(format!("change op {op:?}")))?,
        action: parse_action(&action)?,
        target: parse_target(&kind, &target)?,
        expires_at: row.get::<_, Option<i64>>(7)?.map(UnixMillis),
        at: UnixMillis(row.get(8)?),
        name: row.get(9)?,
        source: match row.get::<_, Option<String>>(10)? {
            None => Source::Signal,
            Some(text) => Source::parse(&text)
                .ok_or_else(|| StoreError::Corrupt(format!("change source {text:?}")))?,
        },
        dataset: row.get(11)?,
        description: row.get(12)?,
    })
}

/// A key from a row of [`KEY_COLUMNS`].
pub fn api_key(row: &Row<'_>) -> StoreResult<ApiKey> {
    let role: String = row.get(2)?;
    let tenant: String = row.get(3)?;
    Ok(ApiKey {
        id: row.get(0)?,
        name: row.get(1)?,
        role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role:?}")))?,
        tenant: TenantName::parse(&tenant)
            .ok_or_else(|| StoreError::Corrupt(format!("tenant {tenant:?}")))?,
        tenant_id: TenantId(row.get(4)?),
        created_at: UnixMillis(row.get(5)?),
        revoked_at: row.get::<_, Option<i64>>(6)?.map(UnixMillis),
    })
}

/// A live key's digest and owner from a row of [`LIVE_KEY_COLUMNS`].
pub fn live_key(row: &Row<'_>) -> StoreResult<(KeyDigest, Principal)> {
    let key_id: i64 = row.get(1)?;
    let hash: Vec<u8> = row.get(0)?;
    let digest: KeyDigest = hash
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("key {key_id} hash length")))?;
    let role: String = row.get(3)?;
    let tenant: String = row.get(4)?;
    Ok((
        digest,
        Principal {
            key_id,
            key_name: row.get(2)?,
            role: Role::parse(&role)
                .ok_or_else(|| StoreError::Corrupt(format!("role {role:?}")))?,
            tenant: TenantName::parse(&tenant)
                .ok_or_else(|| StoreError::Corrupt(format!("tenant {tenant:?}")))?,
            tenant_id: TenantId(row.get(5)?),
        },
    ))
}

pub fn queued_report(row: &Row<'_>) -> StoreResult<QueuedReport> {
    let kind: String = row.get(3)?;
    Ok(QueuedReport {
        id: row.get(0)?,
        tenant: TenantId(row.get(1)?),
        key_id: row.get(2)?,
        kind: ReportKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("report kind {kind:?}")))?,
        payload: row.get(4)?,
        received_at: UnixMillis(row.get(5)?),
    })
}

/// Longest audit text a stored record may unpack to: SQLite's own limit on a value, so a
/// damaged record can never ask for more memory than an uncompressed one could hold.
const MAX_AUDIT_TEXT: usize = 1_000_000_000;

/// A record's audit entries as SQLite keeps them: LZ4-compressed, as a BLOB with the text's
/// length in front. The entries repeat the shape of one event a thousand times, so they shrink
/// about ninefold; uncompressed they were two fifths of the bytes an ingested event wrote, and
/// every byte is written twice (the WAL, then the database file). PostgreSQL compresses large
/// values itself (TOAST), so its backend keeps the text.
pub fn packed_audit_entries(text: &str) -> Vec<u8> {
    lz4_flex::block::compress_prepend_size(text.as_bytes())
}

/// The text of a record's audit entries: unpacked from a BLOB, or as it is from the TEXT
/// that stores before compression wrote.
pub fn audit_entries(value: rusqlite::types::ValueRef<'_>) -> StoreResult<String> {
    use rusqlite::types::ValueRef;
    let corrupt = |why: String| StoreError::Corrupt(format!("audit entries: {why}"));
    let bytes = match value {
        ValueRef::Text(text) => text.to_vec(),
        ValueRef::Blob(packed) => {
            let (length, _) =
                lz4_flex::block::uncompressed_size(packed).map_err(|e| corrupt(e.to_string()))?;
            if length > MAX_AUDIT_TEXT {
                return Err(corrupt(format!("{length} bytes unpacked")));
            }
            lz4_flex::block::decompress_size_prepended(packed)
                .map_err(|e| corrupt(e.to_string()))?
        }
        other => return Err(corrupt(format!("a {:?} value", other.data_type()))),
    };
    String::from_utf8(bytes).map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rusqlite::types::ValueRef;

    use super::{audit_entries, packed_audit_entries};

    fn packed() -> Vec<u8> {
        let event = r#"[0,"{\"type\":\"access_rules\",\"ip\":\"192.0.2.1\"}",null]"#;
        packed_audit_entries(&format!("[{}]", vec![event; 64].join(",")))
    }

    proptest! {
        /// Whatever damage a stored record suffers, reading it answers: the entries, or an
        /// error that says they are corrupt. Never a panic.
        #[test]
        fn damaged_records_are_refused_not_a_panic(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut damaged = packed();
            for (at, byte) in flips {
                let at = at.index(damaged.len());
                damaged[at] ^= byte;
            }
            damaged.truncate(cut.index(damaged.len() + 1));
            let _ = audit_entries(ValueRef::Blob(&damaged));
        }
    }

    #[test]
    fn packed_entries_read_back_as_written() {
        let text = r#"[[0,"{\"ip\":\"192.0.2.1\"}",null],[1,"\u0000\\N\n\"é","bad ip"]]"#;
        let packed = packed_audit_entries(text);
        assert_eq!(audit_entries(ValueRef::Blob(&packed)).unwrap(), text);
        assert_eq!(
            audit_entries(ValueRef::Text(text.as_bytes())).unwrap(),
            text
        );
        assert!(audit_entries(ValueRef::Integer(1)).is_err());
    }
}

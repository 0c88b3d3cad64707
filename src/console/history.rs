//! A rule's history, read from the audit log: the events that named its target (signals,
//! reports) or its id (deletions). The audit log is indexed by time, not by rule, so only the
//! newest `console.history_scan_entries` entries are read.

use serde_json::Value;

use crate::rules::{Kind, Rule, Target, TenantId};
use crate::store::backend::SharedBackend;
use crate::store::{AuditEntry, StoreResult};

/// Audit entries read per query.
const PAGE: usize = 500;

/// Entries about a rule, newest first, and how many entries were read to find them.
pub struct History {
    pub entries: Vec<AuditEntry>,
    pub scanned: usize,
}

pub async fn of_rule(
    backend: &SharedBackend,
    tenant: TenantId,
    rule: &Rule,
    max_scan: usize,
) -> StoreResult<History> {
    let (mut entries, mut scanned, mut before) = (Vec::new(), 0, None);
    while scanned < max_scan {
        let page = backend
            .audit(tenant, before, PAGE.min(max_scan - scanned))
            .await?;
        scanned += page.items.len();
        entries.extend(page.items.into_iter().filter(|e| concerns(&e.event, rule)));
        match page.next_cursor {
            Some(cursor) => before = Some(cursor),
            None => break,
        }
    }
    Ok(History { entries, scanned })
}

/// Whether an audited event is about `rule`.
fn concerns(event: &str, rule: &Rule) -> bool {
    let Ok(value) = serde_json::from_str::<Value>(event) else {
        return false;
    };
    if value["op"] == "delete_rule" {
        return value["id"].as_i64() == Some(rule.id);
    }
    let field = match rule.target.kind() {
        Kind::Ip => "ip",
        Kind::Asn => "asn",
        Kind::Country => "country",
    };
    let names =
        |text: &str| Target::from_stored(rule.target.kind(), text.trim()) == Some(rule.target);
    if value[field].as_str().is_some_and(names) {
        return true;
    }
    value["request"]["addresses"]
        .as_array()
        .is_some_and(|list| list.iter().filter_map(Value::as_str).any(names))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{RuleAction, Source, UnixMillis};

    #[test]
    fn events_naming_the_target_or_the_id() {
        let rule = Rule {
            id: 7,
            tenant: TenantId(1),
            action: RuleAction::Block,
            target: Target::parse_any("192.0.2.0/24").unwrap(),
            expires_at: None,
            name: None,
            description: None,
            source: Source::Signal,
            dataset: None,
            tags: vec![],
            reports: 0,
            created_at: UnixMillis(0),
            updated_at: UnixMillis(0),
        };
        assert!(concerns(
            r#"{"type":"access_rules","action":"block","ip":"192.0.2.0/24"}"#,
            &rule
        ));
        assert!(concerns(r#"{"op":"delete_rule","id":7}"#, &rule));
        assert!(!concerns(r#"{"op":"delete_rule","id":8}"#, &rule));
        assert!(!concerns(r#"{"action":"block","ip":"192.0.2.1"}"#, &rule));
        assert!(!concerns("not json", &rule));
    }
}

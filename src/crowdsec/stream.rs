//! What one incremental pull of the decision stream sends.
//!
//! A bouncer's cursor is a change number and an instant: it holds every block rule that the
//! change log up to that number made, less those expired at that instant. A pull reads, at one
//! instant of the store, the tenant's changes after the number and the rules that expired
//! between the two instants, and sends the difference:
//! - a rule whose last change is a put and that is active now: `new`, with its duration as of
//!   now (a renewed rule is sent again with its new duration: a firewall keeps the timeout it
//!   was given first otherwise);
//! - a rule whose last change is a put and that expired meanwhile, or that was removed after
//!   being put in the same interval: `deleted`;
//! - a rule removed or purged with no put in the interval: `deleted` if it was active at the
//!   cursor's instant, and nothing otherwise (its expiry was sent then);
//! - a rule untouched by the changes that expired between the instants: `deleted`.
//!
//! Each change of what the bouncer holds is therefore sent once: expiry is sent by time, and
//! the purge that follows it is recognised and skipped.

use std::collections::HashMap;

use super::{CrowdsecConfig, Decision, Facts, Filter};
use crate::rules::{RuleAction, RuleId, UnixMillis};
use crate::store::{Change, ChangeOp, DecisionDelta, StreamCursor};

/// The decisions one pull sends.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct News<'a> {
    pub new: Vec<Decision<'a>>,
    pub deleted: Vec<Decision<'a>>,
}

/// What changed for a bouncer at `since` by `now`. `with_expiries`: the read reached the head of
/// the log, so the rules that expired by time belong to this pull (a pull cut short by
/// `max_changes_per_pull` leaves them, and its cursor's instant, to the next).
pub fn news<'a>(
    delta: &'a DecisionDelta,
    since: StreamCursor,
    now: UnixMillis,
    with_expiries: bool,
    filter: &Filter,
    config: &'a CrowdsecConfig,
) -> News<'a> {
    // The last change of each rule, and whether a put came before it in the interval.
    let mut last: HashMap<RuleId, (&Change, bool)> = HashMap::new();
    for change in delta
        .changes
        .iter()
        .filter(|c| c.action == RuleAction::Block)
    {
        let put_before = last
            .get(&change.rule_id)
            .is_some_and(|(prev, put)| *put || prev.op == ChangeOp::Put);
        last.insert(change.rule_id, (change, put_before));
    }
    let mut finals: Vec<(&Change, bool)> = last.values().copied().collect();
    finals.sort_by_key(|(change, _)| change.seq);

    let mut out = News::default();
    let active = |at: Option<UnixMillis>, instant: UnixMillis| at.is_none_or(|at| at > instant);
    for (change, put_before) in finals {
        let decision = Facts::of_change(change).decision(config, now);
        if !filter.admits(&decision) {
            continue;
        }
        let put = change.op == ChangeOp::Put;
        if put && active(change.expires_at, now) {
            out.new.push(decision);
        } else if put || put_before || active(change.expires_at, since.at) {
            out.deleted.push(decision);
        }
    }
    if with_expiries {
        for rule in &delta.expired {
            if last.contains_key(&rule.id) {
                continue;
            }
            let decision = Facts::of_rule(rule).decision(config, now);
            if filter.admits(&decision) {
                out.deleted.push(decision);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Rule, Source, Target, TenantId};

    const T0: i64 = 1_800_000_000_000;

    fn change(seq: u64, id: RuleId, op: ChangeOp, ip: &str, expires: Option<i64>) -> Change {
        Change {
            seq,
            tenant: TenantId(1),
            rule_id: id,
            op,
            action: RuleAction::Block,
            target: Target::parse_any(ip).unwrap(),
            expires_at: expires.map(UnixMillis),
            name: Some("ssh".into()),
            at: UnixMillis(T0),
            source: Source::Signal,
            dataset: None,
            description: None,
        }
    }

    fn values(decisions: &[Decision<'_>]) -> Vec<String> {
        decisions.iter().map(|d| d.value.clone()).collect()
    }

    #[test]
    fn each_change_of_what_the_bouncer_holds_is_sent_once() {
        let config = CrowdsecConfig::default();
        let since = StreamCursor {
            seq: 10,
            at: UnixMillis(T0),
        };
        let now = UnixMillis(T0 + 60_000);
        let expired_rule = Rule {
            id: 9,
            tenant: TenantId(1),
            action: RuleAction::Block,
            target: Target::parse_any("192.0.2.9").unwrap(),
            expires_at: Some(UnixMillis(T0 + 30_000)),
            name: None,
            description: Some("brute force".into()),
            source: Source::Report,
            dataset: Some("ABUSE".into()),
            tags: vec![],
            reports: 1,
            created_at: UnixMillis(T0),
            updated_at: UnixMillis(T0),
        };
        let delta = DecisionDelta {
            head: 20,
            changes: vec![
                // New, and renewed within the interval: one new decision.
                change(11, 1, ChangeOp::Put, "192.0.2.1", Some(T0 + 120_000)),
                change(12, 1, ChangeOp::Put, "192.0.2.1", Some(T0 + 600_000)),
                // Held by the bouncer, removed: deleted.
                change(13, 2, ChangeOp::Delete, "192.0.2.2", None),
                // Expired before the cursor's instant (sent then), purged now: nothing.
                change(14, 3, ChangeOp::Expire, "192.0.2.3", Some(T0 - 1)),
                // Expired after the cursor's instant and purged before this pull: deleted.
                change(15, 4, ChangeOp::Expire, "192.0.2.4", Some(T0 + 1)),
                // Put and expired within the interval: deleted.
                change(16, 5, ChangeOp::Put, "192.0.2.5", Some(T0 + 2)),
            ],
            expired: vec![expired_rule],
            oldest: Some(1),
        };
        let news = news(&delta, since, now, true, &Filter::default(), &config);
        assert_eq!(values(&news.new), ["192.0.2.1"]);
        assert_eq!(news.new[0].duration, "9m0s");
        assert_eq!(
            values(&news.deleted),
            ["192.0.2.2", "192.0.2.4", "192.0.2.5", "192.0.2.9"]
        );
        assert_eq!(news.deleted[3].origin, "ABUSE");
        assert_eq!(news.deleted[3].scenario, "brute force");
        assert!(
            news.deleted
                .iter()
                .all(|d| d.duration == "1s" || d.duration.ends_with('s'))
        );
    }
}

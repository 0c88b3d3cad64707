//! CrowdSec's Local API for bouncers: the decisions its enforcement points (firewall, nginx,
//! Traefik, HAProxy, ... bouncers) pull, in the shapes they parse.
//!
//! - this module: what a decision is on the wire, and which rules are decisions.
//! - [`stream`]: what one pull of `GET /v1/decisions/stream` sends: every active decision at
//!   start-up, then what changed since the bouncer's cursor, kept in the store.
//! - [`pull`]: the use cases the HTTP adapter calls: look-ups, listings and stream pulls,
//!   with the bouncer's record kept beside them.
//!
//! A decision is a block rule: `Ip` for a single address, `Range` for a wider network, `AS`
//! and `Country` for ASN and country rules. Allowlist entries are not decisions (bouncers only
//! ban). A tenant has one block rule per target, so there are never two decisions for one
//! value to merge.

pub mod geo;
pub mod pull;
pub mod stream;

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::index::RuleRef;
use crate::rules::{Rule, RuleId, Source, Target, UnixMillis};
use crate::store::Change;

/// How decisions are presented and how much one pull may read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CrowdsecConfig {
    /// The `origin` of decisions made by signals.
    pub signal_origin: String,
    /// The `origin` of decisions made by reports; unset: the report's dataset (`ABUSE`, ...).
    pub report_origin: Option<String>,
    /// The `duration` of permanent rules, in seconds. The default, 2,147,483 s
    /// (`596h31m23s`), is the longest timeout ipset takes.
    pub permanent_duration_secs: u32,
    /// Changes one stream pull reads at most; a bouncer further behind gets the rest on its
    /// next pulls.
    pub max_changes_per_pull: usize,
    /// Serve ASN and country rules to bouncers as the `Range` decisions they cover. Unset: on
    /// when geo data is configured.
    pub expand_geo: Option<bool>,
    /// Most CIDR ranges the expansion of ASN and country rules may come to for one key (a
    /// bouncer's or an export's); a larger expansion is refused rather than overflowing a
    /// firewall set ("hash is full"). Unset: no limit.
    pub max_decisions: Option<usize>,
    /// Per-key limits (key id -> ranges), replacing `max_decisions` for that key.
    pub max_decisions_per_key: std::collections::BTreeMap<String, usize>,
    /// A look-up (`GET /v1/decisions`) is written to its bouncer's record at most once per
    /// this many milliseconds (unless its user agent or address changed), so that bouncers
    /// asking about every client do not turn each look-up into a write. Stream pulls are always
    /// written: they move the cursor.
    pub record_interval_ms: u64,
}

impl Default for CrowdsecConfig {
    fn default() -> Self {
        Self {
            signal_origin: "palisade".into(),
            report_origin: None,
            permanent_duration_secs: 2_147_483,
            max_changes_per_pull: 100_000,
            expand_geo: None,
            max_decisions: None,
            max_decisions_per_key: Default::default(),
            record_interval_ms: 1000,
        }
    }
}

impl CrowdsecConfig {
    /// Whether ASN and country rules are expanded, given whether geo data is configured.
    pub fn expand_geo(&self, has_geo_data: bool) -> bool {
        self.expand_geo.unwrap_or(has_geo_data)
    }

    /// The limits with `max_decisions_per_key`'s keys read as key ids.
    pub fn range_limits(&self) -> Result<crate::export::expand::RangeLimits, String> {
        let per_key = self
            .max_decisions_per_key
            .iter()
            .map(|(id, limit)| {
                id.parse::<i64>()
                    .map(|id| (id, *limit))
                    .map_err(|_| format!("crowdsec.max_decisions_per_key: {id:?} is not a key id"))
            })
            .collect::<Result<_, _>>()?;
        Ok(crate::export::expand::RangeLimits {
            default: self.max_decisions,
            per_key,
        })
    }

    fn origin<'a>(&'a self, source: Source, dataset: Option<&'a str>) -> &'a str {
        match source {
            Source::Signal => &self.signal_origin,
            Source::Report => self
                .report_origin
                .as_deref()
                .or(dataset)
                .unwrap_or("report"),
        }
    }
}

/// One decision as bouncers parse it (CrowdSec's `models.Decision`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision<'a> {
    /// The rule's id: stable for as long as the rule exists.
    pub id: RuleId,
    pub origin: Cow<'a, str>,
    #[serde(rename = "type")]
    pub kind: Cow<'a, str>,
    pub scope: Cow<'a, str>,
    pub value: String,
    /// Time left, as a Go duration in whole seconds (`23h59m58s`), at least `1s`.
    pub duration: String,
    pub scenario: Cow<'a, str>,
    pub simulated: bool,
}

/// The scope of a target, as CrowdSec spells it.
pub fn scope(target: &Target) -> &'static str {
    match target {
        Target::Ip(net) if net.prefix_len() == net.max_prefix_len() => "Ip",
        Target::Ip(_) => "Range",
        Target::Asn(_) => "AS",
        Target::Country(_) => "Country",
    }
}

/// The value of a target: a bare address for `Ip`, a CIDR for `Range`, the number for `AS`.
pub fn value(target: &Target) -> String {
    match target {
        Target::Ip(net) if net.prefix_len() == net.max_prefix_len() => net.addr().to_string(),
        Target::Ip(net) => net.to_string(),
        Target::Asn(asn) => asn.get().to_string(),
        Target::Country(code) => code.to_string(),
    }
}

/// A decision's `duration`: the time its rule has left at `now`, rounded up so that a decision
/// never ends before its rule does, at least a second; permanent rules get
/// `permanent_duration_secs`.
pub fn time_left(
    expires_at: Option<UnixMillis>,
    now: UnixMillis,
    config: &CrowdsecConfig,
) -> String {
    let seconds = match expires_at {
        None => u64::from(config.permanent_duration_secs),
        Some(at) => u64::try_from(at.0.saturating_sub(now.0)).map_or(0, |ms| ms.div_ceil(1000)),
    };
    go_duration(seconds.max(1))
}

/// Seconds as Go's `time.Duration.String()` writes them: `1h2m3s`, `59m1s`, `5s`.
pub fn go_duration(seconds: u64) -> String {
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let mut out = String::new();
    if hours > 0 {
        let _ = write!(out, "{hours}h");
    }
    if hours > 0 || minutes > 0 {
        let _ = write!(out, "{minutes}m");
    }
    let _ = write!(out, "{seconds}s");
    out
}

/// What a decision is made of, whatever it was read from (a rule, a change, the index).
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub id: RuleId,
    pub target: &'a Target,
    pub expires_at: Option<UnixMillis>,
    pub name: Option<&'a str>,
    pub description: Option<&'a str>,
    pub source: Source,
    pub dataset: Option<&'a str>,
}

impl<'a> Facts<'a> {
    pub fn of_rule(rule: &'a Rule) -> Self {
        Facts {
            id: rule.id,
            target: &rule.target,
            expires_at: rule.expires_at,
            name: rule.name.as_deref(),
            description: rule.description.as_deref(),
            source: rule.source,
            dataset: rule.dataset.as_deref(),
        }
    }

    pub fn of_change(change: &'a Change) -> Self {
        Facts {
            id: change.rule_id,
            target: &change.target,
            expires_at: change.expires_at,
            name: change.name.as_deref(),
            description: change.description.as_deref(),
            source: change.source,
            dataset: change.dataset.as_deref(),
        }
    }

    pub fn of_ref(rule: &'a RuleRef) -> Self {
        Facts {
            id: rule.id,
            target: &rule.target,
            expires_at: rule.expires_at,
            name: rule.name(),
            description: rule.description(),
            source: rule.source,
            dataset: rule.dataset(),
        }
    }

    /// The scenario: the rule's name, else its description.
    pub fn scenario(&self) -> &'a str {
        self.name
            .filter(|n| !n.is_empty())
            .or(self.description.filter(|d| !d.is_empty()))
            .unwrap_or("palisade")
    }

    pub fn decision(&self, config: &'a CrowdsecConfig, now: UnixMillis) -> Decision<'a> {
        Decision {
            id: self.id,
            origin: Cow::Borrowed(config.origin(self.source, self.dataset)),
            kind: Cow::Borrowed("ban"),
            scope: Cow::Borrowed(scope(self.target)),
            value: value(self.target),
            duration: time_left(self.expires_at, now, config),
            scenario: Cow::Borrowed(self.scenario()),
            simulated: false,
        }
    }
}

/// The filters bouncers send: which decisions they want.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Lower-case scopes wanted; empty: all.
    pub scopes: Vec<String>,
    /// Origins wanted; empty: all.
    pub origins: Vec<String>,
    /// A scenario must contain one of these; empty: any.
    pub scenarios_containing: Vec<String>,
    /// A scenario must contain none of these.
    pub scenarios_not_containing: Vec<String>,
}

/// A comma-separated list parameter, without empty items.
pub fn list(text: Option<&str>) -> Vec<String> {
    text.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Filter {
    pub fn admits(&self, decision: &Decision<'_>) -> bool {
        let scope_ok = self.scopes.is_empty()
            || self
                .scopes
                .iter()
                .any(|s| s.eq_ignore_ascii_case(&decision.scope));
        let origin_ok =
            self.origins.is_empty() || self.origins.iter().any(|o| *o == decision.origin);
        let containing = self.scenarios_containing.is_empty()
            || self
                .scenarios_containing
                .iter()
                .any(|s| decision.scenario.contains(s.as_str()));
        let not_containing = !self
            .scenarios_not_containing
            .iter()
            .any(|s| decision.scenario.contains(s.as_str()));
        scope_ok && origin_ok && containing && not_containing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_go_writes_them() {
        for (seconds, text) in [
            (1, "1s"),
            (59, "59s"),
            (60, "1m0s"),
            (3541, "59m1s"),
            (3600, "1h0m0s"),
            (86_398, "23h59m58s"),
            (2_147_483, "596h31m23s"),
        ] {
            assert_eq!(go_duration(seconds), text);
        }
    }

    #[test]
    fn scopes_and_values() {
        let cases = [
            ("192.0.2.7", "Ip", "192.0.2.7"),
            ("192.0.2.0/24", "Range", "192.0.2.0/24"),
            ("2001:db8::1", "Ip", "2001:db8::1"),
            ("2001:db8::/32", "Range", "2001:db8::/32"),
            ("AS64500", "AS", "64500"),
            ("FR", "Country", "FR"),
        ];
        for (text, want_scope, want_value) in cases {
            let target = Target::parse_any(text).unwrap();
            assert_eq!(
                (scope(&target), value(&target).as_str()),
                (want_scope, want_value)
            );
        }
    }
}

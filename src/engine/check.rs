//! The check use case: is an address blocked for a tenant, and by which rules. `/v1/check`,
//! forward-auth, the console and the bouncer look-up all answer from this one function, over
//! a [`View`] of the decision index (the index follows the change feed; a view is one
//! consistent snapshot of a tenant's rules, so a batch of answers sees the same rules).

use std::net::IpAddr;

use serde::Serialize;
use utoipa::ToSchema;

use crate::index::{RuleRef, View};
use crate::rules::{Asn, CountryCode, Kind, RuleAction, UnixMillis, normalize_ip};

/// One active rule covering the address (documentation of [`Match`]'s JSON).
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct MatchView {
    id: i64,
    kind: Kind,
    #[schema(example = "192.0.2.0/24")]
    target: String,
    /// `block`, or `allow` for an allowlist entry (which wins over any block).
    action: RuleAction,
    expires_at: Option<String>,
    name: Option<String>,
}

/// A matching rule, rendered only when the answer is serialised.
#[derive(Debug, Clone)]
pub struct Match(pub RuleRef);

impl Serialize for Match {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let rule = &self.0;
        let mut out = serializer.serialize_struct("Match", 6)?;
        out.serialize_field("id", &rule.id)?;
        out.serialize_field("kind", &rule.target.kind())?;
        out.serialize_field("target", &rule.target.to_string())?;
        out.serialize_field("action", &rule.action)?;
        out.serialize_field("expires_at", &rule.expires_at.map(UnixMillis::to_rfc3339))?;
        out.serialize_field("name", &rule.name())?;
        out.end()
    }
}

/// The decision for one address. Computing it is a table look-up and a geo look-up; the text
/// of the JSON is only made when it is sent.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckAnswer {
    /// The address as decided about (IPv4-mapped IPv6 shown as IPv4).
    #[schema(value_type = String, example = "192.0.2.7")]
    pub ip: IpAddr,
    pub blocked: bool,
    /// An allowlist entry covers the address; it is then never blocked.
    pub allowed: bool,
    /// From the configured ASN data; `null` when unknown.
    #[schema(value_type = Option<String>, example = "AS64500")]
    #[serde(serialize_with = "display_opt")]
    pub asn: Option<Asn>,
    /// From the configured country data; `null` when unknown.
    #[schema(value_type = Option<String>, example = "FR")]
    #[serde(serialize_with = "display_opt")]
    pub country: Option<CountryCode>,
    /// Every active rule covering the address (its range, its ASN, its country), most specific
    /// range first; at most `limits.matches_per_address` of them.
    #[schema(value_type = Vec<MatchView>)]
    pub matches: Vec<Match>,
    /// Present and `true` when `matches` was cut short by the answer's size limits. The
    /// decision (`blocked`, `allowed`) always accounts for every rule.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub matches_truncated: bool,
}

fn display_opt<T: std::fmt::Display, S: serde::Serializer>(
    value: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => serializer.collect_str(v),
        None => serializer.serialize_none(),
    }
}

/// The full answer for one address: decision, geo data and every matching rule.
pub fn answer(view: &View, ip: IpAddr, now: UnixMillis) -> CheckAnswer {
    answer_bounded(view, ip, now, usize::MAX)
}

/// As [`answer`], listing at most `max_matches` of the matching rules.
pub fn answer_bounded(view: &View, ip: IpAddr, now: UnixMillis, max_matches: usize) -> CheckAnswer {
    let ip = normalize_ip(ip);
    // One geo look-up for both the ASN and country shown and the ASN and country rules matched,
    // so that they always agree.
    let mut found = view.lookup_with_geo(ip, now);
    let matches_truncated = found.rules.len() > max_matches;
    found.rules.truncate(max_matches);
    CheckAnswer {
        ip,
        blocked: found.verdict.blocked,
        allowed: found.verdict.allowed,
        asn: found.geo.asn,
        country: found.geo.country,
        matches: found.rules.into_iter().map(Match).collect(),
        matches_truncated,
    }
}

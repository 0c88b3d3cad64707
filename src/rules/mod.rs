//! Domain types of an access rule. Each is parsed once, at the edge, and is valid from then on:
//! a [`Target`] cannot hold a zone id, a host-bit-carrying network, `AS0` or a made-up country.

mod special;
mod target;

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use special::special_purpose;
pub use target::{Asn, CountryCode, IpTargetError, Kind, Target, normalize_ip, parse_ip_target};

/// Milliseconds since the Unix epoch. Rules expire at an exact instant, so times are kept as
/// integers end to end and only formatted for humans at the API edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    pub fn plus_seconds(self, seconds: u32) -> Self {
        Self(self.0 + i64::from(seconds) * 1000)
    }

    /// RFC 3339 in UTC with millisecond precision, e.g. `2026-11-23T10:54:07.123Z`.
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| self.0.to_string())
    }
}

impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// Row id of a rule in the store.
pub type RuleId = i64;

/// Numeric id of a tenant; every rule, key and audit entry belongs to exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TenantId(pub i64);

/// What a matching rule does to a client. `Allow` entries (false positives) beat `Block`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Block,
    Allow,
}

impl RuleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::Block => "block",
            RuleAction::Allow => "allow",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "block" => Some(RuleAction::Block),
            "allow" => Some(RuleAction::Allow),
            _ => None,
        }
    }
}

/// Which API created a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Signal,
    Report,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Signal => "signal",
            Source::Report => "report",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "signal" => Some(Source::Signal),
            "report" => Some(Source::Report),
            _ => None,
        }
    }
}

/// A rule about to be stored for the first time: everything but the id the store gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRule {
    pub tenant: TenantId,
    pub action: RuleAction,
    pub target: Target,
    pub expires_at: Option<UnixMillis>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub source: Source,
    pub dataset: Option<String>,
    pub tags: Vec<String>,
    pub reports: u32,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

impl NewRule {
    /// A permanent block of `target` from a signal, made at `at`, with nothing else set.
    #[cfg(test)]
    pub fn block(tenant: TenantId, target: Target, at: UnixMillis) -> Self {
        NewRule {
            tenant,
            action: RuleAction::Block,
            target,
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

    pub fn with_id(self, id: RuleId) -> Rule {
        Rule {
            id,
            tenant: self.tenant,
            action: self.action,
            target: self.target,
            expires_at: self.expires_at,
            name: self.name,
            description: self.description,
            source: self.source,
            dataset: self.dataset,
            tags: self.tags,
            reports: self.reports,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// An access rule as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: RuleId,
    pub tenant: TenantId,
    pub action: RuleAction,
    pub target: Target,
    /// `None`: permanent.
    pub expires_at: Option<UnixMillis>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub source: Source,
    /// The report dataset (`ABUSE`, `TOR`, ...) of a reported rule.
    pub dataset: Option<String>,
    pub tags: Vec<String>,
    /// Reports merged into this rule.
    pub reports: u32,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

impl Rule {
    /// A rule stops counting at its expiry instant, whether or not it has been purged yet.
    pub fn is_active_at(&self, now: UnixMillis) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

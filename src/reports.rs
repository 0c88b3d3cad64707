//! The abuse-report API (`POST /v1/ip` and friends): validating a request into a payload that
//! is queued durably, and turning a queued payload into rule writes when the worker gets to it.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::json::{BoundedList, Members, NotAnObject, value_of};

use crate::rules::{RuleAction, Source, Target, UnixMillis, normalize_ip, special_purpose};
use crate::signal::{BatchProblem, MAX_EXPIRATION_SECONDS};
use crate::store::{ReportKind, RuleWrite};

/// Most addresses one request may carry.
pub const MAX_ADDRESSES: usize = 10_000;
pub const MAX_TAGS: usize = 32;
pub const MAX_TAG_CHARS: usize = 64;
/// `ttl` when the request has none: one day.
pub const DEFAULT_TTL_SECONDS: u32 = 86_400;

/// The datasets shipped by default; configurable with `reports.datasets`.
pub const DEFAULT_DATASETS: [&str; 7] = [
    "ABUSE",
    "ANONYMOUS_PROXY",
    "ANONYMOUS_VPN",
    "BOGONS",
    "FORUM_ACCOUNT_ABUSE",
    "REPUTATION",
    "TOR",
];

/// A validated request, as queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportPayload {
    /// Normalised (IPv4-mapped IPv6 as IPv4), duplicates removed, in the order received.
    pub addresses: Vec<IpAddr>,
    /// Seconds; reports only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    /// Dataset; reports only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// One problem with a request body; a 422 lists them all.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
    pub value: Value,
    /// Position in the list for `addresses` and `tags` entries.
    pub index: Option<usize>,
}

fn invalid(field: &str, message: impl Into<String>, value: Value, index: Option<usize>) -> Invalid {
    Invalid {
        field: field.to_owned(),
        message: message.into(),
        value,
        index,
    }
}

#[derive(Debug, Clone)]
pub struct ReportPolicy {
    /// Dataset names accepted as `type` (compared without regard to case, stored as listed).
    pub datasets: Vec<String>,
    /// Accept private, loopback, link-local, multicast and documentation addresses in reports.
    pub allow_private: bool,
    /// Networks no report may block (the signal guard's protected list).
    pub protected: Vec<IpNet>,
}

impl Default for ReportPolicy {
    fn default() -> Self {
        Self {
            datasets: DEFAULT_DATASETS.iter().map(|d| (*d).to_owned()).collect(),
            allow_private: false,
            protected: Vec::new(),
        }
    }
}

impl ReportPolicy {
    /// Validates a request body of the given endpoint, collecting every problem.
    pub fn validate(&self, kind: ReportKind, body: &[u8]) -> Result<ReportPayload, Vec<Invalid>> {
        let not_json =
            |problem: BatchProblem| vec![invalid("body", problem.to_string(), Value::Null, None)];
        let text = std::str::from_utf8(body)
            .map_err(|_| not_json(BatchProblem::NotJson { line: 1, column: 0 }))?;
        let members = Members::<&RawValue>::parse(text).map_err(|e| match e {
            NotAnObject::Syntax(e) => not_json(BatchProblem::not_json(&e)),
            NotAnObject::Other => vec![invalid(
                "body",
                "must be a JSON object",
                serde_json::from_str(text).unwrap_or(Value::Null),
                None,
            )],
        })?;
        let allowed: &[&str] = match kind {
            ReportKind::Report => &["addresses", "ttl", "type", "tags"],
            _ => &["addresses"],
        };
        let mut problems = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for (key, value) in members.iter() {
            if !allowed.contains(&key) {
                problems.push(invalid(
                    key,
                    format!("unknown field (allowed: {})", allowed.join(", ")),
                    value_of(value),
                    None,
                ));
            } else if seen.contains(&key) {
                problems.push(invalid(
                    key,
                    "is given more than once",
                    value_of(value),
                    None,
                ));
            } else {
                seen.push(key);
            }
        }
        let object: Map<String, Value> = ["ttl", "type"]
            .into_iter()
            .filter_map(|key| members.get(key).map(|v| (key.to_owned(), value_of(v))))
            .collect();
        let addresses = self.addresses(kind, members.get("addresses").copied(), &mut problems);
        let mut payload = ReportPayload {
            addresses,
            ttl: None,
            dataset: None,
            tags: Vec::new(),
        };
        if kind == ReportKind::Report {
            payload.ttl = Some(ttl(&object, &mut problems));
            payload.dataset = self.dataset(&object, &mut problems);
            payload.tags = tags(members.get("tags").copied(), &mut problems);
        }
        if problems.is_empty() {
            Ok(payload)
        } else {
            Err(problems)
        }
    }

    fn addresses(
        &self,
        kind: ReportKind,
        raw: Option<&RawValue>,
        problems: &mut Vec<Invalid>,
    ) -> Vec<IpAddr> {
        let Some(raw) = raw.filter(|raw| raw.get() != "null") else {
            problems.push(invalid("addresses", "is required", Value::Null, None));
            return Vec::new();
        };
        let Some(list) = BoundedList::parse(raw, MAX_ADDRESSES) else {
            problems.push(invalid(
                "addresses",
                "must be a list of IP addresses",
                value_of(raw),
                None,
            ));
            return Vec::new();
        };
        if list.total == 0 || list.total > MAX_ADDRESSES {
            problems.push(invalid(
                "addresses",
                "must hold 1 to 10000 addresses",
                Value::from(list.total),
                None,
            ));
            return Vec::new();
        }
        let items: Vec<Value> = list.items.iter().map(|item| value_of(item)).collect();
        let mut out: Vec<IpAddr> = Vec::with_capacity(items.len());
        let mut seen = std::collections::HashSet::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let parsed = item
                .as_str()
                .and_then(|text| IpAddr::from_str(text).ok())
                .map(normalize_ip);
            let Some(ip) = parsed else {
                problems.push(invalid(
                    "addresses",
                    "must be an IPv4 or IPv6 address",
                    item.clone(),
                    Some(index),
                ));
                continue;
            };
            if kind == ReportKind::Report {
                if !self.allow_private
                    && let Some(what) = special_purpose(ip)
                {
                    problems.push(invalid(
                        "addresses",
                        format!("must be a public address, not {what}"),
                        item.clone(),
                        Some(index),
                    ));
                    continue;
                }
                if let Some(net) = self.protected.iter().find(|n| n.contains(&ip)) {
                    problems.push(invalid(
                        "addresses",
                        format!("must not be in the protected range {net}"),
                        item.clone(),
                        Some(index),
                    ));
                    continue;
                }
            }
            if seen.insert(ip) {
                out.push(ip);
            }
        }
        out
    }

    fn dataset(&self, object: &Map<String, Value>, problems: &mut Vec<Invalid>) -> Option<String> {
        let name = match object.get("type") {
            None | Some(Value::Null) => return Some(self.default_dataset()),
            Some(Value::String(name)) => name,
            Some(other) => {
                problems.push(invalid("type", "must be a string", other.clone(), None));
                return None;
            }
        };
        match self.datasets.iter().find(|d| d.eq_ignore_ascii_case(name)) {
            Some(dataset) => Some(dataset.clone()),
            None => {
                problems.push(invalid(
                    "type",
                    format!("must be one of: {}", self.datasets.join(", ")),
                    Value::from(name.as_str()),
                    None,
                ));
                None
            }
        }
    }

    /// `ABUSE` when configured, else the first configured dataset.
    fn default_dataset(&self) -> String {
        self.datasets
            .iter()
            .find(|d| d.eq_ignore_ascii_case("ABUSE"))
            .or(self.datasets.first())
            .cloned()
            .unwrap_or_else(|| "ABUSE".into())
    }
}

fn ttl(object: &Map<String, Value>, problems: &mut Vec<Invalid>) -> u32 {
    match object.get("ttl") {
        None | Some(Value::Null) => DEFAULT_TTL_SECONDS,
        Some(value) => match value.as_u64() {
            Some(s) if (1..=MAX_EXPIRATION_SECONDS).contains(&s) => s as u32,
            _ => {
                problems.push(invalid(
                    "ttl",
                    "must be a whole number of seconds from 1 to 315360000 (10 years)",
                    value.clone(),
                    None,
                ));
                DEFAULT_TTL_SECONDS
            }
        },
    }
}

fn valid_tag(tag: &str) -> bool {
    (1..=MAX_TAG_CHARS).contains(&tag.len())
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn tags(raw: Option<&RawValue>, problems: &mut Vec<Invalid>) -> Vec<String> {
    let Some(raw) = raw.filter(|raw| raw.get() != "null") else {
        return Vec::new();
    };
    let Some(list) = BoundedList::parse(raw, MAX_TAGS) else {
        problems.push(invalid(
            "tags",
            "must be a list of strings",
            value_of(raw),
            None,
        ));
        return Vec::new();
    };
    if list.total > MAX_TAGS {
        problems.push(invalid(
            "tags",
            "must hold at most 32 tags",
            Value::from(list.total),
            None,
        ));
        return Vec::new();
    }
    let items: Vec<Value> = list.items.iter().map(|item| value_of(item)).collect();
    let mut out: Vec<String> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(tag) if valid_tag(tag) => {
                if !out.iter().any(|t| t == tag) {
                    out.push(tag.to_owned());
                }
            }
            _ => problems.push(invalid(
                "tags",
                "must be 1 to 64 characters of A-Z a-z 0-9 . _ : -",
                item.clone(),
                Some(index),
            )),
        }
    }
    out
}

/// What a queued request does to the rules.
pub fn writes(
    kind: ReportKind,
    payload: &ReportPayload,
    received_at: UnixMillis,
) -> Vec<RuleWrite> {
    let targets = payload
        .addresses
        .iter()
        .map(|ip| Target::Ip(IpNet::from(*ip)));
    match kind {
        ReportKind::Report => {
            let ttl = payload.ttl.unwrap_or(DEFAULT_TTL_SECONDS);
            let dataset = payload.dataset.clone().unwrap_or_else(|| "ABUSE".into());
            targets
                .map(|target| RuleWrite::Report {
                    target,
                    dataset: dataset.clone(),
                    tags: payload.tags.clone(),
                    // From when the report was accepted, not from when it was processed.
                    expires_at: received_at.plus_seconds(ttl),
                })
                .collect()
        }
        ReportKind::Unban => targets
            .map(|target| RuleWrite::Remove {
                action: RuleAction::Block,
                target,
            })
            .collect(),
        ReportKind::FalseAdd => targets
            .map(|target| RuleWrite::Put {
                action: RuleAction::Allow,
                target,
                expires_at: None,
                name: None,
                description: Some("false positive".into()),
                source: Source::Report,
                dataset: None,
            })
            .collect(),
        ReportKind::FalseRemove => targets
            .map(|target| RuleWrite::Remove {
                action: RuleAction::Allow,
                target,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: ReportKind, body: &str) -> Result<ReportPayload, Vec<Invalid>> {
        ReportPolicy::default().validate(kind, body.as_bytes())
    }

    #[test]
    fn defaults_and_normalisation() {
        let payload = check(
            ReportKind::Report,
            r#"{"addresses": ["8.8.8.8", "::ffff:8.8.8.8", "2606:4700::1"]}"#,
        )
        .unwrap();
        assert_eq!(payload.addresses.len(), 2);
        assert_eq!(payload.ttl, Some(86_400));
        assert_eq!(payload.dataset.as_deref(), Some("ABUSE"));
        let payload = check(
            ReportKind::Report,
            r#"{"addresses": ["8.8.8.8"], "type": "tor", "tags": ["a:b", "a:b"]}"#,
        )
        .unwrap();
        assert_eq!(
            (payload.dataset.as_deref(), payload.tags.len()),
            (Some("TOR"), 1)
        );
    }

    #[test]
    fn every_problem_is_named() {
        let problems = check(
            ReportKind::Report,
            r#"{"addresses": ["eni", "10.0.0.1", "8.8.8.8"], "ttl": 0, "type": "ea dolore", "tags": ["ok", "no spaces"], "x": 1}"#,
        )
        .unwrap_err();
        let fields: Vec<(&str, Option<usize>)> = problems
            .iter()
            .map(|p| (p.field.as_str(), p.index))
            .collect();
        assert_eq!(
            fields,
            [
                ("x", None),
                ("addresses", Some(0)),
                ("addresses", Some(1)),
                ("ttl", None),
                ("type", None),
                ("tags", Some(1))
            ]
        );
    }
}

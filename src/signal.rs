//! `POST /v1/signal`: from a request body to validated commands.
//!
//! A batch is checked as a whole first ([`parse_batch`]), then every event alone
//! ([`SignalPolicy::validate`]): one bad event fails only itself. Every error text a client can
//! see lives in [`Problem`] and [`BatchProblem`]; the README's error table is made from them.

use std::sync::Arc;

use ipnet::IpNet;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::json::{Members, Offending, value_of};
use crate::rules::{
    Asn, CountryCode, IpTargetError, RuleAction, Source, Target, UnixMillis, parse_ip_target,
};
use crate::store::{BatchItem, RuleWrite};

/// Most events one request may carry (the contract's limit).
pub const MAX_BATCH: usize = 1000;
/// Longest expiration: ten years of 365 days.
pub const MAX_EXPIRATION_SECONDS: u64 = 10 * 365 * 86_400;
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
pub const MAX_NAME_CHARS: usize = 255;

/// The fields an event may carry. Anything else is refused, so that a misspelt `expires` cannot
/// silently turn a temporary block into a permanent one.
pub const EVENT_FIELDS: [&str; 8] = [
    "type",
    "action",
    "ip",
    "asn",
    "country",
    "expiration",
    "description",
    "name",
];
const TARGET_FIELDS: [&str; 3] = ["ip", "asn", "country"];

/// Why one event was refused. The `Display` text is the message clients see; keep it stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("must be a JSON object")]
    NotAnObject,
    #[error(
        "unknown field (allowed: type, action, ip, asn, country, expiration, description, name)"
    )]
    UnknownField,
    #[error("is given more than once")]
    Repeated,
    #[error("is required")]
    Required,
    #[error("must be one of: access_rules")]
    BadType,
    #[error("must be one of: block, unblock")]
    BadAction,
    #[error("exactly one of ip, asn, country must be provided")]
    NoTarget,
    #[error("only one of ip, asn, country may be provided")]
    SeveralTargets,
    #[error("must be a string")]
    NotAString,
    #[error("must not be empty")]
    Empty,
    #[error("must be an IPv4 or IPv6 address or CIDR range")]
    BadIp,
    #[error("zone identifiers are not allowed")]
    ZoneId,
    #[error("IPv4 ranges broader than /{0} are not allowed")]
    TooBroadV4(u8),
    #[error("IPv6 ranges broader than /{0} are not allowed")]
    TooBroadV6(u8),
    #[error("must not cover the protected range {0}")]
    Protected(IpNet),
    #[error("must be in the format AS12345 (AS1 to AS4294967295)")]
    BadAsn,
    #[error("{0} not found in the ASN database")]
    UnknownAsn(Asn),
    #[error("Country must be a valid ISO-3166 Alpha-2 code (e.g., US, GB, JP)")]
    BadCountry,
    #[error("must be a positive integer number of seconds")]
    BadExpiration,
    #[error("must be at most 315360000 seconds (10 years)")]
    ExpirationTooLong,
    #[error("must be at most {0} characters")]
    TooLong(usize),
    #[error("must not contain the NUL character (U+0000)")]
    NulCharacter,
    /// Not a problem with the event: its tenant holds as many rules as it may.
    #[error("the tenant's quota of {0} rules is reached")]
    OverQuota(u64),
}

impl Problem {
    /// A short fixed name of the problem, for metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            Problem::NotAnObject => "not_an_object",
            Problem::UnknownField => "unknown_field",
            Problem::Repeated => "repeated",
            Problem::Required => "required",
            Problem::BadType => "bad_type",
            Problem::BadAction => "bad_action",
            Problem::NoTarget => "no_target",
            Problem::SeveralTargets => "several_targets",
            Problem::NotAString => "not_a_string",
            Problem::Empty => "empty",
            Problem::BadIp => "bad_ip",
            Problem::ZoneId => "zone_id",
            Problem::TooBroadV4(_) | Problem::TooBroadV6(_) => "too_broad",
            Problem::Protected(_) => "protected",
            Problem::BadAsn => "bad_asn",
            Problem::UnknownAsn(_) => "unknown_asn",
            Problem::BadCountry => "bad_country",
            Problem::BadExpiration => "bad_expiration",
            Problem::ExpirationTooLong => "expiration_too_long",
            Problem::TooLong(_) => "too_long",
            Problem::NulCharacter => "nul_character",
            Problem::OverQuota(_) => "over_quota",
        }
    }
}

/// An event refused: which field, why, and the value as received (`null` when absent).
#[derive(Debug, Clone, PartialEq)]
pub struct EntryError {
    pub field: String,
    pub problem: Problem,
    pub value: Value,
}

impl EntryError {
    fn new(field: &str, problem: Problem, value: Value) -> Self {
        Self {
            field: field.to_owned(),
            problem,
            value,
        }
    }

    /// `FIELD: MESSAGE`, as used after `Schema validation failed: ` in a 206 answer.
    pub fn field_message(&self) -> String {
        format!("{}: {}", self.field, self.problem)
    }

    /// A valid event refused because its tenant is at its rule quota.
    pub fn over_quota(quota: u64) -> Self {
        Self::new("target", Problem::OverQuota(quota), Value::Null)
    }

    /// The line of a 206 answer's `errors` for the event at `index`.
    pub fn line(&self, index: usize) -> String {
        match self.problem {
            Problem::OverQuota(_) => {
                format!("Entry {index}: Quota exceeded: {}", self.field_message())
            }
            _ => format!(
                "Entry {index}: Schema validation failed: {}",
                self.field_message()
            ),
        }
    }
}

/// Why a whole body was refused before any event was looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchProblem {
    #[error("is not valid JSON (line {line}, column {column})")]
    NotJson { line: usize, column: usize },
    #[error("must be a JSON array of events")]
    NotAnArray,
    #[error("must contain at least 1 event")]
    Empty,
    #[error("must contain at most 1000 events")]
    TooMany(usize),
}

impl BatchProblem {
    /// A short fixed name of the problem, for metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            BatchProblem::NotJson { .. } => "not_json",
            BatchProblem::NotAnArray => "not_an_array",
            BatchProblem::Empty => "empty",
            BatchProblem::TooMany(_) => "too_many",
        }
    }

    /// The one wording of "this body is not JSON", used by every endpoint that reads JSON.
    pub fn not_json(error: &serde_json::Error) -> Self {
        BatchProblem::NotJson {
            line: error.line(),
            column: error.column(),
        }
    }
}

/// Splits a body into its events, each kept as the exact text received (for the audit log).
pub fn parse_batch(body: &[u8]) -> Result<Vec<&RawValue>, BatchProblem> {
    let text =
        std::str::from_utf8(body).map_err(|_| BatchProblem::NotJson { line: 1, column: 0 })?;
    match serde_json::from_str::<Vec<&RawValue>>(text) {
        Ok(events) if events.is_empty() => Err(BatchProblem::Empty),
        Ok(events) if events.len() > MAX_BATCH => Err(BatchProblem::TooMany(events.len())),
        Ok(events) => Ok(events),
        // Tell "valid JSON of the wrong shape" from "not JSON" only on this failure path.
        Err(_) => match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => Err(BatchProblem::NotAnArray),
            Err(e) => Err(BatchProblem::not_json(&e)),
        },
    }
}

/// A batch after validation: what to write and audit, and which events were refused.
#[derive(Debug)]
pub struct ValidatedBatch {
    /// Every event in order, with its write or the reason it was refused.
    pub items: Vec<BatchItem>,
    /// The refused events' positions and reasons.
    pub refused: Vec<(usize, EntryError)>,
}

/// Answers whether an ASN exists in the configured ASN data, when there is any.
pub trait AsnCatalog: Send + Sync {
    fn contains(&self, asn: Asn) -> bool;
}

/// Limits that keep an operator from locking everyone out by one typo.
#[derive(Debug, Clone)]
pub struct Guard {
    /// IPv4 ranges shorter than this prefix length are refused.
    pub min_prefix_v4: u8,
    /// IPv6 ranges shorter than this prefix length are refused.
    pub min_prefix_v6: u8,
    /// A block may not overlap any of these (loopback and the server's own address by default).
    pub protected: Vec<IpNet>,
}

impl Default for Guard {
    fn default() -> Self {
        Self {
            min_prefix_v4: 8,
            min_prefix_v6: 16,
            protected: vec![
                "127.0.0.0/8".parse().expect("static network"),
                "::1/128".parse().expect("static network"),
            ],
        }
    }
}

impl Guard {
    /// Whether a rule for `net` may be written: not too broad, and, for a block, not over a
    /// protected network.
    pub fn check(&self, net: IpNet, block: bool) -> Result<(), Problem> {
        match net {
            IpNet::V4(v4) if v4.prefix_len() < self.min_prefix_v4 => {
                return Err(Problem::TooBroadV4(self.min_prefix_v4));
            }
            IpNet::V6(v6) if v6.prefix_len() < self.min_prefix_v6 => {
                return Err(Problem::TooBroadV6(self.min_prefix_v6));
            }
            _ => {}
        }
        if block
            && let Some(protected) = self
                .protected
                .iter()
                .find(|p| p.contains(&net) || net.contains(*p))
        {
            return Err(Problem::Protected(*protected));
        }
        Ok(())
    }
}

/// What a valid event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Block {
        target: Target,
        /// `None`: permanent.
        expires_at: Option<UnixMillis>,
        description: Option<String>,
        name: Option<String>,
    },
    Unblock {
        target: Target,
    },
}

impl Command {
    /// Signals always write block rules: `unblock` removes the block, it never allows.
    pub fn into_write(self) -> RuleWrite {
        match self {
            Command::Block {
                target,
                expires_at,
                description,
                name,
            } => RuleWrite::Put {
                action: RuleAction::Block,
                target,
                expires_at,
                name,
                description,
                source: Source::Signal,
                dataset: None,
            },
            Command::Unblock { target } => RuleWrite::Remove {
                action: RuleAction::Block,
                target,
            },
        }
    }
}

#[derive(Clone, Default)]
pub struct SignalPolicy {
    pub guard: Guard,
    /// `None` when no ASN data is configured: ASN signals are then only format-checked.
    pub asn_catalog: Option<Arc<dyn AsnCatalog>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Block,
    Unblock,
}

impl SignalPolicy {
    /// Splits a body into events and validates each alone; only a body that is not a batch at
    /// all fails as a whole.
    pub fn validate_batch(
        &self,
        body: &[u8],
        now: UnixMillis,
    ) -> Result<ValidatedBatch, BatchProblem> {
        let events = parse_batch(body)?;
        let mut items = Vec::with_capacity(events.len());
        let mut refused = Vec::new();
        for (index, raw) in events.iter().enumerate() {
            let write = match self.validate(raw, now) {
                Ok(command) => Ok(command.into_write()),
                Err(error) => {
                    let text = error.field_message();
                    refused.push((index, error));
                    Err(text)
                }
            };
            items.push(BatchItem {
                event: raw.get().to_owned(),
                write,
            });
        }
        Ok(ValidatedBatch { items, refused })
    }

    /// Validates one event received at `now`. Fields are checked in a fixed order (shape, the
    /// first unknown or repeated field, `type`, `action`, target, `expiration`, `description`,
    /// `name`) and the first problem is reported, so the same event always gets the same
    /// answer.
    pub fn validate(&self, raw: &RawValue, now: UnixMillis) -> Result<Command, EntryError> {
        // Parsed once, into values: an event's members are few and small.
        let members = Members::<Value>::parse(raw.get())
            .map_err(|_| EntryError::new("entry", Problem::NotAnObject, value_of(raw)))?;
        match members.first_offending(&EVENT_FIELDS) {
            Some(Offending::Unknown(key, value)) => {
                return Err(EntryError::new(key, Problem::UnknownField, value.clone()));
            }
            Some(Offending::Repeated(key, value)) => {
                return Err(EntryError::new(key, Problem::Repeated, value.clone()));
            }
            None => {}
        }
        let event = Event(members.into_first());

        match event.get("type") {
            None | Some(Value::Null) => {
                return Err(EntryError::new("type", Problem::Required, Value::Null));
            }
            Some(Value::String(t)) if t == "access_rules" => {}
            Some(other) => return Err(EntryError::new("type", Problem::BadType, other.clone())),
        }
        let action = match event.get("action") {
            None | Some(Value::Null) => {
                return Err(EntryError::new("action", Problem::Required, Value::Null));
            }
            Some(Value::String(a)) if a == "block" => Action::Block,
            Some(Value::String(a)) if a == "unblock" => Action::Unblock,
            Some(other) => {
                return Err(EntryError::new("action", Problem::BadAction, other.clone()));
            }
        };

        let target = self.target(&event, action)?;
        let expires_at = expiration(&event)?.map(|seconds| now.plus_seconds(seconds));
        let description = bounded_text(&event, "description", MAX_DESCRIPTION_CHARS)?;
        let name = bounded_text(&event, "name", MAX_NAME_CHARS)?;

        Ok(match action {
            Action::Block => Command::Block {
                target,
                expires_at,
                description,
                name,
            },
            Action::Unblock => Command::Unblock { target },
        })
    }

    fn target(&self, event: &Event, action: Action) -> Result<Target, EntryError> {
        // Null and "" count as not provided, so clients that serialise every field of a struct
        // (`"asn": ""` next to a real `ip`) are not refused for it.
        let provided: Vec<&str> = TARGET_FIELDS
            .into_iter()
            .filter(|field| match event.get(field) {
                None | Some(Value::Null) => false,
                Some(Value::String(s)) => !s.is_empty(),
                Some(_) => true,
            })
            .collect();
        let field = match provided.as_slice() {
            [one] => *one,
            [] => {
                let empty = TARGET_FIELDS
                    .into_iter()
                    .find(|field| matches!(event.get(field), Some(Value::String(_))));
                return Err(match empty {
                    Some(field) => EntryError::new(field, Problem::Empty, Value::from("")),
                    None => EntryError::new("target", Problem::NoTarget, Value::Null),
                });
            }
            several => {
                let given: Map<String, Value> = several
                    .iter()
                    .map(|f| ((*f).to_owned(), event.get(f).cloned().unwrap_or_default()))
                    .collect();
                return Err(EntryError::new(
                    "target",
                    Problem::SeveralTargets,
                    Value::Object(given),
                ));
            }
        };
        let raw = event.get(field).unwrap_or(&Value::Null);
        let fail = |problem| Err(EntryError::new(field, problem, raw.clone()));
        let Value::String(text) = raw else {
            return fail(Problem::NotAString);
        };
        match field {
            "ip" => {
                let net = match parse_ip_target(text) {
                    Ok(net) => net,
                    Err(IpTargetError::ZoneId) => return fail(Problem::ZoneId),
                    Err(IpTargetError::Invalid) => return fail(Problem::BadIp),
                };
                match self.guard.check(net, action == Action::Block) {
                    Ok(()) => Ok(Target::Ip(net)),
                    Err(problem) => fail(problem),
                }
            }
            "asn" => {
                let Some(asn) = Asn::parse(text) else {
                    return fail(Problem::BadAsn);
                };
                // Unblocking an ASN that has left the data must stay possible.
                if action == Action::Block
                    && let Some(catalog) = &self.asn_catalog
                    && !catalog.contains(asn)
                {
                    return fail(Problem::UnknownAsn(asn));
                }
                Ok(Target::Asn(asn))
            }
            _ => match CountryCode::parse(text) {
                Some(code) => Ok(Target::Country(code)),
                None => fail(Problem::BadCountry),
            },
        }
    }
}

/// An event's members, each key once (repeated keys were refused before): a handful, so a scan
/// finds one sooner than a map could be built for them.
struct Event(Vec<(String, Value)>);

impl Event {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value)
    }
}

fn expiration(event: &Event) -> Result<Option<u32>, EntryError> {
    let raw = match event.get("expiration") {
        None | Some(Value::Null) => return Ok(None),
        Some(raw) => raw,
    };
    let fail = |problem| Err(EntryError::new("expiration", problem, raw.clone()));
    // `as_u64` is `None` for floats (3600.0), negatives and strings: all refused.
    match raw.as_u64() {
        Some(0) | None => fail(Problem::BadExpiration),
        Some(s) if s > MAX_EXPIRATION_SECONDS => fail(Problem::ExpirationTooLong),
        Some(s) => Ok(Some(s as u32)),
    }
}

fn bounded_text(
    event: &Event,
    field: &str,
    max_chars: usize,
) -> Result<Option<String>, EntryError> {
    match event.get(field) {
        None | Some(Value::Null) => Ok(None),
        // PostgreSQL cannot store U+0000 in text; refused on every backend alike.
        Some(raw @ Value::String(s)) if s.contains('\0') => {
            Err(EntryError::new(field, Problem::NulCharacter, raw.clone()))
        }
        Some(Value::String(s)) if s.chars().count() <= max_chars => Ok(Some(s.clone())),
        Some(raw @ Value::String(_)) => Err(EntryError::new(
            field,
            Problem::TooLong(max_chars),
            raw.clone(),
        )),
        Some(raw) => Err(EntryError::new(field, Problem::NotAString, raw.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str) -> Result<Command, EntryError> {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        SignalPolicy::default().validate(&raw, UnixMillis(1_000))
    }

    #[test]
    fn block_with_expiration() {
        let cmd =
            check(r#"{"type":"access_rules","action":"block","ip":"10.1.2.3/16","expiration":60}"#)
                .unwrap();
        assert_eq!(
            cmd,
            Command::Block {
                target: Target::Ip("10.1.0.0/16".parse().unwrap()),
                expires_at: Some(UnixMillis(61_000)),
                description: None,
                name: None,
            }
        );
    }

    #[test]
    fn empty_sibling_target_fields_are_ignored() {
        let cmd = check(
            r#"{"type":"access_rules","action":"unblock","ip":"","asn":"as7","country":null}"#,
        )
        .unwrap();
        assert_eq!(
            cmd,
            Command::Unblock {
                target: Target::Asn(Asn::new(7).unwrap())
            }
        );
    }

    #[test]
    fn batch_shapes() {
        assert_eq!(parse_batch(b"{}").unwrap_err(), BatchProblem::NotAnArray);
        assert_eq!(parse_batch(b"[]").unwrap_err(), BatchProblem::Empty);
        assert!(matches!(
            parse_batch(b"[1,"),
            Err(BatchProblem::NotJson { .. })
        ));
        assert_eq!(
            parse_batch(b"[1, {\"a\": 2}]").unwrap()[1].get(),
            "{\"a\": 2}"
        );
    }
}

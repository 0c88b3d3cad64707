//! ASN and country rules for firewall bouncers, which apply only `Ip` and `Range` decisions:
//! with `crowdsec.expand_geo`, each tenant's ASN and country block rules are served as the
//! `Range` decisions they cover, from the expansion cache ([`Expansions`]), built once per
//! change of those rules or of the geo data, never per pull.
//!
//! A stream pull sends the difference between the expansion this key was last sent and the
//! current one. What a key was sent is remembered by this node: after a restart, or on another
//! node, the first pull sends every current range again (re-adding a range only renews its
//! timeout), and a range that left the expansion meanwhile stays in the bouncer's set until
//! the duration it was given runs out.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

use super::{CrowdsecConfig, Decision, Filter, scope, time_left, value};
use crate::export::expand::{Expansion, Expansions, RangeLimits};
use crate::rules::{RuleId, Target, TenantId, UnixMillis};

/// The scenario of a range that ASN and country rules cover.
pub const SCENARIO: &str = "palisade/asn-country";

/// Ids of expanded ranges: above every rule id, below 2^53 so that JSON readers keep them exact.
const ID_BASE: RuleId = 1 << 52;

/// The expansion a key was sent, and when.
struct Sent {
    expansion: Arc<Expansion>,
    at: UnixMillis,
}

pub struct GeoRanges {
    expansions: Arc<Expansions>,
    limits: RangeLimits,
    sent: Mutex<HashMap<i64, Sent>>,
}

impl GeoRanges {
    pub fn new(expansions: Arc<Expansions>, limits: RangeLimits) -> Self {
        Self {
            expansions,
            limits,
            sent: Mutex::default(),
        }
    }

    /// The tenant's expansion for this key, or `None` when it is larger than the key's
    /// `max_decisions` (the bouncer then gets its IP rules only, and the log says why).
    pub async fn current(&self, key_id: i64, tenant: TenantId) -> Option<Arc<Expansion>> {
        let expansion = self.expansions.get(tenant).await;
        match expansion.within(self.limits.of_key(key_id)) {
            Ok(()) => Some(expansion),
            Err(too_many) => {
                tracing::warn!(key_id, %too_many, "ASN and country ranges not sent to this bouncer");
                None
            }
        }
    }

    /// Remembers what a key was sent at `now` (a start-up pull sends all of `expansion`).
    pub fn sent(&self, key_id: i64, expansion: Option<Arc<Expansion>>, now: UnixMillis) {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        match expansion {
            Some(expansion) => sent.insert(key_id, Sent { expansion, at: now }),
            None => sent.remove(&key_id),
        };
    }

    /// What an incremental pull adds to `new` and `deleted` for the key's ranges, and remembers
    /// the current expansion as sent.
    pub fn news<'c>(
        &self,
        key_id: i64,
        current: Option<Arc<Expansion>>,
        now: UnixMillis,
        filter: &Filter,
        config: &'c CrowdsecConfig,
    ) -> (Vec<Decision<'c>>, Vec<Decision<'c>>) {
        let previous = {
            let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            let previous = sent.remove(&key_id);
            if let Some(expansion) = &current {
                sent.insert(
                    key_id,
                    Sent {
                        expansion: expansion.clone(),
                        at: now,
                    },
                );
            }
            previous
        };
        let unchanged = match (&previous, &current) {
            (Some(p), Some(c)) => Arc::ptr_eq(&p.expansion, c) && c.is_valid_at(now),
            (None, None) => true,
            _ => false,
        };
        if unchanged {
            return (Vec::new(), Vec::new());
        }
        let mut before: HashMap<IpNet, Option<UnixMillis>> = previous
            .map(|p| p.expansion.blocked_cidrs(p.at).collect())
            .unwrap_or_default();
        let mut new = Vec::new();
        for (net, until) in current.iter().flat_map(|c| c.blocked_cidrs(now)) {
            if before.remove(&net) != Some(until) {
                push(&mut new, net, until, now, filter, config);
            }
        }
        let mut deleted = Vec::new();
        let mut gone: Vec<_> = before.into_iter().collect();
        gone.sort_unstable_by_key(|(net, _)| *net);
        for (net, until) in gone {
            push(&mut deleted, net, until, now, filter, config);
        }
        (new, deleted)
    }
}

fn push<'c>(
    out: &mut Vec<Decision<'c>>,
    net: IpNet,
    until: Option<UnixMillis>,
    now: UnixMillis,
    filter: &Filter,
    config: &'c CrowdsecConfig,
) {
    let decision = decision(net, until, now, config);
    if filter.admits(&decision) {
        out.push(decision);
    }
}

/// The `Range` decision for one expanded block; its id is derived from the block, so it is the
/// same on every node and every pull.
pub fn decision<'c>(
    net: IpNet,
    until: Option<UnixMillis>,
    now: UnixMillis,
    config: &'c CrowdsecConfig,
) -> Decision<'c> {
    let target = Target::Ip(net);
    Decision {
        id: id_of(net),
        origin: Cow::Borrowed(&config.signal_origin),
        kind: Cow::Borrowed("ban"),
        scope: Cow::Borrowed(scope(&target)),
        value: value(&target),
        duration: time_left(until, now, config),
        scenario: Cow::Borrowed(SCENARIO),
        simulated: false,
    }
}

/// FNV-1a over the block's address and length, folded under 2^52.
fn id_of(net: IpNet) -> RuleId {
    let mut bytes = match net.network() {
        std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    bytes.push(net.prefix_len());
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    ID_BASE + (hash & (ID_BASE as u64 - 1)) as RuleId
}

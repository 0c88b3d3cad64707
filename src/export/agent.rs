//! The access-rules document the Gen0Sec edge agent (gen0sec/synapse) pulls from
//! `GET /v1/config`: its parser requires every field below, with these names and types, and
//! `waf_rules` beside `access_rules` even though Palisade has no WAF rules.

use std::collections::BTreeMap;

use serde::Serialize;

use super::ranges::{Overlay, Piece, Pieces, blocked};
use crate::geo::{Family, GeoData};
use crate::index::{IpRules, RuleRef, Span};
use crate::rules::{RuleAction, Target, UnixMillis};

#[derive(Debug, Serialize)]
pub struct Document {
    pub success: bool,
    pub config: Config,
}

#[derive(Debug, Serialize)]
pub struct Config {
    pub access_rules: AccessRules,
    pub waf_rules: WafRules,
    pub created_at: String,
    pub updated_at: String,
    pub last_modified: String,
}

#[derive(Debug, Serialize)]
pub struct AccessRules {
    pub id: String,
    pub name: String,
    pub description: String,
    pub allow: RuleSet,
    pub block: RuleSet,
}

/// The agent keys each ASN and country by its name (`AS64500`, `FR`), one map per entry.
#[derive(Debug, Default, Serialize)]
pub struct RuleSet {
    pub asn: Vec<BTreeMap<String, Vec<String>>>,
    pub country: Vec<BTreeMap<String, Vec<String>>>,
    pub ips: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct WafRules {
    pub rules: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the agent document would list more than {limit} networks")]
pub struct TooManyNetworks {
    pub limit: usize,
}

/// What the document is made of.
pub struct Inputs<'a> {
    pub tenant: &'a str,
    pub ip: &'a IpRules,
    /// The tenant's active ASN and country rules.
    pub geo_rules: &'a [RuleRef],
    pub geo: &'a GeoData,
    /// The tenant's last rule change: the document's times, so that an unchanged feed is
    /// the same bytes (and the same ETag).
    pub changed_at: UnixMillis,
    pub now: UnixMillis,
    pub max_networks: usize,
}

/// Builds the document: IP rules as the blocks of what they block and allow now (an allow
/// taking its addresses out of `block.ips`), ASN and country rules as their networks by the geo
/// data in force, in a fixed order.
pub fn document(inputs: Inputs<'_>) -> Result<Document, TooManyNetworks> {
    let mut count = 0usize;
    let mut room = |n: usize| {
        count += n;
        if count > inputs.max_networks {
            Err(TooManyNetworks {
                limit: inputs.max_networks,
            })
        } else {
            Ok(())
        }
    };
    let mut allow = RuleSet::default();
    let mut block = RuleSet::default();
    for family in [Family::V4, Family::V6] {
        for range in blocked(family, ip_pieces(inputs.ip, family, false), inputs.now) {
            let nets = range.cidrs();
            room(nets.len())?;
            block.ips.extend(nets.iter().map(ToString::to_string));
        }
        // Allow rules read as blocks, so the same walk lists them.
        for range in blocked(family, ip_pieces(inputs.ip, family, true), inputs.now) {
            let nets = range.cidrs();
            room(nets.len())?;
            allow.ips.extend(nets.iter().map(ToString::to_string));
        }
    }
    let mut rules: Vec<&RuleRef> = inputs.geo_rules.iter().collect();
    rules.sort_by_key(|rule| (rule.target.to_string(), rule.action.as_str()));
    for rule in rules {
        let (networks, name) = match rule.target {
            Target::Asn(asn) => (inputs.geo.asn_networks(asn), rule.target.to_string()),
            Target::Country(code) => (inputs.geo.country_networks(code), code.to_string()),
            Target::Ip(_) => continue,
        };
        room(networks.len())?;
        let set = match rule.action {
            RuleAction::Block => &mut block,
            RuleAction::Allow => &mut allow,
        };
        let list = match rule.target {
            Target::Asn(_) => &mut set.asn,
            _ => &mut set.country,
        };
        let cidrs = networks.iter().map(ToString::to_string).collect();
        list.push(BTreeMap::from([(name, cidrs)]));
    }
    let at = inputs.changed_at.to_rfc3339();
    Ok(Document {
        success: true,
        config: Config {
            access_rules: AccessRules {
                id: format!("palisade:{}", inputs.tenant),
                name: inputs.tenant.to_owned(),
                description: format!("Palisade access rules of tenant {}", inputs.tenant),
                allow,
                block,
            },
            waf_rules: WafRules::default(),
            created_at: at.clone(),
            updated_at: at.clone(),
            last_modified: at,
        },
    })
}

/// The IP intervals of one family; with `allows`, the allow expiries stand in for the block
/// ones (and nothing takes them out), so [`blocked`] lists what is allowed.
fn ip_pieces(ip: &IpRules, family: Family, allows: bool) -> Overlay<'_> {
    let swap = move |(start, end, span): (u128, u128, Span)| Piece {
        start,
        end,
        span: if allows {
            Span {
                block_until: span.allow_until,
                allow_until: crate::index::NONE,
            }
        } else {
            span
        },
    };
    let source: Pieces<'_> = match family {
        Family::V4 => Box::new(ip.v4().map(swap)),
        Family::V6 => Box::new(ip.v6().map(swap)),
    };
    Overlay::new(vec![source])
}

//! One tenant's ASN and country rules, kept by the ASN or country they name rather than as the
//! networks those cover. A look-up matches them against the address's geo record, so a change to
//! one costs the same whether it names a small ASN or the largest country, and new geo data
//! changes nothing here.
//!
//! Like the prefix tables, this is an immutable value: a change copies the small arrays of shard
//! pointers and the one shard it edits, and shares the rest with the previous generation.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::RuleRef;
use super::table::Span;
use crate::geo::GeoRecord;
use crate::rules::{CountryCode, RuleId, Target, UnixMillis};

/// Shards per kind. A change copies this many pointers and one shard, so its cost does not grow
/// with the tenant's number of ASN rules: 10,000 of them make shards of about 160 entries.
const SHARDS: usize = 64;

#[derive(Clone)]
pub(super) struct GeoRules {
    /// Latest expiry of any of these rules, per action: a decision reads the address's geo
    /// record only while one of them could still change its answer.
    any: Span,
    asn: Keyed,
    country: Keyed,
}

impl Default for GeoRules {
    fn default() -> Self {
        Self {
            any: Span::EMPTY,
            asn: Keyed::default(),
            country: Keyed::default(),
        }
    }
}

/// The key of a target in its kind's map; IP targets have none.
fn key_of(target: &Target) -> Option<(Kind, u64)> {
    match target {
        Target::Ip(_) => None,
        Target::Asn(asn) => Some((Kind::Asn, u64::from(asn.get()))),
        Target::Country(code) => Some((Kind::Country, country_key(*code))),
    }
}

fn country_key(code: CountryCode) -> u64 {
    u64::from(u16::from_be_bytes(code.bytes()))
}

#[derive(Clone, Copy)]
enum Kind {
    Asn,
    Country,
}

impl GeoRules {
    pub(super) fn is_empty(&self) -> bool {
        self.asn.rules == 0 && self.country.rules == 0
    }

    /// Whether the geo record of an address could change a decision that its IP rules make with
    /// `ip`: an active IP allow rule decides alone; a geo allow rule can turn any other answer
    /// into "allowed", and a geo block rule can only matter where no IP rule blocks.
    #[inline]
    pub(super) fn could_change(&self, ip: Span, now: UnixMillis) -> bool {
        let now = now.0;
        ip.allow_until <= now
            && (self.any.allow_until > now || (self.any.block_until > now && ip.block_until <= now))
    }

    /// Expiries of the rules naming the ASN or the country of `geo`.
    #[inline]
    pub(super) fn span(&self, geo: GeoRecord) -> Span {
        let mut span = Span::EMPTY;
        if let Some(asn) = geo.asn
            && let Some(rules) = self.asn.get(u64::from(asn.get()))
        {
            span = span.widen(rules.span);
        }
        if let Some(code) = geo.country
            && let Some(rules) = self.country.get(country_key(code))
        {
            span = span.widen(rules.span);
        }
        span
    }

    /// The active rules naming the ASN of `geo`, then those naming its country, each by id.
    pub(super) fn matches<'a>(
        &'a self,
        geo: GeoRecord,
        now: UnixMillis,
        into: &mut Vec<&'a RuleRef>,
    ) {
        let asn = geo.asn.and_then(|asn| self.asn.get(u64::from(asn.get())));
        let country = geo
            .country
            .and_then(|code| self.country.get(country_key(code)));
        for rules in [asn, country].into_iter().flatten() {
            into.extend(
                rules
                    .list
                    .iter()
                    .map(|rule| &**rule)
                    .filter(|rule| rule.is_active_at(now)),
            );
        }
    }

    /// Adds `rule`, replacing the rule of the same id naming the same target. IP rules are not
    /// kept here and are ignored.
    pub(super) fn put(&mut self, rule: Arc<RuleRef>) {
        if let Some((kind, key)) = key_of(&rule.target) {
            self.keyed(kind).put(key, rule);
        }
    }

    /// Removes the rule `id` naming `target`, if there is one.
    pub(super) fn remove(&mut self, id: RuleId, target: &Target) {
        if let Some((kind, key)) = key_of(target) {
            self.keyed(kind).remove(key, id);
        }
    }

    /// Brings [`GeoRules::any`] up to date after changes.
    pub(super) fn refresh(&mut self) {
        self.asn.refresh();
        self.country.refresh();
        self.any = self.asn.span.widen(self.country.span);
    }

    fn keyed(&mut self, kind: Kind) -> &mut Keyed {
        match kind {
            Kind::Asn => &mut self.asn,
            Kind::Country => &mut self.country,
        }
    }

    /// Rules held, and heap bytes used by the maps. `rules` collects the rule records, as
    /// [`super::table::Table::stats`] does.
    pub(super) fn stats(&self, rules: &mut HashMap<*const RuleRef, usize>) -> (usize, usize) {
        let mut bytes = 0;
        for keyed in [&self.asn, &self.country] {
            for shard in keyed.shards.iter().flatten() {
                // The shard with its reference counts, then the map's buckets and control bytes.
                bytes += size_of::<Shard>() + 2 * size_of::<usize>();
                bytes += shard.entries.capacity() * (size_of::<(u64, Rules)>() + 1);
                for targeted in shard.entries.values() {
                    bytes += targeted.list.capacity() * size_of::<Arc<RuleRef>>();
                    for rule in &targeted.list {
                        let name = rule.name.as_ref().map_or(0, |n| n.len() + 16);
                        rules.insert(Arc::as_ptr(rule), name);
                    }
                }
            }
        }
        (self.asn.rules + self.country.rules, bytes)
    }
}

/// The rules of one kind, by key, in shards chosen by the key.
#[derive(Clone)]
struct Keyed {
    shards: [Option<Arc<Shard>>; SHARDS],
    /// Over all shards.
    span: Span,
    rules: usize,
}

impl Default for Keyed {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| None),
            span: Span::EMPTY,
            rules: 0,
        }
    }
}

#[derive(Clone)]
struct Shard {
    /// Over all entries.
    span: Span,
    entries: HashMap<u64, Rules, BuildHasherDefault<KeyHasher>>,
}

/// The rules naming one ASN or country: a block and an allow rule may both exist.
#[derive(Clone)]
struct Rules {
    /// Over `list`.
    span: Span,
    /// Sorted by id.
    list: Vec<Arc<RuleRef>>,
}

impl Keyed {
    /// Top bits of a product with another constant than the map's hasher, so that the keys of
    /// one shard still spread over the map's buckets.
    #[inline]
    fn shard_of(key: u64) -> usize {
        (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SHARDS.trailing_zeros())) as usize
    }

    #[inline]
    fn get(&self, key: u64) -> Option<&Rules> {
        self.shards[Self::shard_of(key)]
            .as_deref()?
            .entries
            .get(&key)
    }

    fn put(&mut self, key: u64, rule: Arc<RuleRef>) {
        let slot = &mut self.shards[Self::shard_of(key)];
        let shard = Arc::make_mut(slot.get_or_insert_with(|| {
            Arc::new(Shard {
                span: Span::EMPTY,
                entries: HashMap::default(),
            })
        }));
        let rules = shard.entries.entry(key).or_insert_with(|| Rules {
            span: Span::EMPTY,
            list: Vec::new(),
        });
        let before = rules.list.len();
        rules.list.retain(|r| r.id != rule.id);
        let at = rules.list.partition_point(|r| r.id < rule.id);
        rules.list.insert(at, rule);
        self.rules = self.rules + rules.list.len() - before;
        rules.refresh();
        shard.refresh();
    }

    fn remove(&mut self, key: u64, id: RuleId) {
        let slot = &mut self.shards[Self::shard_of(key)];
        let Some(current) = slot.as_deref() else {
            return;
        };
        if !current
            .entries
            .get(&key)
            .is_some_and(|rules| rules.list.iter().any(|r| r.id == id))
        {
            // Nothing to remove: keep sharing the shard.
            return;
        }
        let shard = Arc::make_mut(slot.as_mut().expect("checked above"));
        if let Some(rules) = shard.entries.get_mut(&key) {
            rules.list.retain(|r| r.id != id);
            if rules.list.is_empty() {
                shard.entries.remove(&key);
            } else {
                rules.refresh();
            }
        }
        self.rules -= 1;
        if shard.entries.is_empty() {
            *slot = None;
        } else {
            shard.refresh();
        }
    }

    fn refresh(&mut self) {
        self.span = self
            .shards
            .iter()
            .flatten()
            .fold(Span::EMPTY, |span, shard| span.widen(shard.span));
    }
}

impl Shard {
    fn refresh(&mut self) {
        self.span = self
            .entries
            .values()
            .fold(Span::EMPTY, |span, rules| span.widen(rules.span));
    }
}

impl Rules {
    fn refresh(&mut self) {
        self.span = self
            .list
            .iter()
            .fold(Span::EMPTY, |span, rule| span.widen(Span::of(rule)));
    }
}

/// Hashes the one word of a key: a folded multiply, so that both the low bits (the bucket) and
/// the high bits (the map's control byte) depend on every bit of it. The map's default hasher
/// costs more than the rest of a look-up here, and keys come from authenticated tenants' rules.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    #[inline]
    fn write_u64(&mut self, word: u64) {
        let product = u128::from(word ^ self.0) * 0xa076_1d64_78bd_642f_u128;
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

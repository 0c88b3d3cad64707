//! One tenant's ASN and country rules, kept by the ASN or country they name rather than as the
//! networks those cover. A look-up matches them against the address's geo record, so a change to
//! one costs the same whether it names a small ASN or the largest country, and new geo data
//! changes nothing here.
//!
//! Like the prefix tables, this is an immutable value: a change copies the small arrays of shard
//! pointers and the shards it edits, and shares the rest with the previous generation.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::table::Span;
use super::{RuleRef, TextBytes};
use crate::geo::GeoRecord;
use crate::rules::{CountryCode, RuleId, Target, UnixMillis};

/// Shards per kind. A change copies this many pointers and rebuilds one shard, so its cost does
/// not grow with the tenant's number of ASN rules: 10,000 of them make shards of about 160
/// entries.
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

/// Which map a target's rules are in, and their key there (never 0); IP targets have none.
fn key_of(target: &Target) -> Option<(Map, u32)> {
    match target {
        Target::Ip(_) => None,
        Target::Asn(asn) => Some((Map::Asn, asn.get())),
        Target::Country(code) => Some((Map::Country, country_key(*code))),
    }
}

fn country_key(code: CountryCode) -> u32 {
    u32::from(u16::from_be_bytes(code.bytes()))
}

#[derive(Clone, Copy)]
enum Map {
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
        let asn = geo.asn.map(|asn| self.asn.span_of(asn.get()));
        let country = geo
            .country
            .map(|code| self.country.span_of(country_key(code)));
        asn.unwrap_or(Span::EMPTY)
            .widen(country.unwrap_or(Span::EMPTY))
    }

    /// The active rules naming the ASN of `geo`, then those naming its country, each by id.
    pub(super) fn matches(&self, geo: GeoRecord, now: UnixMillis, into: &mut Vec<RuleRef>) {
        let asn = geo.asn.and_then(|asn| self.asn.rules_of(asn.get()));
        let country = geo
            .country
            .and_then(|code| self.country.rules_of(country_key(code)));
        for rules in [asn, country].into_iter().flatten() {
            into.extend(
                rules
                    .list
                    .iter()
                    .filter(|rule| rule.is_active_at(now))
                    .map(|rule| RuleRef::clone(rule)),
            );
        }
    }

    /// Adds `rule`, replacing the rule of the same id naming the same target. IP rules are not
    /// kept here and are ignored. Decisions see it after [`GeoRules::refresh`].
    pub(super) fn put(&mut self, rule: Arc<RuleRef>) {
        if let Some((map, key)) = key_of(&rule.target) {
            self.keyed(map).put(key, rule);
        }
    }

    /// Removes the rule `id` naming `target`, if there is one. Decisions see it after
    /// [`GeoRules::refresh`].
    pub(super) fn remove(&mut self, id: RuleId, target: &Target) {
        if let Some((map, key)) = key_of(target) {
            self.keyed(map).remove(key, id);
        }
    }

    /// Brings what decisions read up to date after changes: once per batch, since it rebuilds
    /// every edited shard's decision slots.
    pub(super) fn refresh(&mut self) {
        self.asn.refresh();
        self.country.refresh();
        self.any = self.asn.span.widen(self.country.span);
    }

    /// Calls `f` with every rule held, expired or not.
    pub(super) fn each(&self, mut f: impl FnMut(&RuleRef)) {
        for keyed in [&self.asn, &self.country] {
            for shard in keyed.shards.iter().flatten() {
                for rules in shard.entries.values() {
                    rules.list.iter().for_each(|rule| f(rule));
                }
            }
        }
    }

    fn keyed(&mut self, map: Map) -> &mut Keyed {
        match map {
            Map::Asn => &mut self.asn,
            Map::Country => &mut self.country,
        }
    }

    /// Rules held, and heap bytes used by the maps. `records` and `texts` collect the rule
    /// records and their texts, each counted once by the caller.
    pub(super) fn stats(
        &self,
        records: &mut HashSet<*const RuleRef>,
        texts: &mut TextBytes,
    ) -> (usize, usize) {
        let mut bytes = 0;
        for keyed in [&self.asn, &self.country] {
            for shard in keyed.shards.iter().flatten() {
                // The shard with its reference counts, its decision slots and spans, then the
                // map's buckets and control bytes.
                bytes += size_of::<Shard>() + 2 * size_of::<usize>();
                bytes += size_of_val::<[Slot]>(&shard.slots) + size_of_val::<[Span]>(&shard.spans);
                bytes += shard.entries.capacity() * (size_of::<(u32, Rules)>() + 1);
                for targeted in shard.entries.values() {
                    bytes += targeted.list.capacity() * size_of::<Arc<RuleRef>>();
                    for rule in &targeted.list {
                        records.insert(Arc::as_ptr(rule));
                        if let Some(shared) = &rule.texts {
                            texts.add(shared);
                        }
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
    /// Shards edited since the last refresh, one bit each.
    edited: u64,
}

const _: () = assert!(SHARDS == u64::BITS as usize);

impl Default for Keyed {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| None),
            span: Span::EMPTY,
            rules: 0,
            edited: 0,
        }
    }
}

/// A key and the number of its span in the shard's `spans`; key 0 marks a free slot.
type Slot = (u32, u32);

#[derive(Clone)]
struct Shard {
    /// Over all entries.
    span: Span,
    /// What a decision reads, kept apart from the rule lists so that it stays small enough to
    /// remain in cache: an open-addressed table (linear probing, a power of two long) of 8-byte
    /// slots, and the distinct spans they point to (a few, as rules loaded together share
    /// their expiry).
    slots: Box<[Slot]>,
    spans: Box<[Span]>,
    /// For listings and changes.
    entries: HashMap<u32, Rules, BuildHasherDefault<KeyHasher>>,
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
    /// Top bits of a product with another constant than the slots' and the map's, so that the
    /// keys of one shard still spread over its slots and buckets.
    #[inline]
    fn shard_of(key: u32) -> usize {
        (u64::from(key).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SHARDS.trailing_zeros()))
            as usize
    }

    #[inline]
    fn span_of(&self, key: u32) -> Span {
        match &self.shards[Self::shard_of(key)] {
            Some(shard) => shard.span_of(key),
            None => Span::EMPTY,
        }
    }

    fn rules_of(&self, key: u32) -> Option<&Rules> {
        self.shards[Self::shard_of(key)]
            .as_deref()?
            .entries
            .get(&key)
    }

    fn put(&mut self, key: u32, rule: Arc<RuleRef>) {
        let at = Self::shard_of(key);
        let shard = Arc::make_mut(self.shards[at].get_or_insert_with(|| {
            Arc::new(Shard {
                span: Span::EMPTY,
                slots: Box::new([]),
                spans: Box::new([]),
                entries: HashMap::default(),
            })
        }));
        let rules = shard.entries.entry(key).or_insert_with(|| Rules {
            span: Span::EMPTY,
            list: Vec::new(),
        });
        let before = rules.list.len();
        rules.list.retain(|r| r.id != rule.id);
        let position = rules.list.partition_point(|r| r.id < rule.id);
        rules.list.insert(position, rule);
        self.rules = self.rules + rules.list.len() - before;
        rules.refresh();
        self.edited |= 1 << at;
    }

    fn remove(&mut self, key: u32, id: RuleId) {
        let at = Self::shard_of(key);
        let Some(current) = self.shards[at].as_deref() else {
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
        let slot = &mut self.shards[at];
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
            self.edited |= 1 << at;
        }
    }

    fn refresh(&mut self) {
        let mut edited = std::mem::take(&mut self.edited);
        while edited != 0 {
            let at = edited.trailing_zeros() as usize;
            edited &= edited - 1;
            // An edited shard is this value's own copy already, or gone.
            if let Some(shard) = &mut self.shards[at] {
                Arc::make_mut(shard).reindex();
            }
        }
        self.span = self
            .shards
            .iter()
            .flatten()
            .fold(Span::EMPTY, |span, shard| span.widen(shard.span));
    }
}

impl Shard {
    /// Where probing for `key` starts, in `mask + 1` slots.
    #[inline]
    fn home(key: u32, mask: usize) -> usize {
        (u64::from(key).wrapping_mul(0xd6e8_feb8_6659_fd93) >> 32) as usize & mask
    }

    #[inline]
    fn span_of(&self, key: u32) -> Span {
        let mask = self.slots.len().wrapping_sub(1);
        let mut at = Self::home(key, mask);
        // At most two thirds of the slots are taken, so probing ends at a free one.
        while let Some(&(found, number)) = self.slots.get(at) {
            if found == key {
                return self.spans[number as usize];
            }
            if found == 0 {
                break;
            }
            at = (at + 1) & mask;
        }
        Span::EMPTY
    }

    /// Rebuilds the decision slots and the shard's span from its entries.
    fn reindex(&mut self) {
        let count = self.entries.len();
        let len = (count + count / 2 + 1).next_power_of_two().max(8);
        let mask = len - 1;
        let mut slots = vec![(0u32, 0u32); len];
        let mut spans: Vec<Span> = Vec::new();
        let mut numbers: HashMap<Span, u32> = HashMap::new();
        for (&key, rules) in &self.entries {
            // Fewer distinct spans than entries, and a shard holds far fewer than u32::MAX.
            let number = *numbers.entry(rules.span).or_insert_with(|| {
                spans.push(rules.span);
                spans.len() as u32 - 1
            });
            let mut at = Self::home(key, mask);
            while slots[at].0 != 0 {
                at = (at + 1) & mask;
            }
            slots[at] = (key, number);
        }
        self.span = spans.iter().fold(Span::EMPTY, |all, span| all.widen(*span));
        self.slots = slots.into();
        self.spans = spans.into();
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

/// Hashes the one word of a key for the listing map: a folded multiply, so that both the low
/// bits (the bucket) and the high bits (the map's control byte) depend on every bit of it. The
/// map's default hasher costs more than the rest of a listing's look-up here, and keys come from
/// authenticated tenants' rules.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    #[inline]
    fn write_u32(&mut self, word: u32) {
        self.write_u64(u64::from(word));
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

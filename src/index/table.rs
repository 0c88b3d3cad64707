//! A prefix table for one address family, built for "is any active rule covering this address?"
//!
//! The address space is cut into 65,536 buckets by the top 16 bits, grouped in chunks of
//! consecutive buckets. Each bucket is kept two ways:
//!
//! - for decisions, as disjoint intervals, each with the latest expiry of any block and any
//!   allow rule covering it (see [`intervals`]): a decision is a binary search over a few dozen
//!   bytes and two comparisons with "now". Before that, two 256-bit masks of the bucket's
//!   third-byte blocks (a /24 in IPv4) answer most addresses from the bucket's first record
//!   alone: the blocks no prefix touches, and the blocks wholly inside one interval of block
//!   rules with the bucket's most common expiry (a blocklist loaded in one go, say);
//! - for listings and changes, as its distinct prefixes (see [`nodes`]): sorted first addresses,
//!   lengths and parent links (after the decision intervals, in the same allocation), and each
//!   prefix's own rules, one run after the other, in another (the rules' texts, which many
//!   rules share, in a short list beside them: see [`Record`]). The prefixes form a laminar
//!   family (two are nested or disjoint), so the prefixes covering an address are the deepest
//!   one and its ancestors. Both allocations are
//!   small and are fetched together, so walking them costs about one read from memory. A change
//!   reads a bucket's entries back from them and compiles the bucket again, except the common
//!   one, new host prefixes (a /32 or /128), which are spliced into the compiled bucket.
//!
//! A table is an immutable value: a change builds a new one sharing every untouched chunk, and
//! the index publishes it with one atomic pointer swap, so readers never wait and see all of a
//! change or none of it.
//!
//! Prefixes shorter than /16 are stored in every bucket they cover.

use std::fmt::Debug;
use std::hash::Hash;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{RuleRef, RuleTexts};
use crate::rules::{RuleAction, RuleId, Source, Target, UnixMillis};

/// An address as an unsigned integer, most significant bit first.
pub trait Addr: Copy + Ord + Eq + Hash + Debug + Send + Sync + 'static {
    /// The address length: the length of a host prefix.
    const BITS: u8;

    /// Byte `i` counted from the most significant end.
    fn byte(self, i: u32) -> u8;

    /// The first address of the prefix of length `len` containing `self`.
    fn network(self, len: u8) -> Self;

    /// The last address of the prefix of length `len` starting at `self`.
    fn broadcast(self, len: u8) -> Self;

    /// The address after this one, if any.
    fn next(self) -> Option<Self>;

    /// An address's position inside its bucket (the bits below the top 16).
    type Key: bytemuck::Pod + Ord;

    fn key(self) -> Self::Key;

    /// The first address of a bucket.
    fn bucket_start(key: u16) -> Self;

    /// The address at `key` inside bucket `bucket`.
    fn from_parts(bucket: u16, key: Self::Key) -> Self;

    /// The first address of third-byte block `block` of bucket `bucket` (a /24 in IPv4).
    fn block_start(bucket: u16, block: u8) -> Self;

    /// The address as a `u128` (IPv4 in the low 32 bits).
    fn wide(self) -> u128;

    /// The IP target of the prefix of length `len` starting at `self`.
    fn target(self, len: u8) -> Target;
}

impl Addr for u32 {
    const BITS: u8 = 32;

    fn byte(self, i: u32) -> u8 {
        (self >> (24 - 8 * i)) as u8
    }

    fn network(self, len: u8) -> Self {
        if len == 0 {
            0
        } else {
            self & (u32::MAX << (32 - len))
        }
    }

    fn broadcast(self, len: u8) -> Self {
        if len == 0 {
            u32::MAX
        } else {
            self | !(u32::MAX << (32 - len))
        }
    }

    fn next(self) -> Option<Self> {
        self.checked_add(1)
    }

    type Key = u16;

    fn key(self) -> u16 {
        self as u16
    }

    fn bucket_start(key: u16) -> Self {
        u32::from(key) << 16
    }

    fn from_parts(bucket: u16, key: u16) -> Self {
        Self::bucket_start(bucket) | u32::from(key)
    }

    fn block_start(bucket: u16, block: u8) -> Self {
        Self::bucket_start(bucket) | (u32::from(block) << 8)
    }

    fn wide(self) -> u128 {
        u128::from(self)
    }

    fn target(self, len: u8) -> Target {
        Target::Ip(IpNet::V4(
            Ipv4Net::new(Ipv4Addr::from(self), len).expect("a prefix length of at most 32"),
        ))
    }
}

impl Addr for u128 {
    const BITS: u8 = 128;

    fn byte(self, i: u32) -> u8 {
        (self >> (120 - 8 * i)) as u8
    }

    fn network(self, len: u8) -> Self {
        if len == 0 {
            0
        } else {
            self & (u128::MAX << (128 - len))
        }
    }

    fn broadcast(self, len: u8) -> Self {
        if len == 0 {
            u128::MAX
        } else {
            self | !(u128::MAX << (128 - len))
        }
    }

    fn next(self) -> Option<Self> {
        self.checked_add(1)
    }

    /// The low 112 bits, high word first so that the array's order is the address order (a
    /// `u128` would need an alignment the word array does not give).
    type Key = [u64; 2];

    fn key(self) -> [u64; 2] {
        [(self >> 64) as u64 & 0xffff_ffff_ffff, self as u64]
    }

    fn bucket_start(key: u16) -> Self {
        u128::from(key) << 112
    }

    fn from_parts(bucket: u16, key: [u64; 2]) -> Self {
        Self::bucket_start(bucket) | (u128::from(key[0]) << 64) | u128::from(key[1])
    }

    fn block_start(bucket: u16, block: u8) -> Self {
        Self::bucket_start(bucket) | (u128::from(block) << 104)
    }

    fn wide(self) -> u128 {
        self
    }

    fn target(self, len: u8) -> Target {
        Target::Ip(IpNet::V6(
            Ipv6Net::new(Ipv6Addr::from(self), len).expect("a prefix length of at most 128"),
        ))
    }
}

fn bucket_key<A: Addr>(addr: A) -> u16 {
    (u16::from(addr.byte(0)) << 8) | u16::from(addr.byte(1))
}

/// A prefix and the IP rule it was compiled from.
#[derive(Clone)]
pub struct Entry<A> {
    start: A,
    len: u8,
    record: Record,
    texts: Option<Arc<RuleTexts>>,
}

impl<A: Addr> Entry<A> {
    /// `rule` on the prefix `start/len`, which is its target: the table keeps no other.
    pub fn new(start: A, len: u8, rule: RuleRef) -> Self {
        Self {
            start,
            len,
            record: Record::of(&rule),
            texts: rule.texts,
        }
    }

    /// The buckets this prefix touches.
    fn bucket_keys(&self) -> std::ops::RangeInclusive<u16> {
        bucket_keys_of(self.start, self.len)
    }

    fn placed(&self) -> Placed<'_, A> {
        Placed {
            start: self.start,
            len: self.len,
            record: &self.record,
            texts: self.texts.as_ref(),
        }
    }

    /// The entry as placed in each bucket it covers.
    fn placed_in_buckets(&self) -> impl Iterator<Item = (u16, Placed<'_, A>)> {
        self.bucket_keys().map(|key| (key, self.placed()))
    }
}

/// Items by bucket: the buckets' keys and the items, in one order, ascending by key and then
/// by `order`.
fn by_bucket<T, K: Ord>(
    items: impl Iterator<Item = (u16, T)>,
    order: impl Fn(&T) -> K,
) -> (Vec<u16>, Vec<T>) {
    let mut items: Vec<(u16, T)> = items.collect();
    items.sort_unstable_by_key(|(key, item)| (*key, order(item)));
    items.into_iter().unzip()
}

/// The order of a bucket's prefixes: by first address, length and rule id.
fn prefix_order<A: Addr>(placed: &Placed<'_, A>) -> (A, u8, i64) {
    (placed.start, placed.len, placed.record.id)
}

/// Each distinct key of `keys` (ascending) with the positions that hold it.
fn ranges(keys: &[u16]) -> Vec<(u16, std::ops::Range<usize>)> {
    let mut start = 0;
    keys.chunk_by(|a, b| a == b)
        .map(|run| {
            start += run.len();
            (run[0], start - run.len()..start)
        })
        .collect()
}

/// A bucket with its positions in two lists (an empty range where a list does not name it).
type Merged = (u16, std::ops::Range<usize>, std::ops::Range<usize>);

/// The buckets of two lists from [`ranges`], ascending, each with its positions in both.
fn merged(
    adds: Vec<(u16, std::ops::Range<usize>)>,
    removes: Vec<(u16, std::ops::Range<usize>)>,
) -> Vec<Merged> {
    let mut merged = Vec::with_capacity(adds.len() + removes.len());
    let (mut adds, mut removes) = (adds.into_iter().peekable(), removes.into_iter().peekable());
    while let Some(key) = match (adds.peek(), removes.peek()) {
        (Some(a), Some(r)) => Some(a.0.min(r.0)),
        (a, r) => a.or(r).map(|(key, _)| *key),
    } {
        let add = adds.next_if(|(k, _)| *k == key).map_or(0..0, |(_, at)| at);
        let remove = removes
            .next_if(|(k, _)| *k == key)
            .map_or(0..0, |(_, at)| at);
        merged.push((key, add, remove));
    }
    merged
}

/// A prefix and the rule record it was compiled from, wherever that record lies (the bucket
/// being replaced, or the changes), with the rule's texts: what a bucket is compiled from.
/// Sorting and editing these moves a few words per rule, where owned records would move a
/// whole record each time; the records are copied once, into the new bucket. The record's own
/// `texts` is not read: it names a place in a list that may not be the new bucket's.
#[derive(Clone, Copy)]
struct Placed<'r, A> {
    start: A,
    len: u8,
    record: &'r Record,
    texts: Option<&'r Arc<RuleTexts>>,
}

/// A rule as a bucket keeps it: a [`RuleRef`] whose texts are named by their place in the
/// bucket's list of texts ([`Hot::texts`]) rather than held, and without its target, which is
/// the prefix the record is listed under (IP targets are kept normalised, as their network).
/// 32 bytes a record rather than 56: the tables of 1M ingested rules take a quarter less
/// memory (BENCHMARKS.md).
///
/// Rules loaded together mostly share one texts allocation. When each record held it, every
/// copy of a record into a rebuilt bucket counted that one allocation up, and every release of
/// an old bucket counted it down, from the two threads that rebuild a round's buckets and the
/// one that releases old generations at once, so the count's cache line went from core to
/// core. A bucket now counts each distinct texts once, and its records are plain values: a
/// round that adds hosts to crowded buckets (dense ingest) costs a tenth less (BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    id: RuleId,
    action: RuleAction,
    expires_at: Option<UnixMillis>,
    source: Source,
    /// The rule's texts in its bucket's list, or [`NO_TEXTS`].
    texts: u32,
}

const _: () = assert!(size_of::<Record>() == 32);

/// A rule without a name, dataset or description.
const NO_TEXTS: u32 = u32::MAX;

/// The distinct texts of one bucket's rules (see [`Hot::texts`]).
type BucketTexts = Arc<Vec<Arc<RuleTexts>>>;

/// A bucket's prefixes, their rules and the texts the rules name.
type Listing<'a, A> = (nodes::View<'a, A>, &'a [Record], &'a [Arc<RuleTexts>]);

impl Record {
    fn of(rule: &RuleRef) -> Self {
        Self {
            id: rule.id,
            action: rule.action,
            expires_at: rule.expires_at,
            source: rule.source,
            texts: NO_TEXTS,
        }
    }

    /// The rule, given the prefix it is listed under and its bucket's texts.
    fn rule<A: Addr>(&self, (start, len): (A, u8), texts: &[Arc<RuleTexts>]) -> RuleRef {
        RuleRef {
            id: self.id,
            action: self.action,
            target: start.target(len),
            expires_at: self.expires_at,
            source: self.source,
            texts: texts.get(self.texts as usize).cloned(),
        }
    }

    fn is_active_at(&self, now: UnixMillis) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

/// The distinct texts of a bucket's rules, as the bucket is built: each rule's texts get a
/// place in the list, found by address (equal texts share one allocation, see
/// [`super::Texts`]).
struct TextList<'r> {
    /// The list of the bucket being replaced, whose records keep their places.
    old: &'r [Arc<RuleTexts>],
    /// Texts the old list lacks, placed after it.
    added: Vec<&'r Arc<RuleTexts>>,
    /// The places by address, once the list is too long to scan.
    places: Option<foldhash::HashMap<*const RuleTexts, u32>>,
    /// The texts placed last, and their place: neighbouring rules mostly share them.
    last: Option<(&'r Arc<RuleTexts>, u32)>,
}

/// Up to this many distinct texts, a bucket's list is scanned rather than hashed: most buckets
/// hold one or two.
const TEXTS_SCANNED: usize = 8;

impl<'r> TextList<'r> {
    /// A list that begins with `old`, so that records copied from the bucket keep their places.
    fn extending(old: &'r [Arc<RuleTexts>]) -> Self {
        let mut list = Self {
            old,
            added: Vec::new(),
            places: None,
            last: None,
        };
        list.index_if_long();
        list
    }

    fn len(&self) -> usize {
        self.old.len() + self.added.len()
    }

    fn all(&self) -> impl Iterator<Item = &'r Arc<RuleTexts>> + '_ {
        self.old.iter().chain(self.added.iter().copied())
    }

    fn index_if_long(&mut self) {
        if self.places.is_none() && self.len() > TEXTS_SCANNED {
            let places = self.all().enumerate();
            self.places = Some(
                places
                    .map(|(at, texts)| (Arc::as_ptr(texts), at as u32))
                    .collect(),
            );
        }
    }

    /// The place of `texts` in the list, added if new.
    fn place(&mut self, texts: Option<&'r Arc<RuleTexts>>) -> u32 {
        let Some(texts) = texts else {
            return NO_TEXTS;
        };
        if let Some((last, at)) = self.last
            && Arc::ptr_eq(last, texts)
        {
            return at;
        }
        let found = match &self.places {
            Some(places) => places.get(&Arc::as_ptr(texts)).copied(),
            None => (self.all().position(|known| Arc::ptr_eq(known, texts))).map(|at| at as u32),
        };
        let at = found.unwrap_or_else(|| {
            let at = self.len() as u32;
            self.added.push(texts);
            if let Some(places) = &mut self.places {
                places.insert(Arc::as_ptr(texts), at);
            }
            self.index_if_long();
            at
        });
        self.last = Some((texts, at));
        at
    }

    /// The bucket's list. When nothing was added to the list of the bucket being replaced,
    /// that list itself, moved out of `replaced` (the old bucket's copy in the new table):
    /// counting it up here and down when the copy is dropped would wait twice for its line.
    fn finish(self, replaced: &mut Option<BucketTexts>) -> Option<BucketTexts> {
        if self.len() == 0 {
            return None;
        }
        match replaced.take() {
            Some(old) if self.added.is_empty() => Some(old),
            _ => Some(Arc::new(self.all().cloned().collect())),
        }
    }
}

/// Latest expiry, in Unix milliseconds, of any rule of each action; `NONE` when there is none
/// and `FOREVER` for permanent rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Span {
    pub block_until: i64,
    pub allow_until: i64,
}

pub const NONE: i64 = i64::MIN;
pub const FOREVER: i64 = i64::MAX;

impl Span {
    pub(super) const EMPTY: Span = Span {
        block_until: NONE,
        allow_until: NONE,
    };

    pub(super) fn widen(self, other: Span) -> Span {
        Span {
            block_until: self.block_until.max(other.block_until),
            allow_until: self.allow_until.max(other.allow_until),
        }
    }

    pub(super) fn of(rule: &RuleRef) -> Span {
        Self::of_record(&Record::of(rule))
    }

    fn of_record(rule: &Record) -> Span {
        let until = rule.expires_at.map_or(FOREVER, |t| t.0);
        match rule.action {
            RuleAction::Block => Span {
                block_until: until,
                allow_until: NONE,
            },
            RuleAction::Allow => Span {
                block_until: NONE,
                allow_until: until,
            },
        }
    }
}

const NO_PARENT: u32 = u32::MAX;

/// One distinct prefix of a bucket while it is compiled.
struct Node {
    /// Expiries over the prefix and all its ancestors.
    chain: Span,
    parent: u32,
    /// This prefix's rules begin at `entries[rules_from]` and end where the next prefix's do.
    rules_from: usize,
    len: u8,
}

/// A bucket's distinct prefixes, sorted by (start, length), with their ancestry: the form the
/// look-up structures are compiled from.
struct Prefixes<'a, A> {
    entries: &'a [Placed<'a, A>],
    starts: Vec<A>,
    nodes: Vec<Node>,
}

impl<'a, A: Addr> Prefixes<'a, A> {
    /// `entries` sorted by (start, length).
    fn of(entries: &'a [Placed<'a, A>]) -> Self {
        let mut starts: Vec<A> = Vec::with_capacity(entries.len());
        let mut nodes: Vec<Node> = Vec::with_capacity(entries.len());
        let mut stack: Vec<u32> = Vec::new();
        let mut i = 0;
        while i < entries.len() {
            let (start, len) = (entries[i].start, entries[i].len);
            let rules_from = i;
            let mut own = Span::EMPTY;
            while i < entries.len() && entries[i].start == start && entries[i].len == len {
                own = own.widen(Span::of_record(entries[i].record));
                i += 1;
            }
            // Sorted by start then length, every ancestor comes before its descendants; the
            // stack holds the current chain of open ancestors.
            while let Some(&top) = stack.last() {
                let t = top as usize;
                if start.network(nodes[t].len) == starts[t] {
                    break;
                }
                stack.pop();
            }
            let parent = stack.last().copied().unwrap_or(NO_PARENT);
            let inherited = if parent == NO_PARENT {
                Span::EMPTY
            } else {
                nodes[parent as usize].chain
            };
            stack.push(starts.len() as u32);
            starts.push(start);
            nodes.push(Node {
                chain: own.widen(inherited),
                parent,
                rules_from,
                len,
            });
        }
        Self {
            entries,
            starts,
            nodes,
        }
    }

    /// The deepest prefix containing `addr`, given `after`: the number of prefixes that start
    /// at or before it. Callers visit addresses in order and keep `after` as they go, rather
    /// than searching for it each time.
    fn deepest(&self, addr: A, after: usize) -> Option<usize> {
        let mut n = after.checked_sub(1)?;
        // The deepest containing prefix, if any, is this one or one of its ancestors.
        loop {
            let node = &self.nodes[n];
            if addr.network(node.len) == self.starts[n] {
                return Some(n);
            }
            if node.parent == NO_PARENT {
                return None;
            }
            n = node.parent as usize;
        }
    }

    /// Third-byte blocks of this bucket that some prefix touches.
    fn mask(&self) -> [u64; 4] {
        let mut mask = [0u64; 4];
        for (start, node) in self.starts.iter().zip(&self.nodes) {
            let len = node.len;
            let (first, last) = if len <= 16 {
                (0u8, 255u8)
            } else {
                (start.byte(2), start.broadcast(len).byte(2))
            };
            for b in first..=last {
                mask[usize::from(b >> 6)] |= 1 << (b & 63);
            }
        }
        mask
    }
}

/// What a look-up reads of one bucket first, in one aligned pair of cache lines fetched
/// together: which third-byte blocks (a /24 in IPv4) the bucket's prefixes touch, which of them
/// lie wholly inside one decision interval covered by block rules only, whose latest expiry is
/// `common_until` (decided from this record alone), and where the rest is.
///
/// `repr(C)` keeps the fields in this order.
#[derive(Clone, Default)]
#[repr(C, align(128))]
struct Hot {
    touched: [u64; 4],
    uniform: [u64; 4],
    common_until: i64,
    counts: intervals::Counts,
    /// How many distinct prefixes `words` holds.
    prefixes: u32,
    /// The decision intervals (see [`intervals`]), then the prefixes (see [`nodes`]). `None`
    /// for an empty bucket.
    words: Option<Arc<[u64]>>,
    /// Each prefix's own rules, sorted by id, one run after the other in prefix order. The
    /// records themselves rather than pointers to them: rebuilding a bucket copies one run of
    /// memory instead of updating a reference count in every rule's own allocation, and a rule
    /// needs no allocation of its own.
    rules: Option<Arc<[Record]>>,
    /// The distinct texts of the bucket's rules, which the records name by place (see
    /// [`Record`]). `None` when no rule has any. A bucket rebuilt without new texts shares the
    /// list of the one it replaces.
    texts: Option<BucketTexts>,
}

// One pair of cache lines, read in one wait for memory: enough to decide an address under no
// rule or in a `uniform` block; any other decision also reads the decision intervals.
const _: () = assert!(size_of::<Hot>() == 128);

impl Hot {
    /// The bucket of `key` holding `entries` (in any order).
    fn compiled<A: Addr>(key: u16, mut entries: Vec<Placed<'_, A>>) -> Self {
        if entries.is_empty() {
            return Hot::default();
        }
        entries.sort_unstable_by_key(|e| (e.start, e.len, e.record.id));
        let prefixes = Prefixes::of(&entries);
        let mut texts = TextList::extending(&[]);
        let records: Arc<[Record]> = entries
            .iter()
            .map(|e| Record {
                texts: texts.place(e.texts),
                ..*e.record
            })
            .collect();
        let touched = prefixes.mask();
        let decision = intervals::build(&prefixes, key, &touched);
        // One allocation of the exact size for both sections.
        let words = decision
            .words
            .iter()
            .chain(&nodes::build(&prefixes, key))
            .copied()
            .collect();
        Hot {
            touched,
            uniform: decision.uniform,
            common_until: decision.common_until,
            counts: decision.counts,
            prefixes: prefixes.nodes.len() as u32,
            words: Some(words),
            rules: Some(records),
            texts: texts.finish(&mut None),
        }
    }

    /// This bucket with host prefixes added (`hosts`: their entries, sorted by address and
    /// rule id), worked out from its compiled form rather than compiled again: under ingest
    /// nearly every change adds a host, and for dense addresses compiling the crowded bucket
    /// again for a round's thousand hosts was most of the round (BENCHMARKS.md). `None` when it
    /// does not apply (an empty bucket, or a host prefix the bucket has already), and the
    /// bucket is compiled. `replaced` is this bucket's list of texts as the new table holds it
    /// until the new bucket takes its place: the new bucket takes it over when it needs no
    /// other texts.
    fn with_hosts<A: Addr>(
        &self,
        key: u16,
        hosts: &[Placed<'_, A>],
        replaced: &mut Option<BucketTexts>,
    ) -> Option<Self> {
        let (nodes, rules, old_texts) = self.listing::<A>()?;
        let words = self.words.as_deref()?;
        // Each new prefix: its address, its rules, where it goes among the old ones, and the
        // old prefix it lies in.
        struct Host<'h, 'r, A> {
            addr: A,
            entries: &'h [Placed<'r, A>],
            at: usize,
            parent: Option<usize>,
        }
        let mut new = Vec::with_capacity(hosts.len());
        let mut touched = self.touched;
        for entries in hosts.chunk_by(|a, b| a.start == b.start) {
            let addr = entries[0].start;
            let at = nodes.position(addr.key(), A::BITS);
            if at < nodes.len() && nodes.key_and_len(at) == (addr.key(), A::BITS) {
                return None;
            }
            let block = addr.byte(2);
            touched[usize::from(block >> 6)] |= 1 << (block & 63);
            let parent = nodes.deepest(addr);
            new.push(Host {
                addr,
                entries,
                at,
                parent,
            });
        }
        let count = nodes.len() + new.len();
        // Where old prefix `n` goes: after every new one placed before it.
        let moved = |n: usize| n + new.partition_point(|host| host.at <= n);
        let mut keys = Vec::with_capacity(count);
        let mut lens = Vec::with_capacity(count);
        let mut parents = Vec::with_capacity(count);
        let mut rules_at = Vec::with_capacity(count + 1);
        // Each record with the place of its texts. The records are copied once, into the new
        // bucket's list, whose length is known then.
        let mut list: Vec<(&Record, u32)> = Vec::with_capacity(rules.len() + hosts.len());
        // Old records keep their places: the new list begins with the old one.
        let mut texts = TextList::extending(old_texts);
        let parent_of = |parent: Option<usize>| parent.map_or(NO_PARENT, |p| moved(p) as u32);
        let mut next = new.iter().peekable();
        for n in 0..=nodes.len() {
            while let Some(host) = next.next_if(|host| host.at == n) {
                keys.push(host.addr.key());
                lens.push(A::BITS);
                parents.push(parent_of(host.parent));
                rules_at.push(list.len() as u32);
                list.extend(
                    host.entries
                        .iter()
                        .map(|e| (e.record, texts.place(e.texts))),
                );
            }
            if n < nodes.len() {
                let (key, len) = nodes.key_and_len(n);
                keys.push(key);
                lens.push(len);
                parents.push(parent_of(nodes.parent(n)));
                rules_at.push(list.len() as u32);
                list.extend(rules[nodes.rules(n)].iter().map(|old| (old, old.texts)));
            }
        }
        rules_at.push(list.len() as u32);
        let spans: Vec<(A, Span)> = new
            .iter()
            .map(|host| {
                let own = host.entries.iter().map(|e| Span::of_record(e.record));
                (host.addr, own.fold(Span::EMPTY, Span::widen))
            })
            .collect();
        let decision = intervals::with_hosts(words, self.counts, key, &touched, &spans);
        let words = decision
            .words
            .iter()
            .chain(&nodes::encode::<A>(&keys, &lens, &parents, &rules_at))
            .copied()
            .collect();
        Some(Hot {
            touched,
            uniform: decision.uniform,
            common_until: decision.common_until,
            counts: decision.counts,
            prefixes: count as u32,
            words: Some(words),
            rules: Some(
                list.iter()
                    .map(|&(record, texts)| Record { texts, ..*record })
                    .collect(),
            ),
            texts: texts.finish(replaced),
        })
    }

    /// The bucket's prefixes, their rules and the texts the rules name.
    fn listing<A: Addr>(&self) -> Option<Listing<'_, A>> {
        let (words, rules) = (self.words.as_deref()?, self.rules.as_deref()?);
        let prefixes = words.get(intervals::end::<A>(self.counts)..)?;
        let texts = self.texts.as_deref().map_or(&[][..], Vec::as_slice);
        Some((nodes::View::of(prefixes, self.prefixes), rules, texts))
    }
}

/// Buckets per chunk: the unit a change copies. Small enough that a round of scattered
/// changes copies little besides the buckets it rebuilds (a round under heavy ingest holds
/// about 4,000 changes, which touch about 3,160 of the 8,192 chunks, 25,000 buckets; with 16
/// buckets a chunk they touched 2,550 chunks, 41,000 buckets, and a round took 4-6% longer;
/// with 64, every chunk), large enough that the array of chunks, copied on every change, stays
/// 64 KiB.
const CHUNK: usize = 8;

/// [`CHUNK`] consecutive buckets.
struct Chunk {
    hot: [Hot; CHUNK],
}

/// Starts loading the reference counts of `shared` into cache, ahead of an update.
///
/// Copying or releasing a table part updates the reference count of every part it points to,
/// and those counts lie in allocations spread over the heap, rarely in cache. Each update is
/// an atomic instruction, which waits for its cache line before the next one starts: a copy of
/// a chunk would wait for memory 32 times in a row. Asking for all the lines first lets those
/// waits overlap.
///
/// The counts sit in front of the value, which begins at the next multiple of its alignment
/// after the two counts (the layout of the standard library's `Arc`). Should that layout ever
/// change, this loads the wrong line and costs only the time it saves.
#[inline]
fn prefetch_counts<T: ?Sized>(shared: &Arc<T>) {
    let offset = (2 * size_of::<usize>()).next_multiple_of(align_of_val::<T>(shared));
    prefetch(Arc::as_ptr(shared).cast::<i8>().wrapping_sub(offset));
}

/// Starts loading the cache line at `at` (any address: a prefetch never faults).
#[inline]
fn prefetch(at: *const i8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults and reads nothing the program sees,
    // whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Starts loading the first `limit` bytes of `items`, one prefetch per cache line.
#[inline]
fn prefetch_lines<T>(items: &[T], limit: usize) {
    let bytes = size_of_val(items).min(limit);
    let start = items.as_ptr().cast::<i8>();
    for offset in (0..bytes).step_by(64) {
        prefetch(start.wrapping_add(offset));
    }
}

impl Chunk {
    fn prefetch_counts(&self) {
        for hot in &self.hot {
            hot.words.iter().for_each(prefetch_counts);
            hot.rules.iter().for_each(prefetch_counts);
            hot.texts.iter().for_each(prefetch_counts);
        }
    }
}

impl Clone for Chunk {
    fn clone(&self) -> Self {
        self.prefetch_counts();
        Self {
            hot: self.hot.clone(),
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // The fields are released after this: their counts are on their way by then.
        self.prefetch_counts();
    }
}

/// Rebuilds of at least this many buckets are split between two threads; below it, starting
/// a thread costs more than it saves.
pub(super) const SPLIT_FROM: usize = 256;

/// How far ahead of the pointer whose count is updated the loop over a table's chunk pointers
/// asks for the counts.
const PREFETCH_AHEAD: usize = 16;

/// How many buckets ahead of the one it compiles a rebuild loads the next one's prefixes and
/// rules (and, twice as far ahead, its bucket record).
const BUCKETS_AHEAD: usize = 2;

/// How much of a bucket's prefixes and of its rules a rebuild loads ahead: all of a bucket of
/// a few dozen rules.
const PREFETCH_BUCKET_BYTES: usize = 4096;

impl Default for Chunk {
    fn default() -> Self {
        Self {
            hot: std::array::from_fn(|_| Hot::default()),
        }
    }
}

/// One family's prefix table: an immutable value. A change makes a new table that shares every
/// chunk it does not touch with the old one, so publishing a change is one pointer swap above
/// (the index's generation) and readers never wait.
pub struct Table<A> {
    chunks: Box<[Option<Arc<Chunk>>]>,
    family: std::marker::PhantomData<A>,
}

impl<A> Clone for Table<A> {
    fn clone(&self) -> Self {
        let chunks = &self.chunks;
        let copy = (0..chunks.len())
            .map(|i| {
                if let Some(Some(ahead)) = chunks.get(i + PREFETCH_AHEAD) {
                    prefetch_counts(ahead);
                }
                chunks[i].clone()
            })
            .collect();
        Self {
            chunks: copy,
            family: std::marker::PhantomData,
        }
    }
}

impl<A> Drop for Table<A> {
    fn drop(&mut self) {
        let chunks = &mut self.chunks;
        for i in 0..chunks.len() {
            if let Some(Some(ahead)) = chunks.get(i + PREFETCH_AHEAD) {
                prefetch_counts(ahead);
            }
            chunks[i] = None;
        }
    }
}

impl<A: Addr> Default for Table<A> {
    fn default() -> Self {
        Self {
            chunks: (0..(1 << 16) / CHUNK).map(|_| None).collect(),
            family: std::marker::PhantomData,
        }
    }
}

fn touches(mask: &[u64; 4], addr: impl Addr) -> bool {
    let b = addr.byte(2);
    mask[usize::from(b >> 6)] & (1 << (b & 63)) != 0
}

/// The blocks `mask` holds, in ascending order. A bucket of scattered addresses touches a few
/// dozen of its 256 blocks: going from one set bit to the next, rather than testing all 256,
/// takes a tenth off compiling such a bucket.
fn blocks_in(mask: &[u64; 4]) -> impl Iterator<Item = u8> + '_ {
    mask.iter().enumerate().flat_map(|(word_at, &word)| {
        std::iter::successors((word != 0).then_some(word), |rest| {
            let rest = rest & (rest - 1);
            (rest != 0).then_some(rest)
        })
        // At most 3 * 64 + 63.
        .map(move |rest| (word_at * 64) as u8 + rest.trailing_zeros() as u8)
    })
}

/// Reads one value from each cache line of the first `limit` bytes of `items`, so that the
/// processor loads those lines in parallel instead of one after another as a search reaches
/// them. `word` turns an item into a value the compiler cannot skip reading.
#[inline]
fn touch<T>(items: &[T], limit: usize, word: impl Fn(&T) -> usize) {
    let step = (64 / size_of::<T>().max(1)).max(1);
    let count = items.len().min(limit / size_of::<T>().max(1));
    let mut sum = 0usize;
    for item in items[..count].iter().step_by(step) {
        sum = sum.wrapping_add(word(item));
    }
    std::hint::black_box(sum);
}

/// How much of a bucket's prefixes a listing fetches at once: all of a typical bucket (a few
/// dozen prefixes), and the first part of a crowded one.
const PREFETCH_BYTES: usize = 512;

impl<A: Addr> Table<A> {
    /// The bucket's data, unless the mask already says no prefix is near `addr`.
    #[inline]
    fn hot(&self, addr: A) -> Option<&Hot> {
        let hot = self.bucket(bucket_key(addr))?;
        touches(&hot.touched, addr).then_some(hot)
    }

    /// Expiries deciding `addr`: the hot path.
    pub fn span(&self, addr: A) -> Span {
        let Some(hot) = self.hot(addr) else {
            return Span::EMPTY;
        };
        if touches(&hot.uniform, addr) {
            return Span {
                block_until: hot.common_until,
                allow_until: NONE,
            };
        }
        match hot.words.as_deref() {
            Some(words) => intervals::span::<A>(words, hot.counts, addr.key()),
            None => Span::EMPTY,
        }
    }

    /// The active rules covering `addr`, deepest prefix first. The decision follows from them,
    /// so a listing does not search the decision intervals as well.
    pub fn matches(&self, addr: A, now: UnixMillis) -> Vec<RuleRef> {
        let Some(hot) = self.hot(addr) else {
            return Vec::new();
        };
        let Some((nodes, rules, texts)) = hot.listing::<A>() else {
            return Vec::new();
        };
        // Both allocations at once: the search below then waits for memory about once.
        touch(nodes.words(), PREFETCH_BYTES, |word| *word as usize);
        touch(rules, PREFETCH_BYTES, |rule| rule.id as usize);
        let mut found = Vec::new();
        let mut node = nodes.deepest(addr);
        while let Some(n) = node {
            let mut active = rules[nodes.rules(n)]
                .iter()
                .filter(|rule| rule.is_active_at(now))
                .peekable();
            // The target of a prefix's rules, worked out only for a prefix that has some.
            if active.peek().is_some() {
                let prefix = nodes.prefix(bucket_key(addr), n);
                found.extend(active.map(|rule| rule.rule(prefix, texts)));
            }
            node = nodes.parent(n);
        }
        found
    }

    /// Every decision interval of the table in address order, as `(first, last, span)` with
    /// addresses widened to `u128`. Buckets without rules are skipped; neighbours are not
    /// merged across buckets.
    pub fn intervals(&self) -> Intervals<'_, A> {
        Intervals {
            table: self,
            bucket: 0,
            current: None,
        }
    }

    #[inline]
    fn bucket(&self, key: u16) -> Option<&Hot> {
        let chunk = self.chunks[usize::from(key) / CHUNK].as_deref()?;
        Some(&chunk.hot[usize::from(key) % CHUNK])
    }

    /// Starts loading the bucket record of `key` (both of its cache lines).
    fn prefetch_hot(&self, key: u16) {
        if let Some(hot) = self.bucket(key) {
            let at = std::ptr::from_ref(hot).cast::<i8>();
            prefetch(at);
            prefetch(at.wrapping_add(64));
        }
    }

    /// Starts loading what a rebuild of the bucket of `key` reads: its prefixes and its rules.
    fn prefetch_bucket(&self, key: u16) {
        if let Some(hot) = self.bucket(key) {
            hot.words
                .iter()
                .for_each(|words| prefetch_lines(words, PREFETCH_BUCKET_BYTES));
            hot.rules
                .iter()
                .for_each(|rules| prefetch_lines(rules, PREFETCH_BUCKET_BYTES));
        }
    }

    /// The entries of a bucket, sorted by (start, length, rule id), read back from its prefixes.
    /// `extra` is room for the entries an edit adds.
    fn entries(&self, key: u16, extra: usize) -> Vec<Placed<'_, A>> {
        let Some((nodes, rules, texts)) = self.bucket(key).and_then(Hot::listing::<A>) else {
            return Vec::with_capacity(extra);
        };
        let mut entries = Vec::with_capacity(rules.len() + extra);
        for n in 0..nodes.len() {
            let (start, len) = nodes.prefix(key, n);
            entries.extend(rules[nodes.rules(n)].iter().map(|record| Placed {
                start,
                len,
                record,
                texts: texts.get(record.texts as usize),
            }));
        }
        entries
    }

    /// A table with the given buckets replaced. `keys` are the buckets in ascending order;
    /// `rebuilt(i, old)` makes the new record of bucket `keys[i]`, given the new table's copy of
    /// the old record, which it may take parts of before it is dropped. Many buckets are rebuilt on two
    /// threads, each taking the chunks of one half of the table: a round of scattered writes
    /// rebuilds thousands of buckets, and the writes are answered only once the round is
    /// published.
    fn rewritten(&self, keys: &[u16], rebuilt: impl Fn(usize, &mut Hot) -> Hot + Sync) -> Self {
        let mut table = self.clone();
        let rebuild =
            |chunks: &mut [Option<Arc<Chunk>>], first: usize, keys: &[u16], from: usize| {
                for (i, &key) in keys.iter().enumerate() {
                    // The buckets of a round lie far apart: while this one is compiled, the next
                    // ones come into cache, their bucket records first and then what they point to.
                    if let Some(&ahead) = keys.get(i + 2 * BUCKETS_AHEAD) {
                        self.prefetch_hot(ahead);
                    }
                    if let Some(&ahead) = keys.get(i + BUCKETS_AHEAD) {
                        self.prefetch_bucket(ahead);
                    }
                    let chunk = &mut chunks[usize::from(key) / CHUNK - first];
                    // Copies a shared chunk on its first change only: afterwards this table owns it.
                    let old = &mut Arc::make_mut(chunk.get_or_insert_with(Default::default)).hot
                        [usize::from(key) % CHUNK];
                    *old = rebuilt(from + i, old);
                }
            };
        if keys.len() < SPLIT_FROM {
            rebuild(&mut table.chunks, 0, keys, 0);
            return table;
        }
        let middle = usize::from(keys[keys.len() / 2]) / CHUNK;
        let (low_keys, high_keys) =
            keys.split_at(keys.partition_point(|key| usize::from(*key) / CHUNK < middle));
        let (low, high) = table.chunks.split_at_mut(middle);
        // Taken by whichever thread gets to it: the other one, or this one if there is none.
        let high = std::sync::Mutex::new(Some(high));
        let high_half = || {
            let taken = high.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(chunks) = taken {
                rebuild(chunks, middle, high_keys, low_keys.len());
            }
        };
        std::thread::scope(|scope| {
            let other = std::thread::Builder::new()
                .name("palisade-index".into())
                .spawn_scoped(scope, high_half);
            rebuild(low, 0, low_keys, 0);
            match other {
                Ok(thread) => {
                    if let Err(panic) = thread.join() {
                        std::panic::resume_unwind(panic);
                    }
                }
                Err(_) => high_half(),
            }
        });
        table
    }

    /// Builds a table from scratch (start-up).
    pub fn build(entries: impl IntoIterator<Item = Entry<A>>) -> Self {
        let entries: Vec<Entry<A>> = entries.into_iter().collect();
        let (keys, placed) = by_bucket(
            entries.iter().flat_map(Entry::placed_in_buckets),
            prefix_order,
        );
        let buckets = ranges(&keys);
        let keys: Vec<u16> = buckets.iter().map(|(key, _)| *key).collect();
        Self::default().rewritten(&keys, |i, _| {
            let (key, range) = &buckets[i];
            Hot::compiled(*key, placed[range.clone()].to_vec())
        })
    }

    /// A table with entries added and removed; `remove` names rules by id.
    pub fn updated(&self, add: Vec<Entry<A>>, remove: Vec<(A, u8, i64)>) -> Self {
        if add.is_empty() && remove.is_empty() {
            return self.clone();
        }
        // Flat lists sorted by bucket, rather than a list per bucket: a round of scattered
        // writes has a bucket per write, and each list of its own was an allocation to make
        // and, later, a read from memory.
        let (add_keys, adds) =
            by_bucket(add.iter().flat_map(Entry::placed_in_buckets), prefix_order);
        let (remove_keys, removes) = by_bucket(
            remove
                .iter()
                .flat_map(|&(start, len, id)| bucket_keys_of(start, len).map(move |key| (key, id))),
            |id| *id,
        );
        let buckets = merged(ranges(&add_keys), ranges(&remove_keys));
        let keys: Vec<u16> = buckets.iter().map(|bucket| bucket.0).collect();
        self.rewritten(&keys, |i, replaced| {
            let (key, add_range, remove_range) = &buckets[i];
            let (key, new, ids) = (
                *key,
                &adds[add_range.clone()],
                &removes[remove_range.clone()],
            );
            let only_hosts = !new.is_empty() && new.iter().all(|e| e.len == A::BITS);
            let added = (only_hosts && ids.is_empty())
                .then(|| self.bucket(key)?.with_hosts(key, new, &mut replaced.texts))
                .flatten();
            if let Some(hot) = added {
                return hot;
            }
            let mut entries = self.entries(key, new.len());
            if let (Some(&lowest), Some(&highest)) = (ids.first(), ids.last()) {
                // Most removals name rules just created, whose ids lie above every id stored:
                // the range check spares the search for each entry of a large bucket.
                entries.retain(|e| {
                    let id = e.record.id;
                    id < lowest || id > highest || ids.binary_search(&id).is_err()
                });
            }
            entries.extend(new);
            Hot::compiled(key, entries)
        })
    }

    /// Every rule the table holds, once per bucket that holds it.
    pub fn for_each_rule(&self, mut visit: impl FnMut(&RuleRef)) {
        let chunks = self.chunks.iter().enumerate();
        for (first, chunk) in chunks.filter_map(|(at, chunk)| Some((at * CHUNK, chunk.as_deref()?)))
        {
            for (key, hot) in (first..).zip(&chunk.hot) {
                let Some((nodes, rules, texts)) = hot.listing::<A>() else {
                    continue;
                };
                for n in 0..nodes.len() {
                    let prefix = nodes.prefix(key as u16, n);
                    for record in &rules[nodes.rules(n)] {
                        visit(&record.rule(prefix, texts));
                    }
                }
            }
        }
    }

    /// Sizes, for the memory report. `texts` collects the texts the rules hold (they are
    /// shared between rules, buckets and tables, so the caller counts each once).
    pub fn stats(&self, texts: &mut super::TextBytes) -> TableStats {
        let mut stats = TableStats {
            hot: self.chunks.len() * size_of::<Option<Arc<Chunk>>>(),
            ..TableStats::default()
        };
        // Reference counts in front of every shared allocation.
        let counts = 2 * size_of::<usize>();
        for chunk in self.chunks.iter().flatten() {
            stats.hot += size_of::<Chunk>() + counts;
            for hot in &chunk.hot {
                if let (Some(words), Some(list)) = (&hot.words, &hot.rules) {
                    let decision = intervals::end::<A>(hot.counts);
                    stats.intervals += decision * size_of::<u64>() + counts;
                    stats.nodes += (words.len() - decision) * size_of::<u64>();
                    stats.prefixes += hot.prefixes as usize;
                    stats.rule_lists += size_of_val::<[Record]>(list) + counts;
                }
                if let Some(list) = &hot.texts {
                    stats.rule_lists += size_of::<Vec<Arc<RuleTexts>>>()
                        + counts
                        + list.capacity() * size_of::<Arc<RuleTexts>>();
                    list.iter().for_each(|shared| texts.add(shared));
                }
            }
        }
        stats
    }
}

/// See [`Table::intervals`]. Holds one bucket's position at a time.
pub struct Intervals<'a, A: Addr> {
    table: &'a Table<A>,
    /// The next bucket to enter.
    bucket: u32,
    /// The bucket being read: its key, words, section sizes and the next interval.
    current: Option<(u16, &'a [u64], intervals::Counts, usize)>,
}

impl<A: Addr> Iterator for Intervals<'_, A> {
    type Item = (u128, u128, Span);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((key, words, counts, at)) = &mut self.current {
                if let Some(item) = intervals::nth::<A>(words, *counts, *key, *at) {
                    *at += 1;
                    return Some(item);
                }
                self.current = None;
            }
            let key = u16::try_from(self.bucket).ok()?;
            self.bucket += 1;
            let Some(chunk) = self.table.chunks[usize::from(key) / CHUNK].as_deref() else {
                // The whole chunk is empty: skip to its end.
                self.bucket = (u32::from(key) / CHUNK as u32 + 1) * CHUNK as u32;
                continue;
            };
            let hot = &chunk.hot[usize::from(key) % CHUNK];
            if let Some(words) = hot.words.as_deref() {
                self.current = Some((key, words, hot.counts, 0));
            }
        }
    }
}

/// Heap bytes of a table by part, and its distinct prefixes (counted once per bucket).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    pub prefixes: usize,
    /// Chunks: masks and pointers.
    pub hot: usize,
    /// Decision intervals.
    pub intervals: usize,
    /// Prefixes: first addresses, lengths, parents, where their rules begin.
    pub nodes: usize,
    /// Each prefix's rules (the rule records, and the lists of the texts they name, without
    /// the texts themselves).
    pub rule_lists: usize,
}

impl std::ops::AddAssign for TableStats {
    fn add_assign(&mut self, other: Self) {
        self.prefixes += other.prefixes;
        self.hot += other.hot;
        self.intervals += other.intervals;
        self.nodes += other.nodes;
        self.rule_lists += other.rule_lists;
    }
}

fn words_for<T>(count: usize) -> usize {
    (count * size_of::<T>()).div_ceil(size_of::<u64>())
}

fn fill<T: bytemuck::Pod>(words: &mut [u64], values: &[T]) {
    bytemuck::cast_slice_mut::<u64, T>(words)[..values.len()].copy_from_slice(values);
}

/// The coarsest disjoint intervals of a bucket for decisions, in one allocation of 64-bit words
/// read as one short run of memory: neighbours with the same expiries are merged, so a bucket
/// whose rules were loaded together (one expiry) is a handful of intervals. The first addresses
/// of the intervals, as positions inside the bucket ([`Addr::Key`]), ascending, the first one
/// 0; the number of each one's span (`u32`); the distinct spans, two words each.
///
/// The section sizes ([`Counts`]) live beside the pointer, so no read waits for a header.
mod intervals {
    use super::{Addr, NONE, Prefixes, Span, blocks_in, fill, words_for};

    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Counts {
        decided: u32,
        spans: u32,
    }

    /// Where each section begins, in words.
    struct Layout {
        n: usize,
        keys: usize,
        numbers: usize,
        spans: usize,
        end: usize,
    }

    impl Layout {
        /// Span number `number` of a decision laid out so in `words`.
        #[inline]
        fn span(&self, words: &[u64], number: u32) -> Span {
            let at = self.spans + 2 * number as usize;
            Span {
                block_until: words[at] as i64,
                allow_until: words[at + 1] as i64,
            }
        }

        #[inline]
        fn of<A: Addr>(counts: Counts) -> Self {
            let (n, m) = (counts.decided as usize, counts.spans as usize);
            let keys = 0;
            let numbers = keys + words_for::<A::Key>(n);
            let spans = numbers + words_for::<u32>(n);
            Self {
                n,
                keys,
                numbers,
                spans,
                end: spans + 2 * m,
            }
        }
    }

    /// Where the decision intervals end, in words.
    #[inline]
    pub fn end<A: Addr>(counts: Counts) -> usize {
        Layout::of::<A>(counts).end
    }

    pub struct Decision {
        pub words: Vec<u64>,
        pub counts: Counts,
        /// The `touched` blocks that lie wholly inside one interval covered by block rules only,
        /// whose latest expiry is `common_until`, the most frequent such expiry.
        pub uniform: [u64; 4],
        pub common_until: i64,
    }

    /// Up to this many distinct spans, a bucket's spans are numbered by a search of the list.
    const FEW_SPANS: usize = 16;

    /// Up to this many comparisons in all, the spans of a splice's hosts are found by searching
    /// the bucket's list of spans. Small under test, so that the property tests' buckets take
    /// both ways.
    #[cfg(not(test))]
    const SEARCHED_SPANS: usize = 4096;
    #[cfg(test)]
    const SEARCHED_SPANS: usize = 24;

    pub fn build<A: Addr>(
        prefixes: &Prefixes<'_, A>,
        bucket_key: u16,
        touched: &[u64; 4],
    ) -> Decision {
        let low = A::bucket_start(bucket_key);
        let high = low.broadcast(16);
        let mut starts = Vec::with_capacity(2 * prefixes.starts.len() + 1);
        starts.push(low);
        for (start, node) in prefixes.starts.iter().zip(&prefixes.nodes) {
            starts.push((*start).max(low));
            let end = start.broadcast(node.len);
            if end < high {
                starts.extend(end.next());
            }
        }
        starts.sort_unstable();
        starts.dedup();

        // Sized for the most there can be: growing them a step at a time copied each several
        // times over.
        let mut keys: Vec<A::Key> = Vec::with_capacity(starts.len());
        let mut numbers: Vec<u32> = Vec::with_capacity(starts.len());
        let mut spans = SpanNumbers::with_room(starts.len());
        // Neighbouring intervals mostly repeat one of the last two spans seen (rules that share
        // an expiry, and the gaps between them): those are numbered without searching.
        let mut recent: [Option<(Span, u32)>; 2] = [None; 2];
        // The prefixes that start at or before `start`: both lists are sorted.
        let mut after = 0;
        for start in starts {
            while prefixes.starts.get(after).is_some_and(|s| *s <= start) {
                after += 1;
            }
            let span = prefixes
                .deepest(start, after)
                .map_or(Span::EMPTY, |node| prefixes.nodes[node].chain);
            let seen = recent.iter().flatten().find(|(s, _)| *s == span);
            let number = match seen {
                Some(&(_, number)) => number,
                None => {
                    let number = spans.number(span);
                    recent = [Some((span, number)), recent[0]];
                    number
                }
            };
            if numbers.last() != Some(&number) {
                keys.push(start.key());
                numbers.push(number);
            }
        }

        finish::<A>(bucket_key, touched, keys, numbers, spans.spans)
    }

    /// The distinct spans of a bucket's intervals, numbered in the order they first appear.
    struct SpanNumbers {
        spans: Vec<Span>,
        /// Numbers of the spans seen, for buckets with more than a few (a bucket usually holds
        /// a few dozen rules, whose spans a short search finds faster than a hash).
        numbered: foldhash::HashMap<Span, u32>,
        /// Room for as many spans as intervals, made once: rules written at different instants
        /// each have a span of their own (under scattered ingest, most rules of a bucket), and
        /// growing the map step by step rehashed it four or five times per bucket.
        room: usize,
    }

    impl SpanNumbers {
        fn with_room(intervals: usize) -> Self {
            Self {
                spans: Vec::with_capacity(FEW_SPANS + 1),
                numbered: Default::default(),
                room: intervals,
            }
        }

        fn number(&mut self, span: Span) -> u32 {
            let spans = &mut self.spans;
            if spans.len() > FEW_SPANS {
                return *self.numbered.entry(span).or_insert_with(|| {
                    spans.push(span);
                    spans.len() as u32 - 1
                });
            }
            if let Some(at) = spans.iter().position(|s| *s == span) {
                return at as u32;
            }
            spans.push(span);
            if spans.len() > FEW_SPANS {
                self.numbered.reserve(self.room);
                self.numbered.extend(spans.iter().copied().zip(0..));
            }
            spans.len() as u32 - 1
        }
    }

    /// The decision of a bucket from its intervals: `keys` ascending from 0, each with the
    /// number of its span in `spans`, neighbours never with the same span, and spans numbered
    /// in the order they first appear.
    fn finish<A: Addr>(
        bucket_key: u16,
        touched: &[u64; 4],
        keys: Vec<A::Key>,
        numbers: Vec<u32>,
        spans: Vec<Span>,
    ) -> Decision {
        // Counts stay far below u32::MAX: a bucket holds at most a few million prefixes.
        let counts = Counts {
            decided: keys.len() as u32,
            spans: spans.len() as u32,
        };
        let layout = Layout::of::<A>(counts);
        let mut words = vec![0u64; layout.end];
        fill(&mut words[layout.keys..layout.numbers], &keys);
        fill(&mut words[layout.numbers..layout.spans], &numbers);
        for (i, span) in spans.iter().enumerate() {
            words[layout.spans + 2 * i] = span.block_until as u64;
            words[layout.spans + 2 * i + 1] = span.allow_until as u64;
        }

        // Blocks in address order, intervals followed along with them.
        let blocks = touched.iter().map(|word| word.count_ones() as usize).sum();
        let mut whole: Vec<(u8, i64)> = Vec::with_capacity(blocks);
        let mut interval = 0;
        for block in blocks_in(touched) {
            // One interval (a bucket under one prefix, often a short one stored in many
            // buckets) holds every block: no addresses to work out.
            if keys.len() > 1 {
                let first = A::block_start(bucket_key, block);
                let (first_key, last_key) = (first.key(), first.broadcast(24).key());
                while keys.get(interval + 1).is_some_and(|k| *k <= first_key) {
                    interval += 1;
                }
                if keys.get(interval + 1).is_some_and(|k| *k <= last_key) {
                    continue;
                }
            }
            let span = spans[numbers[interval] as usize];
            if span.allow_until == NONE && span.block_until != NONE {
                whole.push((block, span.block_until));
            }
        }
        // The most frequent expiry (at most 256 blocks: counted in runs of a sorted copy); ties
        // go to the later expiry.
        let mut expiries: Vec<i64> = whole.iter().map(|(_, until)| *until).collect();
        expiries.sort_unstable();
        let common_until = expiries
            .chunk_by(|a, b| a == b)
            .max_by_key(|run| (run.len(), run[0]))
            .map_or(NONE, |run| run[0]);
        let mut uniform = [0u64; 4];
        for (block, until) in whole {
            if until == common_until {
                uniform[usize::from(block >> 6)] |= 1 << (block & 63);
            }
        }
        Decision {
            words,
            counts,
            uniform,
            common_until,
        }
    }

    /// The decision of a bucket after adding host prefixes to it, from its current decision
    /// (`words`, `counts`) rather than from all its prefixes. `hosts` are the new prefixes'
    /// addresses, ascending and distinct, each with the span of its own rules; `touched`
    /// already includes their blocks. An address under a host prefix is decided by that
    /// prefix's rules and by everything that decided it before, so the interval holding each
    /// host is split around it and nothing else changes. The result is the one [`build`]
    /// gives for all the prefixes: the same maximal intervals, spans numbered the same way.
    ///
    /// The old spans are distinct and already numbered, so only a host's widened span is
    /// searched for, among them and the few added; every other interval keeps its span's
    /// number, renumbered by first appearance through a table. Under scattered ingest each rule
    /// has an expiry of its own, and numbering every interval's span again by hashing was a
    /// twentieth of the server's time.
    pub fn with_hosts<A: Addr>(
        words: &[u64],
        counts: Counts,
        bucket_key: u16,
        touched: &[u64; 4],
        hosts: &[(A, Span)],
    ) -> Decision {
        let layout = Layout::of::<A>(counts);
        let old_keys =
            &bytemuck::cast_slice::<u64, A::Key>(&words[layout.keys..layout.numbers])[..layout.n];
        let old_numbers =
            &bytemuck::cast_slice::<u64, u32>(&words[layout.numbers..layout.spans])[..layout.n];
        let old_count = counts.spans as usize;
        // Spans by id: below `old_count` the old span of that number, then `added`.
        let mut added: Vec<Span> = Vec::new();
        // A crowded bucket getting many hosts (dense ingest) searches a map instead.
        let mut known: Option<foldhash::HashMap<Span, u32>> =
            ((old_count + hosts.len()) * hosts.len() > SEARCHED_SPANS).then(|| {
                (0..old_count as u32)
                    .map(|j| (layout.span(words, j), j))
                    .collect()
            });
        let mut id_of = |span: Span| -> u32 {
            if let Some(known) = &mut known {
                let next = (old_count + added.len()) as u32;
                let id = *known.entry(span).or_insert(next);
                if id == next {
                    added.push(span);
                }
                return id;
            }
            if let Some(old) = (0..old_count as u32).find(|&j| layout.span(words, j) == span) {
                return old;
            }
            let at = added.iter().position(|s| *s == span).unwrap_or_else(|| {
                added.push(span);
                added.len() - 1
            });
            (old_count + at) as u32
        };
        let high = A::bucket_start(bucket_key).broadcast(16);
        let capacity = old_keys.len() + 2 * hosts.len();
        // Ids are one per distinct span, so neighbours with equal ids are one interval.
        let mut intervals: Vec<(A::Key, u32)> = Vec::with_capacity(capacity);
        let mut push = |key: A::Key, id: u32| {
            if intervals.last().is_none_or(|(_, last)| *last != id) {
                intervals.push((key, id));
            }
        };
        let mut hosts = hosts.iter().peekable();
        for (i, (key, &number)) in old_keys.iter().zip(old_numbers).enumerate() {
            let last = match old_keys.get(i + 1) {
                // Keys ascend, so the next interval starts above this one's first address.
                Some(next) => A::from_parts(bucket_key, *next).wide() - 1,
                None => high.wide(),
            };
            let mut from = Some(A::from_parts(bucket_key, *key));
            while let Some((host, own)) = hosts.next_if(|(host, _)| host.wide() <= last) {
                if let Some(start) = from.filter(|start| start < host) {
                    push(start.key(), number);
                }
                let span = layout.span(words, number);
                let widened = span.widen(*own);
                let id = if widened == span {
                    number
                } else {
                    id_of(widened)
                };
                push(host.key(), id);
                from = host.next().filter(|next| next.wide() <= last);
            }
            if let Some(from) = from {
                push(from.key(), number);
            }
        }
        let mut renumbered = vec![u32::MAX; old_count + added.len()];
        let mut spans = Vec::with_capacity(renumbered.len());
        let mut keys = Vec::with_capacity(intervals.len());
        let mut numbers = Vec::with_capacity(intervals.len());
        for (key, id) in intervals {
            let number = &mut renumbered[id as usize];
            if *number == u32::MAX {
                *number = spans.len() as u32;
                spans.push(match (id as usize).checked_sub(old_count) {
                    Some(at) => added[at],
                    None => layout.span(words, id),
                });
            }
            keys.push(key);
            numbers.push(*number);
        }
        finish::<A>(bucket_key, touched, keys, numbers, spans)
    }

    /// Interval `at` of bucket `bucket` as `(first, last, span)`, if there is one.
    pub fn nth<A: Addr>(
        words: &[u64],
        counts: Counts,
        bucket: u16,
        at: usize,
    ) -> Option<(u128, u128, Span)> {
        let layout = Layout::of::<A>(counts);
        let keys =
            &bytemuck::cast_slice::<u64, A::Key>(&words[layout.keys..layout.numbers])[..layout.n];
        let numbers = bytemuck::cast_slice::<u64, u32>(&words[layout.numbers..layout.spans]);
        let first = A::from_parts(bucket, *keys.get(at)?).wide();
        let last = match keys.get(at + 1) {
            // Keys ascend, so the next one is above `first` and the subtraction cannot wrap.
            Some(next) => A::from_parts(bucket, *next).wide() - 1,
            None => A::bucket_start(bucket).broadcast(16).wide(),
        };
        let span_at = layout.spans + 2 * *numbers.get(at)? as usize;
        let span = Span {
            block_until: *words.get(span_at)? as i64,
            allow_until: *words.get(span_at + 1)? as i64,
        };
        Some((first, last, span))
    }

    /// The expiries deciding the address at `key`.
    #[inline]
    pub fn span<A: Addr>(words: &[u64], counts: Counts, key: A::Key) -> Span {
        let layout = Layout::of::<A>(counts);
        let keys =
            &bytemuck::cast_slice::<u64, A::Key>(&words[layout.keys..layout.numbers])[..layout.n];
        // The first key is 0, so some interval holds every key.
        let interval = keys.partition_point(|k| *k <= key).saturating_sub(1);
        let numbers = bytemuck::cast_slice::<u64, u32>(&words[layout.numbers..layout.spans]);
        layout.span(words, numbers[interval])
    }
}

/// A bucket's distinct prefixes, sorted by (first address, length), in one allocation of 64-bit
/// words: their first addresses as positions inside the bucket ([`Addr::Key`]; 0 for prefixes
/// that cover the whole bucket); their lengths (`u8`); their parents, the nearest enclosing
/// prefix (`u32`); and where each one's own rules begin in the bucket's rule list (`u32`, one
/// more than there are prefixes, so the last one is where the list ends).
mod nodes {
    use std::marker::PhantomData;
    use std::ops::Range;

    use super::{Addr, NO_PARENT, Prefixes, fill, words_for};

    struct Layout {
        keys: usize,
        lens: usize,
        parents: usize,
        rules_at: usize,
        end: usize,
    }

    impl Layout {
        #[inline]
        fn of<A: Addr>(count: usize) -> Self {
            let keys = 0;
            let lens = keys + words_for::<A::Key>(count);
            let parents = lens + words_for::<u8>(count);
            let rules_at = parents + words_for::<u32>(count);
            Self {
                keys,
                lens,
                parents,
                rules_at,
                end: rules_at + words_for::<u32>(count + 1),
            }
        }
    }

    pub fn build<A: Addr>(prefixes: &Prefixes<'_, A>, bucket_key: u16) -> Vec<u64> {
        let low = A::bucket_start(bucket_key);
        let keys: Vec<A::Key> = prefixes
            .starts
            .iter()
            .map(|s| (*s).max(low).key())
            .collect();
        let lens: Vec<u8> = prefixes.nodes.iter().map(|n| n.len).collect();
        let parents: Vec<u32> = prefixes.nodes.iter().map(|n| n.parent).collect();
        let rules_at: Vec<u32> = prefixes
            .nodes
            .iter()
            .map(|n| n.rules_from as u32)
            .chain([prefixes.entries.len() as u32])
            .collect();
        encode::<A>(&keys, &lens, &parents, &rules_at)
    }

    /// The sections as words: `rules_at` has one more item than the others.
    pub fn encode<A: Addr>(
        keys: &[A::Key],
        lens: &[u8],
        parents: &[u32],
        rules_at: &[u32],
    ) -> Vec<u64> {
        let layout = Layout::of::<A>(keys.len());
        let mut words = vec![0u64; layout.end];
        fill(&mut words[layout.keys..layout.lens], keys);
        fill(&mut words[layout.lens..layout.parents], lens);
        fill(&mut words[layout.parents..layout.rules_at], parents);
        fill(&mut words[layout.rules_at..layout.end], rules_at);
        words
    }

    /// The sections of one bucket's prefixes.
    pub struct View<'a, A: Addr> {
        words: &'a [u64],
        keys: &'a [A::Key],
        lens: &'a [u8],
        parents: &'a [u32],
        rules_at: &'a [u32],
        family: PhantomData<A>,
    }

    impl<'a, A: Addr> View<'a, A> {
        #[inline]
        pub fn of(words: &'a [u64], count: u32) -> Self {
            let count = count as usize;
            let layout = Layout::of::<A>(count);
            let section = |from: usize, to: usize| &words[from..to];
            Self {
                words,
                keys: &bytemuck::cast_slice(section(layout.keys, layout.lens))[..count],
                lens: &bytemuck::cast_slice(section(layout.lens, layout.parents))[..count],
                parents: &bytemuck::cast_slice(section(layout.parents, layout.rules_at))[..count],
                rules_at: &bytemuck::cast_slice(section(layout.rules_at, layout.end))[..=count],
                family: PhantomData,
            }
        }

        pub fn words(&self) -> &'a [u64] {
            self.words
        }

        pub fn len(&self) -> usize {
            self.keys.len()
        }

        /// The deepest prefix containing `addr` (which lies in this bucket).
        #[inline]
        pub fn deepest(&self, addr: A) -> Option<usize> {
            let key = addr.key();
            // The deepest containing prefix, if any, is the last one starting at or before
            // `addr`, or one of its ancestors.
            let mut n = self.keys.partition_point(|k| *k <= key).checked_sub(1)?;
            loop {
                // A prefix of 16 bits or fewer covers the whole bucket; its key is 0, as
                // `addr.network(len).key()` is.
                if addr.network(self.lens[n]).key() == self.keys[n] {
                    return Some(n);
                }
                n = self.parent(n)?;
            }
        }

        /// How many prefixes sort before one at `key` of length `len`.
        pub fn position(&self, key: A::Key, len: u8) -> usize {
            let from = self.keys.partition_point(|k| *k < key);
            let same_key = self.keys[from..].partition_point(|k| *k == key);
            from + self.lens[from..from + same_key].partition_point(|l| *l < len)
        }

        /// Prefix `n`'s first address as a position in the bucket, and its length.
        pub fn key_and_len(&self, n: usize) -> (A::Key, u8) {
            (self.keys[n], self.lens[n])
        }

        #[inline]
        pub fn parent(&self, n: usize) -> Option<usize> {
            let parent = self.parents[n];
            (parent != NO_PARENT).then_some(parent as usize)
        }

        /// Where prefix `n`'s own rules are in the bucket's rule list.
        #[inline]
        pub fn rules(&self, n: usize) -> Range<usize> {
            self.rules_at[n] as usize..self.rules_at[n + 1] as usize
        }

        /// Prefix `n` of bucket `bucket` as (first address, length).
        pub fn prefix(&self, bucket: u16, n: usize) -> (A, u8) {
            let len = self.lens[n];
            let start = if len < 16 {
                A::bucket_start(bucket).network(len)
            } else {
                A::from_parts(bucket, self.keys[n])
            };
            (start, len)
        }
    }
}

fn bucket_keys_of<A: Addr>(start: A, len: u8) -> std::ops::RangeInclusive<u16> {
    bucket_key(start)..=bucket_key(start.broadcast(len))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use std::sync::Arc;

    use super::{Addr, Entry, Hot, NO_TEXTS, Table, bucket_key};
    use crate::index::{RuleRef, RuleTexts};
    use crate::rules::{RuleAction, Source, UnixMillis};

    /// Texts for test rules: `None` for 0, else one of a few shared allocations, more than a
    /// bucket's list holds before it is hashed.
    fn texts(which: u8) -> Option<Arc<RuleTexts>> {
        static SHARED: std::sync::OnceLock<Vec<Arc<RuleTexts>>> = std::sync::OnceLock::new();
        let shared = SHARED.get_or_init(|| {
            (0..2 * super::TEXTS_SCANNED)
                .map(|i| {
                    Arc::new(RuleTexts {
                        name: Some(format!("rule-{i}").into()),
                        dataset: None,
                        description: None,
                    })
                })
                .collect()
        });
        usize::from(which)
            .checked_sub(1)
            .map(|at| shared[at % shared.len()].clone())
    }

    /// A rule on `start/len`.
    fn entry<A: Addr>(id: i64, start: A, len: u8, allow: bool, expiry: u8, named: u8) -> Entry<A> {
        let target = start.network(len).target(len);
        Entry::new(
            start.network(len),
            len,
            RuleRef {
                id,
                action: if allow {
                    RuleAction::Allow
                } else {
                    RuleAction::Block
                },
                target,
                // A few expiries, so that intervals merge and spans repeat; 0 is permanent.
                expires_at: (expiry > 0).then(|| UnixMillis(1_000 * i64::from(expiry))),
                source: Source::Signal,
                texts: texts(named),
            },
        )
    }

    /// Everything a bucket record holds, for comparing two of them: its rules with the texts
    /// they name, wherever those are in the bucket's list.
    fn contents<A: Addr>(key: u16, hot: &Hot) -> impl PartialEq + std::fmt::Debug {
        let texts = hot.texts.as_deref().map_or(&[][..], Vec::as_slice);
        let rules = hot.listing::<A>().map(|(nodes, rules, texts)| {
            (0..nodes.len())
                .flat_map(|n| rules[nodes.rules(n)].iter().map(move |rule| (n, rule)))
                .map(|(n, rule)| {
                    let named = rule.texts == NO_TEXTS || (rule.texts as usize) < texts.len();
                    (rule.rule(nodes.prefix(key, n), texts), named)
                })
                .collect::<Vec<_>>()
        });
        // Each distinct texts once.
        let distinct = texts
            .iter()
            .all(|one| texts.iter().filter(|other| Arc::ptr_eq(one, other)).count() == 1);
        (
            hot.touched,
            hot.uniform,
            hot.common_until,
            hot.counts,
            hot.prefixes,
            hot.words.as_deref().map(<[u64]>::to_vec),
            rules,
            distinct,
        )
    }

    /// A bucket with `old` prefixes (offsets into bucket `key`, lengths, actions, expiries)
    /// given `hosts` (offsets, actions, expiries): added to the compiled bucket, and compiled
    /// with everything from the start. Offsets are masked into the bucket.
    fn hosts_added<A: Addr>(
        key: u16,
        old: &[(u128, u8, bool, u8, u8)],
        hosts: &[(u128, bool, u8, u8)],
        offset: impl Fn(u128) -> A,
    ) -> Result<(), TestCaseError> {
        let old: Vec<Entry<A>> = old
            .iter()
            .enumerate()
            .map(|(i, (at, len, allow, expiry, named))| {
                entry(i as i64 + 1, offset(*at), *len, *allow, *expiry, *named)
            })
            .collect();
        let mut new: Vec<Entry<A>> = hosts
            .iter()
            .enumerate()
            .map(|(i, (at, allow, expiry, named))| {
                entry(
                    1_000 + i as i64,
                    offset(*at),
                    A::BITS,
                    *allow,
                    *expiry,
                    *named,
                )
            })
            .collect();
        new.sort_unstable_by_key(|e| (e.start, e.record.id));
        let before = Table::build(old.clone());
        let all = Table::build(old.iter().chain(&new).cloned());
        let compiled = all.bucket(key).expect("the bucket has rules");
        let placed: Vec<_> = new.iter().map(Entry::placed).collect();
        let taken = |e: &Entry<A>| old.iter().any(|o| o.len == A::BITS && o.start == e.start);
        match before
            .bucket(key)
            .and_then(|hot| hot.with_hosts(key, &placed, &mut hot.texts.clone()))
        {
            Some(added) => {
                prop_assert_eq!(contents::<A>(key, &added), contents::<A>(key, compiled))
            }
            // Only an empty bucket or a host prefix it had already is compiled again.
            None => prop_assert!(
                before.bucket(key).is_none_or(|hot| hot.words.is_none()) || new.iter().any(taken)
            ),
        }
        // Through a table update, whichever way the bucket is rebuilt.
        let updated = before.updated(new, Vec::new());
        prop_assert_eq!(
            contents::<A>(key, updated.bucket(key).unwrap()),
            contents::<A>(key, compiled)
        );
        Ok(())
    }

    proptest! {
        /// Host prefixes added to a compiled bucket give what compiling all its prefixes
        /// gives: old prefixes from /12 (stored in many buckets) to /32, new hosts at a few
        /// addresses (so they fall on old prefixes' edges, old hosts and each other), the
        /// bucket's first and last address among them.
        #[test]
        fn hosts_added_to_an_ipv4_bucket_as_if_compiled(
            old in proptest::collection::vec((0u128..64, 12u8..=32, any::<bool>(), 0u8..4, 0u8..20), 0..40),
            hosts in proptest::collection::vec((0u128..64, any::<bool>(), 0u8..4, 0u8..20), 1..12),
        ) {
            let key = 0x0a0b;
            // 0 and 63 are the bucket's first and last address; the rest spread over it.
            let offset = |at: u128| match at {
                0 => u32::bucket_start(key),
                63 => u32::bucket_start(key) | 0xffff,
                at => u32::bucket_start(key) | ((at as u32 * 0x0409) & 0xffff),
            };
            prop_assume!(bucket_key(offset(0)) == key);
            hosts_added(key, &old, &hosts, offset)?;
        }

        /// The same for IPv6 (/128 hosts, keys of two words).
        #[test]
        fn hosts_added_to_an_ipv6_bucket_as_if_compiled(
            old in proptest::collection::vec((0u128..64, 12u8..=128, any::<bool>(), 0u8..4, 0u8..20), 0..30),
            hosts in proptest::collection::vec((0u128..64, any::<bool>(), 0u8..4, 0u8..20), 1..10),
        ) {
            let key = 0x2001;
            let last = u128::bucket_start(key).broadcast(16);
            let offset = |at: u128| match at {
                0 => u128::bucket_start(key),
                63 => last,
                at => u128::bucket_start(key) | ((at * 0x0409_0000_0000_0000_0001) & ((1 << 112) - 1)),
            };
            hosts_added(key, &old, &hosts, offset)?;
        }
    }

    proptest! {
        #[test]
        fn blocks_in_a_mask_are_its_set_bits_in_order(mask in any::<[u64; 4]>()) {
            let tested: Vec<u8> = (0..=255u8)
                .filter(|b| mask[usize::from(b >> 6)] & (1 << (b & 63)) != 0)
                .collect();
            prop_assert_eq!(super::blocks_in(&mask).collect::<Vec<u8>>(), tested);
        }
    }

    #[test]
    fn blocks_in_the_edge_masks() {
        assert_eq!(super::blocks_in(&[0; 4]).count(), 0);
        assert!(super::blocks_in(&[u64::MAX; 4]).eq(0..=255u8));
        assert!(super::blocks_in(&[1, 0, 0, 1 << 63]).eq([0, 255]));
    }
}

//! A prefix table for one address family, built for "is any active rule covering this address?"
//!
//! The address space is cut into 65,536 buckets by the top 16 bits, grouped in 256 chunks by
//! the first byte. Each bucket is kept twice:
//!
//! - for decisions, as disjoint intervals, each with the latest expiry of any block and any
//!   allow rule covering it, in one allocation (see [`intervals`]): a decision is a binary search
//!   over a few hundred bytes and two comparisons with "now". Next to the pointer sits a 256-bit
//!   mask of the third-byte blocks (a /24 in IPv4) the bucket touches: most addresses are under
//!   no rule at all and are answered from the mask alone;
//! - for listings and changes, as the sorted list of the distinct prefixes touching it, each
//!   with its parent (the prefixes form a laminar family: two are nested or disjoint) and its
//!   rules.
//!
//! A table is an immutable value: a change builds a new one sharing every untouched chunk, and
//! the index publishes it with one atomic pointer swap, so readers never wait and see all of a
//! change or none of it.
//!
//! Prefixes shorter than /16 are stored in every bucket they cover.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use super::RuleRef;
use crate::rules::RuleAction;

/// An address as an unsigned integer, most significant bit first.
pub trait Addr: Copy + Ord + Eq + Hash + Debug + Send + Sync + 'static {
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
}

impl Addr for u32 {
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
}

impl Addr for u128 {
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
}

fn bucket_key<A: Addr>(addr: A) -> u16 {
    (u16::from(addr.byte(0)) << 8) | u16::from(addr.byte(1))
}

/// A prefix and the rule it was compiled from (an IP rule's own range, or one network of an ASN
/// or country).
#[derive(Clone)]
pub struct Entry<A> {
    pub start: A,
    pub len: u8,
    pub rule: Arc<RuleRef>,
}

impl<A: Addr> Entry<A> {
    /// The buckets this prefix touches.
    fn bucket_keys(&self) -> std::ops::RangeInclusive<u16> {
        bucket_keys_of(self.start, self.len)
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
    const EMPTY: Span = Span {
        block_until: NONE,
        allow_until: NONE,
    };

    fn widen(self, other: Span) -> Span {
        Span {
            block_until: self.block_until.max(other.block_until),
            allow_until: self.allow_until.max(other.allow_until),
        }
    }

    fn of(rule: &RuleRef) -> Span {
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

/// What a look-up needs of one prefix once the search has found it.
#[derive(Clone, Copy)]
struct Node {
    /// Expiries over the prefix and all its ancestors.
    chain: Span,
    parent: u32,
    /// This prefix's rules are `rules[rules_from..rules_from + rule_count]`: kept in the node,
    /// which a look-up has just read, rather than in an array of its own.
    rules_from: u32,
    rule_count: u32,
    len: u8,
}

/// The distinct prefixes touching one bucket, sorted by (start, length).
pub struct Bucket<A> {
    starts: Box<[A]>,
    nodes: Box<[Node]>,
    /// The rules of all prefixes, grouped by prefix (cold: only listings read it).
    rules: Box<[Arc<RuleRef>]>,
}

impl<A: Addr> Bucket<A> {
    fn build(mut entries: Vec<Entry<A>>) -> Option<Self> {
        if entries.is_empty() {
            return None;
        }
        entries.sort_by_key(|e| (e.start, e.len, e.rule.id));
        let mut starts: Vec<A> = Vec::new();
        let mut nodes: Vec<Node> = Vec::new();
        let mut rules: Vec<Arc<RuleRef>> = Vec::with_capacity(entries.len());
        let mut stack: Vec<u32> = Vec::new();
        let mut i = 0;
        while i < entries.len() {
            let (start, len) = (entries[i].start, entries[i].len);
            let rules_from = rules.len() as u32;
            let mut own = Span::EMPTY;
            while i < entries.len() && entries[i].start == start && entries[i].len == len {
                own = own.widen(Span::of(&entries[i].rule));
                rules.push(entries[i].rule.clone());
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
            let index = starts.len() as u32;
            starts.push(start);
            nodes.push(Node {
                chain: own.widen(inherited),
                parent,
                rules_from,
                rule_count: rules.len() as u32 - rules_from,
                len,
            });
            stack.push(index);
        }
        Some(Self {
            starts: starts.into(),
            nodes: nodes.into(),
            rules: rules.into(),
        })
    }

    fn rules_of(&self, node: usize) -> &[Arc<RuleRef>] {
        let node = &self.nodes[node];
        let from = node.rules_from as usize;
        &self.rules[from..from + node.rule_count as usize]
    }

    /// The deepest prefix containing `addr`.
    fn deepest(&self, addr: A) -> Option<usize> {
        let after = self.starts.partition_point(|s| *s <= addr);
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

    fn entries(&self) -> impl Iterator<Item = Entry<A>> + '_ {
        (0..self.starts.len()).flat_map(move |n| {
            self.rules_of(n).iter().map(move |rule| Entry {
                start: self.starts[n],
                len: self.nodes[n].len,
                rule: rule.clone(),
            })
        })
    }

    /// Third-byte blocks of this bucket that some prefix touches.
    fn mask(&self) -> [u64; 4] {
        let mut mask = [0u64; 4];
        for (start, node) in self.starts.iter().zip(self.nodes.iter()) {
            let (first, last) = if node.len <= 16 {
                (0u8, 255u8)
            } else {
                (start.byte(2), start.broadcast(node.len).byte(2))
            };
            for b in first..=last {
                mask[usize::from(b >> 6)] |= 1 << (b & 63);
            }
        }
        mask
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Heap bytes of this bucket beyond its own struct, for the memory report.
    fn heap_bytes(&self) -> usize {
        self.starts.len() * size_of::<A>()
            + self.nodes.len() * size_of::<Node>()
            + self.rules.len() * size_of::<Arc<RuleRef>>()
    }
}

/// What a decision reads of one bucket: which third-byte blocks it touches and its intervals.
#[derive(Clone, Default)]
struct Hot {
    mask: [u64; 4],
    intervals: Option<Arc<[u64]>>,
}

/// 256 buckets: those sharing the first byte.
#[derive(Clone)]
struct Chunk<A> {
    /// Masks and interval tables side by side, so the line a decision reads for the mask also
    /// holds the pointer it follows next.
    hot: [Hot; 256],
    /// The prefixes and rules, for listing and for the next rewrite.
    cold: [Option<Arc<Bucket<A>>>; 256],
}

impl<A> Default for Chunk<A> {
    fn default() -> Self {
        Self {
            hot: std::array::from_fn(|_| Hot::default()),
            cold: std::array::from_fn(|_| None),
        }
    }
}

/// One family's prefix table: an immutable value. A change makes a new table that shares every
/// chunk it does not touch with the old one, so publishing a change is one pointer swap above
/// (the index's generation) and readers never wait.
#[derive(Clone)]
pub struct Table<A> {
    chunks: Box<[Option<Arc<Chunk<A>>>]>,
}

impl<A: Addr> Default for Table<A> {
    fn default() -> Self {
        Self {
            chunks: (0..256).map(|_| None).collect(),
        }
    }
}

/// What a look-up found: the deepest prefix containing the address, in its bucket.
pub struct Found<'a, A> {
    bucket: &'a Bucket<A>,
    node: usize,
}

impl<A: Addr> Found<'_, A> {
    pub fn span(&self) -> Span {
        self.bucket.nodes[self.node].chain
    }

    /// Every rule on the prefixes containing the address, deepest first.
    pub fn rules(&self, mut keep: impl FnMut(&RuleRef) -> bool) -> Vec<Arc<RuleRef>> {
        let mut out = Vec::new();
        let mut n = self.node as u32;
        while n != NO_PARENT {
            out.extend(
                self.bucket
                    .rules_of(n as usize)
                    .iter()
                    .filter(|r| keep(r))
                    .cloned(),
            );
            n = self.bucket.nodes[n as usize].parent;
        }
        out
    }
}

fn touches(mask: &[u64; 4], addr: impl Addr) -> bool {
    let b = addr.byte(2);
    mask[usize::from(b >> 6)] & (1 << (b & 63)) != 0
}

impl<A: Addr> Table<A> {
    fn chunk(&self, key: u16) -> Option<&Chunk<A>> {
        self.chunks[usize::from(key >> 8)].as_deref()
    }

    /// Expiries deciding `addr`: the hot path.
    pub fn span(&self, addr: A) -> Span {
        let key = bucket_key(addr);
        let Some(chunk) = self.chunk(key) else {
            return Span::EMPTY;
        };
        let hot = &chunk.hot[usize::from(key & 0xff)];
        if !touches(&hot.mask, addr) {
            return Span::EMPTY;
        }
        match &hot.intervals {
            Some(intervals) => intervals::span::<A>(intervals, addr.key()),
            None => Span::EMPTY,
        }
    }

    /// The deepest prefix containing `addr`, for listing its rules.
    pub fn find(&self, addr: A) -> Option<Found<'_, A>> {
        let key = bucket_key(addr);
        let chunk = self.chunk(key)?;
        if !touches(&chunk.hot[usize::from(key & 0xff)].mask, addr) {
            return None;
        }
        let bucket = chunk.cold[usize::from(key & 0xff)].as_deref()?;
        let node = bucket.deepest(addr)?;
        Some(Found { bucket, node })
    }

    /// A table with the given buckets replaced. `edit` receives the bucket's current entries
    /// and returns the new ones.
    fn rewritten(
        &self,
        keys: impl IntoIterator<Item = u16>,
        mut edit: impl FnMut(u16, Vec<Entry<A>>) -> Vec<Entry<A>>,
    ) -> Self {
        let mut table = self.clone();
        for key in keys {
            // Copies a shared chunk on its first change only: afterwards this table owns it.
            let chunk = Arc::make_mut(
                table.chunks[usize::from(key >> 8)].get_or_insert_with(Default::default),
            );
            let slot = usize::from(key & 0xff);
            let current: Vec<Entry<A>> = chunk.cold[slot]
                .as_ref()
                .map(|b| b.entries().collect())
                .unwrap_or_default();
            let bucket = Bucket::build(edit(key, current));
            chunk.hot[slot] = match &bucket {
                Some(b) => Hot {
                    mask: b.mask(),
                    intervals: Some(intervals::build(b, key)),
                },
                None => Hot::default(),
            };
            chunk.cold[slot] = bucket.map(Arc::new);
        }
        table
    }

    /// Builds a table from scratch (start-up, or after the geo data changed).
    pub fn build(entries: impl IntoIterator<Item = Entry<A>>) -> Self {
        let mut by_bucket: std::collections::BTreeMap<u16, Vec<Entry<A>>> = Default::default();
        for entry in entries {
            for key in entry.bucket_keys() {
                by_bucket.entry(key).or_default().push(entry.clone());
            }
        }
        Self::default().rewritten(by_bucket.keys().copied().collect::<Vec<_>>(), |key, _| {
            by_bucket.remove(&key).unwrap_or_default()
        })
    }

    /// A table with entries added and removed; `remove` names rules by id.
    pub fn updated(&self, add: Vec<Entry<A>>, remove: Vec<(A, u8, i64)>) -> Self {
        if add.is_empty() && remove.is_empty() {
            return self.clone();
        }
        let mut adds: std::collections::BTreeMap<u16, Vec<Entry<A>>> = Default::default();
        let mut removes: std::collections::BTreeMap<u16, Vec<i64>> = Default::default();
        for (start, len, id) in remove {
            for key in bucket_keys_of(start, len) {
                removes.entry(key).or_default().push(id);
            }
        }
        for entry in add {
            for key in entry.bucket_keys() {
                adds.entry(key).or_default().push(entry.clone());
            }
        }
        let keys: std::collections::BTreeSet<u16> =
            adds.keys().chain(removes.keys()).copied().collect();
        for ids in removes.values_mut() {
            ids.sort_unstable();
        }
        self.rewritten(keys, |key, mut entries| {
            if let Some(ids) = removes.get(&key) {
                entries.retain(|e| ids.binary_search(&e.rule.id).is_err());
            }
            if let Some(new) = adds.remove(&key) {
                entries.extend(new);
            }
            entries
        })
    }

    /// Number of distinct prefixes summed over buckets, and heap bytes of the table.
    pub fn stats(&self) -> (usize, usize) {
        let mut prefixes = 0;
        let mut bytes = self.chunks.len() * size_of::<Option<Arc<Chunk<A>>>>();
        for chunk in self.chunks.iter().flatten() {
            bytes += size_of::<Chunk<A>>();
            for (hot, cold) in chunk.hot.iter().zip(&chunk.cold) {
                if let Some(intervals) = &hot.intervals {
                    bytes += intervals.len() * size_of::<u64>() + 2 * size_of::<usize>();
                }
                if let Some(bucket) = cold {
                    prefixes += bucket.len();
                    bytes += bucket.heap_bytes() + size_of::<Bucket<A>>();
                }
            }
        }
        (prefixes, bytes)
    }
}

/// A bucket's decisions as disjoint intervals, in one allocation of 64-bit words so that a
/// decision reads one short run of memory:
///
/// - word 0: the number of intervals `n` (low half) and of distinct spans `m` (high half);
/// - the first address of each interval, as its position inside the bucket ([`Addr::Key`]),
///   ascending, the first one 0;
/// - for each interval the number of its span (`u32`);
/// - the `m` distinct spans, two words each.
///
/// Spans repeat (a rule set loaded together shares its expiry; gaps between prefixes share
/// "nothing"), so numbering them keeps the table small.
mod intervals {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::{Addr, Bucket, Span};

    fn words_for<T>(count: usize) -> usize {
        (count * size_of::<T>()).div_ceil(size_of::<u64>())
    }

    pub fn build<A: Addr>(bucket: &Bucket<A>, bucket_key: u16) -> Arc<[u64]> {
        let low = A::bucket_start(bucket_key);
        let high = low.broadcast(16);
        let mut starts = vec![low];
        for (start, node) in bucket.starts.iter().zip(bucket.nodes.iter()) {
            starts.push((*start).max(low));
            let end = start.broadcast(node.len);
            if end < high {
                starts.extend(end.next());
            }
        }
        starts.sort_unstable();
        starts.dedup();

        let mut keys: Vec<A::Key> = Vec::with_capacity(starts.len());
        let mut numbers: Vec<u32> = Vec::with_capacity(starts.len());
        let mut spans: Vec<Span> = Vec::new();
        let mut numbered: HashMap<Span, u32> = HashMap::new();
        for start in starts {
            let span = bucket
                .deepest(start)
                .map_or(Span::EMPTY, |node| bucket.nodes[node].chain);
            let number = *numbered.entry(span).or_insert_with(|| {
                spans.push(span);
                spans.len() as u32 - 1
            });
            // Neighbours with the same span are one interval.
            if numbers.last() != Some(&number) {
                keys.push(start.key());
                numbers.push(number);
            }
        }

        let (n, m) = (keys.len(), spans.len());
        let mut words = vec![0u64; 1 + words_for::<A::Key>(n) + words_for::<u32>(n) + 2 * m];
        words[0] = n as u64 | (m as u64) << 32;
        let mut at = 1;
        let key_words = words_for::<A::Key>(n);
        bytemuck::cast_slice_mut::<u64, A::Key>(&mut words[at..at + key_words])[..n]
            .copy_from_slice(&keys);
        at += key_words;
        let number_words = words_for::<u32>(n);
        bytemuck::cast_slice_mut::<u64, u32>(&mut words[at..at + number_words])[..n]
            .copy_from_slice(&numbers);
        at += number_words;
        for span in spans {
            words[at] = span.block_until as u64;
            words[at + 1] = span.allow_until as u64;
            at += 2;
        }
        words.into()
    }

    /// The span of the interval holding `key`.
    #[inline]
    pub fn span<A: Addr>(words: &[u64], key: A::Key) -> Span {
        let n = words[0] as u32 as usize;
        let key_words = words_for::<A::Key>(n);
        let keys = &bytemuck::cast_slice::<u64, A::Key>(&words[1..1 + key_words])[..n];
        // The first key is 0, so at least one interval starts at or before `key`.
        let interval = keys.partition_point(|k| *k <= key).saturating_sub(1);
        let numbers_at = 1 + key_words;
        let numbers =
            bytemuck::cast_slice::<u64, u32>(&words[numbers_at..numbers_at + words_for::<u32>(n)]);
        let span_at = numbers_at + words_for::<u32>(n) + 2 * numbers[interval] as usize;
        Span {
            block_until: words[span_at] as i64,
            allow_until: words[span_at + 1] as i64,
        }
    }
}

fn bucket_keys_of<A: Addr>(start: A, len: u8) -> std::ops::RangeInclusive<u16> {
    bucket_key(start)..=bucket_key(start.broadcast(len))
}

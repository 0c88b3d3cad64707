//! A prefix table for one address family, built for "is any active rule covering this address?"
//!
//! The address space is cut into 65,536 buckets by the top 16 bits, grouped in chunks of
//! consecutive buckets. Each bucket is kept three ways:
//!
//! - for decisions, as disjoint intervals, each with the latest expiry of any block and any
//!   allow rule covering it, in one small allocation (see [`intervals`]): a decision is a binary
//!   search over a few dozen bytes and two comparisons with "now". Next to the pointer sits a
//!   256-bit mask of the third-byte blocks (a /24 in IPv4) the bucket touches: most addresses
//!   are under no rule at all and are answered from the mask alone;
//! - for listings, as finer intervals, each pointing at the rule list of the deepest prefix
//!   covering it: that prefix's rules and its ancestors' (the prefixes form a laminar family:
//!   two are nested or disjoint), compiled in the order a listing shows them;
//! - for changes, as its entries (prefix and rule) sorted, from which the other two are
//!   compiled again when the bucket changes.
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
use crate::rules::{RuleAction, UnixMillis};

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

/// One distinct prefix of a bucket while it is compiled.
struct Node {
    /// Expiries over the prefix and all its ancestors.
    chain: Span,
    parent: u32,
    /// This prefix's rules are `entries[rules_from..rules_to]`.
    rules_from: usize,
    rules_to: usize,
    len: u8,
}

/// A bucket's distinct prefixes, sorted by (start, length), with their ancestry: the form the
/// look-up structures are compiled from.
struct Prefixes<'a, A> {
    entries: &'a [Entry<A>],
    starts: Vec<A>,
    nodes: Vec<Node>,
}

impl<'a, A: Addr> Prefixes<'a, A> {
    /// `entries` sorted by (start, length).
    fn of(entries: &'a [Entry<A>]) -> Self {
        let mut starts: Vec<A> = Vec::new();
        let mut nodes: Vec<Node> = Vec::new();
        let mut stack: Vec<u32> = Vec::new();
        let mut i = 0;
        while i < entries.len() {
            let (start, len) = (entries[i].start, entries[i].len);
            let rules_from = i;
            let mut own = Span::EMPTY;
            while i < entries.len() && entries[i].start == start && entries[i].len == len {
                own = own.widen(Span::of(&entries[i].rule));
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
                rules_to: i,
                len,
            });
        }
        Self {
            entries,
            starts,
            nodes,
        }
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

    /// For each prefix, the rules of it and its ancestors as a listing shows them (IP ranges
    /// deepest first, then ASN, then country), each list ended by `None`; and where each
    /// prefix's list begins. Position 0 is an empty list, for addresses under no prefix.
    fn rule_lists(&self) -> (Vec<Option<Arc<RuleRef>>>, Vec<u32>) {
        let mut lists: Vec<Option<Arc<RuleRef>>> = vec![None];
        let mut at = Vec::with_capacity(self.nodes.len());
        let mut chain: Vec<Arc<RuleRef>> = Vec::new();
        for node in &self.nodes {
            chain.clear();
            let mut n = node;
            loop {
                chain.extend(
                    self.entries[n.rules_from..n.rules_to]
                        .iter()
                        .map(|e| e.rule.clone()),
                );
                if n.parent == NO_PARENT {
                    break;
                }
                n = &self.nodes[n.parent as usize];
            }
            chain.sort_by_key(|r| r.target.kind());
            at.push(lists.len() as u32);
            lists.extend(chain.drain(..).map(Some));
            lists.push(None);
        }
        (lists, at)
    }
}

/// What a look-up reads of one bucket before its intervals: which third-byte blocks it touches
/// and where its decision intervals are (the first cache line, all a decision needs), and where
/// its listing intervals and rule lists are (the line beside it, which the processor fetches
/// along).
///
/// `repr(C)` keeps the fields in this order, so the first line holds all a decision reads.
#[derive(Clone, Default)]
#[repr(C, align(128))]
struct Hot {
    mask: [u64; 4],
    decision: Option<Arc<[u64]>>,
    counts: intervals::Counts,
    /// Present exactly when `decision` is.
    listing: Option<Listing>,
}

// The decision's part of `Hot` must stay within its first cache line.
const _: () = assert!(std::mem::offset_of!(Hot, counts) + size_of::<intervals::Counts>() <= 64);

#[derive(Clone)]
struct Listing {
    intervals: Arc<[u64]>,
    /// Each prefix's rules and its ancestors', one list after the other, each ended by `None`.
    rule_lists: Arc<[Option<Arc<RuleRef>>]>,
}

/// Buckets per chunk: the unit a change copies. Small enough that a batch of scattered
/// changes copies little besides the buckets it rebuilds (1,000 changes touch about 650 of the
/// 1,024 chunks), large enough that the array of chunks, copied on every change, stays 8 KiB.
const CHUNK: usize = 64;

/// [`CHUNK`] consecutive buckets.
#[derive(Clone)]
struct Chunk<A> {
    hot: [Hot; CHUNK],
    /// Each bucket's entries sorted by (start, length, rule), for the next change.
    cold: [Option<Arc<[Entry<A>]>>; CHUNK],
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
            chunks: (0..(1 << 16) / CHUNK).map(|_| None).collect(),
        }
    }
}

fn touches(mask: &[u64; 4], addr: impl Addr) -> bool {
    let b = addr.byte(2);
    mask[usize::from(b >> 6)] & (1 << (b & 63)) != 0
}

impl<A: Addr> Table<A> {
    /// The bucket's decision data, unless the mask already says no prefix is near `addr`.
    #[inline]
    fn hot(&self, addr: A) -> Option<&Hot> {
        let key = bucket_key(addr);
        let chunk = self.chunks[usize::from(key) / CHUNK].as_deref()?;
        let hot = &chunk.hot[usize::from(key) % CHUNK];
        touches(&hot.mask, addr).then_some(hot)
    }

    /// Expiries deciding `addr`: the hot path.
    pub fn span(&self, addr: A) -> Span {
        let Some(hot) = self.hot(addr) else {
            return Span::EMPTY;
        };
        match hot.decision.as_deref() {
            Some(decision) => intervals::span::<A>(decision, hot.counts, addr.key()),
            None => Span::EMPTY,
        }
    }

    /// The active rules covering `addr`, as a listing shows them. The decision follows from
    /// them, so a listing does not search the decision intervals as well.
    pub fn matches(&self, addr: A, now: UnixMillis) -> Vec<Arc<RuleRef>> {
        let Some(hot) = self.hot(addr) else {
            return Vec::new();
        };
        let Some(listing) = &hot.listing else {
            return Vec::new();
        };
        // Start bringing in the rule lists while the intervals are searched.
        std::hint::black_box(listing.rule_lists.first().is_some_and(Option::is_some));
        let from = intervals::listing::<A>(&listing.intervals, hot.counts, addr.key());
        listing
            .rule_lists
            .get(from..)
            .unwrap_or_default()
            .iter()
            .map_while(Option::as_ref)
            .filter(|rule| rule.is_active_at(now))
            .cloned()
            .collect()
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
                table.chunks[usize::from(key) / CHUNK].get_or_insert_with(Default::default),
            );
            let slot = usize::from(key) % CHUNK;
            let current = chunk.cold[slot]
                .as_deref()
                .map(<[Entry<A>]>::to_vec)
                .unwrap_or_default();
            let mut entries = edit(key, current);
            entries.sort_by_key(|e| (e.start, e.len, e.rule.id));
            if entries.is_empty() {
                chunk.hot[slot] = Hot::default();
                chunk.cold[slot] = None;
                continue;
            }
            let prefixes = Prefixes::of(&entries);
            let (rule_lists, list_at) = prefixes.rule_lists();
            let (decision, listed, counts) = intervals::build(&prefixes, &list_at, key);
            chunk.hot[slot] = Hot {
                mask: prefixes.mask(),
                decision: Some(decision),
                counts,
                listing: Some(Listing {
                    intervals: listed,
                    rule_lists: rule_lists.into(),
                }),
            };
            chunk.cold[slot] = Some(entries.into());
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

    /// Sizes, for the memory report. `rules` collects the rule records the table points to
    /// (they are shared between buckets and tables, so the caller counts each once).
    pub fn stats(
        &self,
        rules: &mut std::collections::HashMap<*const RuleRef, usize>,
    ) -> TableStats {
        let mut stats = TableStats {
            hot: self.chunks.len() * size_of::<Option<Arc<Chunk<A>>>>(),
            ..TableStats::default()
        };
        // Reference counts in front of every shared allocation.
        let counts = 2 * size_of::<usize>();
        for chunk in self.chunks.iter().flatten() {
            stats.hot += size_of::<Chunk<A>>() + counts;
            for (hot, cold) in chunk.hot.iter().zip(&chunk.cold) {
                if let Some(decision) = &hot.decision {
                    stats.intervals += size_of_val::<[u64]>(decision) + counts;
                }
                if let Some(listing) = &hot.listing {
                    stats.intervals += size_of_val::<[u64]>(&listing.intervals) + counts;
                    stats.listings +=
                        size_of_val::<[Option<Arc<RuleRef>>]>(&listing.rule_lists) + counts;
                }
                if let Some(entries) = cold {
                    stats.entries += size_of_val::<[Entry<A>]>(entries) + counts;
                    stats.prefixes += 1 + entries
                        .windows(2)
                        .filter(|w| (w[0].start, w[0].len) != (w[1].start, w[1].len))
                        .count();
                    for entry in entries.iter() {
                        // A name is its own allocation, with its reference counts.
                        let name = entry.rule.name.as_ref().map_or(0, |n| n.len() + 16);
                        rules.insert(Arc::as_ptr(&entry.rule), name);
                    }
                }
            }
        }
        stats
    }
}

/// Heap bytes of a table by part, and its distinct prefixes (counted once per bucket).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    pub prefixes: usize,
    /// Chunks: masks and pointers.
    pub hot: usize,
    pub intervals: usize,
    pub listings: usize,
    /// Entries kept for the next change.
    pub entries: usize,
}

impl std::ops::AddAssign for TableStats {
    fn add_assign(&mut self, other: Self) {
        self.prefixes += other.prefixes;
        self.hot += other.hot;
        self.intervals += other.intervals;
        self.listings += other.listings;
        self.entries += other.entries;
    }
}

/// A bucket as disjoint intervals, in two allocations of 64-bit words, each read as one short
/// run of memory:
///
/// - for decisions, the coarsest intervals: neighbours with the same expiries are merged, so a
///   bucket whose rules were loaded together (one expiry) is a handful of intervals. The first
///   addresses of the intervals, as positions inside the bucket ([`Addr::Key`]), ascending, the
///   first one 0; the number of each one's span (`u32`); the distinct spans, two words each.
///   Kept apart from the rest so that the decision data of all buckets is small and dense;
/// - for listings, one interval per distinct set of covering prefixes: first addresses, then
///   where each one's rule list begins in the bucket's listings (`u32`).
///
/// The section sizes ([`Counts`]) live beside the pointers, so no read waits for a header.
mod intervals {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::{Addr, Prefixes, Span};

    fn words_for<T>(count: usize) -> usize {
        (count * size_of::<T>()).div_ceil(size_of::<u64>())
    }

    #[derive(Debug, Clone, Copy, Default)]
    pub struct Counts {
        decided: u32,
        spans: u32,
        listed: u32,
    }

    /// Where each section begins, in words.
    struct Layout {
        n: usize,
        listed: usize,
        keys: usize,
        numbers: usize,
        spans: usize,
        decided_end: usize,
        listed_keys: usize,
        listings: usize,
        end: usize,
    }

    impl Layout {
        #[inline]
        fn of<A: Addr>(counts: Counts) -> Self {
            let (n, m, listed) = (
                counts.decided as usize,
                counts.spans as usize,
                counts.listed as usize,
            );
            let keys = 0;
            let numbers = keys + words_for::<A::Key>(n);
            let spans = numbers + words_for::<u32>(n);
            let decided_end = spans + 2 * m;
            let listed_keys = 0;
            let listings = listed_keys + words_for::<A::Key>(listed);
            Self {
                n,
                listed,
                keys,
                numbers,
                spans,
                decided_end,
                listed_keys,
                listings,
                end: listings + words_for::<u32>(listed),
            }
        }
    }

    /// `list_at[node]`: where the list of each prefix begins.
    pub fn build<A: Addr>(
        prefixes: &Prefixes<'_, A>,
        list_at: &[u32],
        bucket_key: u16,
    ) -> (Arc<[u64]>, Arc<[u64]>, Counts) {
        let low = A::bucket_start(bucket_key);
        let high = low.broadcast(16);
        let mut starts = vec![low];
        for (start, node) in prefixes.starts.iter().zip(&prefixes.nodes) {
            starts.push((*start).max(low));
            let end = start.broadcast(node.len);
            if end < high {
                starts.extend(end.next());
            }
        }
        starts.sort_unstable();
        starts.dedup();

        let mut keys: Vec<A::Key> = Vec::new();
        let mut numbers: Vec<u32> = Vec::new();
        let mut spans: Vec<Span> = Vec::new();
        let mut numbered: HashMap<Span, u32> = HashMap::new();
        let mut listed_keys: Vec<A::Key> = Vec::with_capacity(starts.len());
        let mut listings: Vec<u32> = Vec::with_capacity(starts.len());
        for start in starts {
            let deepest = prefixes.deepest(start);
            let span = deepest.map_or(Span::EMPTY, |node| prefixes.nodes[node].chain);
            let number = *numbered.entry(span).or_insert_with(|| {
                spans.push(span);
                spans.len() as u32 - 1
            });
            if numbers.last() != Some(&number) {
                keys.push(start.key());
                numbers.push(number);
            }
            let listing = deepest.map_or(0, |node| list_at[node]);
            if listings.last() != Some(&listing) {
                listed_keys.push(start.key());
                listings.push(listing);
            }
        }

        // Counts stay far below u32::MAX: a bucket holds at most a few million prefixes.
        let counts = Counts {
            decided: keys.len() as u32,
            spans: spans.len() as u32,
            listed: listed_keys.len() as u32,
        };
        let layout = Layout::of::<A>(counts);
        let mut words = vec![0u64; layout.decided_end];
        let mut listed = vec![0u64; layout.end];
        fill(&mut words[layout.keys..layout.numbers], &keys);
        fill(&mut words[layout.numbers..layout.spans], &numbers);
        for (i, span) in spans.iter().enumerate() {
            words[layout.spans + 2 * i] = span.block_until as u64;
            words[layout.spans + 2 * i + 1] = span.allow_until as u64;
        }
        fill(
            &mut listed[layout.listed_keys..layout.listings],
            &listed_keys,
        );
        fill(&mut listed[layout.listings..layout.end], &listings);
        (words.into(), listed.into(), counts)
    }

    fn fill<T: bytemuck::Pod>(words: &mut [u64], values: &[T]) {
        bytemuck::cast_slice_mut::<u64, T>(words)[..values.len()].copy_from_slice(values);
    }

    /// The interval of `keys` holding `key` (the first key is 0).
    #[inline]
    fn holding<K: Ord + bytemuck::Pod>(words: &[u64], count: usize, key: K) -> usize {
        let keys = &bytemuck::cast_slice::<u64, K>(words)[..count];
        keys.partition_point(|k| *k <= key).saturating_sub(1)
    }

    /// The expiries deciding the address at `key`.
    #[inline]
    pub fn span<A: Addr>(words: &[u64], counts: Counts, key: A::Key) -> Span {
        let layout = Layout::of::<A>(counts);
        let interval = holding(&words[layout.keys..layout.numbers], layout.n, key);
        let numbers = bytemuck::cast_slice::<u64, u32>(&words[layout.numbers..layout.spans]);
        let at = layout.spans + 2 * numbers[interval] as usize;
        Span {
            block_until: words[at] as i64,
            allow_until: words[at + 1] as i64,
        }
    }

    /// Where the rule list of the address at `key` begins in the bucket's listings.
    pub fn listing<A: Addr>(words: &[u64], counts: Counts, key: A::Key) -> usize {
        let layout = Layout::of::<A>(counts);
        let interval = holding(
            &words[layout.listed_keys..layout.listings],
            layout.listed,
            key,
        );
        bytemuck::cast_slice::<u64, u32>(&words[layout.listings..layout.end])[interval] as usize
    }
}

fn bucket_keys_of<A: Addr>(start: A, len: u8) -> std::ops::RangeInclusive<u16> {
    bucket_key(start)..=bucket_key(start.broadcast(len))
}

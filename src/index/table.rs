//! A prefix table for one address family, built for "is any active rule covering this address?"
//!
//! The address space is cut into 65,536 buckets by the top 16 bits (a two-level array indexed by
//! the first and second byte). Each bucket is an immutable, sorted list of the distinct prefixes
//! that touch it, with for each prefix its parent (the prefixes form a laminar family: two are
//! nested or disjoint) and the latest expiry of any block and any allow rule on the prefix *or
//! any of its ancestors*. A decision is then: a binary search for the last prefix starting at or
//! before the address, a short walk up the parents to the deepest prefix containing it, and two
//! comparisons with "now".
//!
//! Writers replace a whole bucket (copy, change, publish with one atomic pointer swap), so
//! readers never wait and always see a bucket either before or after a write. Next to each
//! bucket pointer sits a 256-bit mask of which third-byte blocks (a /24 in IPv4) the bucket
//! touches: most addresses are under no rule at all and are answered from the mask alone, which
//! stays in cache, without touching the bucket.
//!
//! Prefixes shorter than /16 are stored in every bucket they cover.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Starts kept inside the bucket's own allocation when they fit, so that the hop from the slot
/// to the bucket also brings in the array the binary search reads.
type Starts<A> = smallvec::SmallVec<[A; 12]>;

/// The distinct prefixes touching one bucket, sorted by (start, length).
pub struct Bucket<A> {
    starts: Starts<A>,
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
        let mut starts = Starts::new();
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
            starts,
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
        let spilled = if self.starts.spilled() {
            self.starts.len() * size_of::<A>()
        } else {
            0
        };
        spilled
            + self.nodes.len() * size_of::<Node>()
            + self.rules.len() * size_of::<Arc<RuleRef>>()
    }
}

struct Slot<A> {
    mask: [AtomicU64; 4],
    bucket: ArcSwapOption<Bucket<A>>,
}

impl<A> Default for Slot<A> {
    fn default() -> Self {
        Self {
            mask: Default::default(),
            bucket: ArcSwapOption::empty(),
        }
    }
}

struct Chunk<A> {
    slots: Box<[Slot<A>]>,
}

/// One family's prefix table.
pub struct Table<A> {
    chunks: Box<[OnceLock<Chunk<A>>]>,
}

impl<A: Addr> Default for Table<A> {
    fn default() -> Self {
        Self {
            chunks: (0..256).map(|_| OnceLock::new()).collect(),
        }
    }
}

/// What a look-up found: the expiries that decide, and the chain of prefixes for listing.
pub struct Found<A> {
    bucket: arc_swap::Guard<Option<Arc<Bucket<A>>>>,
    node: usize,
}

impl<A: Addr> Found<A> {
    pub fn span(&self) -> Span {
        match self.bucket.as_ref() {
            Some(b) => b.nodes[self.node].chain,
            None => Span::EMPTY,
        }
    }

    /// Every rule on the prefixes containing the address, deepest first.
    pub fn rules(&self, mut keep: impl FnMut(&RuleRef) -> bool) -> Vec<Arc<RuleRef>> {
        let mut out = Vec::new();
        if let Some(bucket) = self.bucket.as_ref() {
            let mut n = self.node as u32;
            while n != NO_PARENT {
                out.extend(
                    bucket
                        .rules_of(n as usize)
                        .iter()
                        .filter(|r| keep(r))
                        .cloned(),
                );
                n = bucket.nodes[n as usize].parent;
            }
        }
        out
    }
}

impl<A: Addr> Table<A> {
    fn slot(&self, key: u16) -> Option<&Slot<A>> {
        let chunk = self.chunks[usize::from(key >> 8)].get()?;
        Some(&chunk.slots[usize::from(key & 0xff)])
    }

    fn slot_or_insert(&self, key: u16) -> &Slot<A> {
        let chunk = self.chunks[usize::from(key >> 8)].get_or_init(|| Chunk {
            slots: (0..256).map(|_| Slot::default()).collect(),
        });
        &chunk.slots[usize::from(key & 0xff)]
    }

    /// Expiries deciding `addr`: the hot path.
    pub fn span(&self, addr: A) -> Span {
        let Some(slot) = self.slot(bucket_key(addr)) else {
            return Span::EMPTY;
        };
        let b = addr.byte(2);
        if slot.mask[usize::from(b >> 6)].load(Ordering::Acquire) & (1 << (b & 63)) == 0 {
            return Span::EMPTY;
        }
        let bucket = slot.bucket.load();
        match bucket.as_ref().and_then(|bucket| bucket.deepest(addr)) {
            Some(node) => bucket.as_ref().map_or(Span::EMPTY, |b| b.nodes[node].chain),
            None => Span::EMPTY,
        }
    }

    /// The deepest prefix containing `addr`, kept alive for listing its rules.
    pub fn find(&self, addr: A) -> Option<Found<A>> {
        let slot = self.slot(bucket_key(addr))?;
        let b = addr.byte(2);
        if slot.mask[usize::from(b >> 6)].load(Ordering::Acquire) & (1 << (b & 63)) == 0 {
            return None;
        }
        let bucket = slot.bucket.load();
        let node = bucket.as_ref()?.deepest(addr)?;
        Some(Found { bucket, node })
    }

    /// Replaces the given buckets. `edit` receives the bucket's current entries and returns the
    /// new ones. Only the writer (one at a time) calls this.
    pub fn rewrite(
        &self,
        keys: impl IntoIterator<Item = u16>,
        mut edit: impl FnMut(u16, Vec<Entry<A>>) -> Vec<Entry<A>>,
    ) {
        for key in keys {
            let slot = self.slot_or_insert(key);
            let current: Vec<Entry<A>> = slot
                .bucket
                .load()
                .as_ref()
                .map(|b| b.entries().collect())
                .unwrap_or_default();
            let bucket = Bucket::build(edit(key, current)).map(Arc::new);
            let mask = bucket.as_ref().map_or([0; 4], |b| b.mask());
            // Widen the mask before publishing the bucket and narrow it after, so a reader
            // never skips a bucket that has an entry for its address.
            for (word, bits) in slot.mask.iter().zip(mask) {
                word.fetch_or(bits, Ordering::AcqRel);
            }
            slot.bucket.store(bucket);
            for (word, bits) in slot.mask.iter().zip(mask) {
                word.fetch_and(bits, Ordering::AcqRel);
            }
        }
    }

    /// Builds a table from scratch (start-up, or after the geo data changed).
    pub fn build(entries: impl IntoIterator<Item = Entry<A>>) -> Self {
        let mut by_bucket: std::collections::BTreeMap<u16, Vec<Entry<A>>> = Default::default();
        for entry in entries {
            for key in entry.bucket_keys() {
                by_bucket.entry(key).or_default().push(entry.clone());
            }
        }
        let table = Self::default();
        table.rewrite(by_bucket.keys().copied().collect::<Vec<_>>(), |key, _| {
            by_bucket.remove(&key).unwrap_or_default()
        });
        table
    }

    /// Adds and removes entries; `remove` names rules by id.
    pub fn update(&self, add: Vec<Entry<A>>, remove: Vec<(A, u8, i64)>) {
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
        self.rewrite(keys, |key, mut entries| {
            if let Some(ids) = removes.get(&key) {
                entries.retain(|e| ids.binary_search(&e.rule.id).is_err());
            }
            if let Some(new) = adds.remove(&key) {
                entries.extend(new);
            }
            entries
        });
    }

    /// Number of distinct prefixes summed over buckets, and heap bytes of the table.
    pub fn stats(&self) -> (usize, usize) {
        let mut prefixes = 0;
        let mut bytes = 0;
        for chunk in self.chunks.iter().filter_map(OnceLock::get) {
            bytes += chunk.slots.len() * size_of::<Slot<A>>();
            for slot in chunk.slots.iter() {
                if let Some(bucket) = slot.bucket.load().as_ref() {
                    prefixes += bucket.len();
                    bytes += bucket.heap_bytes() + size_of::<Bucket<A>>();
                }
            }
        }
        (prefixes, bytes)
    }
}

fn bucket_keys_of<A: Addr>(start: A, len: u8) -> std::ops::RangeInclusive<u16> {
    bucket_key(start)..=bucket_key(start.broadcast(len))
}

//! Address ranges as plain integers: the overlay that turns source rows into disjoint ranges, the
//! look-up table, CIDR decomposition and the per-key network index.
//!
//! Everything is built in `u128` with an explicit family width so one implementation serves IPv4
//! and IPv6; only the finished look-up table narrows IPv4 keys to `u32`, which halves its size.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Address width in bits of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub(crate) fn width(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    pub(crate) fn max(self) -> u128 {
        match self {
            Family::V4 => u128::from(u32::MAX),
            Family::V6 => u128::MAX,
        }
    }

    pub(crate) fn of(addr: IpAddr) -> (Family, u128) {
        match addr {
            IpAddr::V4(v4) => (Family::V4, u128::from(u32::from(v4))),
            IpAddr::V6(v6) => (Family::V6, u128::from(v6)),
        }
    }
}

/// One row of a source: an inclusive range, the value it carries and its rank. Where rows
/// overlap, the higher rank wins, which is how a MaxMind DB writer fed the same rows in order
/// would resolve them (later inserts win).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row<V> {
    pub start: u128,
    pub end: u128,
    pub rank: u32,
    pub value: V,
}

impl<V> Row<V> {
    pub(crate) fn new(start: u128, end: u128, rank: u32, value: V) -> Self {
        Row {
            start,
            end,
            rank,
            value,
        }
    }
}

/// A disjoint range in the output of [`overlay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seg<V> {
    pub start: u128,
    pub end: u128,
    pub value: V,
}

struct Active<V> {
    rank: u32,
    end: u128,
    value: V,
}

impl<V> PartialEq for Active<V> {
    fn eq(&self, other: &Self) -> bool {
        self.rank == other.rank
    }
}
impl<V> Eq for Active<V> {}
impl<V> PartialOrd for Active<V> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<V> Ord for Active<V> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank.cmp(&other.rank)
    }
}

/// Resolves overlapping rows (highest rank wins) into sorted, disjoint ranges, joining
/// neighbours that carry the same value so later stages see as few ranges as possible.
///
/// Rows with `start > end` must have been refused by the caller.
pub(crate) fn overlay<V: Copy + Eq>(mut rows: Vec<Row<V>>) -> Vec<Seg<V>> {
    rows.sort_unstable_by_key(|r| (r.start, r.rank));
    let mut out: Vec<Seg<V>> = Vec::with_capacity(rows.len());
    let mut active: BinaryHeap<Active<V>> = BinaryHeap::new();
    let mut next = 0;
    let Some(first) = rows.first() else {
        return out;
    };
    let mut pos = first.start;
    loop {
        while let Some(row) = rows.get(next).filter(|r| r.start <= pos) {
            active.push(Active {
                rank: row.rank,
                end: row.end,
                value: row.value,
            });
            next += 1;
        }
        // Rows that ended are only dropped when they surface: one that is covered by a
        // higher-ranked row never decides anything, so leaving it in the heap is harmless.
        while active.peek().is_some_and(|top| top.end < pos) {
            active.pop();
        }
        let Some(top) = active.peek() else {
            match rows.get(next) {
                Some(row) => {
                    pos = row.start;
                    continue;
                }
                None => break,
            }
        };
        let mut end = top.end;
        if let Some(row) = rows.get(next) {
            // `row.start > pos >= 0`, so the subtraction cannot wrap.
            end = end.min(row.start - 1);
        }
        match out.last_mut() {
            Some(last) if last.value == top.value && last.end.checked_add(1) == Some(pos) => {
                last.end = end;
            }
            _ => out.push(Seg {
                start: pos,
                end,
                value: top.value,
            }),
        }
        match end.checked_add(1) {
            Some(after) => pos = after,
            None => break,
        }
    }
    out
}

/// Calls `f(network, prefix_len)` for the fewest CIDR blocks that exactly cover `start..=end`,
/// in address order.
pub(crate) fn for_each_cidr(start: u128, end: u128, family: Family, mut f: impl FnMut(u128, u8)) {
    let width = family.width();
    let mut s = start;
    loop {
        let align = if s == 0 {
            width
        } else {
            s.trailing_zeros().min(width)
        };
        let remaining = end - s;
        // The largest k with 2^k - 1 <= remaining.
        let fit = match remaining.checked_add(1) {
            Some(count) => 127 - count.leading_zeros(),
            None => 128,
        };
        let k = align.min(fit);
        // k <= width <= 128, so the prefix length fits a u8.
        f(s, (width - k) as u8);
        if k >= 128 {
            return;
        }
        let last = s + ((1u128 << k) - 1);
        if last >= end {
            return;
        }
        s = last + 1;
    }
}

pub(crate) fn to_net(family: Family, addr: u128, prefix: u8) -> IpNet {
    let ip = match family {
        // IPv4 values never exceed u32::MAX; they were built from IPv4 addresses.
        Family::V4 => IpAddr::V4(Ipv4Addr::from(addr as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(addr)),
    };
    // The prefix comes from `for_each_cidr` for the same family, so it is always in range.
    IpNet::new(ip, prefix).unwrap_or_else(|_| IpNet::from(ip))
}

/// What one look-up range carries: an ASN (0 = none) and a country as an index into the data
/// set's country list (0 = none). Packed to five bytes because the table holds a value per range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C, packed)]
pub(crate) struct Slot {
    asn: u32,
    country: u8,
}

impl Slot {
    pub(crate) const NONE: Slot = Slot { asn: 0, country: 0 };

    pub(crate) fn new(asn: u32, country: u8) -> Self {
        Slot { asn, country }
    }

    pub(crate) fn asn(self) -> u32 {
        self.asn
    }

    pub(crate) fn country(self) -> u8 {
        self.country
    }
}

/// Integer form of an address in one family's table.
pub(crate) trait Key: Copy + Ord + Send + Sync + 'static {
    /// Whether dense blocks get a sub-index. IPv4 blocks hold about ten ranges on average and
    /// a few thousand at most, and the sub-index made IPv4 look-ups slower (it costs memory and
    /// a second index read), so only IPv6 has one.
    const SUB_INDEX: bool;
    /// The value must fit; callers only pass addresses of the table's own family.
    fn narrow(value: u128) -> Self;
    /// The top 28 bits: the block (top 16) and the sub-block within it (next 12).
    fn top28(self) -> usize;
}

impl Key for u32 {
    const SUB_INDEX: bool = false;
    fn narrow(value: u128) -> Self {
        value as u32
    }
    fn top28(self) -> usize {
        (self >> 4) as usize
    }
}

impl Key for u128 {
    const SUB_INDEX: bool = true;
    fn narrow(value: u128) -> Self {
        value
    }
    fn top28(self) -> usize {
        (self >> 100) as usize
    }
}

const SUB_BITS: u32 = 12;
const BLOCKS: usize = 1 << 16;
const SUBS: usize = 1 << SUB_BITS;
/// Blocks with more ranges than this get a sub-index. Real IPv6 data has blocks (2001::/16,
/// 2a09::/16, ...) with around 100,000 ranges each, where a plain binary search took four times
/// as long as in the typical IPv4 block; with the sub-index it takes half as long as without.
const DENSE: usize = 128;
const NO_SUB: u32 = u32::MAX;

/// The whole address space of one family as consecutive ranges: range `i` runs from `starts[i]`
/// up to `starts[i + 1] - 1` and carries `slots[i]`; gaps are ranges carrying [`Slot::NONE`], so a
/// look-up is "last start not above the address" and needs no end array.
///
/// The index narrows the binary search to the ranges starting in the address's block (top 16
/// bits) or, in a dense IPv6 block, its sub-block (next 12 bits).
#[derive(Debug)]
pub(crate) struct Table<K> {
    starts: Vec<K>,
    slots: Vec<Slot>,
    /// The first range starting in each block, plus one past the end.
    index: Vec<u32>,
    /// Per block, where its sub-index starts in `subs`, or [`NO_SUB`]. Empty without sub-index.
    sub_offsets: Vec<u32>,
    /// `SUBS + 1` entries per dense block: the first range starting in each sub-block.
    subs: Vec<u32>,
}

impl<K: Key> Table<K> {
    /// `steps` are `(start, slot)` pairs with strictly increasing starts, the first at 0.
    pub(crate) fn from_steps(steps: Vec<(u128, Slot)>) -> Self {
        let mut starts = Vec::with_capacity(steps.len());
        let mut slots = Vec::with_capacity(steps.len());
        for (start, slot) in steps {
            starts.push(K::narrow(start));
            slots.push(slot);
        }
        if starts.is_empty() {
            starts.push(K::narrow(0));
            slots.push(Slot::NONE);
        }
        // Range counts stay far below u32::MAX: a u32 per range keeps the index small.
        let first_at_or_after = |from: usize, top28: usize| {
            from + starts
                .get(from..)
                .map_or(0, |rest| rest.partition_point(|s| s.top28() < top28))
        };
        let mut index = Vec::with_capacity(BLOCKS + 1);
        let mut first = 0;
        for block in 0..BLOCKS {
            first = first_at_or_after(first, block << SUB_BITS);
            index.push(first as u32);
        }
        index.push(starts.len() as u32);

        let mut sub_offsets = Vec::new();
        let mut subs = Vec::new();
        if K::SUB_INDEX {
            sub_offsets.reserve_exact(BLOCKS);
            for (block, bounds) in index.windows(2).enumerate() {
                let (first, next) = (bounds[0] as usize, bounds[1] as usize);
                if next - first <= DENSE {
                    sub_offsets.push(NO_SUB);
                    continue;
                }
                sub_offsets.push(subs.len() as u32);
                let mut at = first;
                for sub_block in 0..SUBS {
                    at = first_at_or_after(at, (block << SUB_BITS) | sub_block);
                    subs.push(at as u32);
                }
                subs.push(next as u32);
            }
        }
        Table {
            starts,
            slots,
            index,
            sub_offsets,
            subs,
        }
    }

    #[inline]
    pub(crate) fn find(&self, key: K) -> Slot {
        let top = key.top28();
        let block = top >> SUB_BITS;
        let dense = if K::SUB_INDEX {
            self.sub_offsets
                .get(block)
                .filter(|&&offset| offset != NO_SUB)
        } else {
            None
        };
        let bounds = match dense {
            Some(&offset) => {
                let at = offset as usize + (top & (SUBS - 1));
                (self.subs.get(at), self.subs.get(at + 1))
            }
            None => (self.index.get(block), self.index.get(block + 1)),
        };
        let (Some(&lo), Some(&hi)) = bounds else {
            return Slot::NONE;
        };
        let (lo, hi) = (lo as usize, hi as usize);
        let Some(candidates) = self.starts.get(lo..hi) else {
            return Slot::NONE;
        };
        let after = lo + candidates.partition_point(|&s| s <= key);
        // When no range starts in this (sub-)block at or below the address, the answer is the
        // range that began before it: the one just before `lo`. Range 0 starts at address 0, so
        // `after` is at least 1.
        match after.checked_sub(1) {
            Some(i) => self.slots.get(i).copied().unwrap_or(Slot::NONE),
            None => Slot::NONE,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.starts.len()
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.starts.capacity() * size_of::<K>()
            + self.slots.capacity() * size_of::<Slot>()
            + self.index.capacity() * size_of::<u32>()
            + self.sub_offsets.capacity() * size_of::<u32>()
            + self.subs.capacity() * size_of::<u32>()
    }
}

/// Joins the ASN and country ranges of one family into one step list, so a look-up answers both
/// with a single search.
pub(crate) fn merge_steps(
    asn: &[Seg<u32>],
    country: &[Seg<u8>],
    family: Family,
) -> Vec<(u128, Slot)> {
    let asn_steps = steps(asn, family);
    let country_steps = steps(country, family);
    let mut out: Vec<(u128, Slot)> = Vec::with_capacity(asn_steps.len() + country_steps.len() + 1);
    out.push((0, Slot::NONE));
    let (mut i, mut j) = (0, 0);
    let (mut a, mut c) = (0u32, 0u8);
    loop {
        let point = match (asn_steps.get(i), country_steps.get(j)) {
            (Some(x), Some(y)) => x.0.min(y.0),
            (Some(x), None) => x.0,
            (None, Some(y)) => y.0,
            (None, None) => break,
        };
        while let Some(&(_, v)) = asn_steps.get(i).filter(|s| s.0 == point) {
            a = v;
            i += 1;
        }
        while let Some(&(_, v)) = country_steps.get(j).filter(|s| s.0 == point) {
            c = v;
            j += 1;
        }
        let slot = Slot::new(a, c);
        match out.last_mut() {
            // Only address 0 can be seen twice: the seed entry and a range starting there.
            Some(last) if last.0 == point => last.1 = slot,
            Some(last) if last.1 == slot => {}
            _ => out.push((point, slot)),
        }
    }
    out
}

/// A step function for one source: the value in force from each point on, 0 meaning none.
fn steps<V: Copy + Default>(segs: &[Seg<V>], family: Family) -> Vec<(u128, V)> {
    let mut out = Vec::with_capacity(segs.len() * 2);
    for seg in segs {
        out.push((seg.start, seg.value));
        if seg.end < family.max() {
            out.push((seg.end + 1, V::default()));
        }
    }
    // Where one range ends exactly where the next begins, the end step and the next start share a
    // point; the start, pushed later, is the one in force.
    out.dedup_by(|later, earlier| {
        if later.0 == earlier.0 {
            earlier.1 = later.1;
            true
        } else {
            false
        }
    });
    out
}

/// CIDR blocks per key (an ASN, or a country index), IPv4 blocks before IPv6 ones, each family
/// in address order.
#[derive(Debug, Default)]
pub(crate) struct NetIndex {
    keys: Vec<u32>,
    /// `nets[offsets[i]..offsets[i + 1]]` belong to `keys[i]`.
    offsets: Vec<u32>,
    nets: Vec<IpNet>,
}

impl NetIndex {
    pub(crate) fn build<V: Copy + Into<u32>>(v4: &[Seg<V>], v6: &[Seg<V>]) -> Self {
        let mut order: Vec<(u32, Family, u128, u128)> = v4
            .iter()
            .map(|s| (s.value.into(), Family::V4, s.start, s.end))
            .chain(
                v6.iter()
                    .map(|s| (s.value.into(), Family::V6, s.start, s.end)),
            )
            .collect();
        // Stable: within one key the input already lists IPv4 then IPv6, each in address order.
        order.sort_by_key(|item| item.0);
        let mut index = NetIndex::default();
        for (key, family, start, end) in order {
            if index.keys.last() != Some(&key) {
                index.keys.push(key);
                index.offsets.push(index.nets.len() as u32);
            }
            for_each_cidr(start, end, family, |addr, prefix| {
                index.nets.push(to_net(family, addr, prefix));
            });
        }
        index.offsets.push(index.nets.len() as u32);
        index.nets.shrink_to_fit();
        index
    }

    pub(crate) fn get(&self, key: u32) -> &[IpNet] {
        let Ok(i) = self.keys.binary_search(&key) else {
            return &[];
        };
        match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&from), Some(&to)) => self.nets.get(from as usize..to as usize).unwrap_or(&[]),
            _ => &[],
        }
    }

    pub(crate) fn contains(&self, key: u32) -> bool {
        self.keys.binary_search(&key).is_ok()
    }

    pub(crate) fn keys(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn networks(&self) -> usize {
        self.nets.len()
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.keys.capacity() * size_of::<u32>()
            + self.offsets.capacity() * size_of::<u32>()
            + self.nets.capacity() * size_of::<IpNet>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(start: u128, end: u128, rank: u32, value: u32) -> Row<u32> {
        Row {
            start,
            end,
            rank,
            value,
        }
    }

    fn seg(start: u128, end: u128, value: u32) -> Seg<u32> {
        Seg { start, end, value }
    }

    #[test]
    fn overlay_later_rank_wins_and_neighbours_join() {
        let rows = vec![
            row(0, 100, 1, 7),
            row(50, 60, 2, 8),
            row(101, 120, 3, 7),
            row(200, 300, 4, 9),
            row(150, 250, 0, 5),
        ];
        assert_eq!(
            overlay(rows),
            vec![
                seg(0, 49, 7),
                seg(50, 60, 8),
                seg(61, 120, 7),
                seg(150, 199, 5),
                seg(200, 300, 9),
            ]
        );
    }

    #[test]
    fn overlay_inner_older_row_is_hidden() {
        let rows = vec![row(10, 20, 1, 1), row(0, 100, 2, 2)];
        assert_eq!(overlay(rows), vec![seg(0, 100, 2)]);
    }

    #[test]
    fn overlay_reaches_the_top_of_the_space() {
        let rows = vec![row(0, u128::MAX, 1, 1), row(u128::MAX, u128::MAX, 2, 2)];
        assert_eq!(
            overlay(rows),
            vec![seg(0, u128::MAX - 1, 1), seg(u128::MAX, u128::MAX, 2)]
        );
    }

    fn cidrs(start: u128, end: u128, family: Family) -> Vec<String> {
        let mut out = Vec::new();
        for_each_cidr(start, end, family, |a, p| {
            out.push(to_net(family, a, p).to_string())
        });
        out
    }

    #[test]
    fn cidr_decomposition() {
        let v4 = |s: &str| u128::from(u32::from(s.parse::<Ipv4Addr>().unwrap()));
        assert_eq!(
            cidrs(v4("10.0.0.5"), v4("10.0.0.20"), Family::V4),
            [
                "10.0.0.5/32",
                "10.0.0.6/31",
                "10.0.0.8/29",
                "10.0.0.16/30",
                "10.0.0.20/32"
            ]
        );
        assert_eq!(cidrs(0, u128::from(u32::MAX), Family::V4), ["0.0.0.0/0"]);
        assert_eq!(cidrs(0, u128::MAX, Family::V6), ["::/0"]);
        assert_eq!(
            cidrs(1, u128::MAX, Family::V6).len(),
            128,
            "one block per bit"
        );
        assert_eq!(
            cidrs(u128::from(u32::MAX), u128::from(u32::MAX), Family::V4),
            ["255.255.255.255/32"]
        );
    }

    #[test]
    fn table_finds_every_edge() {
        let asn = [
            seg(10, 19, 1),
            seg(20, 29, 2),
            seg(40, u128::from(u32::MAX), 3),
        ];
        let country = [Seg {
            start: 15,
            end: 44,
            value: 4u8,
        }];
        let table: Table<u32> = Table::from_steps(merge_steps(&asn, &country, Family::V4));
        let at = |k: u32| {
            let s = table.find(k);
            (s.asn(), s.country())
        };
        assert_eq!(at(0), (0, 0));
        assert_eq!(at(9), (0, 0));
        assert_eq!(at(10), (1, 0));
        assert_eq!(at(14), (1, 0));
        assert_eq!(at(15), (1, 4));
        assert_eq!(at(19), (1, 4));
        assert_eq!(at(20), (2, 4));
        assert_eq!(at(30), (0, 4));
        assert_eq!(at(40), (3, 4));
        assert_eq!(at(45), (3, 0));
        assert_eq!(at(0x0001_0000), (3, 0));
        assert_eq!(at(u32::MAX), (3, 0));
    }

    #[test]
    fn table_starting_at_zero_and_empty() {
        let asn = [seg(0, 5, 1)];
        let table: Table<u128> = Table::from_steps(merge_steps(&asn, &[], Family::V6));
        assert_eq!(table.find(0).asn(), 1);
        assert_eq!(table.find(5).asn(), 1);
        assert_eq!(table.find(6).asn(), 0);
        assert_eq!(table.find(u128::MAX).asn(), 0);
        let empty: Table<u32> = Table::from_steps(merge_steps(&[], &[], Family::V4));
        assert_eq!(empty.len(), 1);
        assert_eq!(empty.find(12345), Slot::NONE);
    }

    /// Dense IPv6 blocks go through the sub-index; every answer matches a linear scan.
    #[test]
    fn table_with_dense_blocks_matches_a_scan() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            u128::from(state)
        };
        // Thousands of ranges in 2001::/16 and 2a09::/16, a few scattered elsewhere.
        let mut points: Vec<u128> = Vec::new();
        for i in 0..6000 {
            let block: u128 = if i % 2 == 0 { 0x2001 } else { 0x2a09 };
            points.push((block << 112) | ((next() & 0xffff_ffff) << 80));
        }
        for _ in 0..200 {
            points.push(next() << 64);
        }
        points.sort_unstable();
        points.dedup();
        let steps: Vec<(u128, Slot)> = std::iter::once((0, Slot::NONE))
            .chain(
                points
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| **p != 0)
                    .map(|(i, &p)| (p, Slot::new(i as u32 + 1, 0))),
            )
            .collect();
        let table: Table<u128> = Table::from_steps(steps.clone());
        assert_eq!(table.subs.len(), 2 * (SUBS + 1));
        let scan = |key: u128| {
            steps
                .iter()
                .rev()
                .find(|(start, _)| *start <= key)
                .map_or(Slot::NONE, |(_, slot)| *slot)
        };
        let mut keys: Vec<u128> = points
            .iter()
            .flat_map(|&p| [p, p.wrapping_sub(1), p.wrapping_add(1)])
            .collect();
        for _ in 0..20_000 {
            keys.push((0x2001 << 112) | ((next() & 0xffff_ffff_ffff) << 64) | next());
        }
        keys.extend([0, u128::MAX, 0x2001 << 112, (0x2002 << 112) - 1]);
        for key in keys {
            assert_eq!(table.find(key), scan(key), "{key:#x}");
        }
    }

    #[test]
    fn net_index_groups_by_key() {
        let index = NetIndex::build(
            &[seg(0, 255, 5), seg(512, 767, 6), seg(1024, 1279, 5)],
            &[seg(0, (1 << 96) - 1, 5)],
        );
        let nets: Vec<String> = index.get(5).iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["0.0.0.0/24", "0.0.4.0/24", "::/32"]);
        assert_eq!(index.get(6).len(), 1);
        assert!(index.get(7).is_empty());
        assert!(index.contains(6) && !index.contains(7));
        assert_eq!((index.keys(), index.networks()), (2, 4));
    }
}

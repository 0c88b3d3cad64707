//! Address ranges with expiries, as the exports and the geo expansion handle them: disjoint
//! pieces of one family in address order, joined from several sources, and the ranges among
//! them that are blocked at one instant.

use std::iter::Peekable;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::geo::Family;
use crate::geo::ranges::{for_each_cidr, to_net};
use crate::index::{FOREVER, NONE, Span};
use crate::rules::UnixMillis;

/// An inclusive address range of one family (which one the holder knows) and the latest expiry
/// of any block and any allow rule over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub start: u128,
    pub end: u128,
    pub span: Span,
}

impl Piece {
    fn is_empty(&self) -> bool {
        self.span.block_until == NONE && self.span.allow_until == NONE
    }
}

fn widen(a: Span, b: Span) -> Span {
    Span {
        block_until: a.block_until.max(b.block_until),
        allow_until: a.allow_until.max(b.allow_until),
    }
}

/// A range that is blocked: some block rule covers it and no allow rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    pub family: Family,
    pub start: u128,
    pub end: u128,
    /// The latest expiry of the block rules over it; `None`: permanent.
    pub until: Option<UnixMillis>,
}

impl Blocked {
    pub fn first(&self) -> IpAddr {
        address(self.family, self.start)
    }

    pub fn last(&self) -> IpAddr {
        address(self.family, self.end)
    }

    /// The fewest CIDR blocks covering exactly this range, in address order.
    pub fn for_each_cidr(&self, mut f: impl FnMut(IpNet)) {
        for_each_cidr(self.start, self.end, self.family, |addr, prefix| {
            f(to_net(self.family, addr, prefix))
        });
    }

    /// [`Blocked::for_each_cidr`] collected: at most two blocks per address bit.
    pub fn cidrs(&self) -> Vec<IpNet> {
        let mut nets = Vec::new();
        self.for_each_cidr(|net| nets.push(net));
        nets
    }

    /// The range as one CIDR block, when it is exactly one.
    pub fn as_cidr(&self) -> Option<IpNet> {
        let mut first = None;
        let mut count = 0;
        self.for_each_cidr(|net| {
            count += 1;
            first.get_or_insert(net);
        });
        if count == 1 { first } else { None }
    }

    pub fn cidr_count(&self) -> usize {
        let mut count = 0;
        self.for_each_cidr(|_| count += 1);
        count
    }

    /// Whole seconds left at `now`, rounded up so that an entry never outlives its rule by
    /// less than it would fall short; `None`: permanent.
    pub fn seconds_left(&self, now: UnixMillis) -> Option<u64> {
        self.until.map(|until| {
            let ms = until.0.saturating_sub(now.0).max(1);
            (ms as u64).div_ceil(1000)
        })
    }
}

pub(crate) fn address(family: Family, value: u128) -> IpAddr {
    match family {
        // IPv4 values never exceed u32::MAX: they come from IPv4 addresses.
        Family::V4 => IpAddr::V4(Ipv4Addr::from(value as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// A network as an inclusive range of its family.
pub(crate) fn bounds(net: &IpNet) -> (Family, u128, u128) {
    match net {
        IpNet::V4(n) => (
            Family::V4,
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (
            Family::V6,
            u128::from(n.network()),
            u128::from(n.broadcast()),
        ),
    }
}

/// A source of pieces for [`Overlay`].
pub type Pieces<'a> = Box<dyn Iterator<Item = Piece> + Send + 'a>;

/// Joins several sources of pieces of one family, each disjoint and in address order, into one
/// such sequence: where pieces of several sources overlap, their spans are widened, and
/// neighbours with the same span are joined. Holds one piece per source.
pub struct Overlay<'a> {
    sources: Vec<Peekable<Pieces<'a>>>,
    /// The first address not yet handed on; `None` once the end of the space was reached.
    at: Option<u128>,
    held: Option<Piece>,
}

impl<'a> Overlay<'a> {
    pub fn new(sources: Vec<Pieces<'a>>) -> Self {
        let sources = sources
            .into_iter()
            .map(|s| (Box::new(s.filter(|p| !p.is_empty())) as Pieces<'a>).peekable())
            .collect();
        Self {
            sources,
            at: Some(0),
            held: None,
        }
    }

    /// The next elementary piece: from `at` up to where the set of pieces covering it changes.
    fn step(&mut self) -> Option<Piece> {
        loop {
            let at = self.at?;
            let mut span = Span {
                block_until: NONE,
                allow_until: NONE,
            };
            let mut covered = false;
            let mut stop = u128::MAX;
            let mut next_start: Option<u128> = None;
            for source in &mut self.sources {
                while source.peek().is_some_and(|p| p.end < at) {
                    source.next();
                }
                let Some(piece) = source.peek() else {
                    continue;
                };
                if piece.start <= at {
                    covered = true;
                    span = widen(span, piece.span);
                    stop = stop.min(piece.end);
                } else {
                    // `piece.start > at >= 0`: no wrap.
                    stop = stop.min(piece.start - 1);
                    next_start = Some(next_start.map_or(piece.start, |n| n.min(piece.start)));
                }
            }
            if !covered {
                self.at = next_start;
                continue;
            }
            self.at = stop.checked_add(1);
            return Some(Piece {
                start: at,
                end: stop,
                span,
            });
        }
    }
}

impl Iterator for Overlay<'_> {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        loop {
            let Some(piece) = self.step() else {
                return self.held.take();
            };
            match &mut self.held {
                Some(held)
                    if held.span == piece.span && held.end.checked_add(1) == Some(piece.start) =>
                {
                    held.end = piece.end;
                }
                held => {
                    if let Some(done) = held.replace(piece) {
                        return Some(done);
                    }
                }
            }
        }
    }
}

/// The ranges of `pieces` (one family, disjoint, in address order) blocked at `now`: under an
/// active block rule and no active allow rule. Neighbours with the same expiry are joined.
pub fn blocked<'a>(
    family: Family,
    pieces: impl Iterator<Item = Piece> + 'a,
    now: UnixMillis,
) -> impl Iterator<Item = Blocked> + 'a {
    let mut held: Option<Blocked> = None;
    let mut pieces = pieces
        .filter(move |p| p.span.block_until > now.0 && p.span.allow_until <= now.0)
        .map(move |p| Blocked {
            family,
            start: p.start,
            end: p.end,
            until: (p.span.block_until != FOREVER).then_some(UnixMillis(p.span.block_until)),
        });
    std::iter::from_fn(move || {
        loop {
            let Some(next) = pieces.next() else {
                return held.take();
            };
            match &mut held {
                Some(h) if h.until == next.until && h.end.checked_add(1) == Some(next.start) => {
                    h.end = next.end;
                }
                h => {
                    if let Some(done) = h.replace(next) {
                        return Some(done);
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(start: u128, end: u128, block: i64, allow: i64) -> Piece {
        Piece {
            start,
            end,
            span: Span {
                block_until: block,
                allow_until: allow,
            },
        }
    }

    fn source(pieces: Vec<Piece>) -> Pieces<'static> {
        Box::new(pieces.into_iter())
    }

    #[test]
    fn overlay_widens_where_sources_meet_and_joins_neighbours() {
        let a = vec![piece(0, 9, 100, NONE), piece(20, 29, 100, NONE)];
        let b = vec![piece(5, 24, 200, NONE), piece(30, 39, 100, NONE)];
        let c = vec![piece(8, 8, NONE, 300)];
        let out: Vec<Piece> = Overlay::new(vec![source(a), source(b), source(c)]).collect();
        assert_eq!(
            out,
            [
                piece(0, 4, 100, NONE),
                piece(5, 7, 200, NONE),
                piece(8, 8, 200, 300),
                piece(9, 24, 200, NONE),
                piece(25, 39, 100, NONE),
            ]
        );
    }

    #[test]
    fn overlay_reaches_the_top_of_the_space() {
        let a = vec![piece(u128::MAX - 1, u128::MAX, 1, NONE)];
        let b = vec![piece(0, 0, 1, NONE), piece(u128::MAX, u128::MAX, 2, NONE)];
        let out: Vec<Piece> = Overlay::new(vec![source(a), source(b)]).collect();
        assert_eq!(
            out,
            [
                piece(0, 0, 1, NONE),
                piece(u128::MAX - 1, u128::MAX - 1, 1, NONE),
                piece(u128::MAX, u128::MAX, 2, NONE),
            ]
        );
    }

    #[test]
    fn blocked_leaves_out_allowed_and_expired_and_joins_same_expiry() {
        let now = UnixMillis(1000);
        let pieces = vec![
            piece(0, 9, 2000, NONE),
            piece(10, 19, 2000, 500),
            piece(20, 29, 2000, 3000),
            piece(30, 39, 900, NONE),
            piece(40, 49, FOREVER, NONE),
        ];
        let out: Vec<Blocked> = blocked(Family::V4, pieces.into_iter(), now).collect();
        let until = |ms| Some(UnixMillis(ms));
        assert_eq!(
            out,
            [
                Blocked {
                    family: Family::V4,
                    start: 0,
                    end: 19,
                    until: until(2000)
                },
                Blocked {
                    family: Family::V4,
                    start: 40,
                    end: 49,
                    until: None
                },
            ]
        );
        assert_eq!(out[0].seconds_left(now), Some(1));
        assert_eq!(out[0].cidr_count(), 2, "0-15 and 16-19");
        assert_eq!(out[0].as_cidr(), None);
        assert_eq!(out[1].seconds_left(now), None);
    }
}

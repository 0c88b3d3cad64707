//! A tenant's blocklist for enforcement points that do not ask per request: firewalls (nftables,
//! ipset), nginx `deny` lists, plain lists, and the geo expansion that turns ASN and country
//! rules into the ranges they cover.
//!
//! - [`expand`]: ASN and country rules as address ranges, cached per tenant until a rule or the
//!   geo data changes.
//! - [`ranges`]: disjoint ranges with expiries, joined from several sources.
//! - [`format`]: the writers, one per format, onto any [`std::io::Write`].
//! - [`agent`]: the access-rules document of the Gen0Sec edge agent (`GET /v1/config`).
//!
//! An [`Export`] reads the decision index's own intervals (allow rules already taken out) and the
//! expansion, both held for as long as it is written, so an export is one consistent instant
//! and takes no more memory however long the list.

pub mod agent;
pub mod expand;
pub mod format;
pub mod ranges;

use std::io::{self, Write};
use std::sync::Arc;

use crate::geo::Family;
use crate::index::{IpRules, Span};
use crate::rules::UnixMillis;
use expand::Expansion;
use format::{Format, Totals};
use ranges::{Blocked, Overlay, Piece, Pieces, blocked};

/// One tenant's blocklist at one instant.
pub struct Export {
    ip: IpRules,
    geo: Option<Arc<Expansion>>,
    expand: bool,
    now: UnixMillis,
}

impl Export {
    /// With `expand`, the ranges ASN and country block rules cover are listed too. Either way
    /// the expansion's allow rules take the addresses they cover out of the list, as they do
    /// for a decision.
    pub fn new(ip: IpRules, geo: Option<Arc<Expansion>>, expand: bool, now: UnixMillis) -> Self {
        Self {
            ip,
            geo,
            expand,
            now,
        }
    }

    /// The ranges blocked at the export's instant: IPv4 then IPv6, each disjoint and in address
    /// order, neighbours with the same expiry joined.
    pub fn ranges(&self) -> impl Iterator<Item = Blocked> + '_ {
        blocked(Family::V4, self.family(Family::V4), self.now).chain(blocked(
            Family::V6,
            self.family(Family::V6),
            self.now,
        ))
    }

    fn family(&self, family: Family) -> Overlay<'_> {
        let ip: Pieces<'_> = match family {
            Family::V4 => Box::new(self.ip.v4().map(piece)),
            Family::V6 => Box::new(self.ip.v6().map(piece)),
        };
        let mut sources = vec![ip];
        if let Some(geo) = &self.geo {
            let expand = self.expand;
            sources.push(Box::new(geo.pieces(family).iter().map(move |p| Piece {
                span: Span {
                    block_until: if expand {
                        p.span.block_until
                    } else {
                        crate::index::NONE
                    },
                    allow_until: p.span.allow_until,
                },
                ..*p
            })));
        }
        Overlay::new(sources)
    }

    /// Writes the export in `format`. Formats that size their sets first walk the ranges twice.
    pub fn write_to<W: Write>(&self, format: Format, out: &mut W) -> io::Result<()> {
        let totals = if format.needs_totals() {
            Totals::of(self.ranges())
        } else {
            Totals::default()
        };
        format::write(format, self.ranges(), totals, self.now, out)?;
        out.flush()
    }
}

fn piece((start, end, span): (u128, u128, Span)) -> Piece {
    Piece { start, end, span }
}

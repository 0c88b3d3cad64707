//! The export formats, written to any [`Write`] sink as the ranges come: nothing is collected, so
//! memory does not grow with the size of the list.

use std::io::{self, Write};
use std::str::FromStr;

use super::ranges::Blocked;
use crate::geo::Family;
use crate::rules::UnixMillis;

/// The nftables table and sets, and the ipset sets, an export fills.
pub const NFT_TABLE: &str = "palisade";
pub const SET_V4: &str = "palisade_v4";
pub const SET_V6: &str = "palisade_v6";

/// The longest timeout ipset takes (the kernel keeps it in milliseconds in a signed 32-bit
/// value); a rule lasting longer gets this and is renewed by the next export.
pub const IPSET_MAX_TIMEOUT: u64 = 2_147_483;

/// The longest element timeout given to nft: nft 1.0.6 refuses 100,000,000 s ("value too
/// large"); three years stays below that on every version seen. A rule lasting longer gets this
/// and is renewed by the next export.
pub const NFT_MAX_TIMEOUT: u64 = 3 * 365 * 24 * 3600;

/// Elements per `add element` statement of an nftables script: short lines for editors and
/// diffs, few statements for nft.
const NFT_BATCH: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One CIDR block a line.
    Plain,
    /// An `nft -f` script filling two sets (`flags interval, timeout`).
    Nftables,
    /// An `ipset restore` file filling two `hash:net` sets with timeouts.
    Ipset,
    /// `deny` lines for an nginx `include`.
    Nginx,
    /// An array of `{"cidr": ..., "expires_at": ...}` objects.
    Json,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "plain" => Ok(Format::Plain),
            "nftables" => Ok(Format::Nftables),
            "ipset" => Ok(Format::Ipset),
            "nginx" => Ok(Format::Nginx),
            "json" => Ok(Format::Json),
            other => Err(format!(
                "{other:?} is not a format: plain, nftables, ipset, nginx or json"
            )),
        }
    }
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            _ => "text/plain; charset=utf-8",
        }
    }

    /// Whether the writer needs [`Totals`] before the first range (ipset sizes its sets).
    pub fn needs_totals(self) -> bool {
        self == Format::Ipset
    }
}

/// CIDR blocks per family of a whole export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub v4: usize,
    pub v6: usize,
}

impl Totals {
    pub fn of(ranges: impl Iterator<Item = Blocked>) -> Self {
        let mut totals = Totals::default();
        for range in ranges {
            match range.family {
                Family::V4 => totals.v4 += range.cidr_count(),
                Family::V6 => totals.v6 += range.cidr_count(),
            }
        }
        totals
    }
}

/// Writes `ranges` (IPv4 before IPv6, each family disjoint and in address order, as
/// [`super::Export::ranges`] gives them) in `format`. `totals` is read by formats that
/// [`Format::needs_totals`]; `now` turns expiries into timeouts.
pub fn write<W: Write>(
    format: Format,
    ranges: impl Iterator<Item = Blocked>,
    totals: Totals,
    now: UnixMillis,
    out: &mut W,
) -> io::Result<()> {
    match format {
        Format::Plain => lines(ranges, out, "", ""),
        Format::Nginx => lines(ranges, out, "deny ", ";"),
        Format::Json => json(ranges, out),
        Format::Nftables => nftables(ranges, now, out),
        Format::Ipset => ipset(ranges, totals, now, out),
    }
}

fn lines<W: Write>(
    ranges: impl Iterator<Item = Blocked>,
    out: &mut W,
    before: &str,
    after: &str,
) -> io::Result<()> {
    for range in ranges {
        for net in range.cidrs() {
            writeln!(out, "{before}{net}{after}")?;
        }
    }
    Ok(())
}

fn json<W: Write>(ranges: impl Iterator<Item = Blocked>, out: &mut W) -> io::Result<()> {
    out.write_all(b"[")?;
    let mut first = true;
    for range in ranges {
        let expires = match range.until {
            Some(at) => format!("\"{}\"", at.to_rfc3339()),
            None => "null".to_owned(),
        };
        for net in range.cidrs() {
            let comma = if first { "" } else { "," };
            first = false;
            write!(
                out,
                "{comma}\n{{\"cidr\":\"{net}\",\"expires_at\":{expires}}}"
            )?;
        }
    }
    out.write_all(if first { b"]\n" } else { b"\n]\n" })
}

fn nftables<W: Write>(
    ranges: impl Iterator<Item = Blocked>,
    now: UnixMillis,
    out: &mut W,
) -> io::Result<()> {
    // One `nft -f` run is one transaction: the sets are emptied and refilled atomically.
    writeln!(out, "add table inet {NFT_TABLE}")?;
    writeln!(
        out,
        "add set inet {NFT_TABLE} {SET_V4} {{ type ipv4_addr; flags interval, timeout; }}"
    )?;
    writeln!(
        out,
        "add set inet {NFT_TABLE} {SET_V6} {{ type ipv6_addr; flags interval, timeout; }}"
    )?;
    writeln!(out, "flush set inet {NFT_TABLE} {SET_V4}")?;
    writeln!(out, "flush set inet {NFT_TABLE} {SET_V6}")?;
    let mut open: Option<(Family, usize)> = None;
    for range in ranges {
        match &mut open {
            Some((family, count)) if *family == range.family && *count < NFT_BATCH => {
                out.write_all(b", ")?;
                *count += 1;
            }
            _ => {
                if open.is_some() {
                    out.write_all(b" }\n")?;
                }
                let set = match range.family {
                    Family::V4 => SET_V4,
                    Family::V6 => SET_V6,
                };
                write!(out, "add element inet {NFT_TABLE} {set} {{ ")?;
                open = Some((range.family, 1));
            }
        }
        // A range that is one block is written as a prefix, any other as first-last: either
        // way the set holds the whole interval.
        match range.as_cidr() {
            Some(net) => write!(out, "{net}")?,
            None => write!(out, "{}-{}", range.first(), range.last())?,
        }
        if let Some(seconds) = range.seconds_left(now) {
            write!(out, " timeout {}s", seconds.min(NFT_MAX_TIMEOUT))?;
        }
    }
    if open.is_some() {
        out.write_all(b" }\n")?;
    }
    Ok(())
}

fn ipset<W: Write>(
    ranges: impl Iterator<Item = Blocked>,
    totals: Totals,
    now: UnixMillis,
    out: &mut W,
) -> io::Result<()> {
    // `hash:net` refuses entries beyond `maxelem` ("hash is full"): size each set for its list,
    // never below ipset's own default.
    let maxelem = |count: usize| count.max(65_536);
    writeln!(
        out,
        "create {SET_V4} hash:net family inet timeout 0 maxelem {} -exist",
        maxelem(totals.v4)
    )?;
    writeln!(
        out,
        "create {SET_V6} hash:net family inet6 timeout 0 maxelem {} -exist",
        maxelem(totals.v6)
    )?;
    writeln!(out, "flush {SET_V4}")?;
    writeln!(out, "flush {SET_V6}")?;
    for range in ranges {
        let set = match range.family {
            Family::V4 => SET_V4,
            Family::V6 => SET_V6,
        };
        // Timeout 0 keeps an entry for good in a set with timeouts.
        let timeout = range
            .seconds_left(now)
            .map_or(0, |s| s.min(IPSET_MAX_TIMEOUT));
        for net in range.cidrs() {
            writeln!(out, "add {set} {net} timeout {timeout}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> u128 {
        u128::from(u32::from(s.parse::<std::net::Ipv4Addr>().unwrap()))
    }

    fn sample() -> Vec<Blocked> {
        vec![
            Blocked {
                family: Family::V4,
                start: v4("192.0.2.0"),
                end: v4("192.0.2.255"),
                until: Some(UnixMillis(3_600_000)),
            },
            Blocked {
                family: Family::V4,
                start: v4("198.51.100.7"),
                end: v4("198.51.100.9"),
                until: None,
            },
            Blocked {
                family: Family::V4,
                start: v4("203.0.113.0"),
                end: v4("203.0.113.255"),
                until: Some(UnixMillis(4_102_444_800_000)),
            },
            Blocked {
                family: Family::V6,
                start: 0x2001_0db8 << 96,
                end: (0x2001_0db8 << 96) | ((1 << 96) - 1),
                until: Some(UnixMillis(1_500)),
            },
        ]
    }

    fn text(format: Format) -> String {
        let mut out = Vec::new();
        let ranges = sample();
        let totals = Totals::of(ranges.iter().copied());
        write(format, ranges.into_iter(), totals, UnixMillis(0), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn plain_and_nginx_are_one_block_a_line() {
        assert_eq!(
            text(Format::Plain),
            "192.0.2.0/24\n198.51.100.7/32\n198.51.100.8/31\n203.0.113.0/24\n2001:db8::/32\n"
        );
        assert_eq!(
            text(Format::Nginx).lines().next(),
            Some("deny 192.0.2.0/24;")
        );
    }

    #[test]
    fn json_is_an_array_with_expiries() {
        let value: serde_json::Value = serde_json::from_str(&text(Format::Json)).unwrap();
        let items = value.as_array().unwrap();
        assert_eq!(items.len(), 5);
        assert_eq!(items[0]["cidr"], "192.0.2.0/24");
        assert_eq!(items[0]["expires_at"], "1970-01-01T01:00:00Z");
        assert_eq!(items[1]["expires_at"], serde_json::Value::Null);
        let mut empty = Vec::new();
        write(
            Format::Json,
            std::iter::empty(),
            Totals::default(),
            UnixMillis(0),
            &mut empty,
        )
        .unwrap();
        assert_eq!(empty, b"[]\n");
    }

    #[test]
    fn nftables_writes_intervals_with_timeouts() {
        let script = text(Format::Nftables);
        assert!(script.contains("flags interval, timeout;"), "{script}");
        assert!(
            script.contains(
                "add element inet palisade palisade_v4 { 192.0.2.0/24 timeout 3600s, 198.51.100.7-198.51.100.9, 203.0.113.0/24 timeout 94608000s }"
            ),
            "{script}"
        );
        assert!(
            script.contains("add element inet palisade palisade_v6 { 2001:db8::/32 timeout 2s }"),
            "{script}"
        );
    }

    #[test]
    fn ipset_sizes_its_sets_and_keeps_permanent_entries() {
        let file = text(Format::Ipset);
        assert!(file.starts_with(
            "create palisade_v4 hash:net family inet timeout 0 maxelem 65536 -exist\n"
        ));
        assert!(file.contains("add palisade_v4 192.0.2.0/24 timeout 3600\n"));
        assert!(file.contains("add palisade_v4 198.51.100.8/31 timeout 0\n"));
        assert!(file.contains("add palisade_v6 2001:db8::/32 timeout 2\n"));
        assert!(file.contains("add palisade_v4 203.0.113.0/24 timeout 2147483\n"));
    }
}

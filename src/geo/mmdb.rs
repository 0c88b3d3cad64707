//! MaxMind DB files: every network of the tree, with the ASN and country its record carries.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use maxminddb::{MaxMindDbError, Reader, WithinOptions};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::ranges::{Family, Row};
use super::{GeoError, Source, Want};

const METADATA_MARKER: &[u8] = b"\xab\xcd\xefMaxMind.com";
/// The format puts the metadata, which starts with the marker, in the last 128 KiB.
const METADATA_WINDOW: usize = 128 * 1024;

pub(crate) fn looks_like_mmdb(path: &Path, bytes: &[u8]) -> bool {
    if path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("mmdb"))
    {
        return true;
    }
    let tail = &bytes[bytes.len().saturating_sub(METADATA_WINDOW)..];
    tail.windows(METADATA_MARKER.len())
        .any(|window| window == METADATA_MARKER)
}

/// The two /96 blocks of an IPv6 tree that hold IPv4: `::/96`, where MaxMind writers put it, and
/// `::ffff:0:0/96`, where some writers put it instead. The first ranks above every other row of
/// the file; the second ranks below, so it only fills addresses `::/96` leaves empty.
const V4_BLOCKS: [(u128, bool); 2] = [(0, true), (0xffff << 32, false)];

pub(crate) fn read(path: &Path, bytes: Vec<u8>, want: Want) -> Result<Source, GeoError> {
    let fail = |source: MaxMindDbError| GeoError::Mmdb {
        path: path.to_path_buf(),
        source,
    };
    let reader = Reader::from_source(bytes).map_err(fail)?;
    let mut source = Source::default();
    // Networks share few distinct records (tens of thousands of ASNs, a few hundred countries),
    // so each record is decoded once.
    let mut decoded: HashMap<usize, (u32, u8)> = HashMap::new();
    let mut rank = 0u32;
    // Default options skip the aliases of the IPv4 subtree (::ffff:0:0/96, 2001::/32, 2002::/16
    // when a writer installed them), so each IPv4 network comes out once.
    for item in reader.networks(WithinOptions::default()).map_err(fail)? {
        let item = item.map_err(fail)?;
        let Some(offset) = item.offset() else {
            continue;
        };
        let (asn, country) = match decoded.get(&offset) {
            Some(&values) => values,
            None => {
                let record: Record = item.decode().map_err(fail)?.unwrap_or_default();
                let asn = if want.asn { record.asn() } else { 0 };
                let country = match record.country_code() {
                    Some(code) if want.country => source.countries.intern(code),
                    _ => 0,
                };
                decoded.insert(offset, (asn, country));
                (asn, country)
            }
        };
        if asn == 0 && country == 0 {
            continue;
        }
        rank = rank.saturating_add(1);
        let network = item.network().map_err(fail)?;
        place(
            network.ip(),
            network.prefix(),
            rank,
            |family, start, end, rank| {
                if asn != 0 {
                    source.push_asn(family, Row::new(start, end, rank, asn));
                }
                if country != 0 {
                    source.push_country(family, Row::new(start, end, rank, country));
                }
            },
        );
    }
    Ok(source)
}

/// Where a network of the tree belongs: IPv4 networks (also those the tree keeps in an IPv4
/// block of IPv6 space) as IPv4, everything else as IPv6. A short IPv6 network that covers a
/// whole IPv4 block also answers for all of IPv4, as the tree does for IPv4 look-ups.
fn place(ip: IpAddr, prefix: u8, rank: u32, mut emit: impl FnMut(Family, u128, u128, u32)) {
    let (family, bits) = Family::of(ip);
    let host = host_mask(family, prefix);
    let start = bits & !host;
    let end = start | host;
    if family == Family::V4 {
        return emit(Family::V4, start, end, rank);
    }
    let block_host = host_mask(Family::V6, 96);
    for (base, primary) in V4_BLOCKS {
        let rank = if primary { rank } else { 0 };
        if prefix >= 96 && start & !block_host == base {
            // Wholly inside the block: IPv4 data, nothing else.
            return emit(Family::V4, start - base, end - base, rank);
        }
        if prefix < 96 && start <= base && base <= end {
            emit(Family::V4, 0, u128::from(u32::MAX), rank);
        }
    }
    emit(Family::V6, start, end, rank);
}

fn host_mask(family: Family, prefix: u8) -> u128 {
    let width = family.width();
    let prefix = u32::from(prefix).min(width);
    let host_bits = width - prefix;
    if host_bits == 0 {
        0
    } else {
        u128::MAX >> (128 - host_bits)
    }
}

/// The fields of all known layouts; whichever are present decide.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct Record {
    /// GeoLite2-ASN.
    autonomous_system_number: AsnField,
    /// IPinfo Lite: `"AS13335"`.
    asn: AsnField,
    /// GeoLite2-Country: a map with `iso_code`. In IPinfo Lite a country name, ignored.
    country: CountryField,
    registered_country: CountryField,
    /// IPinfo Lite and plain country databases.
    country_code: CodeField,
}

impl Record {
    fn asn(&self) -> u32 {
        match self.autonomous_system_number.0 {
            0 => self.asn.0,
            n => n,
        }
    }

    fn country_code(&self) -> Option<[u8; 2]> {
        self.country
            .0
            .or(self.registered_country.0)
            .or(self.country_code.0)
    }
}

/// An ASN as a number of any width or as `"AS123"`/`"123"`; anything else counts as none, so an
/// odd record costs its own data rather than the whole file.
#[derive(Debug, Default)]
struct AsnField(u32);

/// `{"iso_code": "US", ...}`; any other shape counts as none.
#[derive(Debug, Default)]
struct CountryField(Option<[u8; 2]>);

/// A two-character string; anything else counts as none.
#[derive(Debug, Default)]
struct CodeField(Option<[u8; 2]>);

/// Visitor methods that accept the value types a field is not meant to have and answer "none",
/// draining containers so decoding can go on.
macro_rules! lenient {
    () => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Default::default())
        }
    };
}

struct AsnVisitor;

impl<'de> Visitor<'de> for AsnVisitor {
    type Value = AsnField;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an ASN")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<AsnField, E> {
        Ok(AsnField(u32::try_from(v).unwrap_or(0)))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<AsnField, E> {
        Ok(AsnField(u32::try_from(v).unwrap_or(0)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<AsnField, E> {
        Ok(AsnField(u32::try_from(v).unwrap_or(0)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<AsnField, E> {
        let digits = match v.get(..2) {
            Some(prefix) if prefix.eq_ignore_ascii_case("as") => &v[2..],
            _ => v,
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(AsnField(0));
        }
        Ok(AsnField(digits.parse().unwrap_or(0)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AsnField, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(AsnField(0))
    }

    lenient!();
}

impl<'de> serde::Deserialize<'de> for AsnField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AsnVisitor)
    }
}

fn two_chars(v: &str) -> Option<[u8; 2]> {
    <[u8; 2]>::try_from(v.as_bytes()).ok()
}

struct CodeVisitor;

impl<'de> Visitor<'de> for CodeVisitor {
    type Value = CodeField;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a country code")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<CodeField, E> {
        Ok(CodeField(two_chars(v)))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<CodeField, E> {
        Ok(CodeField(None))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<CodeField, E> {
        Ok(CodeField(None))
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<CodeField, E> {
        Ok(CodeField(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CodeField, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(CodeField(None))
    }

    lenient!();
}

impl<'de> serde::Deserialize<'de> for CodeField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CodeVisitor)
    }
}

struct CountryVisitor;

impl<'de> Visitor<'de> for CountryVisitor {
    type Value = CountryField;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a country")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CountryField, A::Error> {
        let mut code = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "iso_code" {
                code = map.next_value::<CodeField>()?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(CountryField(code))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<CountryField, E> {
        Ok(CountryField(None))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<CountryField, E> {
        Ok(CountryField(None))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<CountryField, E> {
        Ok(CountryField(None))
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<CountryField, E> {
        Ok(CountryField(None))
    }

    lenient!();
}

impl<'de> serde::Deserialize<'de> for CountryField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CountryVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(net: &str) -> Vec<(Family, u128, u128, u32)> {
        let net: ipnet::IpNet = net.parse().unwrap();
        let mut out = Vec::new();
        place(net.addr(), net.prefix_len(), 7, |f, s, e, r| {
            out.push((f, s, e, r))
        });
        out
    }

    #[test]
    fn ipv4_blocks_of_ipv6_space_become_ipv4() {
        let v4 = |s: &str| u128::from(u32::from(s.parse::<std::net::Ipv4Addr>().unwrap()));
        assert_eq!(
            placed("::102:300/120"),
            [(Family::V4, v4("1.2.3.0"), v4("1.2.3.255"), 7)]
        );
        assert_eq!(
            placed("::ffff:102:300/120"),
            [(Family::V4, v4("1.2.3.0"), v4("1.2.3.255"), 0)]
        );
        assert_eq!(
            placed("1.2.3.0/24"),
            [(Family::V4, v4("1.2.3.0"), v4("1.2.3.255"), 7)]
        );
        let wide = placed("::/64");
        assert_eq!(wide.len(), 3, "{wide:?}");
        assert_eq!(wide[0], (Family::V4, 0, u128::from(u32::MAX), 7));
        assert_eq!(wide[1], (Family::V4, 0, u128::from(u32::MAX), 0));
        assert_eq!(wide[2], (Family::V6, 0, (1u128 << 64) - 1, 7));
        assert_eq!(placed("2001:db8::/32").len(), 1);
        assert_eq!(placed("2001:db8::/32")[0].0, Family::V6);
    }
}

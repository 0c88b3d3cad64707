use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::str::FromStr;

use ipnet::IpNet;

/// What a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// An address or range: always normalised (host bits clear, IPv4-mapped IPv6 as IPv4).
    Ip(IpNet),
    Asn(Asn),
    Country(CountryCode),
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Ip,
    Asn,
    Country,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ip => "ip",
            Kind::Asn => "asn",
            Kind::Country => "country",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ip" => Some(Kind::Ip),
            "asn" => Some(Kind::Asn),
            "country" => Some(Kind::Country),
            _ => None,
        }
    }
}

impl Target {
    pub fn kind(&self) -> Kind {
        match self {
            Target::Ip(_) => Kind::Ip,
            Target::Asn(_) => Kind::Asn,
            Target::Country(_) => Kind::Country,
        }
    }

    /// Reads a target back from its canonical text and kind (as the store keeps it).
    pub fn from_stored(kind: Kind, text: &str) -> Option<Self> {
        match kind {
            Kind::Ip => parse_ip_target(text).ok().map(Target::Ip),
            Kind::Asn => Asn::parse(text).map(Target::Asn),
            Kind::Country => CountryCode::parse(text).map(Target::Country),
        }
    }

    /// The canonical text (see the `Display` impl) in one allocation of the longest text's size,
    /// where `to_string` grows its buffer twice or more: the store writes a target's text for
    /// every rule and change.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        if let Target::Ip(IpNet::V4(net)) = self {
            // Straight into the string, not through a `Formatter` and its dynamic writes.
            let mut text = String::with_capacity("255.255.255.255/32".len());
            write_v4(&mut text, net).expect("writing to a String does not fail");
            return text;
        }
        // `ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128`.
        let mut text = String::with_capacity(43);
        write!(text, "{self}").expect("writing to a String does not fail");
        text
    }

    /// Parses a target of any kind, for filters where the caller did not say which kind.
    pub fn parse_any(text: &str) -> Option<Self> {
        if let Ok(net) = parse_ip_target(text) {
            return Some(Target::Ip(net));
        }
        if let Some(asn) = Asn::parse(text) {
            return Some(Target::Asn(asn));
        }
        CountryCode::parse(text).map(Target::Country)
    }
}

/// Canonical text: `192.0.2.0/24`, `2001:db8::/32`, `AS12345`, `US`. Single hosts keep their
/// `/32` or `/128`, so one text form is one target.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Ip(IpNet::V4(net)) => write_v4(f, net),
            Target::Ip(net) => write!(f, "{net}"),
            Target::Asn(asn) => write!(f, "{asn}"),
            Target::Country(code) => write!(f, "{code}"),
        }
    }
}

/// `a.b.c.d/len`, as `Ipv4Net` writes it, at a tenth of the instructions: the writer formats
/// the target of every rule and change it stores, and the formatting machinery's way through
/// `Ipv4Addr` was 8% of an ingested event's instructions.
fn write_v4(f: &mut impl fmt::Write, net: &ipnet::Ipv4Net) -> fmt::Result {
    let mut digits = itoa::Buffer::new();
    let [a, b, c, d] = net.addr().octets();
    for (octet, then) in [(a, "."), (b, "."), (c, "."), (d, "/")] {
        f.write_str(digits.format(octet))?;
        f.write_str(then)?;
    }
    f.write_str(digits.format(net.prefix_len()))
}

/// An autonomous system number. `AS0` is reserved (RFC 7607) and never a valid target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Asn(NonZeroU32);

impl Asn {
    pub fn new(n: u32) -> Option<Self> {
        NonZeroU32::new(n).map(Asn)
    }

    pub fn get(self) -> u32 {
        self.0.get()
    }

    /// Accepts `AS12345` with the prefix in any case. Only ASCII digits follow; no sign, no
    /// spaces, no dot notation.
    pub fn parse(text: &str) -> Option<Self> {
        let prefix = text.get(..2)?;
        if !prefix.eq_ignore_ascii_case("as") {
            return None;
        }
        let digits = &text[2..];
        if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = digits.parse().ok()?;
        u32::try_from(n).ok().and_then(Asn::new)
    }
}

impl fmt::Display for Asn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AS{}", self.0)
    }
}

/// An officially assigned ISO-3166-1 alpha-2 code, upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// Accepts any case. User-assigned codes (`XK`, `XX`, `EU`, ...) and reserved ones (`UK`)
    /// are refused: a rule for a code no geo database emits would never match anything.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 2 || !bytes.iter().all(u8::is_ascii_alphabetic) {
            return None;
        }
        let upper = [bytes[0].to_ascii_uppercase(), bytes[1].to_ascii_uppercase()];
        // celes also lists Kosovo's XK, which ISO keeps in the user-assigned range.
        if &upper == b"XK" {
            return None;
        }
        celes::Country::from_alpha2(text).ok()?;
        Some(CountryCode(upper))
    }

    pub fn as_str(&self) -> &str {
        // Both bytes are ASCII letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    pub fn bytes(self) -> [u8; 2] {
        self.0
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpTargetError {
    /// Not an address, or a prefix length that is not a number in range.
    Invalid,
    /// `fe80::1%eth0`: a zone only means something on one host.
    ZoneId,
}

/// Parses an address or CIDR range and normalises it: host bits cleared, IPv4-mapped IPv6
/// (`::ffff:192.0.2.1`, and `::ffff:0:0/96` subranges) turned into IPv4 so that a rule and a
/// client address always meet in the same family.
pub fn parse_ip_target(text: &str) -> Result<IpNet, IpTargetError> {
    if text.contains('%') {
        return Err(IpTargetError::ZoneId);
    }
    let (addr_text, len_text) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (text, None),
    };
    let addr = IpAddr::from_str(addr_text).map_err(|_| IpTargetError::Invalid)?;
    let max_len = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len_text {
        None => max_len,
        Some(digits) => {
            if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(IpTargetError::Invalid);
            }
            let len: u8 = digits.parse().map_err(|_| IpTargetError::Invalid)?;
            if len > max_len {
                return Err(IpTargetError::Invalid);
            }
            len
        }
    };
    let net = match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) if len >= 96 => IpNet::new(IpAddr::V4(v4), len - 96),
            _ => IpNet::new(addr, len),
        },
        IpAddr::V4(_) => IpNet::new(addr, len),
    }
    .map_err(|_| IpTargetError::Invalid)?;
    Ok(net.trunc())
}

/// A client address as look-ups see it: IPv4-mapped IPv6 becomes IPv4.
pub fn normalize_ip(addr: IpAddr) -> IpAddr {
    addr.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_targets_normalise() {
        let cases = [
            ("192.168.1.100", "192.168.1.100/32"),
            ("192.168.1.100/24", "192.168.1.0/24"),
            ("::ffff:192.0.2.1", "192.0.2.1/32"),
            ("::ffff:192.0.2.128/121", "192.0.2.128/25"),
            ("2001:DB8::1/32", "2001:db8::/32"),
            ("10.0.0.0/8", "10.0.0.0/8"),
        ];
        for (input, want) in cases {
            assert_eq!(parse_ip_target(input).unwrap().to_string(), want, "{input}");
        }
    }

    #[test]
    fn ip_targets_refuse_garbage() {
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4/33",
            "1.2.3.4/",
            "1.2.3.4/+8",
            "1.2.3.4/08a",
            "::1/129",
            " 1.2.3.4",
            "01.2.3.4",
            "1.2.3.4/-1",
            "example.com",
        ] {
            assert_eq!(parse_ip_target(bad), Err(IpTargetError::Invalid), "{bad:?}");
        }
        assert_eq!(parse_ip_target("fe80::1%eth0"), Err(IpTargetError::ZoneId));
    }

    #[test]
    fn asn_forms() {
        assert_eq!(Asn::parse("AS12345").unwrap().to_string(), "AS12345");
        assert_eq!(Asn::parse("as12345").unwrap().to_string(), "AS12345");
        assert_eq!(Asn::parse("aS4294967295").unwrap().get(), u32::MAX);
        for bad in [
            "AS0",
            "AS",
            "12345",
            "AS4294967296",
            "AS-1",
            "AS 1",
            "AS+1",
            "ASN1",
            "AS1.5",
        ] {
            assert!(Asn::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn exactly_the_officially_assigned_countries() {
        let mut accepted = 0;
        for a in b'A'..=b'Z' {
            for b in b'A'..=b'Z' {
                let code = String::from_utf8(vec![a, b]).unwrap();
                if CountryCode::parse(&code).is_some() {
                    accepted += 1;
                }
            }
        }
        assert_eq!(accepted, 249);
        for bad in ["UK", "XX", "EU", "XK", "U", "USA", "1A"] {
            assert!(CountryCode::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(CountryCode::parse("gb").unwrap().as_str(), "GB");
    }
}

#[cfg(test)]
mod properties {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever the host bits, a range normalises to its network, and parsing the canonical
        /// text again gives the same range.
        #[test]
        fn v4_ranges_normalise_to_their_network(addr: u32, len in 0u8..=32) {
            let text = format!("{}/{len}", Ipv4Addr::from(addr));
            let net = parse_ip_target(&text).unwrap();
            prop_assert_eq!(net.prefix_len(), len);
            prop_assert_eq!(net.network(), IpAddr::V4(Ipv4Addr::from(addr & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0))));
            prop_assert!(net.contains(&IpAddr::V4(Ipv4Addr::from(addr))));
            prop_assert_eq!(parse_ip_target(&net.to_string()).unwrap(), net);
            prop_assert_eq!(Target::Ip(net).to_string(), net.to_string());
            prop_assert_eq!(Target::Ip(net).text(), net.to_string());
        }

        #[test]
        fn v6_ranges_normalise_to_their_network(addr: u128, len in 0u8..=128) {
            let v6 = Ipv6Addr::from(addr);
            let net = parse_ip_target(&format!("{v6}/{len}")).unwrap();
            prop_assert!(net.contains(&normalize_ip(IpAddr::V6(v6))));
            prop_assert_eq!(parse_ip_target(&net.to_string()).unwrap(), net);
            prop_assert_eq!(net.trunc(), net);
            prop_assert_eq!(Target::Ip(net).text(), net.to_string());
        }

        /// An IPv4-mapped address or range is the same target as the IPv4 one.
        #[test]
        fn mapped_v6_is_v4(addr: u32, len in 0u8..=32) {
            let v4 = Ipv4Addr::from(addr);
            let mapped = format!("{}/{}", v4.to_ipv6_mapped(), u16::from(len) + 96);
            prop_assert_eq!(parse_ip_target(&mapped).unwrap(), parse_ip_target(&format!("{v4}/{len}")).unwrap());
            prop_assert_eq!(normalize_ip(IpAddr::V6(v4.to_ipv6_mapped())), IpAddr::V4(v4));
        }

        /// Arbitrary text never panics, and whatever parses is canonical.
        #[test]
        fn arbitrary_text_is_refused_or_canonical(text in "\\PC{0,45}") {
            if let Ok(net) = parse_ip_target(&text) {
                prop_assert_eq!(net.trunc(), net);
                prop_assert!(!matches!(net, IpNet::V6(v6) if v6.prefix_len() >= 96 && v6.network().to_ipv4_mapped().is_some()));
            }
        }
    }
}

//! Addresses that are nobody's public address: IANA's IPv4 and IPv6 Special-Purpose Address
//! Registries (the entries not globally reachable), plus multicast and the IPv6 forms that
//! carry an IPv4 address inside (IPv4-compatible `::a.b.c.d`, 6to4, NAT64, Teredo), which are
//! judged by the address they carry. Reporting such an address blocks nothing real and may
//! block one's own network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::normalize_ip;

/// (network, prefix length, what it is) for IPv4.
const SPECIAL_V4: &[([u8; 4], u8, &str)] = &[
    ([0, 0, 0, 0], 8, "this network"),
    ([10, 0, 0, 0], 8, "private use"),
    (
        [100, 64, 0, 0],
        10,
        "shared address space (carrier-grade NAT)",
    ),
    ([127, 0, 0, 0], 8, "loopback"),
    ([169, 254, 0, 0], 16, "link local"),
    ([172, 16, 0, 0], 12, "private use"),
    // 192.0.0.9 and 192.0.0.10 (anycast) are global, but nobody reports them.
    ([192, 0, 0, 0], 24, "IETF protocol assignments"),
    ([192, 0, 2, 0], 24, "documentation (TEST-NET-1)"),
    ([192, 88, 99, 0], 24, "deprecated 6to4 relay anycast"),
    ([192, 168, 0, 0], 16, "private use"),
    ([198, 18, 0, 0], 15, "benchmarking"),
    ([198, 51, 100, 0], 24, "documentation (TEST-NET-2)"),
    ([203, 0, 113, 0], 24, "documentation (TEST-NET-3)"),
    ([224, 0, 0, 0], 4, "multicast"),
    ([240, 0, 0, 0], 4, "reserved (and limited broadcast)"),
];

/// (network, prefix length, what it is) for IPv6, apart from the forms carrying IPv4.
const SPECIAL_V6: &[([u16; 8], u8, &str)] = &[
    ([0, 0, 0, 0, 0, 0, 0, 0], 128, "unspecified"),
    ([0, 0, 0, 0, 0, 0, 0, 1], 128, "loopback"),
    (
        [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
        48,
        "local-use IPv4/IPv6 translation",
    ),
    ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard-only"),
    ([0x2001, 0x2, 0, 0, 0, 0, 0, 0], 48, "benchmarking"),
    ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "documentation"),
    ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "documentation"),
    (
        [0x5f00, 0, 0, 0, 0, 0, 0, 0],
        16,
        "segment routing (SRv6) SIDs",
    ),
    ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "unique local"),
    ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local unicast"),
    ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast"),
];

fn within_v4(ip: Ipv4Addr, net: [u8; 4], len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn within_v6(ip: Ipv6Addr, net: [u16; 8], len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(Ipv6Addr::from(net)) & mask
}

/// What kind of special-purpose address `ip` is, or `None` for an ordinary public address.
/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they are.
pub fn special_purpose(ip: IpAddr) -> Option<&'static str> {
    match normalize_ip(ip) {
        IpAddr::V4(v4) => SPECIAL_V4
            .iter()
            .find(|(net, len, _)| within_v4(v4, *net, *len))
            .map(|(_, _, what)| *what),
        IpAddr::V6(v6) => {
            if let Some((_, _, what)) = SPECIAL_V6
                .iter()
                .find(|(net, len, _)| within_v6(v6, *net, *len))
            {
                return Some(what);
            }
            carried_v4(v6)
                .into_iter()
                .find_map(|v4| special_purpose(IpAddr::V4(v4)))
        }
    }
}

/// The IPv4 addresses an IPv6 address carries: `::a.b.c.d` (deprecated IPv4-compatible),
/// 6to4 (`2002:AABB:CCDD::/48`), NAT64 (`64:ff9b::a.b.c.d`) and Teredo (`2001:0::/32`, server
/// in bits 32-63, client inverted in the last 32).
fn carried_v4(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    let bits = u128::from(ip);
    let low = Ipv4Addr::from(bits as u32);
    let seg = ip.segments();
    if bits >> 32 == 0 {
        vec![low]
    } else if seg[0] == 0x2002 {
        vec![Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32)]
    } else if within_v6(ip, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96) {
        vec![low]
    } else if seg[0] == 0x2001 && seg[1] == 0 {
        vec![
            Ipv4Addr::from(((bits >> 64) & 0xffff_ffff) as u32),
            Ipv4Addr::from(!(bits as u32)),
        ]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn special(ip: &str) -> bool {
        special_purpose(ip.parse().unwrap()).is_some()
    }

    #[test]
    fn the_registries_and_what_carries_them() {
        for ip in [
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "169.254.1.1",
            "172.31.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.1",
            "203.0.113.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:10.0.0.1",
            "::10.0.0.1",
            "::127.0.0.1",
            "2002:0a00:0001::1",
            "2002:c0a8:0101::",
            "64:ff9b::192.168.1.1",
            "64:ff9b::100.64.0.1",
            "64:ff9b:1::1",
            "100::1",
            "2001:db8::1",
            "3fff::1",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            // Teredo whose client (inverted in the last 32 bits) is 192.168.1.1.
            "2001:0:4136:e378:8000:63bf:3f57:fefe",
        ] {
            assert!(special(ip), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:0808:0808::1",
            "64:ff9b::8.8.8.8",
        ] {
            assert!(!special(ip), "{ip}");
        }
    }
}

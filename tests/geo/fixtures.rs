//! Small geo data files in every supported layout, written with `mmdb-writer` into a temporary
//! directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use mmdb_writer::{IpVersion, Ipv4Aliasing, Value, Writer};

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

/// Writes through a temporary name and a rename, as operators replace live files.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let staging = dir.join(format!(".{name}.new"));
    std::fs::write(&staging, bytes).unwrap();
    std::fs::rename(&staging, &path).unwrap();
    path
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn asn_record(asn: u32, org: &str) -> Value {
    Value::map([
        ("autonomous_system_number", Value::from(asn)),
        ("autonomous_system_organization", Value::from(org)),
    ])
}

/// GeoLite2-ASN layout in an IPv6 tree with the usual IPv4 aliases (::ffff:0:0/96, 2001::/32,
/// 2002::/16).
pub fn geolite_asn() -> Vec<u8> {
    let mut w = Writer::new("GeoLite2-ASN");
    w.insert_value(net("1.0.0.0/24"), asn_record(13335, "Cloudflare, Inc."))
        .unwrap();
    w.insert_value(net("10.0.0.0/24"), asn_record(64496, "Example, One"))
        .unwrap();
    w.insert_value(net("10.0.1.0/24"), asn_record(64496, "Example, One"))
        .unwrap();
    w.insert_value(net("192.0.2.0/24"), asn_record(0, "Nobody"))
        .unwrap();
    w.insert_value(net("2001:db8::/32"), asn_record(64497, "Example Two"))
        .unwrap();
    w.insert_value(net("2001:db8:1::/48"), asn_record(64498, "Example Three"))
        .unwrap();
    w.to_bytes().unwrap()
}

fn geolite_country(code: &str) -> Value {
    Value::map([
        ("geoname_id", Value::from(1u32)),
        ("iso_code", Value::from(code)),
        ("names", Value::map([("en", Value::from(code))])),
    ])
}

/// GeoLite2-Country layout: `country.iso_code`, `registered_country.iso_code`, plus the other
/// fields real files carry.
pub fn geolite_country_db() -> Vec<u8> {
    let mut w = Writer::new("GeoLite2-Country");
    w.insert_value(
        net("1.0.0.0/23"),
        Value::map([
            (
                "continent",
                Value::map([
                    ("code", Value::from("OC")),
                    ("geoname_id", Value::from(6u32)),
                ]),
            ),
            ("country", geolite_country("AU")),
            ("registered_country", geolite_country("AU")),
        ]),
    )
    .unwrap();
    // Only the registered country is known.
    w.insert_value(
        net("10.0.0.0/16"),
        Value::map([("registered_country", geolite_country("NZ"))]),
    )
    .unwrap();
    // A code CountryCode refuses counts as no country.
    w.insert_value(
        net("172.16.0.0/12"),
        Value::map([("country", geolite_country("EU"))]),
    )
    .unwrap();
    w.insert_value(
        net("2001:db8::/32"),
        Value::map([
            ("country", geolite_country("DE")),
            ("registered_country", geolite_country("FR")),
        ]),
    )
    .unwrap();
    w.to_bytes().unwrap()
}

/// Top-level `country_code`, in an IPv4-only tree.
pub fn country_code_v4_db() -> Vec<u8> {
    let mut w = Writer::builder("country").ip_version(IpVersion::V4).build();
    w.insert_value(
        net("8.8.8.0/24"),
        Value::map([("country_code", Value::from("us"))]),
    )
    .unwrap();
    w.insert_value(
        net("9.0.0.0/8"),
        Value::map([("country_code", Value::from("FR"))]),
    )
    .unwrap();
    w.to_bytes().unwrap()
}

fn ipinfo_record(asn: &str, name: &str, code: &str, country: &str) -> Value {
    Value::map([
        ("asn", Value::from(asn)),
        ("as_name", Value::from(name)),
        ("as_domain", Value::from("example.com")),
        ("country_code", Value::from(code)),
        ("country", Value::from(country)),
        ("continent_code", Value::from("NA")),
        ("continent", Value::from("North America")),
    ])
}

/// IPinfo Lite layout.
pub fn ipinfo_db() -> Vec<u8> {
    let mut w = Writer::new("ipinfo lite.mmdb");
    w.insert_value(
        net("8.8.8.0/24"),
        ipinfo_record("AS15169", "Google LLC", "US", "United States"),
    )
    .unwrap();
    w.insert_value(
        net("2a00:1450::/32"),
        ipinfo_record("AS15169", "Google LLC", "IE", "Ireland"),
    )
    .unwrap();
    // No ASN for this one, only a country.
    w.insert_value(net("5.5.0.0/16"), ipinfo_record("", "", "DE", "Germany"))
        .unwrap();
    w.to_bytes().unwrap()
}

/// IPv4 under ::ffff:0:0/96 as plain data (no aliases), with ::/96 covering part of the same
/// addresses: ::/96 is what MaxMind readers answer for IPv4, so it wins where both have data.
pub fn mapped_db() -> Vec<u8> {
    let mut w = Writer::builder("GeoLite2-ASN")
        .ipv4_aliasing(Ipv4Aliasing::Disabled)
        .build();
    w.insert_value(net("::ffff:198.51.100.0/120"), asn_record(64499, "Mapped"))
        .unwrap();
    w.insert_value(net("198.51.100.128/25"), asn_record(64500, "Plain"))
        .unwrap();
    w.to_bytes().unwrap()
}

/// ASN ranges as CSV: a header, blank lines, quoted names with commas and quotes, both
/// families, a range that is no CIDR block, an overlap (the later row wins) and `AS` prefixes.
pub const ASN_CSV: &str = "\
start_ip,end_ip,asn,organisation
1.0.0.0,1.0.0.255,13335,\"Cloudflare, Inc.\"

10.0.0.5,10.0.0.20,64496,\"Example \"\"Five\"\", Twenty\"
10.1.0.0,10.1.255.255,AS64497,Plain Org
10.1.128.0,10.1.128.255,64498,Later Row Wins
2001:db8::,2001:db8:0:ffff:ffff:ffff:ffff:ffff,64499,\"V6, Ltd\"
::ffff:203.0.113.0,::ffff:203.0.113.255,64500,Mapped Notation
203.0.114.0,203.0.114.255,0,No ASN
";

/// Country ranges as CSV (`start_ip,end_ip,country_code`).
pub const COUNTRY_CSV: &str = "\
1.0.0.0,1.0.0.127,AU
1.0.0.128,1.0.0.255,nz
2001:db8::,2001:db8::ffff,JP
3.0.0.0,3.0.0.255,ZZ
";

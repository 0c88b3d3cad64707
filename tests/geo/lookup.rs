use std::net::IpAddr;
use std::path::Path;

use palisade::geo::{CsvProblem, DataKind, GeoData, GeoError, GeoRecord};
use palisade::rules::{Asn, CountryCode};

use crate::fixtures::{self, write};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn asn(n: u32) -> Asn {
    Asn::new(n).unwrap()
}

fn cc(code: &str) -> CountryCode {
    CountryCode::parse(code).unwrap()
}

fn record(asn_number: u32, country: &str) -> GeoRecord {
    GeoRecord {
        asn: Asn::new(asn_number),
        country: CountryCode::parse(country),
    }
}

fn nets(list: &[ipnet::IpNet]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

fn load(asn_path: Option<&Path>, country_path: Option<&Path>) -> GeoData {
    GeoData::load(asn_path, country_path).unwrap()
}

#[test]
fn geolite_asn_and_country() {
    let dir = tempfile::tempdir().unwrap();
    let asn_path = write(dir.path(), "asn.mmdb", &fixtures::geolite_asn());
    let country_path = write(dir.path(), "country.mmdb", &fixtures::geolite_country_db());
    let data = load(Some(&asn_path), Some(&country_path));
    assert!(data.has_asn_source() && data.has_country_source());

    let cases = [
        // First and last address of a network, and just outside it.
        ("1.0.0.0", record(13335, "AU")),
        ("1.0.0.255", record(13335, "AU")),
        ("0.255.255.255", record(0, "")),
        ("1.0.1.0", record(0, "AU")),
        ("1.0.1.255", record(0, "AU")),
        ("1.0.2.0", record(0, "")),
        // IPv4-mapped IPv6 is looked up as IPv4.
        ("::ffff:1.0.0.1", record(13335, "AU")),
        ("::ffff:10.0.1.9", record(64496, "NZ")),
        // Registered country when the country is missing.
        ("10.0.0.0", record(64496, "NZ")),
        ("10.0.255.255", record(0, "NZ")),
        // ASN 0 is none; a code CountryCode refuses is none.
        ("192.0.2.1", record(0, "")),
        ("172.16.0.1", record(0, "")),
        ("2001:db8::", record(64497, "DE")),
        ("2001:db8:1::", record(64498, "DE")),
        ("2001:db8:1:ffff:ffff:ffff:ffff:ffff", record(64498, "DE")),
        ("2001:db8:2::", record(64497, "DE")),
        (
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
            record(64497, "DE"),
        ),
        ("2001:db9::", record(0, "")),
        // 6to4 and Teredo aliases of the IPv4 tree are not IPv6 data of their own.
        ("2002:100:1::", record(0, "")),
        ("2001:0:100:1::", record(0, "")),
    ];
    for (address, want) in cases {
        assert_eq!(data.lookup(ip(address)), want, "{address}");
    }

    assert!(data.asn_exists(asn(13335)));
    assert!(data.asn_exists(asn(64498)));
    assert!(!data.asn_exists(asn(64499)));

    assert_eq!(nets(data.asn_networks(asn(13335))), ["1.0.0.0/24"]);
    // Adjacent networks of one ASN come out as one block.
    assert_eq!(nets(data.asn_networks(asn(64496))), ["10.0.0.0/23"]);
    assert_eq!(nets(data.asn_networks(asn(64498))), ["2001:db8:1::/48"]);
    // The /32 minus the /48 inside it.
    let outer = data.asn_networks(asn(64497));
    assert_eq!(outer.len(), 16, "{:?}", nets(outer));
    assert_eq!(outer[0].to_string(), "2001:db8::/48");
    assert!(outer.iter().all(|n| !n.contains(&ip("2001:db8:1::"))));
    assert!(data.asn_networks(asn(64499)).is_empty());

    assert_eq!(nets(data.country_networks(cc("AU"))), ["1.0.0.0/23"]);
    assert_eq!(nets(data.country_networks(cc("NZ"))), ["10.0.0.0/16"]);
    assert_eq!(nets(data.country_networks(cc("DE"))), ["2001:db8::/32"]);
    assert!(data.country_networks(cc("FR")).is_empty());

    let stats = data.stats();
    assert_eq!((stats.asns, stats.countries), (4, 3));
    assert!(stats.to_string().contains("4 ASNs"), "{stats}");
}

#[test]
fn ipv4_networks_come_out_once_as_ipv4() {
    let dir = tempfile::tempdir().unwrap();
    let asn_path = write(dir.path(), "asn.mmdb", &fixtures::geolite_asn());
    let data = load(Some(&asn_path), None);
    for n in [13335, 64496] {
        let list = data.asn_networks(asn(n));
        assert!(
            list.iter().all(|net| net.addr().is_ipv4()),
            "{:?}",
            nets(list)
        );
    }
    assert_eq!(data.stats().ranges_v6, 5, "{}", data.stats());
}

#[test]
fn country_code_layout_in_an_ipv4_tree() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "cc.mmdb", &fixtures::country_code_v4_db());
    let data = load(None, Some(&path));
    assert!(!data.has_asn_source() && data.has_country_source());
    assert_eq!(data.lookup(ip("8.8.8.8")), record(0, "US"));
    assert_eq!(data.lookup(ip("::ffff:9.1.2.3")), record(0, "FR"));
    assert_eq!(data.lookup(ip("8.8.9.0")), record(0, ""));
    assert_eq!(data.lookup(ip("2001:db8::1")), record(0, ""));
    assert_eq!(nets(data.country_networks(cc("US"))), ["8.8.8.0/24"]);
    assert_eq!(nets(data.country_networks(cc("FR"))), ["9.0.0.0/8"]);
}

#[test]
fn one_ipinfo_file_serves_both() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "ipinfo_lite.mmdb", &fixtures::ipinfo_db());
    let data = load(Some(&path), Some(&path));
    assert_eq!(data.lookup(ip("8.8.8.8")), record(15169, "US"));
    assert_eq!(data.lookup(ip("2a00:1450::1")), record(15169, "IE"));
    assert_eq!(data.lookup(ip("5.5.5.5")), record(0, "DE"));
    assert_eq!(
        nets(data.asn_networks(asn(15169))),
        ["8.8.8.0/24", "2a00:1450::/32"]
    );
    assert_eq!(nets(data.country_networks(cc("DE"))), ["5.5.0.0/16"]);

    // As the ASN source only, its countries are not used.
    let asn_only = load(Some(&path), None);
    assert_eq!(asn_only.lookup(ip("8.8.8.8")), record(15169, ""));
}

#[test]
fn ipv4_stored_as_mapped_ipv6() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "mapped.mmdb", &fixtures::mapped_db());
    let data = load(Some(&path), None);
    assert_eq!(data.lookup(ip("198.51.100.0")), record(64499, ""));
    assert_eq!(data.lookup(ip("198.51.100.127")), record(64499, ""));
    assert_eq!(data.lookup(ip("198.51.100.128")), record(64500, ""));
    assert_eq!(data.lookup(ip("::ffff:198.51.100.255")), record(64500, ""));
    assert_eq!(nets(data.asn_networks(asn(64499))), ["198.51.100.0/25"]);
    assert_eq!(data.stats().ranges_v6, 1, "no IPv6 data at all");
}

#[test]
fn csv_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let plain = write(dir.path(), "asn.csv", fixtures::ASN_CSV.as_bytes());
    let gzipped = write(
        dir.path(),
        "asn.csv.gz",
        &fixtures::gzip(fixtures::ASN_CSV.as_bytes()),
    );
    for path in [plain, gzipped] {
        let data = load(Some(&path), None);
        let cases = [
            ("1.0.0.0", 13335),
            ("1.0.0.255", 13335),
            ("1.0.1.0", 0),
            ("10.0.0.4", 0),
            ("10.0.0.5", 64496),
            ("10.0.0.20", 64496),
            ("::ffff:10.0.0.20", 64496),
            ("10.0.0.21", 0),
            ("10.1.0.0", 64497),
            ("10.1.127.255", 64497),
            ("10.1.128.0", 64498),
            ("10.1.128.255", 64498),
            ("10.1.129.0", 64497),
            ("10.1.255.255", 64497),
            ("2001:db8::", 64499),
            ("2001:db8:0:ffff:ffff:ffff:ffff:ffff", 64499),
            ("2001:db8:1::", 0),
            ("203.0.113.7", 64500),
            ("203.0.114.1", 0),
        ];
        for (address, want) in cases {
            assert_eq!(data.lookup(ip(address)).asn, Asn::new(want), "{address}");
        }
        assert_eq!(
            nets(data.asn_networks(asn(64496))),
            [
                "10.0.0.5/32",
                "10.0.0.6/31",
                "10.0.0.8/29",
                "10.0.0.16/30",
                "10.0.0.20/32"
            ]
        );
        assert_eq!(
            nets(data.asn_networks(asn(64497))),
            [
                "10.1.0.0/17",
                "10.1.129.0/24",
                "10.1.130.0/23",
                "10.1.132.0/22",
                "10.1.136.0/21",
                "10.1.144.0/20",
                "10.1.160.0/19",
                "10.1.192.0/18"
            ]
        );
        assert_eq!(nets(data.asn_networks(asn(64499))), ["2001:db8::/48"]);
        assert_eq!(nets(data.asn_networks(asn(64500))), ["203.0.113.0/24"]);
    }
}

#[test]
fn csv_countries() {
    let dir = tempfile::tempdir().unwrap();
    let asn_path = write(dir.path(), "asn.csv", fixtures::ASN_CSV.as_bytes());
    let country_path = write(dir.path(), "country.csv", fixtures::COUNTRY_CSV.as_bytes());
    let data = load(Some(&asn_path), Some(&country_path));
    assert_eq!(data.lookup(ip("1.0.0.127")), record(13335, "AU"));
    assert_eq!(data.lookup(ip("1.0.0.128")), record(13335, "NZ"));
    assert_eq!(data.lookup(ip("2001:db8::ffff")), record(64499, "JP"));
    assert_eq!(data.lookup(ip("2001:db8::1:0")), record(64499, ""));
    // ZZ is well formed but not assigned: no country.
    assert_eq!(data.lookup(ip("3.0.0.1")), record(0, ""));
    assert_eq!(nets(data.country_networks(cc("NZ"))), ["1.0.0.128/25"]);
}

#[test]
fn malformed_csv_rows_name_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, usize, CsvProblem); 8] = [
        (
            "start,end,asn\n1.0.0.0,1.0.0.255\n",
            2,
            CsvProblem::TooFewFields(2),
        ),
        (
            "1.0.0.0,1.0.0.255,1,\"open\n",
            1,
            CsvProblem::UnterminatedQuote,
        ),
        (
            "1.0.0.0,1.0.0.255,1,\"a\"b\n",
            1,
            CsvProblem::TextAfterQuote,
        ),
        (
            "1.0.0.0,1.0.0.255,1\n\n1.0.0.x,1.0.1.0,2\n",
            3,
            CsvProblem::BadAddress("1.0.0.x".into()),
        ),
        ("1.0.0.0,::1,1\n", 1, CsvProblem::MixedFamilies),
        ("1.0.0.9,1.0.0.1,1\n", 1, CsvProblem::EndBeforeStart),
        (
            "1.0.0.0,1.0.0.255,AS-1\n",
            1,
            CsvProblem::BadAsn("AS-1".into()),
        ),
        (
            "header,line,here\n1.0.0.0,1.0.0.255,4294967296\n",
            2,
            CsvProblem::BadAsn("4294967296".into()),
        ),
    ];
    for (text, want_line, want_problem) in cases {
        let path = write(dir.path(), "bad.csv", text.as_bytes());
        match GeoData::load(Some(&path), None) {
            Err(GeoError::Csv { line, problem, .. }) => {
                assert_eq!((line, problem), (want_line, want_problem), "{text:?}")
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
    let path = write(dir.path(), "bad-country.csv", b"1.0.0.0,1.0.0.255,USA\n");
    let error = GeoData::load(None, Some(&path)).unwrap_err();
    assert!(
        matches!(
            error,
            GeoError::Csv {
                line: 1,
                problem: CsvProblem::BadCountry(_),
                ..
            }
        ),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("bad-country.csv, line 1") && text.contains("USA"),
        "{text}"
    );
}

#[test]
fn unusable_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.mmdb");
    assert!(matches!(
        GeoData::load(Some(&missing), None),
        Err(GeoError::Read { .. })
    ));

    let garbage = write(dir.path(), "garbage.mmdb", b"not a database");
    assert!(matches!(
        GeoData::load(Some(&garbage), None),
        Err(GeoError::Mmdb { .. })
    ));

    let broken_gzip = write(dir.path(), "asn.csv.gz", &[0x1f, 0x8b, 0x08, 0, 1, 2]);
    assert!(matches!(
        GeoData::load(Some(&broken_gzip), None),
        Err(GeoError::Read { .. })
    ));

    // A country database configured as the ASN source has no ASN data: a wrong file, not an
    // empty data set.
    let country = write(dir.path(), "country.mmdb", &fixtures::geolite_country_db());
    match GeoData::load(Some(&country), None) {
        Err(GeoError::NoData { kind, .. }) => assert_eq!(kind, DataKind::Asn),
        other => panic!("{other:?}"),
    }
    let empty = write(
        dir.path(),
        "empty.csv",
        b"start_ip,end_ip,asn,organisation\n",
    );
    assert!(matches!(
        GeoData::load(Some(&empty), None),
        Err(GeoError::NoData { .. })
    ));
}

#[test]
fn empty_data_knows_nothing() {
    let data = GeoData::empty();
    assert_eq!(data.lookup(ip("1.1.1.1")), GeoRecord::default());
    assert_eq!(data.lookup(ip("2001:db8::1")), GeoRecord::default());
    assert!(!data.asn_exists(asn(13335)));
    assert!(data.asn_networks(asn(13335)).is_empty());
    assert!(data.country_networks(cc("US")).is_empty());
    assert!(!data.has_asn_source() && !data.has_country_source());
    let none = GeoData::load(None, None).unwrap();
    assert_eq!(none.lookup(ip("1.1.1.1")), GeoRecord::default());
}

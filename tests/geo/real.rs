//! Checks against the real data set (see /work/shared/geo/README.md), which only some machines
//! have. Run with `cargo test --release --test geo -- --ignored`; the directory can be moved
//! with `PALISADE_GEO_DATA`.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use maxminddb::{Reader, path};
use palisade::geo::GeoData;
use palisade::rules::{Asn, CountryCode};
use rand::{Rng, SeedableRng};

use crate::fixtures::write;

fn data_dir() -> PathBuf {
    let dir = std::env::var_os("PALISADE_GEO_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/shared/geo"));
    assert!(
        dir.join("asn.mmdb").exists(),
        "no real geo data in {} (set PALISADE_GEO_DATA)",
        dir.display()
    );
    dir
}

/// Random addresses: IPv4 anywhere, IPv6 in 2000::/3 where the data is.
fn sample(count: usize, seed: u64) -> Vec<IpAddr> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            if i % 2 == 0 {
                IpAddr::V4(Ipv4Addr::from(rng.random::<u32>()))
            } else {
                IpAddr::V6(Ipv6Addr::from((1u128 << 125) | (rng.random::<u128>() >> 3)))
            }
        })
        .collect()
}

/// The loaded tables answer exactly what the MaxMind DB reader answers.
#[test]
#[ignore = "needs the real data set (/work/shared/geo or PALISADE_GEO_DATA); bash .ci/run runs it"]
fn mmdb_tables_agree_with_the_reader() {
    let dir = data_dir();
    let data = GeoData::load(Some(&dir.join("asn.mmdb")), Some(&dir.join("country.mmdb"))).unwrap();
    eprintln!("{}", data.stats());
    let asn_reader = Reader::open_readfile(dir.join("asn.mmdb")).unwrap();
    let country_reader = Reader::open_readfile(dir.join("country.mmdb")).unwrap();
    let mut found = 0;
    for ip in sample(400_000, 1) {
        let ours = data.lookup(ip);
        let asn: Option<u32> = asn_reader
            .lookup(ip)
            .unwrap()
            .decode_path(&path!["autonomous_system_number"])
            .unwrap();
        let country: Option<String> = country_reader
            .lookup(ip)
            .unwrap()
            .decode_path(&path!["country_code"])
            .unwrap();
        let want_asn = asn.and_then(Asn::new);
        let want_country = country.as_deref().and_then(CountryCode::parse);
        assert_eq!((ours.asn, ours.country), (want_asn, want_country), "{ip}");
        found += usize::from(want_asn.is_some());
        // IPv4-mapped look-ups answer as IPv4 ones.
        if let IpAddr::V4(v4) = ip {
            assert_eq!(data.lookup(IpAddr::V6(v4.to_ipv6_mapped())), ours, "{ip}");
        }
    }
    assert!(
        found > 100_000,
        "the sample should mostly hit data, hit {found}"
    );
}

/// asn.mmdb was converted from the CSV files: both load to the same answers and networks.
#[test]
#[ignore = "needs the real data set (/work/shared/geo or PALISADE_GEO_DATA); bash .ci/run runs it"]
fn csv_agrees_with_mmdb() {
    let dir = data_dir();
    // Concatenated gzip members are one valid gzip stream: one file with both families.
    let mut both = std::fs::read(dir.join("asn-ipv4.csv.gz")).unwrap();
    both.extend(std::fs::read(dir.join("asn-ipv6.csv.gz")).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let csv_path = write(tmp.path(), "asn.csv.gz", &both);

    let csv = GeoData::load(Some(&csv_path), None).unwrap();
    let mmdb = GeoData::load(Some(&dir.join("asn.mmdb")), None).unwrap();
    eprintln!("csv:  {}\nmmdb: {}", csv.stats(), mmdb.stats());
    assert_eq!(csv.stats().asns, mmdb.stats().asns);

    let mut asns = BTreeSet::new();
    for ip in sample(400_000, 2) {
        let (a, b) = (csv.lookup(ip), mmdb.lookup(ip));
        assert_eq!(a, b, "{ip}");
        asns.extend(a.asn);
    }
    for asn in [13335, 15169, 749, 721, 6939] {
        asns.insert(Asn::new(asn).unwrap());
    }
    for asn in &asns {
        assert_eq!(csv.asn_networks(*asn), mmdb.asn_networks(*asn), "{asn}");
    }
    eprintln!("{} ASNs' networks compared", asns.len());
}

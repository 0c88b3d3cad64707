//! Look-up and load times over the real data set (see /work/shared/geo/README.md; the
//! directory can be moved with `PALISADE_GEO_DATA`). Without the data the bench says so and
//! measures nothing.
//!
//! `cargo bench --bench geo`. Each look-up sample runs 1M look-ups of random addresses, so the
//! reported time divided by 1M (or the reported throughput) is the cost of one look-up.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palisade::geo::GeoData;
use rand::{Rng, SeedableRng};

const LOOKUPS: usize = 1_000_000;

fn data_dir() -> PathBuf {
    std::env::var_os("PALISADE_GEO_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/shared/geo"))
}

fn load(asn: Option<&Path>, country: Option<&Path>) -> GeoData {
    match GeoData::load(asn, country) {
        Ok(data) => data,
        Err(error) => panic!("loading the geo data failed: {error}"),
    }
}

fn addresses(v6: bool) -> Vec<IpAddr> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    (0..LOOKUPS)
        .map(|_| {
            if v6 {
                // Uniform addresses in 2000::/3 mostly miss; these blocks are where the ranges
                // are densest (2001::/16 alone has about 100,000), the slow case.
                let top: u128 = [0x2001, 0x2400, 0x2600, 0x2a00][rng.random_range(0..4)];
                let spread = if top == 0x2001 { 0 } else { 0xf };
                let top = top | (rng.random::<u128>() & spread);
                IpAddr::V6(Ipv6Addr::from((top << 112) | (rng.random::<u128>() >> 16)))
            } else {
                IpAddr::V4(Ipv4Addr::from(rng.random::<u32>()))
            }
        })
        .collect()
}

fn lookups(c: &mut Criterion) {
    let dir = data_dir();
    let (asn, country) = (dir.join("asn.mmdb"), dir.join("country.mmdb"));
    if !asn.exists() || !country.exists() {
        eprintln!(
            "geo bench skipped: no asn.mmdb and country.mmdb in {}",
            dir.display()
        );
        return;
    }
    let started = Instant::now();
    let both = load(Some(&asn), Some(&country));
    eprintln!("loaded in {:.2?}: {}", started.elapsed(), both.stats());
    let asn_only = load(Some(&asn), None);
    let country_only = load(None, Some(&country));

    let v4 = addresses(false);
    let v6 = addresses(true);
    for (family, sample) in [("IPv4", &v4), ("IPv6", &v6)] {
        let hits = sample
            .iter()
            .filter(|ip| both.lookup(**ip).asn.is_some())
            .count();
        eprintln!("{hits} of {LOOKUPS} random {family} addresses have an ASN");
    }

    let mut group = c.benchmark_group("geo_lookup_1M");
    group.throughput(Throughput::Elements(LOOKUPS as u64));
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("ipv4_asn_and_country", |b| {
        b.iter(|| {
            for ip in &v4 {
                black_box(both.lookup(black_box(*ip)));
            }
        })
    });
    group.bench_function("ipv6_asn_and_country", |b| {
        b.iter(|| {
            for ip in &v6 {
                black_box(both.lookup(black_box(*ip)));
            }
        })
    });
    // The alternative to one merged table: a table per source, two searches per look-up.
    group.bench_function("ipv4_two_tables", |b| {
        b.iter(|| {
            for ip in &v4 {
                let ip = black_box(*ip);
                black_box((asn_only.lookup(ip).asn, country_only.lookup(ip).country));
            }
        })
    });
    group.finish();
}

fn loads(c: &mut Criterion) {
    let dir = data_dir();
    let (asn, country, csv) = (
        dir.join("asn.mmdb"),
        dir.join("country.mmdb"),
        dir.join("asn-ipv4.csv.gz"),
    );
    if !asn.exists() || !country.exists() || !csv.exists() {
        return;
    }
    let mut group = c.benchmark_group("geo_load");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("asn_and_country_mmdb", |b| {
        b.iter(|| load(Some(&asn), Some(&country)))
    });
    group.bench_function("asn_ipv4_csv_gz", |b| b.iter(|| load(Some(&csv), None)));
    group.finish();
}

/// ASN and country rules as the ranges they cover (what `expand=true` and bouncers are served):
/// one large country, every country, and a country plus a large ASN inside it.
fn expansions(c: &mut Criterion) {
    use palisade::export::expand::expand;
    use palisade::index::RuleRef;
    use palisade::rules::{Asn, CountryCode, RuleAction, Target, UnixMillis};

    let dir = data_dir();
    let (asn, country) = (dir.join("asn.mmdb"), dir.join("country.mmdb"));
    if !asn.exists() || !country.exists() {
        return;
    }
    let data = load(Some(&asn), Some(&country));
    let rule = |target| RuleRef {
        id: 1,
        action: RuleAction::Block,
        target,
        expires_at: None,
        source: palisade::rules::Source::Signal,
        texts: None,
    };
    let us = || Target::Country(CountryCode::parse("US").expect("a country code"));
    let every: Vec<RuleRef> = data
        .countries()
        .iter()
        .map(|code| rule(Target::Country(*code)))
        .collect();
    let cases: [(&str, Vec<RuleRef>); 3] = [
        ("US", vec![rule(us())]),
        (
            "US_and_AS7018",
            vec![
                rule(us()),
                rule(Target::Asn(Asn::new(7018).expect("an ASN"))),
            ],
        ),
        ("every_country", every),
    ];
    let now = UnixMillis(0);
    let mut group = c.benchmark_group("geo_expand");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for (name, rules) in &cases {
        let expansion = expand(&data, rules, now, 1);
        let networks: usize = rules
            .iter()
            .map(|r| match r.target {
                Target::Country(code) => data.country_networks(code).len(),
                Target::Asn(asn) => data.asn_networks(asn).len(),
                Target::Ip(_) => 0,
            })
            .sum();
        eprintln!(
            "{name}: {networks} networks in the data, {} CIDR ranges after merging",
            expansion.cidr_count()
        );
        group.bench_function(*name, |b| {
            b.iter(|| expand(&data, black_box(rules), now, 1))
        });
    }
    group.finish();
}

criterion_group!(benches, lookups, loads, expansions);
criterion_main!(benches);

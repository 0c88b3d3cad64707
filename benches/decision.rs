//! The decision engine at the size the issue asks for: 1,000,000 IPv4 prefixes (/32 and /24),
//! 100,000 IPv6 prefixes, 10,000 ASN rules and 50 country rules matched through the real geo
//! data in `../shared/geo/` (skipped with a message when it is absent); and the publisher's work
//! for one write of many country rules and for one round of scattered IPv4 writes.
//!
//! `cargo bench --bench decision`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Instant;

use criterion::{BatchSize, Criterion, SamplingMode, criterion_group, criterion_main};
use palisade::api::check::answer;
use palisade::config::GeoConfig;
use palisade::engine::ChangeSink;
use palisade::geo::Geo;
use palisade::index::Index;
use palisade::rules::{Asn, Rule, RuleAction, Source, Target, TenantId, UnixMillis};
use palisade::store::{Change, ChangeOp, Snapshot};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TENANT: TenantId = TenantId(1);
const NOW: UnixMillis = UnixMillis(1_800_000_000_000);
const GEO_DIR: &str = "../shared/geo";

fn rule(id: i64, target: Target) -> Rule {
    Rule {
        id,
        tenant: TENANT,
        action: RuleAction::Block,
        target,
        expires_at: Some(UnixMillis(NOW.0 + 3_600_000)),
        name: None,
        description: None,
        source: Source::Signal,
        dataset: None,
        tags: Vec::new(),
        reports: 0,
        created_at: NOW,
        updated_at: NOW,
    }
}

/// The rule set of the benchmark, and addresses inside its IPv4 rules (hits).
fn rule_set(geo: &Geo, rng: &mut StdRng) -> (Vec<Rule>, Vec<IpAddr>) {
    let mut rules = Vec::with_capacity(1_160_050);
    let mut hits = Vec::new();
    let mut id = 0;
    let mut next = || {
        id += 1;
        id
    };
    for i in 0..1_000_000 {
        let addr: u32 = rng.random();
        let len = if i % 10 < 7 { 32 } else { 24 };
        let net = ipnet::Ipv4Net::new(Ipv4Addr::from(addr), len)
            .unwrap()
            .trunc();
        if hits.len() < 100_000 {
            hits.push(IpAddr::V4(Ipv4Addr::from(addr)));
        }
        rules.push(rule(next(), Target::Ip(net.into())));
    }
    for i in 0..100_000 {
        let addr: u128 = (0x2000u128 << 112) | (rng.random::<u128>() >> 3);
        let len = [48, 64, 128][i % 3];
        let net = ipnet::Ipv6Net::new(Ipv6Addr::from(addr), len)
            .unwrap()
            .trunc();
        rules.push(rule(next(), Target::Ip(net.into())));
    }
    // ASNs that exist: found by resolving random addresses.
    let mut asns = std::collections::BTreeSet::new();
    while asns.len() < 10_000 {
        if let Some(asn) = geo
            .lookup(IpAddr::V4(Ipv4Addr::from(rng.random::<u32>())))
            .asn
        {
            asns.insert(asn.get());
        }
    }
    for asn in asns {
        rules.push(rule(next(), Target::Asn(Asn::new(asn).unwrap())));
    }
    let countries = geo.current().countries().to_vec();
    for code in countries
        .iter()
        .step_by((countries.len() / 50).max(1))
        .take(50)
    {
        rules.push(rule(next(), Target::Country(*code)));
    }
    (rules, hits)
}

fn bench(c: &mut Criterion) {
    let asn = Path::new(GEO_DIR).join("asn.mmdb");
    let country = Path::new(GEO_DIR).join("country.mmdb");
    if !asn.exists() || !country.exists() {
        eprintln!("skipped: {GEO_DIR}/asn.mmdb and country.mmdb are needed");
        return;
    }
    let geo = Geo::open(&GeoConfig {
        asn: Some(asn),
        country: Some(country),
        ..GeoConfig::default()
    })
    .unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let (rules, hits) = rule_set(&geo, &mut rng);
    let rule_count = rules.len();
    let networks: usize = {
        let data = geo.current();
        rules
            .iter()
            .map(|rule| match rule.target {
                Target::Ip(_) => 1,
                Target::Asn(asn) => data.asn_networks(asn).len(),
                Target::Country(code) => data.country_networks(code).len(),
            })
            .sum()
    };

    let started = Instant::now();
    let index = Index::new(geo.current().clone());
    index.rebuild(Snapshot { seq: 1, rules }).unwrap();
    let build = started.elapsed();
    let stats = index.stats();
    let t = stats.tables;
    let per_prefix = |bytes: usize| bytes as f64 / stats.prefixes as f64;
    eprintln!(
        "index: {rule_count} rules, whose targets cover {networks} networks; IP rules stored as \
         {} prefixes (a prefix shorter than /16 once per /16), ASN and country rules as {} \
         map entries; built in {:.2} s\n\
         tables {:.1} MB = {:.0} B/prefix (chunks {:.0}, decision intervals {:.0}, \
         prefixes {:.0}, rule lists {:.0}); rule records {:.1} MB = {:.0} B/prefix; \
         ASN and country maps {:.2} MB; all together {:.1} MB = {:.0} B/prefix",
        stats.prefixes,
        stats.geo_rules,
        build.as_secs_f64(),
        stats.table_bytes as f64 / 1e6,
        per_prefix(stats.table_bytes),
        per_prefix(t.hot),
        per_prefix(t.intervals),
        per_prefix(t.nodes),
        per_prefix(t.rule_lists),
        stats.rule_bytes as f64 / 1e6,
        per_prefix(stats.rule_bytes),
        stats.geo_bytes as f64 / 1e6,
        (stats.table_bytes + stats.rule_bytes + stats.geo_bytes) as f64 / 1e6,
        per_prefix(stats.table_bytes + stats.rule_bytes + stats.geo_bytes),
    );

    let random: Vec<IpAddr> = (0..1 << 20)
        .map(|_| IpAddr::V4(Ipv4Addr::from(rng.random::<u32>())))
        .collect();
    let blocked = random
        .iter()
        .filter(|ip| index.decide(TENANT, **ip, NOW).blocked)
        .count();
    eprintln!(
        "{:.1}% of random IPv4 addresses are blocked by this rule set",
        100.0 * blocked as f64 / random.len() as f64
    );

    let mut group = c.benchmark_group("decision");
    let mut i = 0usize;
    group.bench_function("decide_random_ipv4", |b| {
        b.iter(|| {
            i = (i + 1) & (random.len() - 1);
            black_box(index.decide(TENANT, random[i], NOW))
        })
    });
    let mut i = 0usize;
    group.bench_function("decide_blocked_ipv4", |b| {
        b.iter(|| {
            i = (i + 1) % hits.len();
            black_box(index.decide(TENANT, hits[i], NOW))
        })
    });
    let mut i = 0usize;
    group.bench_function("full_answer_random_ipv4", |b| {
        b.iter(|| {
            i = (i + 1) & (random.len() - 1);
            black_box(answer(&index.view(TENANT), random[i], NOW).matches.len())
        })
    });
    // The two halves of the full answer, apart.
    let mut i = 0usize;
    group.bench_function("matches_random_ipv4", |b| {
        b.iter(|| {
            i = (i + 1) & (random.len() - 1);
            black_box(index.view(TENANT).lookup(random[i], NOW).1.len())
        })
    });
    let mut i = 0usize;
    group.bench_function("geo_random_ipv4", |b| {
        b.iter(|| {
            i = (i + 1) & (random.len() - 1);
            black_box(geo.lookup(random[i]))
        })
    });
    // The same rules, each with its own expiry (signals arriving over a day): neighbouring
    // prefixes no longer share their expiries, so the decision intervals do not merge.
    let spread_rules: Vec<Rule> = {
        let mut rng = StdRng::seed_from_u64(7);
        let (mut rules, _) = rule_set(&geo, &mut rng);
        for rule in &mut rules {
            rule.expires_at = Some(UnixMillis(NOW.0 + rng.random_range(1..86_400_000)));
        }
        rules
    };
    let spread = Index::new(geo.current().clone());
    spread
        .rebuild(Snapshot {
            seq: 1,
            rules: spread_rules,
        })
        .unwrap();
    let mut i = 0usize;
    group.bench_function("decide_random_ipv4_own_expiries", |b| {
        b.iter(|| {
            i = (i + 1) & (random.len() - 1);
            black_box(spread.decide(TENANT, random[i], NOW))
        })
    });
    let mut i = 0usize;
    group.bench_function("full_answer_random_ipv4_own_expiries", |b| {
        b.iter(|| {
            i = (i + 1) & (random.len() - 1);
            black_box(answer(&spread.view(TENANT), random[i], NOW).matches.len())
        })
    });
    drop(spread);
    let mut i = 0usize;
    group.bench_function("full_answer_blocked_ipv4", |b| {
        b.iter(|| {
            i = (i + 1) % hits.len();
            black_box(answer(&index.view(TENANT), hits[i], NOW).matches.len())
        })
    });
    // The same IP rules for a tenant without ASN or country rules.
    let ip_only = Index::new(geo.current().clone());
    {
        let mut rng = StdRng::seed_from_u64(7);
        let (rules, _) = rule_set(&geo, &mut rng);
        let rules = rules
            .into_iter()
            .filter(|rule| matches!(rule.target, Target::Ip(_)))
            .collect();
        ip_only.rebuild(Snapshot { seq: 1, rules }).unwrap();
    }
    let mut i = 0usize;
    group.bench_function("decide_random_ipv4_no_geo_rules", |b| {
        b.iter(|| {
            i = (i + 1) & (random.len() - 1);
            black_box(ip_only.decide(TENANT, random[i], NOW))
        })
    });
    let mut i = 0usize;
    group.bench_function("decide_blocked_ipv4_no_geo_rules", |b| {
        b.iter(|| {
            i = (i + 1) % hits.len();
            black_box(ip_only.decide(TENANT, hits[i], NOW))
        })
    });
    drop(ip_only);
    group.finish();
    bench_scattered_round(
        c,
        "round_of_4000_scattered_ipv4_into_1m_rules",
        &index,
        &mut rng,
        rule,
    );
    drop(index);
    bench_ingested_round(c, &geo, &mut rng);
    bench_apply(c, &geo);
}

/// The publisher's work for one round of scattered IPv4 writes into the index above: 4,000
/// new /32 rules (about what one round holds under 4 clients' 1000-event batches), then, the
/// next round, their removal, so the index keeps its size. Each touches about 4,000 of the
/// 65,536 buckets.
fn bench_scattered_round(
    c: &mut Criterion,
    name: &str,
    index: &Index,
    rng: &mut StdRng,
    rule: impl Fn(i64, Target) -> Rule,
) {
    const ROUND: usize = 4_000;
    let mut group = c.benchmark_group("apply");
    let mut seq = 1_000_000_000u64;
    let mut pending: Vec<Change> = Vec::new();
    group.bench_function(name, |b| {
        b.iter(|| {
            let changes: Vec<Change> = if pending.is_empty() {
                (0..ROUND)
                    .map(|i| {
                        let address = IpAddr::V4(Ipv4Addr::from(rng.random::<u32>()));
                        Change::of(
                            &rule(seq as i64 + i as i64, Target::Ip(address.into())),
                            ChangeOp::Put,
                            NOW,
                        )
                    })
                    .collect()
            } else {
                std::mem::take(&mut pending)
                    .into_iter()
                    .map(|change| Change {
                        op: ChangeOp::Delete,
                        ..change
                    })
                    .collect()
            };
            let changes: Vec<Change> = changes
                .into_iter()
                .map(|change| {
                    seq += 1;
                    Change { seq, ..change }
                })
                .collect();
            index.apply(&changes);
            if changes[0].op == ChangeOp::Put {
                pending = changes;
            }
        })
    });
    group.finish();
}

/// A rule as scattered ingest writes it (`examples/load.rs`): one name and description for
/// all, so one shared texts allocation, and an expiry an hour after the millisecond it was
/// written, so each rule's span is its own.
fn ingested(id: i64, target: Target) -> Rule {
    Rule {
        name: Some("load".into()),
        description: Some("load test".into()),
        expires_at: Some(UnixMillis(NOW.0 + 3_600_000 + id)),
        ..rule(id, target)
    }
}

/// As the round above, into what scattered ingest leaves: 1,000,000 /32 rules written as
/// [`ingested`] does. The rule set above has no texts and one expiry for all, so its rounds
/// neither copy shared texts nor number distinct spans, two costs a real round pays.
fn bench_ingested_round(c: &mut Criterion, geo: &Geo, rng: &mut StdRng) {
    let rules = (1..=1_000_000)
        .map(|id| {
            let address = IpAddr::V4(Ipv4Addr::from(rng.random::<u32>()));
            ingested(id, Target::Ip(address.into()))
        })
        .collect();
    let index = Index::new(geo.current().clone());
    index.rebuild(Snapshot { seq: 1, rules }).unwrap();
    bench_scattered_round(
        c,
        "round_of_4000_scattered_ipv4_into_1m_ingested_rules",
        &index,
        rng,
        ingested,
    );
}

/// The publisher's work for one committed write of `n` country rules by one tenant: what every
/// other tenant's writes wait behind, since the publisher applies changes one group at a time.
fn bench_apply(c: &mut Criterion, geo: &Geo) {
    let countries = geo.current().countries().to_vec();
    let mut group = c.benchmark_group("apply");
    // Flat sampling: a linear ramp would run the slowest case dozens of times.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    for n in [1, countries.len()] {
        let changes: Vec<Change> = countries[..n]
            .iter()
            .enumerate()
            .map(|(i, code)| Change {
                seq: i as u64 + 1,
                tenant: TenantId(2),
                rule_id: i as i64 + 1,
                op: ChangeOp::Put,
                action: RuleAction::Block,
                target: Target::Country(*code),
                expires_at: None,
                name: None,
                at: NOW,
                source: Source::Signal,
                dataset: None,
                description: None,
            })
            .collect();
        let index = Index::new(geo.current().clone());
        index.apply(&changes);
        let stats = index.stats();
        eprintln!(
            "after one write of {n} country rules: {} prefixes stored, tables {:.1} MB",
            stats.prefixes,
            stats.table_bytes as f64 / 1e6
        );
        drop(index);
        group.bench_function(format!("put_{n}_country_rules"), |b| {
            b.iter_batched(
                || Index::new(geo.current().clone()),
                |index| {
                    index.apply(&changes);
                    // Dropped after the clock stops.
                    index
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

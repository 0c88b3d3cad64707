use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use proptest::prelude::*;

use super::*;
use crate::geo::GeoRecord;
use crate::rules::{Asn, CountryCode, Kind, NewRule, Rule, Source};

const T1: TenantId = TenantId(1);
const T2: TenantId = TenantId(2);
const NOW: UnixMillis = UnixMillis(1_000_000);

struct Fixture {
    index: Index,
    seq: u64,
}

impl Fixture {
    fn new() -> Self {
        Self::with(Arc::new(NoGeo))
    }

    fn with(geo: Arc<dyn Locate>) -> Self {
        Self {
            index: Index::new(geo),
            seq: 0,
        }
    }

    fn change(
        &mut self,
        tenant: TenantId,
        id: RuleId,
        op: ChangeOp,
        action: RuleAction,
        target: &str,
        expires_at: Option<i64>,
    ) {
        self.seq += 1;
        let target = Target::parse_any(target).unwrap();
        self.index.apply(&[named_change(
            self.seq, tenant, id, op, action, target, expires_at,
        )]);
    }

    fn block(&mut self, id: RuleId, target: &str) {
        self.change(T1, id, ChangeOp::Put, RuleAction::Block, target, None);
    }

    /// Puts the block rule `id` again, expired just before `NOW`.
    fn block_expired(&mut self, id: RuleId, target: &str) {
        self.change(
            T1,
            id,
            ChangeOp::Put,
            RuleAction::Block,
            target,
            Some(NOW.0 - 1),
        );
    }

    fn blocked(&self, ip: &str) -> bool {
        self.index.decide(T1, ip.parse().unwrap(), NOW).blocked
    }

    fn matched(&self, ip: &str) -> Vec<RuleId> {
        self.index
            .view(T1)
            .lookup(ip.parse().unwrap(), NOW)
            .1
            .iter()
            .map(|r| r.id)
            .collect()
    }
}

/// A change to the rule `id`, named after it.
fn named_change(
    seq: u64,
    tenant: TenantId,
    id: RuleId,
    op: ChangeOp,
    action: RuleAction,
    target: Target,
    expires_at: Option<i64>,
) -> Change {
    Change {
        seq,
        tenant,
        rule_id: id,
        op,
        action,
        target,
        expires_at: expires_at.map(UnixMillis),
        name: Some(format!("rule-{id}")),
        at: NOW,
        source: Source::Signal,
        dataset: None,
        description: None,
    }
}

#[test]
fn nested_ipv4_prefixes_match_deepest_first() {
    let mut f = Fixture::new();
    f.block(1, "10.0.0.0/8");
    f.block(2, "10.1.0.0/16");
    f.block(3, "10.1.2.0/24");
    f.block(4, "10.1.2.3");
    assert_eq!(f.matched("10.1.2.3"), [4, 3, 2, 1]);
    assert_eq!(f.matched("10.1.2.4"), [3, 2, 1]);
    assert_eq!(f.matched("10.1.3.1"), [2, 1]);
    // Past a sibling that starts earlier but does not contain the address.
    assert_eq!(f.matched("10.1.200.1"), [2, 1]);
    assert_eq!(f.matched("10.200.0.1"), [1]);
    assert_eq!(f.matched("10.255.255.255"), [1]);
    assert!(f.matched("11.0.0.0").is_empty());
    assert!(f.matched("9.255.255.255").is_empty());
    assert!(f.blocked("10.0.0.0"));
    assert!(!f.blocked("11.0.0.0"));
}

#[test]
fn ipv6_prefixes_and_mapped_clients() {
    let mut f = Fixture::new();
    f.block(1, "2001:db8::/32");
    f.block(2, "2001:db8:1::/48");
    f.block(3, "2001:db8:1::1");
    f.block(4, "192.0.2.0/24");
    assert_eq!(f.matched("2001:db8:1::1"), [3, 2, 1]);
    assert_eq!(f.matched("2001:db8:1:ffff:ffff:ffff:ffff:ffff"), [2, 1]);
    assert_eq!(f.matched("2001:db8:ffff::1"), [1]);
    assert!(f.matched("2001:db9::").is_empty());
    // An IPv4-mapped client address meets IPv4 rules, and never IPv6 ones.
    assert_eq!(f.matched("::ffff:192.0.2.77"), [4]);
    assert!(f.blocked("::ffff:192.0.2.1"));
    assert!(!f.blocked("::192.0.2.1"));
}

#[test]
fn edges_of_the_address_space() {
    let mut f = Fixture::new();
    f.block(1, "0.0.0.0/8");
    f.block(2, "255.255.255.255");
    f.block(3, "ffff::/16");
    f.block(4, "::/16");
    assert!(f.blocked("0.0.0.0"));
    assert!(f.blocked("0.255.255.255"));
    assert!(!f.blocked("1.0.0.0"));
    assert!(f.blocked("255.255.255.255"));
    assert!(!f.blocked("255.255.255.254"));
    assert!(f.blocked("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
    assert!(f.blocked("::1"));
    assert!(!f.blocked("1::"));
    // A /0 reaches every bucket.
    f.block(5, "0.0.0.0/0");
    assert_eq!(f.matched("123.45.67.89"), [5]);
    assert_eq!(f.matched("255.255.255.255"), [2, 5]);
}

#[test]
fn expiry_counts_to_the_instant() {
    let mut f = Fixture::new();
    f.change(
        T1,
        1,
        ChangeOp::Put,
        RuleAction::Block,
        "192.0.2.1",
        Some(NOW.0 + 1),
    );
    f.change(
        T1,
        2,
        ChangeOp::Put,
        RuleAction::Block,
        "192.0.2.0/24",
        Some(NOW.0 + 10),
    );
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    assert!(f.index.decide(T1, ip, NOW).blocked);
    assert!(
        f.index.decide(T1, ip, UnixMillis(NOW.0 + 9)).blocked,
        "the /24 still covers it"
    );
    assert_eq!(
        f.index.view(T1).lookup(ip, UnixMillis(NOW.0 + 1)).1.len(),
        1
    );
    assert!(!f.index.decide(T1, ip, UnixMillis(NOW.0 + 10)).blocked);
    assert!(
        f.index
            .view(T1)
            .lookup(ip, UnixMillis(NOW.0 + 10))
            .1
            .is_empty()
    );
}

/// Whole /24 blocks under the bucket's most common expiry are decided from the bucket's masks;
/// blocks with another expiry, an allow rule or a partial cover go through the intervals.
#[test]
fn whole_blocks_and_their_exceptions() {
    let mut f = Fixture::new();
    let until = |ms: i64| Some(NOW.0 + ms);
    f.change(
        T1,
        1,
        ChangeOp::Put,
        RuleAction::Block,
        "10.1.0.0/22",
        until(100),
    );
    f.change(
        T1,
        2,
        ChangeOp::Put,
        RuleAction::Block,
        "10.1.4.0/24",
        until(5),
    );
    f.change(T1, 3, ChangeOp::Put, RuleAction::Allow, "10.1.2.0/24", None);
    f.change(
        T1,
        4,
        ChangeOp::Put,
        RuleAction::Block,
        "10.1.5.128/25",
        until(100),
    );
    f.change(
        T1,
        5,
        ChangeOp::Put,
        RuleAction::Block,
        "10.1.3.9",
        until(200),
    );
    let at = |ms: i64| UnixMillis(NOW.0 + ms);
    let blocked = |f: &Fixture, ip: &str, ms: i64| f.index.decide(T1, ip.parse().unwrap(), at(ms));
    for (ip, ms, want) in [
        ("10.1.0.1", 99, (true, false)),
        ("10.1.1.255", 100, (false, false)),
        ("10.1.2.7", 99, (false, true)),
        ("10.1.3.8", 150, (false, false)),
        ("10.1.3.9", 150, (true, false)),
        ("10.1.4.200", 4, (true, false)),
        ("10.1.4.200", 5, (false, false)),
        ("10.1.5.127", 0, (false, false)),
        ("10.1.5.128", 99, (true, false)),
        ("10.1.6.0", 0, (false, false)),
    ] {
        let verdict = blocked(&f, ip, ms);
        assert_eq!((verdict.blocked, verdict.allowed), want, "{ip} at +{ms} ms");
        assert_eq!(
            f.index.view(T1).lookup(ip.parse().unwrap(), at(ms)).0,
            verdict,
            "{ip}"
        );
    }
}

#[test]
fn allow_beats_block_and_says_so() {
    let mut f = Fixture::new();
    f.block(1, "198.51.100.0/24");
    f.change(
        T1,
        2,
        ChangeOp::Put,
        RuleAction::Allow,
        "198.51.100.7",
        None,
    );
    let view = f.index.view(T1);
    let (verdict, rules) = view.lookup("198.51.100.7".parse().unwrap(), NOW);
    assert_eq!(
        verdict,
        Verdict {
            blocked: false,
            allowed: true
        }
    );
    assert_eq!(
        rules.iter().map(|r| (r.id, r.action)).collect::<Vec<_>>(),
        [(2, RuleAction::Allow), (1, RuleAction::Block)]
    );
    assert!(f.blocked("198.51.100.8"));
}

#[test]
fn removals_refreshes_and_tenants() {
    let mut f = Fixture::new();
    f.block(1, "203.0.113.5");
    f.change(
        T2,
        2,
        ChangeOp::Put,
        RuleAction::Block,
        "203.0.113.0/24",
        None,
    );
    assert_eq!(f.matched("203.0.113.5"), [1]);
    assert!(
        f.index
            .decide(T2, "203.0.113.5".parse().unwrap(), NOW)
            .blocked
    );
    assert!(
        !f.index
            .decide(TenantId(3), "203.0.113.5".parse().unwrap(), NOW)
            .blocked
    );

    f.block_expired(1, "203.0.113.5");
    assert!(
        !f.blocked("203.0.113.5"),
        "a refresh replaces the old expiry"
    );
    f.change(T1, 1, ChangeOp::Put, RuleAction::Block, "203.0.113.5", None);
    assert!(f.blocked("203.0.113.5"));
    f.change(
        T1,
        1,
        ChangeOp::Delete,
        RuleAction::Block,
        "203.0.113.5",
        None,
    );
    assert!(!f.blocked("203.0.113.5"));
    assert!(
        f.index
            .decide(T2, "203.0.113.5".parse().unwrap(), NOW)
            .blocked
    );

    // Replays are ignored by sequence number.
    let seq = f.index.seq();
    f.index.apply(&[Change {
        seq: 1,
        tenant: T1,
        rule_id: 1,
        op: ChangeOp::Put,
        action: RuleAction::Block,
        target: Target::parse_any("203.0.113.5").unwrap(),
        expires_at: None,
        name: None,
        at: NOW,
        source: Source::Signal,
        dataset: None,
        description: None,
    }]);
    assert!(!f.blocked("203.0.113.5"));
    assert_eq!(f.index.seq(), seq);
}

/// A permanent block rule of tenant 1, as a store snapshot holds it.
fn block_rule(id: RuleId, target: &str) -> Rule {
    NewRule::block(T1, Target::parse_any(target).unwrap(), NOW).with_id(id)
}

/// Geo data from a list of disjoint networks, each with its ASN and country: what an address
/// locates to, and the networks an ASN or a country covers (what the index used to compile ASN
/// and country rules into).
struct SyntheticGeo {
    rows: Vec<(IpNet, Option<Asn>, Option<CountryCode>)>,
    /// Calls to `locate`, for tests that count work.
    located: std::sync::atomic::AtomicUsize,
}

impl SyntheticGeo {
    fn new(rows: &[(&str, Option<u32>, Option<&str>)]) -> Self {
        Self::of(
            rows.iter()
                .map(|(net, asn, country)| {
                    (
                        net.parse().unwrap(),
                        asn.and_then(Asn::new),
                        country.and_then(CountryCode::parse),
                    )
                })
                .collect(),
        )
    }

    fn of(rows: Vec<(IpNet, Option<Asn>, Option<CountryCode>)>) -> Self {
        Self {
            rows,
            located: Default::default(),
        }
    }

    fn networks(&self, target: &Target) -> Vec<IpNet> {
        match target {
            Target::Ip(net) => vec![*net],
            Target::Asn(asn) => self
                .rows
                .iter()
                .filter(|row| row.1 == Some(*asn))
                .map(|row| row.0)
                .collect(),
            Target::Country(code) => self
                .rows
                .iter()
                .filter(|row| row.2 == Some(*code))
                .map(|row| row.0)
                .collect(),
        }
    }

    fn located(&self) -> usize {
        self.located.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Locate for SyntheticGeo {
    fn locate(&self, ip: IpAddr) -> GeoRecord {
        self.located
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ip = normalize_ip(ip);
        self.rows
            .iter()
            .find(|row| row.0.contains(&ip))
            .map_or(GeoRecord::default(), |row| GeoRecord {
                asn: row.1,
                country: row.2,
            })
    }
}

/// AS64500 in 192.0.2.0/24 (no country) and 2001:db8:64::/48; FR in 198.51.100.0/25 and
/// 203.0.113.0/24.
fn fixed_geo() -> SyntheticGeo {
    SyntheticGeo::new(&[
        ("192.0.2.0/24", Some(64500), None),
        ("2001:db8:64::/48", Some(64500), None),
        ("198.51.100.0/25", None, Some("FR")),
        ("203.0.113.0/24", None, Some("FR")),
    ])
}

#[test]
fn answers_locate_addresses_by_the_geo_data_their_rules_are_matched_by() {
    let mut f = Fixture::new();
    f.change(T1, 1, ChangeOp::Put, RuleAction::Block, "AS64500", None);
    let ip: IpAddr = "192.0.2.9".parse().unwrap();
    assert_eq!(f.index.view(T1).locate(ip), GeoRecord::default());
    assert!(!f.blocked("192.0.2.9"));

    // New geo data: the ASN and the rule's networks change together, at the swap.
    f.index.set_geo(Arc::new(fixed_geo()));
    let located = f.index.view(T1).locate(ip);
    assert_eq!(located.asn, Asn::new(64500));
    assert_eq!(located.country, None);
    assert!(f.blocked("192.0.2.9"));
}

#[test]
fn asn_and_country_rules_cover_the_networks_of_their_target() {
    let mut f = Fixture::with(Arc::new(fixed_geo()));
    f.change(T1, 1, ChangeOp::Put, RuleAction::Block, "AS64500", None);
    f.change(T1, 2, ChangeOp::Put, RuleAction::Block, "FR", None);
    assert_eq!(f.matched("192.0.2.9"), [1]);
    assert_eq!(f.matched("2001:db8:64::1"), [1]);
    assert_eq!(f.matched("198.51.100.127"), [2]);
    assert!(!f.blocked("198.51.100.128"));
    f.change(T1, 1, ChangeOp::Delete, RuleAction::Block, "AS64500", None);
    assert!(!f.blocked("192.0.2.9"));
    assert!(!f.blocked("2001:db8:64::1"));
    assert!(f.blocked("203.0.113.1"));
}

/// IP rules first, deepest prefix first; then the ASN's rules and the country's, each by id.
/// An allow rule of any kind wins, and expiry counts to the instant for every kind.
#[test]
fn asn_and_country_rules_list_after_ip_rules_and_follow_the_same_verdicts() {
    let geo = SyntheticGeo::new(&[("192.0.2.0/24", Some(64500), Some("FR"))]);
    let mut f = Fixture::with(Arc::new(geo));
    f.change(
        T1,
        1,
        ChangeOp::Put,
        RuleAction::Block,
        "FR",
        Some(NOW.0 + 10),
    );
    f.change(T1, 2, ChangeOp::Put, RuleAction::Block, "AS64500", None);
    f.block(3, "192.0.2.0/24");
    f.block(4, "192.0.2.7");
    f.change(
        T1,
        5,
        ChangeOp::Put,
        RuleAction::Allow,
        "AS64500",
        Some(NOW.0 + 5),
    );
    let ip: IpAddr = "192.0.2.7".parse().unwrap();
    let at = |ms: i64| UnixMillis(NOW.0 + ms);
    let listed = |ms: i64| -> Vec<RuleId> {
        let view = f.index.view(T1);
        let found = view.lookup_with_geo(ip, at(ms));
        assert_eq!(found.geo.asn, Asn::new(64500));
        assert_eq!(found.verdict, f.index.decide(T1, ip, at(ms)), "+{ms} ms");
        found.rules.iter().map(|r| r.id).collect()
    };
    assert_eq!(listed(0), [4, 3, 2, 5, 1]);
    assert!(f.index.decide(T1, ip, at(4)).allowed);
    // The allow rule has expired at +5 ms, the country rule at +10 ms.
    assert_eq!(listed(5), [4, 3, 2, 1]);
    assert!(f.index.decide(T1, ip, at(5)).blocked);
    assert_eq!(listed(10), [4, 3, 2]);
    // A geo allow rule wins over IP block rules, too.
    assert!(
        f.index
            .decide(T1, "192.0.2.7".parse().unwrap(), at(0))
            .allowed
    );
    assert!(
        !f.index
            .decide(T1, "192.0.2.7".parse().unwrap(), at(0))
            .blocked
    );
}

/// The tables of one tenant's IP rules, and its ASN and country rules, as published now.
fn tenant_parts(index: &Index, tenant: TenantId) -> (Arc<IpTables>, Option<Arc<GeoRules>>) {
    let generation = index.current.load();
    let found = generation.tenant(tenant).unwrap();
    (found.ip.clone(), found.geo.clone())
}

#[test]
fn an_asn_or_country_rule_change_leaves_the_tables_alone() {
    let geo = Arc::new(fixed_geo());
    let mut f = Fixture::with(geo.clone());
    f.block(1, "10.0.0.0/8");
    f.change(T2, 2, ChangeOp::Put, RuleAction::Block, "10.1.0.0/16", None);
    let (tables, _) = tenant_parts(&f.index, T1);
    let other = tenant_parts(&f.index, T2);
    let prefixes = f.index.stats().prefixes;

    f.block(3, "AS64500");
    f.change(T1, 4, ChangeOp::Put, RuleAction::Allow, "FR", None);
    f.change(T1, 3, ChangeOp::Delete, RuleAction::Block, "AS64500", None);
    f.block(5, "AS64500");
    let (after, geo_rules) = tenant_parts(&f.index, T1);
    assert!(Arc::ptr_eq(&tables, &after), "the IP tables were rebuilt");
    assert_eq!(
        geo_rules.map(|g| g.stats(&mut Default::default(), &mut Default::default()).0),
        Some(2)
    );
    assert_eq!(f.index.stats().prefixes, prefixes);
    assert_eq!(f.index.stats().geo_rules, 2);
    // Nothing was asked of the geo data, and the other tenant's rules are the same values.
    assert_eq!(geo.located(), 0);
    let (other_tables, other_geo) = tenant_parts(&f.index, T2);
    assert!(Arc::ptr_eq(&other.0, &other_tables) && other_geo.is_none());
    assert!(f.blocked("192.0.2.1") && f.blocked("10.9.9.9"));

    // With its last ASN or country rule gone, a tenant's decisions no longer read geo data.
    f.change(T1, 4, ChangeOp::Delete, RuleAction::Allow, "FR", None);
    f.change(T1, 5, ChangeOp::Delete, RuleAction::Block, "AS64500", None);
    assert!(tenant_parts(&f.index, T1).1.is_none());
    assert!(!f.blocked("192.0.2.1"));
    assert_eq!(
        geo.located(),
        2,
        "only the decisions while geo rules existed"
    );
}

/// Every code `CountryCode::parse` accepts: the officially assigned ones.
fn every_country() -> Vec<CountryCode> {
    (b'A'..=b'Z')
        .flat_map(|a| (b'A'..=b'Z').map(move |b| [a, b]))
        .filter_map(|code| CountryCode::parse(std::str::from_utf8(&code).unwrap()))
        .collect()
}

/// One tenant blocking every country used to expand into every network of the geo data, on the
/// single thread that applies every tenant's changes. Now it is one map entry per country: no
/// table work, no geo look-up, and the other tenant's rules are left as they were.
#[test]
fn one_tenant_blocking_every_country_does_no_work_for_another() {
    let countries = every_country();
    assert_eq!(countries.len(), 249);
    // Geo data in which every country has networks, so expanding them would be real work.
    let geo = Arc::new(SyntheticGeo::of(
        countries
            .iter()
            .enumerate()
            .map(|(i, code)| {
                let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from((i as u32 + 1) << 24), 8);
                (net.unwrap().into(), None, Some(*code))
            })
            .collect(),
    ));
    let mut f = Fixture::with(geo.clone());
    f.block(1, "7.7.7.0/24");
    f.change(T2, 2, ChangeOp::Put, RuleAction::Block, "10.0.0.0/8", None);
    let before = f.index.stats();
    let bystander = tenant_parts(&f.index, T1);
    let (own_tables, _) = tenant_parts(&f.index, T2);

    let changes: Vec<Change> = countries
        .iter()
        .enumerate()
        .map(|(i, code)| Change {
            seq: f.seq + 1 + i as u64,
            tenant: T2,
            rule_id: 100 + i as i64,
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
    f.seq += changes.len() as u64;
    f.index.apply(&changes);

    let after = f.index.stats();
    assert_eq!(after.prefixes, before.prefixes, "no prefix was compiled");
    assert_eq!(after.table_bytes, before.table_bytes);
    assert_eq!(after.geo_rules, 249);
    assert!(
        after.geo_bytes < 256 * 1024,
        "{} bytes for 249 rules",
        after.geo_bytes
    );
    assert_eq!(geo.located(), 0, "applying looked addresses up");
    let (t1_tables, t1_geo) = tenant_parts(&f.index, T1);
    assert!(Arc::ptr_eq(&bystander.0, &t1_tables) && t1_geo.is_none());
    assert!(Arc::ptr_eq(&own_tables, &tenant_parts(&f.index, T2).0));

    // The bystander's next write and its decisions: its own work only, no geo look-up.
    f.block(3, "8.8.8.8");
    for ip in ["7.7.7.7", "8.8.8.8", "9.9.9.9", "1.2.3.4"] {
        let expected = ip != "9.9.9.9" && ip != "1.2.3.4";
        assert_eq!(f.blocked(ip), expected, "{ip}");
    }
    assert_eq!(geo.located(), 0, "tenant 1 has no geo rules");
    assert!(Arc::ptr_eq(&own_tables, &tenant_parts(&f.index, T2).0));
    // And the countries are blocked for tenant 2, one geo look-up per decision.
    for (i, code) in countries.iter().enumerate().step_by(17) {
        let ip = IpAddr::from(std::net::Ipv4Addr::from(
            ((i as u32 + 1) << 24) | 0x0001_0203,
        ));
        let view = f.index.view(T2);
        let found = view.lookup_with_geo(ip, NOW);
        assert_eq!(found.geo.country, Some(*code));
        assert!(found.verdict.blocked && f.index.decide(T2, ip, NOW).blocked);
    }
    // Inside its own IP block rule, a tenant with only geo block rules needs no geo look-up.
    let located = geo.located();
    assert!(f.index.decide(T2, "10.1.1.1".parse().unwrap(), NOW).blocked);
    assert_eq!(geo.located(), located);
}

#[test]
fn a_geo_swap_moves_asn_and_country_rules_at_once() {
    let old = || {
        SyntheticGeo::new(&[
            ("192.0.2.0/24", Some(64500), Some("FR")),
            ("203.0.113.0/24", Some(64501), Some("DE")),
        ])
    };
    // The operator's new data moves AS64500 and FR to the other network.
    let new = || {
        SyntheticGeo::new(&[
            ("192.0.2.0/24", Some(64501), Some("DE")),
            ("203.0.113.0/24", Some(64500), Some("FR")),
        ])
    };
    let mut f = Fixture::with(Arc::new(old()));
    f.block(1, "AS64500");
    f.change(T1, 2, ChangeOp::Put, RuleAction::Allow, "DE", None);
    f.block(3, "198.51.100.0/24");
    let (tables, geo_rules) = tenant_parts(&f.index, T1);
    let seq = f.index.seq();
    assert!(f.blocked("192.0.2.1"));
    assert!(!f.blocked("203.0.113.1"));
    let before = f.index.view(T1);

    f.index.set_geo(Arc::new(new()));
    assert!(!f.blocked("192.0.2.1"));
    assert!(
        f.index
            .decide(T1, "192.0.2.1".parse().unwrap(), NOW)
            .allowed
    );
    assert!(f.blocked("203.0.113.1"));
    assert_eq!(f.matched("203.0.113.1"), [1]);
    // The same rules: nothing was rebuilt, no change was replayed.
    let (tables_after, geo_after) = tenant_parts(&f.index, T1);
    assert!(Arc::ptr_eq(&tables, &tables_after));
    assert!(Arc::ptr_eq(
        geo_rules.as_ref().unwrap(),
        geo_after.as_ref().unwrap()
    ));
    assert_eq!(f.index.seq(), seq);
    // A view taken before the swap keeps answering from the data its rules were matched by.
    let found = before.lookup_with_geo("192.0.2.1".parse().unwrap(), NOW);
    assert_eq!(
        (found.geo.asn, found.verdict.blocked),
        (Asn::new(64500), true)
    );

    // A reader during many swaps: an answer's ASN always agrees with the rules it lists. The
    // swaps go on until the reader has seen both sets of data.
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    let done = AtomicBool::new(false);
    let seen = [AtomicU64::new(0), AtomicU64::new(0)];
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            while !done.load(SeqCst) {
                for ip in ["192.0.2.1", "203.0.113.1"] {
                    let view = f.index.view(T1);
                    let found = view.lookup_with_geo(ip.parse().unwrap(), NOW);
                    let ours = found.geo.asn == Asn::new(64500);
                    let ids: Vec<RuleId> = found.rules.iter().map(|r| r.id).collect();
                    assert_eq!(ids, if ours { vec![1] } else { vec![2] }, "{found:?}");
                    assert_eq!(found.verdict.blocked, ours);
                    assert_eq!(found.verdict.allowed, !ours);
                    if ip == "192.0.2.1" {
                        seen[usize::from(ours)].fetch_add(1, SeqCst);
                    }
                }
            }
        });
        let mut round = 0;
        while (round < 500 || seen.iter().any(|n| n.load(SeqCst) == 0)) && !reader.is_finished() {
            let geo = if round % 2 == 0 { new() } else { old() };
            f.index.set_geo(Arc::new(geo));
            round += 1;
        }
        done.store(true, SeqCst);
    });
}

#[test]
fn rebuild_refuses_a_snapshot_older_than_what_it_applied() {
    let mut f = Fixture::with(Arc::new(fixed_geo()));
    f.block(1, "192.0.2.1");
    // The snapshot is read here: it has rule 1 only, at seq 1.
    let snapshot = Snapshot {
        seq: 1,
        rules: vec![block_rule(1, "192.0.2.1")],
    };
    // Meanwhile: a new rule, and the old one removed.
    f.block(2, "AS64500");
    f.change(
        T1,
        1,
        ChangeOp::Delete,
        RuleAction::Block,
        "192.0.2.1",
        None,
    );
    assert_eq!(
        f.index.rebuild(snapshot),
        Err(StaleSnapshot {
            snapshot: 1,
            applied: 3
        })
    );
    assert_eq!(f.index.seq(), 3);
    assert_eq!(f.matched("192.0.2.1"), [2]);
    assert!(f.blocked("2001:db8:64::5"));

    // The next snapshot holds the changes.
    let snapshot = Snapshot {
        seq: 3,
        rules: vec![block_rule(2, "AS64500")],
    };
    assert_eq!(f.index.rebuild(snapshot), Ok(()));
    assert_eq!(f.index.seq(), 3);
    assert_eq!(f.matched("192.0.2.1"), [2]);
    assert!(f.blocked("2001:db8:64::5"));
}

/// Rules the tables got from a snapshot, or from earlier changes, are replaced by a later put
/// of their id and removed by a delete, while a rule new to the tables is only added.
#[test]
fn puts_replace_the_rules_they_name_whether_loaded_or_applied() {
    let mut f = Fixture::new();
    let snapshot = Snapshot {
        seq: 5,
        rules: vec![block_rule(7, "192.0.2.1"), block_rule(3, "192.0.2.3")],
    };
    assert_eq!(f.index.rebuild(snapshot), Ok(()));
    f.seq = 5;
    // Rule 7, loaded: a put that gives it an expiry replaces it.
    f.block_expired(7, "192.0.2.1");
    assert!(!f.blocked("192.0.2.1"));
    assert!(f.matched("192.0.2.1").is_empty());
    // Rule 3, loaded, below the highest id loaded: deleted.
    f.change(
        T1,
        3,
        ChangeOp::Delete,
        RuleAction::Block,
        "192.0.2.3",
        None,
    );
    assert!(!f.blocked("192.0.2.3"));
    // Rule 8, new, then put again.
    f.block(8, "192.0.2.8");
    f.block_expired(8, "192.0.2.8");
    assert!(!f.blocked("192.0.2.8"));
    assert!(f.matched("192.0.2.8").is_empty());
    // Rules 9 and 10 in one round, 9 put twice: one copy of each.
    f.seq += 3;
    let seq = f.seq;
    let change = |seq, id, target| {
        let target = Target::parse_any(target).unwrap();
        named_change(seq, T1, id, ChangeOp::Put, RuleAction::Block, target, None)
    };
    f.index.apply(&[
        change(seq - 2, 9, "192.0.2.9"),
        change(seq - 1, 10, "192.0.2.9"),
        change(seq, 9, "192.0.2.9"),
    ]);
    assert_eq!(f.matched("192.0.2.9"), [9, 10]);
}

#[test]
fn rebuild_never_hides_a_change_applied_after_its_snapshot() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    // A reader that sees the epoch odd before and after a look-up ran it while rule 1 was in
    // force: the write had been applied, and its removal had not begun.
    let index = Index::new(Arc::new(NoGeo));
    let epoch = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    let change = |seq, op| Change {
        seq,
        tenant: T1,
        rule_id: 1,
        op,
        action: RuleAction::Block,
        target: Target::parse_any("192.0.2.1").unwrap(),
        expires_at: None,
        name: None,
        at: NOW,
        source: Source::Signal,
        dataset: None,
        description: None,
    };
    let unseen = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut unseen = 0u64;
            while !done.load(SeqCst) {
                let before = epoch.load(SeqCst);
                let blocked = index.decide(T1, ip, NOW).blocked;
                if before == epoch.load(SeqCst) && before % 2 == 1 && !blocked {
                    unseen += 1;
                }
            }
            unseen
        });
        let mut seq = 0;
        for _ in 0..300 {
            // The snapshot is read here, before the write.
            let snapshot = Snapshot {
                seq,
                rules: Vec::new(),
            };
            seq += 1;
            index.apply(&[change(seq, ChangeOp::Put)]);
            epoch.fetch_add(1, SeqCst);
            assert!(index.rebuild(snapshot).is_err());
            assert!(index.decide(T1, ip, NOW).blocked);
            epoch.fetch_add(1, SeqCst);
            seq += 1;
            index.apply(&[change(seq, ChangeOp::Delete)]);
            // A snapshot taken after the removal is current, and accepted.
            index
                .rebuild(Snapshot {
                    seq,
                    rules: Vec::new(),
                })
                .unwrap();
        }
        done.store(true, SeqCst);
        reader.join().unwrap()
    });
    assert_eq!(
        unseen, 0,
        "look-ups missed an applied write during a rebuild"
    );
}

proptest! {
    /// Against a brute-force scan: random nested and disjoint IPv4 prefixes, random expiries
    /// and actions, random removals.
    #[test]
    fn matches_brute_force(
        rules in proptest::collection::vec((0u32..4096, 8u8..=32, any::<bool>(), 0i64..3), 1..60),
        removed in proptest::collection::vec(0usize..60, 0..10),
        probes in proptest::collection::vec(0u32..4096, 50),
    ) {
        // Addresses drawn from a small space so that prefixes nest and collide often.
        let spread = |x: u32| (x << 20) | (x & 0xff);
        let mut f = Fixture::new();
        let mut live = Vec::new();
        for (i, (addr, len, allow, exp)) in rules.iter().enumerate() {
            let net = IpNet::new(IpAddr::from(std::net::Ipv4Addr::from(spread(*addr))), *len).unwrap().trunc();
            let action = if *allow { RuleAction::Allow } else { RuleAction::Block };
            let expires = [None, Some(NOW.0 - 5), Some(NOW.0 + 5)][*exp as usize];
            f.change(T1, i as i64 + 1, ChangeOp::Put, action, &net.to_string(), expires);
            live.push(Some((net, action, expires)));
        }
        for r in removed {
            if let Some(Some((net, action, _))) = live.get(r).cloned() {
                f.change(T1, r as i64 + 1, ChangeOp::Delete, action, &net.to_string(), None);
                live[r] = None;
            }
        }
        // Random addresses, and the first and last address of each prefix and their
        // neighbours, where intervals begin and end.
        let edges = rules.iter().flat_map(|(addr, len, _, _)| {
            let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(spread(*addr)), *len).unwrap().trunc();
            let (first, last) = (u32::from(net.network()), u32::from(net.broadcast()));
            [first.wrapping_sub(1), first, last, last.wrapping_add(1)]
        });
        let probes: Vec<u32> = probes.iter().map(|p| spread(*p) ^ (p & 0x3ff) << 4).chain(edges).collect();
        for p in probes {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(p));
            let active: Vec<(usize, RuleAction)> = live.iter().enumerate()
                .filter_map(|(i, r)| r.as_ref().map(|r| (i, r)))
                .filter(|(_, (net, _, exp))| net.contains(&ip) && exp.is_none_or(|e| e > NOW.0))
                .map(|(i, (_, action, _))| (i, *action))
                .collect();
            let allowed = active.iter().any(|(_, a)| *a == RuleAction::Allow);
            let blocked = !allowed && active.iter().any(|(_, a)| *a == RuleAction::Block);
            let view = f.index.view(T1);
            let (verdict, rules) = view.lookup(ip, NOW);
            prop_assert_eq!(verdict, Verdict { blocked, allowed });
            prop_assert_eq!(f.index.decide(T1, ip, NOW), verdict);
            // Each rule with its target, which the tables keep as the prefix it is under.
            let mut got: Vec<(i64, Target)> = rules.iter().map(|r| (r.id, r.target)).collect();
            got.sort_by_key(|(id, _)| *id);
            let want: Vec<(i64, Target)> = active
                .iter()
                .map(|(i, _)| (*i as i64 + 1, Target::Ip(live[*i].unwrap().0)))
                .collect();
            prop_assert_eq!(got, want);
        }
    }

    /// The same for IPv6, with prefixes inside and across one /16 bucket.
    #[test]
    fn ipv6_matches_brute_force(
        rules in proptest::collection::vec((0u128..4096, 8u8..=128, any::<bool>()), 1..40),
        probes in proptest::collection::vec(0u128..4096, 30),
    ) {
        let spread = |x: u128| (0x2001u128 << 112) | (x << 100) | (x & 0xff);
        let mut f = Fixture::new();
        let mut nets = Vec::new();
        for (i, (addr, len, allow)) in rules.iter().enumerate() {
            let net = ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(spread(*addr)), *len).unwrap().trunc();
            let action = if *allow { RuleAction::Allow } else { RuleAction::Block };
            f.change(T1, i as i64 + 1, ChangeOp::Put, action, &net.to_string(), None);
            nets.push((net, action));
        }
        let edges = nets.iter().flat_map(|(net, _)| {
            let (first, last) = (u128::from(net.network()), u128::from(net.broadcast()));
            [first.wrapping_sub(1), first, last, last.wrapping_add(1)]
        });
        let probes: Vec<u128> = probes.iter().map(|p| spread(*p) ^ (p << 40)).chain(edges).collect();
        for p in probes {
            let ip = IpAddr::from(std::net::Ipv6Addr::from(p));
            let covering: Vec<&(ipnet::Ipv6Net, RuleAction)> =
                nets.iter().filter(|(net, _)| net.contains(&std::net::Ipv6Addr::from(p))).collect();
            let allowed = covering.iter().any(|(_, a)| *a == RuleAction::Allow);
            let blocked = !allowed && !covering.is_empty();
            prop_assert_eq!(f.index.decide(T1, ip, NOW), Verdict { blocked, allowed });
            let mut listed: Vec<(i64, Target)> = f.index.view(T1).lookup(ip, NOW).1.iter()
                .map(|r| (r.id, r.target))
                .collect();
            listed.sort_by_key(|(id, _)| *id);
            let mut want: Vec<(i64, Target)> = nets.iter().enumerate()
                .filter(|(_, (net, _))| net.contains(&std::net::Ipv6Addr::from(p)))
                .map(|(i, (net, _))| (i as i64 + 1, Target::Ip(IpNet::V6(*net))))
                .collect();
            want.sort_by_key(|(id, _)| *id);
            prop_assert_eq!(listed, want);
        }
    }

    /// ASN and country rules decided at look-up time answer as the networks of their targets
    /// did when they were compiled into the tables: against a brute-force scan over those
    /// networks, beside IP rules, with random actions, expiries and removals, before and after
    /// a swap to other geo data.
    #[test]
    fn geo_rules_answer_as_their_networks(
        old_rows in proptest::collection::vec((0u32..64, 10u8..=20, 0usize..4, 0usize..4), 1..12),
        new_rows in proptest::collection::vec((0u32..64, 10u8..=20, 0usize..4, 0usize..4), 1..12),
        rules in proptest::collection::vec((0u8..3, 0u32..64, 10u8..=24, any::<bool>(), 0usize..3), 1..30),
        removed in proptest::collection::vec(0usize..30, 0..6),
        probes in proptest::collection::vec(0u32..(1 << 22), 40),
    ) {
        // Everything inside 10.0.0.0/8, so that networks and rules nest and collide often.
        let addr = |x: u32| std::net::Ipv4Addr::from(0x0a00_0000 | (x << 18));
        let net = |x: u32, len: u8| -> IpNet {
            ipnet::Ipv4Net::new(addr(x), len).unwrap().trunc().into()
        };
        let asns = ["AS64500", "AS64501", "AS64502"];
        let countries = ["FR", "DE", "US"];
        let synthetic = |rows: &[(u32, u8, usize, usize)]| {
            let mut kept: Vec<(IpNet, Option<Asn>, Option<CountryCode>)> = Vec::new();
            for (x, len, asn, country) in rows {
                let n = net(*x, *len);
                if kept.iter().any(|(k, _, _)| k.contains(&n.network()) || n.contains(&k.network())) {
                    continue;
                }
                kept.push((
                    n,
                    asns.get(*asn).and_then(|a| Asn::parse(a)),
                    countries.get(*country).and_then(|c| CountryCode::parse(c)),
                ));
            }
            SyntheticGeo::of(kept)
        };
        let old = Arc::new(synthetic(&old_rows));
        let new = Arc::new(synthetic(&new_rows));

        let mut f = Fixture::with(old.clone());
        let mut live = Vec::new();
        for (i, (kind, x, len, allow, exp)) in rules.iter().enumerate() {
            let target = match kind {
                0 => net(*x, *len).to_string(),
                1 => asns[*x as usize % 3].to_owned(),
                _ => countries[*x as usize % 3].to_owned(),
            };
            let action = if *allow { RuleAction::Allow } else { RuleAction::Block };
            let expires = [None, Some(NOW.0 - 5), Some(NOW.0 + 5)][*exp];
            f.change(T1, i as i64 + 1, ChangeOp::Put, action, &target, expires);
            live.push(Some((Target::parse_any(&target).unwrap(), action, expires)));
        }
        for r in removed {
            if let Some(Some((target, action, _))) = live.get(r).cloned() {
                f.change(T1, r as i64 + 1, ChangeOp::Delete, action, &target.to_string(), None);
                live[r] = None;
            }
        }

        for geo in [old, new] {
            f.index.set_geo(geo.clone());
            // Random addresses, and the edges of every network and rule.
            let edges = geo.rows.iter().map(|row| row.0).chain(
                live.iter().flatten().filter_map(|(t, _, _)| match t { Target::Ip(n) => Some(*n), _ => None })
            ).flat_map(|n| {
                let (IpAddr::V4(first), IpAddr::V4(last)) = (n.network(), n.broadcast()) else { unreachable!() };
                let (first, last) = (u32::from(first), u32::from(last));
                [first.wrapping_sub(1), first, last, last.wrapping_add(1)]
            });
            let probes: Vec<u32> = probes.iter().map(|p| 0x0a00_0000 | (p << 2)).chain(edges).collect();
            for p in probes {
                let ip = IpAddr::from(std::net::Ipv4Addr::from(p));
                let active: Vec<(i64, RuleAction)> = live.iter().enumerate()
                    .filter_map(|(i, r)| r.as_ref().map(|r| (i as i64 + 1, r)))
                    .filter(|(_, (target, _, exp))| {
                        exp.is_none_or(|e| e > NOW.0)
                            && geo.networks(target).iter().any(|n| n.contains(&ip))
                    })
                    .map(|(id, (_, action, _))| (id, *action))
                    .collect();
                let allowed = active.iter().any(|(_, a)| *a == RuleAction::Allow);
                let blocked = !allowed && active.iter().any(|(_, a)| *a == RuleAction::Block);
                let verdict = Verdict { blocked, allowed };
                prop_assert_eq!(f.index.decide(T1, ip, NOW), verdict, "{}", ip);
                let view = f.index.view(T1);
                prop_assert_eq!(view.lookup(ip, NOW).0, verdict);
                let found = view.lookup_with_geo(ip, NOW);
                prop_assert_eq!(found.verdict, verdict);
                prop_assert_eq!(found.geo, geo.locate(ip));
                let mut got: Vec<i64> = found.rules.iter().map(|r| r.id).collect();
                got.sort();
                let want: Vec<i64> = active.iter().map(|(id, _)| *id).collect();
                prop_assert_eq!(got, want);
                // IP rules deepest first, then the ASN's, then the country's, each by id.
                let order: Vec<(Kind, i64)> = found.rules.iter().map(|r| {
                    let depth = match r.target { Target::Ip(n) => -i64::from(n.prefix_len()), _ => r.id };
                    (r.target.kind(), depth)
                }).collect();
                prop_assert!(order.is_sorted(), "{:?}", order);
            }
        }
    }

    /// The ASN map against a plain map of the same rules: many keys per shard, so that slots
    /// probe past each other, with replacements and removals in random batches; and the value
    /// before each batch, which shares shards with the one after, still as it was.
    #[test]
    fn geo_rule_maps_agree_with_a_plain_map(
        batches in proptest::collection::vec(
            proptest::collection::vec((1u32..3000, 1i64..40, any::<bool>(), 0usize..4, any::<bool>()), 1..400),
            1..6,
        ),
    ) {
        // Rule id to (ASN, action, expiry) for the rules in force.
        type Model = HashMap<i64, (u32, RuleAction, Option<UnixMillis>)>;
        fn agree(rules: &GeoRules, model: &Model) -> Result<(), TestCaseError> {
            prop_assert_eq!(rules.is_empty(), model.is_empty());
            prop_assert_eq!(rules.stats(&mut Default::default(), &mut Default::default()).0, model.len());
            for asn in 1u32..3000 {
                let geo = GeoRecord { asn: Asn::new(asn), country: None };
                let mut want = Span::EMPTY;
                let mut want_ids = Vec::new();
                for (id, (a, action, expires_at)) in model {
                    if *a == asn {
                        want = want.widen(Span::of(&RuleRef {
                            id: *id,
                            action: *action,
                            target: Target::Asn(Asn::new(asn).unwrap()),
                            expires_at: *expires_at,
                            source: Source::Signal,
                            texts: None,
                        }));
                        want_ids.push(*id);
                    }
                }
                want_ids.sort();
                prop_assert_eq!(rules.span(geo), want, "AS{}", asn);
                let mut listed = Vec::new();
                rules.matches(geo, UnixMillis(i64::MIN), &mut listed);
                let ids: Vec<i64> = listed.iter().map(|r| r.id).collect();
                prop_assert_eq!(ids, want_ids);
            }
            Ok(())
        }

        let mut rules = GeoRules::default();
        let mut model = Model::new();
        for batch in &batches {
            let (before, model_before) = (rules.clone(), model.clone());
            for (asn, id, allow, exp, delete) in batch {
                let target = Target::Asn(Asn::new(*asn).unwrap());
                let action = if *allow { RuleAction::Allow } else { RuleAction::Block };
                // One id always names one ASN and action, as in the store.
                let id = id * 10_000 + i64::from(*asn) * 2 + i64::from(*allow);
                rules.remove(id, &target);
                model.remove(&id);
                if !delete {
                    let expires_at = [None, Some(NOW.0 - 1), Some(NOW.0 + 1), Some(NOW.0 + 2)][*exp].map(UnixMillis);
                    rules.put(Arc::new(RuleRef { id, action, target, expires_at, source: Source::Signal, texts: None }));
                    model.insert(id, (*asn, action, expires_at));
                }
            }
            rules.refresh();
            agree(&rules, &model)?;
            agree(&before, &model_before)?;
        }
    }
}

/// The intervals an export walks: in address order, across buckets, with both expiries.
#[test]
fn ip_rules_walk_the_decision_intervals_in_order() {
    let mut f = Fixture::new();
    f.change(
        T1,
        1,
        ChangeOp::Put,
        RuleAction::Block,
        "10.0.0.0/15",
        Some(5000),
    );
    f.change(T1, 2, ChangeOp::Put, RuleAction::Allow, "10.1.2.3/32", None);
    f.block(3, "2001:db8::/32");
    f.change(
        T1,
        4,
        ChangeOp::Put,
        RuleAction::Block,
        "1.2.3.4/32",
        Some(7000),
    );
    let rules = f.index.ip_rules(T1);
    let v4: Vec<(u128, u128, Span)> = rules
        .v4()
        .filter(|(_, _, span)| span.block_until != NONE || span.allow_until != NONE)
        .collect();
    let ip = |s: &str| u128::from(u32::from(s.parse::<std::net::Ipv4Addr>().unwrap()));
    let block = |until| Span {
        block_until: until,
        allow_until: NONE,
    };
    assert_eq!(
        v4,
        [
            (ip("1.2.3.4"), ip("1.2.3.4"), block(7000)),
            (ip("10.0.0.0"), ip("10.0.255.255"), block(5000)),
            (ip("10.1.0.0"), ip("10.1.2.2"), block(5000)),
            (
                ip("10.1.2.3"),
                ip("10.1.2.3"),
                Span {
                    block_until: 5000,
                    allow_until: FOREVER
                }
            ),
            (ip("10.1.2.4"), ip("10.1.255.255"), block(5000)),
        ]
    );
    let v6: Vec<_> = rules
        .v6()
        .filter(|(_, _, s)| s.block_until != NONE)
        .collect();
    assert_eq!(
        v6,
        [(0x2001_0db8 << 96, (0x2001_0db9 << 96) - 1, block(FOREVER))]
    );
    assert_eq!(f.index.ip_rules(T2).v4().count(), 0);
}

#[test]
fn rules_share_one_copy_of_each_text_and_texts_no_rule_holds_are_forgotten() {
    let f = Fixture::new();
    let named = |seq: u64, id: RuleId, op: ChangeOp, target: &str, name: String| Change {
        seq,
        tenant: T1,
        rule_id: id,
        op,
        action: RuleAction::Block,
        target: Target::parse_any(target).unwrap(),
        expires_at: None,
        name: Some(name),
        at: NOW,
        source: Source::Signal,
        dataset: Some("ABUSE".into()),
        description: None,
    };
    f.index.apply(&[
        named(1, 1, ChangeOp::Put, "192.0.2.1", "ssh-bf".into()),
        named(2, 2, ChangeOp::Put, "198.51.100.0/24", "ssh-bf".into()),
    ]);
    let view = f.index.view(T1);
    let (_, first) = view.lookup("192.0.2.1".parse().unwrap(), NOW);
    let (_, second) = view.lookup("198.51.100.9".parse().unwrap(), NOW);
    let (first, second) = (&first[0], &second[0]);
    assert_eq!(first.name(), Some("ssh-bf"));
    assert_eq!(first.dataset(), Some("ABUSE"));
    assert!(Arc::ptr_eq(
        first.texts.as_ref().unwrap(),
        second.texts.as_ref().unwrap()
    ));
    drop(view);

    // Rules with names of their own come and go; the texts kept for sharing do not pile up.
    let mut seq = 2;
    for id in 10..5_010 {
        let target = format!("10.{}.{}.1", id / 256, id % 256);
        seq += 1;
        let put = named(seq, id, ChangeOp::Put, &target, format!("scan-{id}"));
        seq += 1;
        let delete = Change {
            seq,
            op: ChangeOp::Delete,
            ..put.clone()
        };
        f.index.apply(&[put]);
        f.index.apply(&[delete]);
    }
    let known = f.index.writer().texts.len();
    assert!(known <= 1024 + 2 * 2, "{known} texts kept for 2 in use");
    assert_eq!(f.matched("192.0.2.1"), vec![1]);
}

/// A round that rebuilds enough buckets to be split between two threads leaves the same
/// tables as the same changes applied one at a time, each rebuilding one bucket on one thread.
#[test]
fn a_round_split_between_threads_builds_what_single_changes_build() {
    // Scattered /32s in every part of the space, and prefixes over several buckets that
    // straddle where a round's halves meet.
    let scatter = |n: u32| {
        let x = n.wrapping_mul(0x9E37_79B1);
        x ^ (x >> 15)
    };
    let mut changes = Vec::new();
    let mut seq = 0;
    let mut change = |id: i64, op, action, net: IpNet, expires_at: Option<i64>| {
        seq += 1;
        named_change(seq, T1, id, op, action, Target::Ip(net), expires_at)
    };
    let mut puts = Vec::new();
    for n in 0..1_600u32 {
        let len = [32, 32, 32, 24, 14, 9][n as usize % 6];
        let net = IpNet::new(IpAddr::from(std::net::Ipv4Addr::from(scatter(n))), len)
            .unwrap()
            .trunc();
        let action = if n % 7 == 0 {
            RuleAction::Allow
        } else {
            RuleAction::Block
        };
        let expires = [None, Some(NOW.0 + 5), Some(NOW.0 - 5)][n as usize % 3];
        puts.push((i64::from(n) + 1, action, net));
        changes.push(change(
            i64::from(n) + 1,
            ChangeOp::Put,
            action,
            net,
            expires,
        ));
    }
    let first_round = changes.len();
    // The next round removes every third rule and gives every fifth a new expiry.
    for (id, action, net) in &puts {
        if id % 3 == 0 {
            changes.push(change(*id, ChangeOp::Delete, *action, *net, None));
        } else if id % 5 == 0 {
            changes.push(change(*id, ChangeOp::Put, *action, *net, Some(NOW.0 + 9)));
        }
    }
    let buckets: std::collections::HashSet<u16> = puts
        .iter()
        .filter_map(|(_, _, net)| match net {
            IpNet::V4(n) => Some((u32::from(n.network()) >> 16) as u16),
            IpNet::V6(_) => None,
        })
        .collect();
    assert!(buckets.len() > 4 * table::SPLIT_FROM, "{}", buckets.len());

    let together = Index::new(Arc::new(NoGeo));
    together.apply(&changes[..first_round]);
    together.apply(&changes[first_round..]);
    let one_by_one = Index::new(Arc::new(NoGeo));
    for change in &changes {
        one_by_one.apply(std::slice::from_ref(change));
    }

    let intervals = |index: &Index| index.ip_rules(T1).v4().collect::<Vec<_>>();
    let walked = intervals(&together);
    assert!(walked.len() > 1_600);
    assert_eq!(walked, intervals(&one_by_one));
    for (_, _, net) in &puts {
        let ip = match net {
            IpNet::V4(n) => IpAddr::V4(n.network()),
            IpNet::V6(n) => IpAddr::V6(n.network()),
        };
        let listed = |index: &Index| {
            let view = index.view(T1);
            let (verdict, rules) = view.lookup(ip, NOW);
            let rules: Vec<(RuleId, Option<UnixMillis>)> =
                rules.iter().map(|r| (r.id, r.expires_at)).collect();
            (verdict, rules)
        };
        assert_eq!(listed(&together), listed(&one_by_one), "{ip}");
    }
}

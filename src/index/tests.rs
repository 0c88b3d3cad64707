use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use proptest::prelude::*;

use super::*;
use crate::geo::GeoRecord;
use crate::rules::{Asn, CountryCode, Rule, Source};

const T1: TenantId = TenantId(1);
const T2: TenantId = TenantId(2);
const NOW: UnixMillis = UnixMillis(1_000_000);

struct Fixture {
    index: Index,
    seq: u64,
}

impl Fixture {
    fn new() -> Self {
        Self::with(Arc::new(NoNetworks))
    }

    fn with(networks: Arc<dyn Networks>) -> Self {
        Self {
            index: Index::new(networks),
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
        self.index.apply(&[Change {
            seq: self.seq,
            tenant,
            rule_id: id,
            op,
            action,
            target,
            expires_at: expires_at.map(UnixMillis),
            name: Some(format!("rule-{id}")),
            at: NOW,
        }]);
    }

    fn block(&mut self, id: RuleId, target: &str) {
        self.change(T1, id, ChangeOp::Put, RuleAction::Block, target, None);
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
    // A /0 (possible through geo data) reaches every bucket.
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

    f.change(
        T1,
        1,
        ChangeOp::Put,
        RuleAction::Block,
        "203.0.113.5",
        Some(NOW.0 - 1),
    );
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
    }]);
    assert!(!f.blocked("203.0.113.5"));
    assert_eq!(f.index.seq(), seq);
}

/// A permanent block rule of tenant 1, as a store snapshot holds it.
fn block_rule(id: RuleId, target: &str) -> Rule {
    Rule {
        id,
        tenant: T1,
        action: RuleAction::Block,
        target: Target::parse_any(target).unwrap(),
        expires_at: None,
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

struct FixedNetworks;

impl Networks for FixedNetworks {
    fn networks(&self, target: &Target) -> Vec<IpNet> {
        let nets: &[&str] = match target {
            Target::Asn(asn) if asn.get() == 64500 => &["192.0.2.0/24", "2001:db8:64::/48"],
            Target::Country(code) if code.as_str() == "FR" => {
                &["198.51.100.0/25", "203.0.113.0/24"]
            }
            _ => &[],
        };
        nets.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn locate(&self, ip: IpAddr) -> GeoRecord {
        let inside = |net: &str| net.parse::<IpNet>().unwrap().contains(&ip);
        GeoRecord {
            asn: inside("192.0.2.0/24").then(|| Asn::new(64500)).flatten(),
            country: inside("203.0.113.0/24")
                .then(|| CountryCode::parse("FR"))
                .flatten(),
        }
    }
}

#[test]
fn answers_locate_addresses_by_the_geo_data_their_rules_were_compiled_with() {
    let mut f = Fixture::new();
    f.change(T1, 1, ChangeOp::Put, RuleAction::Block, "AS64500", None);
    let ip: IpAddr = "192.0.2.9".parse().unwrap();
    assert_eq!(f.index.view(T1).locate(ip), GeoRecord::default());
    assert!(!f.blocked("192.0.2.9"));

    // New geo data: the ASN and the rule's networks change together, at the swap.
    f.index.begin_rebuild();
    let snapshot = Snapshot {
        seq: f.seq,
        rules: vec![block_rule(1, "AS64500")],
    };
    f.index.rebuild(snapshot, Some(Arc::new(FixedNetworks)));
    let located = f.index.view(T1).locate(ip);
    assert_eq!(located.asn, Asn::new(64500));
    assert_eq!(located.country, None);
    assert!(f.blocked("192.0.2.9"));
}

#[test]
fn asn_and_country_rules_compile_into_their_networks() {
    let mut f = Fixture::with(Arc::new(FixedNetworks));
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

#[test]
fn rebuild_replays_what_happened_meanwhile() {
    let mut f = Fixture::with(Arc::new(FixedNetworks));
    f.block(1, "192.0.2.1");
    f.index.begin_rebuild();
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
    f.index.rebuild(snapshot, None);
    assert_eq!(f.index.seq(), 3);
    assert_eq!(f.matched("192.0.2.1"), [2]);
    assert!(f.blocked("2001:db8:64::5"));
}

#[test]
fn rebuild_never_shows_its_snapshot_without_the_changes_it_replays() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    // A reader that sees the epoch odd before and after a look-up ran it while rule 1 was in
    // force: the write had been applied, and its removal had not begun.
    let index = Index::new(Arc::new(NoNetworks));
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
            index.begin_rebuild();
            // The snapshot is read here, before the write.
            let snapshot = Snapshot {
                seq,
                rules: Vec::new(),
            };
            seq += 1;
            index.apply(&[change(seq, ChangeOp::Put)]);
            epoch.fetch_add(1, SeqCst);
            index.rebuild(snapshot, None);
            assert!(index.decide(T1, ip, NOW).blocked);
            epoch.fetch_add(1, SeqCst);
            seq += 1;
            index.apply(&[change(seq, ChangeOp::Delete)]);
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
            let mut got: Vec<i64> = rules.iter().map(|r| r.id).collect();
            got.sort();
            let want: Vec<i64> = active.iter().map(|(i, _)| *i as i64 + 1).collect();
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
            prop_assert_eq!(f.index.view(T1).lookup(ip, NOW).1.len(), covering.len());
        }
    }
}

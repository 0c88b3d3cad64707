//! ASN and country rules as the address ranges they cover, for enforcement points that only
//! know addresses (firewall bouncers, exports).
//!
//! A tenant's expansion is built once and kept until something it depends on changes: one of
//! the tenant's ASN or country rules (this cache follows the change feed as a sink), the geo
//! data (a reload), or the
//! expiry of one of the rules it was built from. Requests in between share the same
//! [`Expansion`]. Each build of a tenant gets a new generation number, so a follower can tell
//! whether anything may have changed since it last looked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use ipnet::IpNet;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::ranges::{Blocked, Overlay, Piece, Pieces, blocked, bounds};
use crate::clock::Clock;
use crate::engine::ChangeSink;
use crate::geo::ranges::{Row, overlay};
use crate::geo::{Family, Geo, GeoData};
use crate::index::{FOREVER, Index, NONE, Span};
use crate::keys::Principal;
use crate::rules::{RuleAction, Target, TenantId, UnixMillis};
use crate::store::{Change, Snapshot};

/// One tenant's ASN and country rules resolved to address ranges at one instant.
#[derive(Debug)]
pub struct Expansion {
    /// Grows with every build of any tenant: a different number may mean different ranges.
    pub generation: u64,
    /// When it was built; the ranges below hold their expiries, so it stays right after.
    pub built_at: UnixMillis,
    /// Until when it stays right: the earliest expiry of the rules it was built from.
    valid_until: i64,
    /// Per family, disjoint and in address order: the latest expiry of any ASN or country
    /// block rule and any such allow rule over each range.
    v4: Vec<Piece>,
    v6: Vec<Piece>,
    /// CIDR blocks of the ranges blocked at `built_at`.
    cidrs: usize,
}

impl Expansion {
    fn empty(generation: u64, now: UnixMillis) -> Self {
        Self {
            generation,
            built_at: now,
            valid_until: FOREVER,
            v4: Vec::new(),
            v6: Vec::new(),
            cidrs: 0,
        }
    }

    pub fn is_valid_at(&self, now: UnixMillis) -> bool {
        now.0 < self.valid_until
    }

    /// The pieces of one family, for joining with other sources ([`Overlay`]).
    pub fn pieces(&self, family: Family) -> &[Piece] {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    /// The ranges blocked at `now` (covered by an ASN or country block rule and by no ASN or
    /// country allow rule), IPv4 then IPv6, each in address order, neighbours with the same
    /// expiry joined. IP allow rules are not taken out: they are the IP rules' business
    /// ([`crate::index::IpRules`]).
    pub fn blocked(&self, now: UnixMillis) -> impl Iterator<Item = Blocked> + '_ {
        blocked(Family::V4, self.v4.iter().copied(), now).chain(blocked(
            Family::V6,
            self.v6.iter().copied(),
            now,
        ))
    }

    /// [`Expansion::blocked`] as the fewest CIDR blocks, each with its range's expiry.
    pub fn blocked_cidrs(
        &self,
        now: UnixMillis,
    ) -> impl Iterator<Item = (IpNet, Option<UnixMillis>)> + '_ {
        self.blocked(now)
            .flat_map(|range| range.cidrs().into_iter().map(move |net| (net, range.until)))
    }

    /// How many CIDR blocks [`Expansion::blocked_cidrs`] gave when it was built.
    pub fn cidr_count(&self) -> usize {
        self.cidrs
    }

    /// Refuses an expansion larger than a key may be given (a bouncer's ipset would be full).
    pub fn within(&self, limit: Option<usize>) -> Result<(), TooManyRanges> {
        match limit {
            Some(limit) if self.cidrs > limit => Err(TooManyRanges {
                ranges: self.cidrs,
                limit,
            }),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "ASN and country rules cover {ranges} CIDR ranges, more than this key's max_decisions ({limit})"
)]
pub struct TooManyRanges {
    pub ranges: usize,
    pub limit: usize,
}

/// How many expanded ranges each key may be given.
#[derive(Debug, Clone, Default)]
pub struct RangeLimits {
    pub default: Option<usize>,
    pub per_key: HashMap<i64, usize>,
}

impl RangeLimits {
    pub fn of(&self, key: &Principal) -> Option<usize> {
        self.of_key(key.key_id)
    }

    pub fn of_key(&self, key_id: i64) -> Option<usize> {
        self.per_key.get(&key_id).copied().or(self.default)
    }
}

#[derive(Default)]
struct Slot {
    generation: u64,
    built: Option<Arc<Expansion>>,
}

#[derive(Default)]
struct State {
    /// The last generation number given out.
    last: u64,
    tenants: HashMap<TenantId, Slot>,
    /// When each tenant's rules last changed, as far as the feed told since start-up.
    changed: HashMap<TenantId, UnixMillis>,
}

impl State {
    fn renew(&mut self, tenant: TenantId) -> u64 {
        self.last += 1;
        let generation = self.last;
        let slot = self.tenants.entry(tenant).or_default();
        slot.generation = generation;
        slot.built = None;
        generation
    }
}

/// The cache of every tenant's [`Expansion`].
pub struct Expansions {
    index: Arc<Index>,
    geo: Arc<Geo>,
    clock: Arc<dyn Clock>,
    started: UnixMillis,
    state: Mutex<State>,
}

impl Expansions {
    pub fn new(index: Arc<Index>, geo: Arc<Geo>, clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self {
            index,
            geo,
            started: clock.now(),
            clock,
            state: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a map of finished values: a panic elsewhere cannot leave it half-made.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The expansion of `tenant` now, built first if nothing valid is kept. Building reads the
    /// geo data's networks (tens of milliseconds for a large country), off the async runtime.
    pub async fn get(self: &Arc<Self>, tenant: TenantId) -> Arc<Expansion> {
        let now = self.clock.now();
        let generation = match self.kept(tenant, now) {
            Ok(kept) => return kept,
            Err(generation) => generation,
        };
        let this = self.clone();
        let built = tokio::task::spawn_blocking(move || this.build(tenant, now, generation)).await;
        let built = match built {
            Ok(built) => built,
            // Only a panic inside the build gets here; build it here rather than answer nothing.
            Err(_) => self.build(tenant, now, generation),
        };
        self.keep(tenant, &built);
        built
    }

    /// As [`Expansions::get`], building on the calling thread (command-line tools, tests).
    pub fn get_blocking(&self, tenant: TenantId) -> Arc<Expansion> {
        let now = self.clock.now();
        match self.kept(tenant, now) {
            Ok(kept) => kept,
            Err(generation) => {
                let built = self.build(tenant, now, generation);
                self.keep(tenant, &built);
                built
            }
        }
    }

    /// The current generation of `tenant`'s expansion, without building it.
    pub fn generation(&self, tenant: TenantId) -> u64 {
        let mut state = self.state();
        match state.tenants.get(&tenant) {
            Some(slot) => slot.generation,
            None => state.renew(tenant),
        }
    }

    /// The kept expansion, or the generation a new build gets.
    fn kept(&self, tenant: TenantId, now: UnixMillis) -> Result<Arc<Expansion>, u64> {
        let mut state = self.state();
        match state.tenants.get(&tenant) {
            Some(Slot {
                built: Some(built), ..
            }) if built.is_valid_at(now) => Ok(built.clone()),
            Some(Slot {
                built: None,
                generation,
            }) => Err(*generation),
            // Never built, or a rule it holds has expired since: the ranges differ now.
            _ => Err(state.renew(tenant)),
        }
    }

    /// Keeps a build unless something changed while it was made.
    fn keep(&self, tenant: TenantId, built: &Arc<Expansion>) {
        let mut state = self.state();
        if let Some(slot) = state.tenants.get_mut(&tenant)
            && slot.generation == built.generation
        {
            slot.built = Some(built.clone());
        }
    }

    /// Forgets the tenant's expansion: its ASN or country rules changed.
    pub fn invalidate(&self, tenant: TenantId) {
        let mut state = self.state();
        if state.tenants.contains_key(&tenant) {
            state.renew(tenant);
        }
    }

    /// When the tenant's rules (of any kind) last changed; the start of this process when
    /// none changed since.
    pub fn last_change(&self, tenant: TenantId) -> UnixMillis {
        self.state()
            .changed
            .get(&tenant)
            .copied()
            .unwrap_or(self.started)
    }

    /// Forgets every expansion: the geo data changed, or changes may have been missed.
    pub fn invalidate_all(&self) {
        let mut state = self.state();
        let tenants: Vec<TenantId> = state.tenants.keys().copied().collect();
        for tenant in tenants {
            state.renew(tenant);
        }
    }

    fn build(&self, tenant: TenantId, now: UnixMillis, generation: u64) -> Arc<Expansion> {
        let rules = self.index.geo_rules(tenant, now);
        if rules.is_empty() {
            return Arc::new(Expansion::empty(generation, now));
        }
        let data = self.geo.current();
        Arc::new(expand(&data, &rules, now, generation))
    }

    /// Follows the geo data's reloads; rule changes arrive through the change feed, of which
    /// this cache is a [`ChangeSink`]. The task ends when the geo data is dropped.
    pub fn follow_geo(self: &Arc<Self>, geo_versions: watch::Receiver<u64>) -> JoinHandle<()> {
        tokio::spawn(follow_geo(self.clone(), geo_versions))
    }
}

/// A sink after the index: when a change reaches this cache, the index already holds it, so a
/// build started after the change was forgotten here sees the new rules.
impl ChangeSink for Expansions {
    /// Notes when each tenant's rules changed; a change of a tenant's ASN or country rules
    /// forgets its expansion.
    fn apply(&self, changes: &[Change]) {
        let mut state = self.state();
        for change in changes {
            let at = state.changed.entry(change.tenant).or_insert(change.at);
            *at = (*at).max(change.at);
            if !matches!(change.target, Target::Ip(_)) && state.tenants.contains_key(&change.tenant)
            {
                state.renew(change.tenant);
            }
        }
    }

    fn reset(&self, _snapshot: &Snapshot) {
        self.invalidate_all();
    }
}

async fn follow_geo(expansions: Arc<Expansions>, mut versions: watch::Receiver<u64>) {
    while versions.changed().await.is_ok() {
        expansions.invalidate_all();
    }
}

/// The ranges of `rules` (ASN and country rules active at `now`) by `data`.
pub fn expand(
    data: &GeoData,
    rules: &[crate::index::RuleRef],
    now: UnixMillis,
    generation: u64,
) -> Expansion {
    // Where networks of several rules overlap, the latest expiry counts: the overlay keeps the
    // row of the highest rank, so expiries are ranked in order.
    let mut expiries: Vec<i64> = rules.iter().map(until).collect();
    expiries.sort_unstable();
    expiries.dedup();
    let rank = |at: i64| expiries.partition_point(|e| *e < at) as u32;
    let valid_until = expiries.first().copied().unwrap_or(FOREVER);

    // [action][family]
    let mut rows: [[Vec<Row<i64>>; 2]; 2] = Default::default();
    for rule in rules {
        let networks = match rule.target {
            Target::Asn(asn) => data.asn_networks(asn),
            Target::Country(code) => data.country_networks(code),
            Target::Ip(_) => continue,
        };
        let at = until(rule);
        let action = usize::from(rule.action == RuleAction::Allow);
        for net in networks {
            let (family, start, end) = bounds(net);
            rows[action][family as usize].push(Row::new(start, end, rank(at), at));
        }
    }
    let [block, allow] = rows;
    let [block_v4, block_v6] = block;
    let [allow_v4, allow_v6] = allow;
    let join = |block: Vec<Row<i64>>, allow: Vec<Row<i64>>| -> Vec<Piece> {
        let pieces = |rows: Vec<Row<i64>>, allows: bool| -> Pieces<'static> {
            Box::new(overlay(rows).into_iter().map(move |seg| Piece {
                start: seg.start,
                end: seg.end,
                span: if allows {
                    Span {
                        block_until: NONE,
                        allow_until: seg.value,
                    }
                } else {
                    Span {
                        block_until: seg.value,
                        allow_until: NONE,
                    }
                },
            }))
        };
        Overlay::new(vec![pieces(block, false), pieces(allow, true)]).collect()
    };
    let v4 = join(block_v4, allow_v4);
    let v6 = join(block_v6, allow_v6);
    let mut expansion = Expansion {
        generation,
        built_at: now,
        valid_until,
        v4,
        v6,
        cidrs: 0,
    };
    expansion.cidrs = expansion.blocked(now).map(|r| r.cidr_count()).sum();
    expansion
}

fn until(rule: &crate::index::RuleRef) -> i64 {
    rule.expires_at.map_or(FOREVER, |at| at.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::GeoConfig;
    use crate::engine::ChangeSink;
    use crate::rules::{Asn, CountryCode};
    use crate::store::{Change, ChangeOp};

    const TENANT: TenantId = TenantId(1);

    fn geo_files(dir: &std::path::Path) -> GeoConfig {
        let asn = dir.join("asn.csv");
        let country = dir.join("country.csv");
        std::fs::write(
            &asn,
            "192.0.2.0,192.0.2.255,64500\n\
             198.51.100.0,198.51.100.127,64501\n\
             2001:db8::,2001:db8:ffff:ffff:ffff:ffff:ffff:ffff,64500\n",
        )
        .unwrap();
        std::fs::write(
            &country,
            "192.0.2.0,192.0.3.255,FR\n\
             198.51.100.0,198.51.100.255,DE\n\
             2001:db8::,2001:db9:ffff:ffff:ffff:ffff:ffff:ffff,FR\n",
        )
        .unwrap();
        GeoConfig {
            asn: Some(asn),
            country: Some(country),
            watch_interval_secs: 0,
        }
    }

    fn change(seq: u64, id: i64, action: RuleAction, target: Target, until: Option<i64>) -> Change {
        Change {
            seq,
            tenant: TENANT,
            rule_id: id,
            op: ChangeOp::Put,
            action,
            target,
            expires_at: until.map(UnixMillis),
            name: None,
            source: crate::rules::Source::Signal,
            dataset: None,
            description: None,
            at: UnixMillis(0),
        }
    }

    fn cidrs(expansion: &Expansion, now: UnixMillis) -> Vec<(String, Option<i64>)> {
        expansion
            .blocked_cidrs(now)
            .map(|(net, until)| (net.to_string(), until.map(|u| u.0)))
            .collect()
    }

    #[test]
    fn block_rules_minus_allow_rules_in_the_fewest_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let geo = Geo::open(&geo_files(dir.path())).unwrap();
        let fr = Target::Country(CountryCode::parse("FR").unwrap());
        let rules = [
            (RuleAction::Block, fr, Some(5000)),
            (
                RuleAction::Block,
                Target::Asn(Asn::new(64501).unwrap()),
                None,
            ),
            (
                RuleAction::Allow,
                Target::Asn(Asn::new(64500).unwrap()),
                Some(3000),
            ),
        ]
        .map(|(action, target, until)| crate::index::RuleRef {
            id: 1,
            action,
            target,
            expires_at: until.map(UnixMillis),
            source: crate::rules::Source::Signal,
            texts: None,
        });
        let now = UnixMillis(1000);
        let expansion = expand(&geo.current(), &rules, now, 7);
        assert_eq!(
            cidrs(&expansion, now),
            [
                ("192.0.3.0/24".to_owned(), Some(5000)),
                ("198.51.100.0/25".to_owned(), None),
                // FR's IPv6 outside AS64500's /32.
                ("2001:db9::/32".to_owned(), Some(5000)),
            ]
        );
        assert_eq!(expansion.cidr_count(), 3);
        assert_eq!(expansion.generation, 7);
        assert!(expansion.is_valid_at(UnixMillis(2999)));
        assert!(!expansion.is_valid_at(UnixMillis(3000)));
        assert_eq!(
            expansion.within(Some(2)),
            Err(TooManyRanges {
                ranges: 3,
                limit: 2
            })
        );
        assert_eq!(expansion.within(Some(3)), Ok(()));
        // Once the allow rule has expired, all of FR is blocked again.
        let later = UnixMillis(3000);
        assert_eq!(cidrs(&expansion, later)[0].0, "192.0.2.0/23");
    }

    #[test]
    fn kept_until_a_geo_rule_changes_or_expires() {
        let dir = tempfile::tempdir().unwrap();
        let geo = Arc::new(Geo::open(&geo_files(dir.path())).unwrap());
        let index = Arc::new(Index::new(geo.current().clone()));
        let clock = Arc::new(ManualClock::new(UnixMillis(1000)));
        let expansions = Expansions::new(index.clone(), geo.clone(), clock.clone());
        let de = Target::Country(CountryCode::parse("DE").unwrap());
        let first = [change(1, 1, RuleAction::Block, de, Some(10_000))];
        index.apply(&first);
        expansions.apply(&first);

        let a = expansions.get_blocking(TENANT);
        assert_eq!(
            cidrs(&a, clock.now()),
            [("198.51.100.0/24".to_owned(), Some(10_000))]
        );
        let b = expansions.get_blocking(TENANT);
        assert!(Arc::ptr_eq(&a, &b), "built once");
        assert_eq!(expansions.generation(TENANT), a.generation);

        // An IP rule changes nothing here.
        let ip = [change(
            2,
            2,
            RuleAction::Block,
            Target::Ip("192.0.2.1/32".parse().unwrap()),
            None,
        )];
        index.apply(&ip);
        expansions.apply(&ip);
        assert!(Arc::ptr_eq(&a, &expansions.get_blocking(TENANT)));

        // An ASN rule does.
        let asn = [change(
            3,
            3,
            RuleAction::Block,
            Target::Asn(Asn::new(64500).unwrap()),
            None,
        )];
        index.apply(&asn);
        expansions.apply(&asn);
        let c = expansions.get_blocking(TENANT);
        assert!(c.generation > a.generation);
        assert_eq!(
            c.cidr_count(),
            3,
            "198.51.100.0/24, 192.0.2.0/24, 2001:db8::/32"
        );

        // So does the expiry of a rule it holds, even before the purge reports it.
        clock.set(UnixMillis(10_000));
        let d = expansions.get_blocking(TENANT);
        assert!(d.generation > c.generation);
        assert_eq!(d.cidr_count(), 2);

        // And new geo data, or the feed starting over from a snapshot.
        let e = expansions.get_blocking(TENANT);
        assert!(Arc::ptr_eq(&d, &e));
        expansions.invalidate_all();
        let f = expansions.get_blocking(TENANT);
        assert!(f.generation > e.generation);
        expansions.reset(&crate::store::Snapshot::default());
        assert!(expansions.get_blocking(TENANT).generation > f.generation);
        assert_eq!(expansions.last_change(TENANT), UnixMillis(0));
    }
}

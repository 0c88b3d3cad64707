//! The in-memory decision engine: every active rule of every tenant, compiled into prefix tables
//! so that "is this address blocked?" is one table look-up.
//!
//! IP rules go in as their own range. ASN and country rules go in as the networks the geo data
//! gives for them, so they cost nothing extra at look-up time; when the geo data changes, the
//! tables are rebuilt with it.
//!
//! The index follows the store only through its change log: [`Index::apply`] (the store's
//! [`ChangeSink`]) patches the tables in sequence order before a write is acknowledged, and
//! [`Index::rebuild`] builds fresh tables from a [`Snapshot`] and then replays the changes that
//! were applied while it was building.

mod table;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::{ArcSwap, Guard};
use ipnet::IpNet;

use crate::engine::ChangeSink;
use crate::geo::{GeoData, GeoRecord};
use crate::rules::{RuleAction, RuleId, Target, TenantId, UnixMillis, normalize_ip};
use crate::store::{Change, ChangeOp, Snapshot};
pub use table::Span;
use table::{Entry, Table, TableStats};

/// What the index keeps of a rule: enough to decide and to list a match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    pub id: RuleId,
    pub action: RuleAction,
    pub target: Target,
    pub expires_at: Option<UnixMillis>,
    pub name: Option<Arc<str>>,
}

impl RuleRef {
    pub fn is_active_at(&self, now: UnixMillis) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

/// The networks of ASN and country targets, from the geo data in force (IP targets are their
/// own network and are not asked about).
pub trait Networks: Send + Sync + 'static {
    fn networks(&self, target: &Target) -> Vec<IpNet>;

    /// The ASN and country of an address by the same data, so that an answer's ASN and country
    /// are the ones its ASN and country rules were compiled with, also while a rebuild for new
    /// geo data runs.
    fn locate(&self, _ip: IpAddr) -> GeoRecord {
        GeoRecord::default()
    }
}

impl Networks for GeoData {
    fn networks(&self, target: &Target) -> Vec<IpNet> {
        match target {
            Target::Ip(_) => Vec::new(),
            Target::Asn(asn) => self.asn_networks(*asn).to_vec(),
            Target::Country(code) => self.country_networks(*code).to_vec(),
        }
    }

    fn locate(&self, ip: IpAddr) -> GeoRecord {
        self.lookup(ip)
    }
}

/// No geo data: ASN and country rules are kept but cover no address.
pub struct NoNetworks;

impl Networks for NoNetworks {
    fn networks(&self, _target: &Target) -> Vec<IpNet> {
        Vec::new()
    }
}

fn networks_of(target: &Target, geo: &dyn Networks) -> Vec<IpNet> {
    match target {
        Target::Ip(net) => vec![*net],
        other => geo.networks(other),
    }
}

/// The answer for one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Verdict {
    /// An active block rule covers the address and no active allow rule does.
    pub blocked: bool,
    /// An active allow rule covers the address (it wins over any block).
    pub allowed: bool,
}

impl Verdict {
    fn of(span: Span, now: UnixMillis) -> Self {
        let allowed = span.allow_until > now.0;
        Verdict {
            blocked: span.block_until > now.0 && !allowed,
            allowed,
        }
    }
}

/// Entries of one tenant, per family, before they are built into tables.
type TenantEntries = (Vec<Entry<u32>>, Vec<Entry<u128>>);

/// One tenant's tables.
#[derive(Default)]
struct TenantIndex {
    v4: Table<u32>,
    v6: Table<u128>,
}

/// A set of tables and the geo data they were compiled with.
struct Generation {
    /// Indexed by tenant id (small, dense integers).
    tenants: Vec<Option<Arc<TenantIndex>>>,
    networks: Arc<dyn Networks>,
}

impl Generation {
    fn tenant(&self, tenant: TenantId) -> Option<&TenantIndex> {
        let slot = usize::try_from(tenant.0).ok()?;
        self.tenants.get(slot)?.as_deref()
    }
}

/// One tenant's tables at one instant. Holding it keeps that generation alive, so hold it
/// only while answering: a rebuild frees the old generation when the last view goes.
pub struct View {
    generation: Guard<Arc<Generation>>,
    tenant: TenantId,
}

impl View {
    /// The ASN and country of `ip` by the geo data these tables were compiled with.
    pub fn locate(&self, ip: IpAddr) -> GeoRecord {
        self.generation.networks.locate(ip)
    }

    /// The verdict and every active rule covering the address, deepest prefix first.
    pub fn lookup(&self, ip: IpAddr, now: UnixMillis) -> (Verdict, Vec<&RuleRef>) {
        let Some(index) = self.generation.tenant(self.tenant) else {
            return (Verdict::default(), Vec::new());
        };
        // A rule reaches an address through one of its networks at most: the networks of an
        // ASN or a country do not overlap, so no rule is listed twice.
        let rules = match normalize_ip(ip) {
            IpAddr::V4(v4) => index.v4.matches(u32::from(v4), now),
            IpAddr::V6(v6) => index.v6.matches(u128::from(v6), now),
        };
        let allowed = rules.iter().any(|r| r.action == RuleAction::Allow);
        let verdict = Verdict {
            blocked: !allowed && rules.iter().any(|r| r.action == RuleAction::Block),
            allowed,
        };
        (verdict, rules)
    }
}

struct WriterState {
    /// Last change applied.
    seq: u64,
    /// While a rebuild runs: the changes applied meanwhile, to replay onto the new tables.
    recording: Option<Vec<Change>>,
}

pub struct Index {
    current: ArcSwap<Generation>,
    writer: Mutex<WriterState>,
}

impl Index {
    pub fn new(networks: Arc<dyn Networks>) -> Self {
        Self {
            current: ArcSwap::from_pointee(Generation {
                tenants: Vec::new(),
                networks,
            }),
            writer: Mutex::new(WriterState {
                seq: 0,
                recording: None,
            }),
        }
    }

    fn writer(&self) -> MutexGuard<'_, WriterState> {
        // A panic while holding the lock leaves tables that are still each consistent; keep going.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last change the index reflects.
    pub fn seq(&self) -> u64 {
        self.writer().seq
    }

    /// Blocked or not: the hot path.
    pub fn decide(&self, tenant: TenantId, ip: IpAddr, now: UnixMillis) -> Verdict {
        let generation = self.current.load();
        let Some(index) = generation.tenant(tenant) else {
            return Verdict::default();
        };
        let span = match normalize_ip(ip) {
            IpAddr::V4(v4) => index.v4.span(u32::from(v4)),
            IpAddr::V6(v6) => index.v6.span(u128::from(v6)),
        };
        Verdict::of(span, now)
    }

    /// The tables of `tenant` as they stand now, for listings that borrow the rule records
    /// instead of counting references to them (an atomic write to each record's cache line).
    pub fn view(&self, tenant: TenantId) -> View {
        View {
            generation: self.current.load(),
            tenant,
        }
    }

    /// Replaces all tables with ones built from `snapshot` (and `networks`, when given), then
    /// replays the changes applied since the snapshot was taken.
    ///
    /// Call [`Index::begin_rebuild`] before reading the snapshot so that no change slips between
    /// the snapshot and the swap.
    pub fn rebuild(&self, snapshot: Snapshot, networks: Option<Arc<dyn Networks>>) {
        let networks = networks.unwrap_or_else(|| self.current.load().networks.clone());
        let mut by_tenant: HashMap<TenantId, TenantEntries> = HashMap::new();
        for rule in snapshot.rules {
            let rule_ref = Arc::new(RuleRef {
                id: rule.id,
                action: rule.action,
                target: rule.target,
                expires_at: rule.expires_at,
                name: rule.name.map(Arc::from),
            });
            let (v4, v6) = by_tenant.entry(rule.tenant).or_default();
            push_entries(&rule_ref, &*networks, v4, v6);
        }
        let mut tenants: Vec<Option<Arc<TenantIndex>>> = Vec::new();
        for (tenant, (v4, v6)) in by_tenant {
            let Ok(slot) = usize::try_from(tenant.0) else {
                continue;
            };
            if tenants.len() <= slot {
                tenants.resize_with(slot + 1, || None);
            }
            tenants[slot] = Some(Arc::new(TenantIndex {
                v4: Table::build(v4),
                v6: Table::build(v6),
            }));
        }

        let mut state = self.writer();
        let missed = state.recording.take().unwrap_or_default();
        let built = Generation { tenants, networks };
        // The changes committed while the snapshot was being built go onto the new tables
        // before they are published: published alone, they would hide acknowledged writes from
        // look-ups until the replay landed.
        let replay: Vec<&Change> = missed.iter().filter(|c| c.seq > snapshot.seq).collect();
        self.current.store(Arc::new(patched(&built, &replay)));
        // Every recorded change was applied to the old tables first, so `seq` already covers
        // them; a snapshot can only be newer than it.
        state.seq = state.seq.max(snapshot.seq);
    }

    /// Starts recording applied changes for a rebuild about to read its snapshot.
    pub fn begin_rebuild(&self) {
        self.writer().recording = Some(Vec::new());
    }

    /// Stops recording when a rebuild is abandoned (its snapshot could not be read).
    pub fn abandon_rebuild(&self) {
        self.writer().recording = None;
    }

    fn apply_locked(&self, state: &mut WriterState, changes: &[Change]) {
        let fresh: Vec<&Change> = changes.iter().filter(|c| c.seq > state.seq).collect();
        let Some(last) = fresh.last() else {
            return;
        };
        let last_seq = last.seq;
        if let Some(recording) = &mut state.recording {
            recording.extend(fresh.iter().map(|c| (*c).clone()));
        }
        // Every change of this call becomes visible at once.
        let next = patched(&self.current.load(), &fresh);
        self.current.store(Arc::new(next));
        state.seq = last_seq;
    }

    /// Prefixes held and heap bytes used, over all tenants.
    pub fn stats(&self) -> IndexStats {
        let generation = self.current.load();
        let mut tables = TableStats::default();
        let mut rules = HashMap::new();
        for tenant in generation.tenants.iter().flatten() {
            tables += tenant.v4.stats(&mut rules);
            tables += tenant.v6.stats(&mut rules);
        }
        let rule_bytes = rules
            .values()
            .map(|name_bytes| size_of::<RuleRef>() + 2 * size_of::<usize>() + name_bytes)
            .sum();
        IndexStats {
            prefixes: tables.prefixes,
            table_bytes: tables.hot + tables.intervals + tables.nodes + tables.rule_lists,
            rule_bytes,
            tables,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Distinct prefixes, counted once per bucket they are stored in.
    pub prefixes: usize,
    pub table_bytes: usize,
    /// The rule records the tables point to (one per rule, whatever its number of prefixes).
    pub rule_bytes: usize,
    pub tables: TableStats,
}

impl ChangeSink for Index {
    fn apply(&self, changes: &[Change]) {
        let mut state = self.writer();
        self.apply_locked(&mut state, changes);
    }

    fn reset(&self, snapshot: &Snapshot) {
        self.begin_rebuild();
        self.rebuild(snapshot.clone(), None);
    }
}

/// `base` with `changes` applied, in order of their sequence numbers.
fn patched(base: &Generation, changes: &[&Change]) -> Generation {
    // Of several changes to one rule only the last matters. The target is part of the
    // key as well, so that even a reused id could not hide the removal of another target.
    let mut latest: HashMap<(TenantId, RuleId, RuleAction, Target), &Change> = HashMap::new();
    for change in changes {
        latest.insert(
            (change.tenant, change.rule_id, change.action, change.target),
            change,
        );
    }
    let mut by_tenant: HashMap<TenantId, Vec<&Change>> = HashMap::new();
    for change in latest.into_values() {
        by_tenant.entry(change.tenant).or_default().push(change);
    }

    let mut tenants = base.tenants.clone();
    for (tenant, changes) in by_tenant {
        let Ok(slot) = usize::try_from(tenant.0) else {
            continue;
        };
        let (mut add4, mut add6, mut del4, mut del6) = (vec![], vec![], vec![], vec![]);
        for change in changes {
            for net in networks_of(&change.target, &*base.networks) {
                match net {
                    IpNet::V4(n) => {
                        del4.push((u32::from(n.network()), n.prefix_len(), change.rule_id))
                    }
                    IpNet::V6(n) => {
                        del6.push((u128::from(n.network()), n.prefix_len(), change.rule_id))
                    }
                }
            }
            if change.op == ChangeOp::Put {
                let rule_ref = Arc::new(RuleRef {
                    id: change.rule_id,
                    action: change.action,
                    target: change.target,
                    expires_at: change.expires_at,
                    name: change.name.as_deref().map(Arc::from),
                });
                push_entries(&rule_ref, &*base.networks, &mut add4, &mut add6);
            }
        }
        if tenants.len() <= slot {
            tenants.resize_with(slot + 1, || None);
        }
        let updated = match tenants[slot].as_deref() {
            Some(current) => TenantIndex {
                v4: current.v4.updated(add4, del4),
                v6: current.v6.updated(add6, del6),
            },
            None => TenantIndex {
                v4: Table::build(add4),
                v6: Table::build(add6),
            },
        };
        tenants[slot] = Some(Arc::new(updated));
    }
    Generation {
        tenants,
        networks: base.networks.clone(),
    }
}

fn push_entries(
    rule: &Arc<RuleRef>,
    networks: &dyn Networks,
    v4: &mut Vec<Entry<u32>>,
    v6: &mut Vec<Entry<u128>>,
) {
    for net in networks_of(&rule.target, networks) {
        match net {
            IpNet::V4(n) => v4.push(Entry {
                start: u32::from(n.network()),
                len: n.prefix_len(),
                rule: rule.clone(),
            }),
            IpNet::V6(n) => v6.push(Entry {
                start: u128::from(n.network()),
                len: n.prefix_len(),
                rule: rule.clone(),
            }),
        }
    }
}

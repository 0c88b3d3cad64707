//! The in-memory decision engine: every active rule of every tenant, so that "is this address
//! blocked?" is one table look-up, and a geo look-up for tenants with ASN or country rules.
//!
//! IP rules are compiled into per-/16 prefix tables (`table`). ASN and country rules are kept by
//! the ASN or country they name (`geo_rules`) and matched at look-up time against the address's
//! geo record, read from the geo data the index holds beside the tables. A change to an ASN or
//! country rule therefore costs the same whatever the rule covers (blocking every country
//! touches no table), and new geo data is published with one pointer swap: the same tables, the
//! new data, and no answer that mixes the two.
//!
//! The index follows the store only through its change log: [`Index::apply`] (the store's
//! [`ChangeSink`]) patches the tables in sequence order before a write is acknowledged, and
//! [`Index::rebuild`] builds fresh tables from a [`Snapshot`] at start-up.

mod geo_rules;
mod table;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arc_swap::{ArcSwap, Guard};
use ipnet::IpNet;

use crate::engine::ChangeSink;
use crate::geo::{GeoData, GeoRecord};
use crate::rules::{
    Kind, Rule, RuleAction, RuleId, Source, Target, TenantId, UnixMillis, normalize_ip,
};
use crate::store::{Change, ChangeOp, Snapshot};
use geo_rules::GeoRules;
use table::{Entry, Table, TableStats};
pub use table::{FOREVER, NONE, Span};

/// What the index keeps of a rule: enough to decide and to list a match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    pub id: RuleId,
    pub action: RuleAction,
    pub target: Target,
    pub expires_at: Option<UnixMillis>,
    /// Which API made the rule: a bouncer's decision names its origin.
    pub source: Source,
    /// The rule's name, report dataset and description, one allocation shared by every rule
    /// with the same three (see [`Texts`]); `None` for a rule with none of them.
    pub texts: Option<Arc<RuleTexts>>,
}

// Bucket rebuilds copy records by the thousand: keep them this small.
const _: () = assert!(size_of::<RuleRef>() == 56);

/// A rule's texts, as the index keeps them.
#[derive(Debug, PartialEq, Eq)]
pub struct RuleTexts {
    pub name: Option<Box<str>>,
    /// The report dataset: a bouncer's decision names it as its origin.
    pub dataset: Option<Box<str>>,
    /// Kept only for rules without a name: a decision's scenario is the name, or else this.
    pub description: Option<Box<str>>,
}

/// A rule's name, dataset and description, borrowed.
type TextParts<'a> = [Option<&'a str>; 3];

impl RuleTexts {
    fn parts(&self) -> TextParts<'_> {
        [
            self.name.as_deref(),
            self.dataset.as_deref(),
            self.description.as_deref(),
        ]
    }
}

impl RuleRef {
    pub fn name(&self) -> Option<&str> {
        self.texts.as_deref()?.name.as_deref()
    }

    pub fn dataset(&self) -> Option<&str> {
        self.texts.as_deref()?.dataset.as_deref()
    }

    pub fn description(&self) -> Option<&str> {
        self.texts.as_deref()?.description.as_deref()
    }

    pub fn is_active_at(&self, now: UnixMillis) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

/// The texts of the rules, one allocation per distinct (name, dataset, description). Rules
/// loaded together mostly repeat a few (a scenario's name, a dataset), and the prefix tables
/// copy rule records whenever they rebuild a bucket. One pointer for all three keeps a record
/// small (56 bytes instead of 96 with a counted pointer per text), and a copy counts one shared
/// allocation up, whose count every copy finds in cache.
#[derive(Default)]
struct Texts {
    known: hashbrown::HashTable<Arc<RuleTexts>>,
    /// Seeded per process: the texts come from clients.
    hasher: foldhash::fast::RandomState,
    /// How many were known after the last sweep of the unused ones.
    after_sweep: usize,
}

impl Texts {
    fn get(&mut self, parts: TextParts<'_>) -> Option<Arc<RuleTexts>> {
        if parts == [None; 3] {
            return None;
        }
        let hasher = &self.hasher;
        let entry = self.known.entry(
            hasher.hash_one(parts),
            |known| known.parts() == parts,
            |known| hasher.hash_one(known.parts()),
        );
        let texts = entry.or_insert_with(|| {
            let [name, dataset, description] = parts.map(|part| part.map(Box::from));
            Arc::new(RuleTexts {
                name,
                dataset,
                description,
            })
        });
        Some(texts.get().clone())
    }

    fn len(&self) -> usize {
        self.known.len()
    }

    /// Forgets the texts no rule holds any more, once their number may have doubled: the set
    /// stays within twice the texts in use, whatever the churn, at a cost spread over the
    /// insertions that grew it.
    fn sweep_now_and_then(&mut self) {
        if self.known.len() > 2 * self.after_sweep + 1024 {
            self.known.retain(|texts| Arc::strong_count(texts) > 1);
            self.after_sweep = self.known.len();
        }
    }

    fn rule(&mut self, rule: &Rule) -> RuleRef {
        self.record(
            RuleRef {
                id: rule.id,
                action: rule.action,
                target: rule.target,
                expires_at: rule.expires_at,
                source: rule.source,
                texts: None,
            },
            [&rule.name, &rule.dataset, &rule.description],
        )
    }

    fn change(&mut self, change: &Change) -> RuleRef {
        self.record(
            RuleRef {
                id: change.rule_id,
                action: change.action,
                target: change.target,
                expires_at: change.expires_at,
                source: change.source,
                texts: None,
            },
            [&change.name, &change.dataset, &change.description],
        )
    }

    /// `record` with its name, dataset and description. The description is kept only where
    /// a decision shows it: for rules without a name.
    fn record(
        &mut self,
        record: RuleRef,
        [name, dataset, description]: [&Option<String>; 3],
    ) -> RuleRef {
        let description = description.as_deref().filter(|_| name.is_none());
        RuleRef {
            texts: self.get([name.as_deref(), dataset.as_deref(), description]),
            ..record
        }
    }
}

/// Heap bytes of the rules' texts, each distinct allocation counted once.
#[derive(Default)]
struct TextBytes(HashMap<*const RuleTexts, usize>);

impl TextBytes {
    fn add(&mut self, texts: &Arc<RuleTexts>) {
        // The record with its two reference counts, and the texts it points to.
        let text_bytes: usize = texts.parts().iter().flatten().map(|text| text.len()).sum();
        self.0.insert(
            Arc::as_ptr(texts),
            size_of::<RuleTexts>() + 2 * size_of::<usize>() + text_bytes,
        );
    }

    fn total(&self) -> usize {
        self.0.values().sum()
    }
}

/// The ASN and country of an address, from the geo data in force: what ASN and country rules
/// are matched by.
pub trait Locate: Send + Sync + 'static {
    fn locate(&self, ip: IpAddr) -> GeoRecord;
}

impl Locate for GeoData {
    fn locate(&self, ip: IpAddr) -> GeoRecord {
        self.lookup(ip)
    }
}

/// No geo data: ASN and country rules are kept but cover no address.
pub struct NoGeo;

impl Locate for NoGeo {
    fn locate(&self, _ip: IpAddr) -> GeoRecord {
        GeoRecord::default()
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

/// One tenant's rules at one instant.
#[derive(Clone)]
struct TenantIndex {
    /// Shared with the generations before and after as long as no IP rule of the tenant changes.
    ip: Arc<IpTables>,
    /// `None` while the tenant has no ASN or country rule: its decisions never read geo data.
    geo: Option<Arc<GeoRules>>,
}

/// One tenant's IP rules.
struct IpTables {
    v4: Table<u32>,
    v6: Table<u128>,
}

impl IpTables {
    fn build(v4: Vec<Entry<u32>>, v6: Vec<Entry<u128>>) -> Self {
        Self {
            v4: Table::build(v4),
            v6: Table::build(v6),
        }
    }
}

/// One tenant's IP rules at one instant, as the disjoint intervals decisions read: what an
/// export walks. Holds that instant's tables (not the whole generation) for as long as it is
/// kept, however the rules change meanwhile.
#[derive(Clone)]
pub struct IpRules(Option<Arc<IpTables>>);

impl IpRules {
    /// IPv4 intervals in address order, as `(first, last, span)`: the latest expiry of any
    /// block and any allow rule over each. Gaps are left out; intervals of neighbouring /16s
    /// are not joined.
    pub fn v4(&self) -> impl Iterator<Item = (u128, u128, Span)> + '_ {
        self.0.iter().flat_map(|tables| tables.v4.intervals())
    }

    /// As [`IpRules::v4`], for IPv6.
    pub fn v6(&self) -> impl Iterator<Item = (u128, u128, Span)> + '_ {
        self.0.iter().flat_map(|tables| tables.v6.intervals())
    }
}

/// Every tenant's rules, and the geo data their ASN and country rules are matched by.
struct Generation {
    /// Indexed by tenant id (small, dense integers).
    tenants: Vec<Option<TenantIndex>>,
    geo: Arc<dyn Locate>,
}

impl Generation {
    fn tenant(&self, tenant: TenantId) -> Option<&TenantIndex> {
        let slot = usize::try_from(tenant.0).ok()?;
        self.tenants.get(slot)?.as_ref()
    }
}

/// What an answer shows about one address, all from one generation.
#[derive(Debug)]
pub struct Lookup {
    pub verdict: Verdict,
    /// The record the ASN and country rules among `rules` were matched by.
    pub geo: GeoRecord,
    /// Every active rule covering the address: IP rules deepest prefix first, then the rules
    /// naming its ASN, then those naming its country.
    pub rules: Vec<RuleRef>,
}

/// One tenant's rules at one instant. Holding it keeps that generation alive, so hold it only
/// while answering: every change frees the generation before it when its last view goes.
pub struct View {
    generation: Guard<Arc<Generation>>,
    tenant: TenantId,
}

impl View {
    /// The ASN and country of `ip` by the geo data of this generation.
    pub fn locate(&self, ip: IpAddr) -> GeoRecord {
        self.generation.geo.locate(ip)
    }

    /// The verdict and every active rule covering the address (see [`Lookup::rules`]). Reads
    /// the geo data only for a tenant with ASN or country rules.
    pub fn lookup(&self, ip: IpAddr, now: UnixMillis) -> (Verdict, Vec<RuleRef>) {
        let ip = normalize_ip(ip);
        let has_geo_rules = self
            .generation
            .tenant(self.tenant)
            .is_some_and(|index| index.geo.is_some());
        let geo = if has_geo_rules {
            self.locate(ip)
        } else {
            GeoRecord::default()
        };
        let found = self.lookup_by(ip, now, geo);
        (found.verdict, found.rules)
    }

    /// A full answer: the verdict, the address's geo record and the rules covering it, with one
    /// geo look-up that both the answer's ASN and country and its rules come from.
    pub fn lookup_with_geo(&self, ip: IpAddr, now: UnixMillis) -> Lookup {
        let ip = normalize_ip(ip);
        // Geo first: its reads are independent of the tables', so the processor overlaps the
        // tables' first misses to memory with the geo look-up's last ones.
        let geo = self.locate(ip);
        self.lookup_by(ip, now, geo)
    }

    fn lookup_by(&self, ip: IpAddr, now: UnixMillis, geo: GeoRecord) -> Lookup {
        let Some(index) = self.generation.tenant(self.tenant) else {
            return Lookup {
                verdict: Verdict::default(),
                geo,
                rules: Vec::new(),
            };
        };
        let mut rules = match ip {
            IpAddr::V4(v4) => index.ip.v4.matches(u32::from(v4), now),
            IpAddr::V6(v6) => index.ip.v6.matches(u128::from(v6), now),
        };
        if let Some(geo_rules) = &index.geo {
            geo_rules.matches(geo, now, &mut rules);
        }
        let allowed = rules.iter().any(|r| r.action == RuleAction::Allow);
        let verdict = Verdict {
            blocked: !allowed && rules.iter().any(|r| r.action == RuleAction::Block),
            allowed,
        };
        Lookup {
            verdict,
            geo,
            rules,
        }
    }
}

/// A rebuild was refused: the index had already applied changes newer than its snapshot, which
/// the snapshot may lack. Read a new snapshot and try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the index has applied change {applied}, newer than the snapshot (change {snapshot})")]
pub struct StaleSnapshot {
    pub snapshot: u64,
    pub applied: u64,
}

/// What the one writer of the index keeps between changes.
#[derive(Default)]
struct Writer {
    /// The last change applied.
    seq: u64,
    texts: Texts,
    /// The highest id of any rule the tables have held. A rule above it is new to them, so its
    /// first put has nothing to replace: most puts under ingest, and each one's bucket is then
    /// rebuilt without a search for an older copy of the rule.
    highest_rule: RuleId,
}

pub struct Index {
    current: ArcSwap<Generation>,
    /// Held while a new generation is made from the current one, so that two writers never
    /// publish over each other.
    writer: Mutex<Writer>,
}

impl Index {
    pub fn new(geo: Arc<dyn Locate>) -> Self {
        Self {
            current: ArcSwap::from_pointee(Generation {
                tenants: Vec::new(),
                geo,
            }),
            writer: Mutex::new(Writer::default()),
        }
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
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
        let ip = normalize_ip(ip);
        let mut span = match ip {
            IpAddr::V4(v4) => index.ip.v4.span(u32::from(v4)),
            IpAddr::V6(v6) => index.ip.v6.span(u128::from(v6)),
        };
        // Tenants without ASN or country rules pay this one branch.
        if let Some(geo_rules) = &index.geo
            && geo_rules.could_change(span, now)
        {
            span = span.widen(geo_rules.span(generation.geo.locate(ip)));
        }
        Verdict::of(span, now)
    }

    /// The rules of `tenant` as they stand now, for listings that borrow the rule records
    /// instead of counting references to them (an atomic write to each record's cache line).
    pub fn view(&self, tenant: TenantId) -> View {
        View {
            generation: self.current.load(),
            tenant,
        }
    }

    /// The IP rules of `tenant` as they stand now.
    pub fn ip_rules(&self, tenant: TenantId) -> IpRules {
        IpRules(
            self.current
                .load()
                .tenant(tenant)
                .map(|index| index.ip.clone()),
        )
    }

    /// The ASN and country rules of `tenant` active at `now`, in no particular order.
    pub fn geo_rules(&self, tenant: TenantId, now: UnixMillis) -> Vec<RuleRef> {
        let generation = self.current.load();
        let mut out = Vec::new();
        if let Some(geo) = generation.tenant(tenant).and_then(|t| t.geo.as_deref()) {
            geo.each(|rule| {
                if rule.is_active_at(now) {
                    out.push(rule.clone());
                }
            });
        }
        out
    }

    /// Publishes `geo` as the data that ASN and country rules are matched by, beside the same
    /// tables: one swap, after which every look-up uses the new data for both the rules and the
    /// answer's ASN and country.
    pub fn set_geo(&self, geo: Arc<dyn Locate>) {
        // Under the writer lock: a change being applied would otherwise publish its generation,
        // made from the current one, over this one.
        let _writer = self.writer();
        let tenants = self.current.load().tenants.clone();
        self.current.store(Arc::new(Generation { tenants, geo }));
    }

    /// Replaces every tenant's rules with those of `snapshot` (start-up). Refused when the index
    /// has applied a change newer than the snapshot, which the snapshot may not hold: publishing
    /// it would hide an acknowledged write from look-ups.
    pub fn rebuild(&self, snapshot: Snapshot) -> Result<(), StaleSnapshot> {
        type Rules = (Vec<Entry<u32>>, Vec<Entry<u128>>, GeoRules);
        let mut by_tenant: HashMap<TenantId, Rules> = HashMap::new();
        let mut texts = Texts::default();
        let mut highest_rule = 0;
        for rule in snapshot.rules {
            highest_rule = highest_rule.max(rule.id);
            let rule_ref = texts.rule(&rule);
            let (v4, v6, geo) = by_tenant.entry(rule.tenant).or_default();
            match rule.target {
                Target::Ip(net) => push_entry(net, rule_ref, v4, v6),
                Target::Asn(_) | Target::Country(_) => geo.put(Arc::new(rule_ref)),
            }
        }
        texts.after_sweep = texts.len();
        let mut tenants: Vec<Option<TenantIndex>> = Vec::new();
        for (tenant, (v4, v6, mut geo)) in by_tenant {
            let Ok(slot) = usize::try_from(tenant.0) else {
                continue;
            };
            if tenants.len() <= slot {
                tenants.resize_with(slot + 1, || None);
            }
            geo.refresh();
            tenants[slot] = Some(TenantIndex {
                ip: Arc::new(IpTables::build(v4, v6)),
                geo: (!geo.is_empty()).then(|| Arc::new(geo)),
            });
        }

        let mut writer = self.writer();
        if writer.seq > snapshot.seq {
            return Err(StaleSnapshot {
                snapshot: snapshot.seq,
                applied: writer.seq,
            });
        }
        let geo = self.current.load().geo.clone();
        self.current.store(Arc::new(Generation { tenants, geo }));
        writer.seq = snapshot.seq;
        writer.texts = texts;
        writer.highest_rule = highest_rule;
        Ok(())
    }

    fn apply_locked(&self, writer: &mut Writer, changes: &[Change]) {
        let fresh: Vec<&Change> = changes.iter().filter(|c| c.seq > writer.seq).collect();
        let Some(last) = fresh.last() else {
            return;
        };
        let last_seq = last.seq;
        // Every change of this call becomes visible at once.
        let next = patched(
            &self.current.load(),
            &fresh,
            &mut writer.texts,
            writer.highest_rule,
        );
        release_later(self.current.swap(Arc::new(next)));
        writer.seq = last_seq;
        let highest_now = fresh.iter().map(|change| change.rule_id).max();
        writer.highest_rule = writer.highest_rule.max(highest_now.unwrap_or(0));
        writer.texts.sweep_now_and_then();
    }

    /// Rules in force at `now`, counted by tenant, kind and action (for metrics: a walk over
    /// every table, so not for the look-up path).
    pub fn active_rules(&self, now: UnixMillis) -> HashMap<(TenantId, Kind, RuleAction), u64> {
        let generation = self.current.load();
        let mut counts = HashMap::new();
        for (slot, tenant) in generation.tenants.iter().enumerate() {
            let Some(tenant) = tenant else {
                continue;
            };
            let id = TenantId(slot as i64);
            // A rule spread over several buckets is one rule.
            let mut seen = std::collections::HashSet::new();
            let mut count = |rule: &RuleRef| {
                if rule.is_active_at(now) && seen.insert(rule.id) {
                    *counts
                        .entry((id, rule.target.kind(), rule.action))
                        .or_insert(0) += 1;
                }
            };
            tenant.ip.v4.for_each_rule(&mut count);
            tenant.ip.v6.for_each_rule(&mut count);
            if let Some(geo) = &tenant.geo {
                geo.each(&mut count);
            }
        }
        counts
    }

    /// Prefixes held and heap bytes used, over all tenants.
    pub fn stats(&self) -> IndexStats {
        let generation = self.current.load();
        let mut tables = TableStats::default();
        let (mut records, mut texts) = (std::collections::HashSet::new(), TextBytes::default());
        let (mut geo_rules, mut geo_bytes) = (0, 0);
        for tenant in generation.tenants.iter().flatten() {
            tables += tenant.ip.v4.stats(&mut texts);
            tables += tenant.ip.v6.stats(&mut texts);
            if let Some(geo) = &tenant.geo {
                let (count, bytes) = geo.stats(&mut records, &mut texts);
                geo_rules += count;
                geo_bytes += bytes;
            }
        }
        let rule_bytes =
            records.len() * (size_of::<RuleRef>() + 2 * size_of::<usize>()) + texts.total();
        IndexStats {
            prefixes: tables.prefixes,
            table_bytes: tables.hot + tables.intervals + tables.nodes + tables.rule_lists,
            rule_bytes,
            geo_rules,
            geo_bytes,
            tables,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Distinct prefixes of IP rules, counted once per bucket they are stored in.
    pub prefixes: usize,
    pub table_bytes: usize,
    /// The records of ASN and country rules (IP rules' records are part of the tables), and
    /// the texts of all rules, each counted once however many rules share it.
    pub rule_bytes: usize,
    /// ASN and country rules, and the heap bytes of the maps that hold them.
    pub geo_rules: usize,
    pub geo_bytes: usize,
    pub tables: TableStats,
}

impl ChangeSink for Index {
    fn apply(&self, changes: &[Change]) {
        let mut writer = self.writer();
        self.apply_locked(&mut writer, changes);
    }

    fn reset(&self, snapshot: &Snapshot) {
        // The feed hands snapshots on in order, so one can never be older than what was
        // applied; if it were, keeping the newer tables is the safe side.
        if let Err(stale) = self.rebuild(snapshot.clone()) {
            tracing::error!(
                ?stale,
                "the feed handed on a stale snapshot; kept the newer rules"
            );
        }
    }
}

/// Generations waiting for [`release_later`]'s thread before a publisher waits for it.
const RELEASE_BACKLOG: usize = 2;

/// Releases a replaced generation on a thread of its own. Releasing is a walk over the old
/// tables that frees every part the new generation replaced (about a seventh of a publishing
/// round's time under scattered ingest), and the writes of a round are answered only once it
/// is published: that walk need not delay them. The channel is bounded, so a publisher faster
/// than the release waits rather than piling up old generations.
fn release_later(old: Arc<Generation>) {
    static RELEASER: OnceLock<Option<SyncSender<Arc<Generation>>>> = OnceLock::new();
    let releaser = RELEASER.get_or_init(|| {
        let (sender, old_generations) = sync_channel::<Arc<Generation>>(RELEASE_BACKLOG);
        std::thread::Builder::new()
            .name("palisade-release".into())
            .spawn(move || old_generations.into_iter().for_each(drop))
            .ok()?;
        Some(sender)
    });
    // Without the thread (it could not start), the publisher releases it itself.
    if let Some(sender) = releaser {
        let _ = sender.send(old);
    }
}

/// `base` with `changes` applied, in order of their sequence numbers. `highest_rule` is the
/// highest id of any rule `base` or a generation before it held.
fn patched(
    base: &Generation,
    changes: &[&Change],
    texts: &mut Texts,
    highest_rule: RuleId,
) -> Generation {
    // Of several changes to one rule only the last matters. The target is part of the
    // key as well, so that even a reused id could not hide the removal of another target.
    // Hashed with foldhash, seeded per process (targets come from clients): SipHash was a
    // few percent of a round.
    let mut latest: foldhash::HashMap<(TenantId, RuleId, RuleAction, Target), &Change> =
        foldhash::HashMap::with_capacity_and_hasher(changes.len(), Default::default());
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
        if tenants.len() <= slot {
            tenants.resize_with(slot + 1, || None);
        }
        let (mut add4, mut add6, mut del4, mut del6) = (vec![], vec![], vec![], vec![]);
        let mut geo_changes = Vec::new();
        for change in changes {
            let Target::Ip(net) = change.target else {
                geo_changes.push(change);
                continue;
            };
            // A rule new to the tables has no older copy in them to remove.
            let first_put = change.op == ChangeOp::Put && change.rule_id > highest_rule;
            match net {
                _ if first_put => {}
                IpNet::V4(n) => del4.push((u32::from(n.network()), n.prefix_len(), change.rule_id)),
                IpNet::V6(n) => {
                    del6.push((u128::from(n.network()), n.prefix_len(), change.rule_id))
                }
            }
            if change.op == ChangeOp::Put {
                push_entry(net, texts.change(change), &mut add4, &mut add6);
            }
        }
        let current = tenants[slot].take();
        let ip = match &current {
            Some(current)
                if add4.is_empty() && add6.is_empty() && del4.is_empty() && del6.is_empty() =>
            {
                current.ip.clone()
            }
            Some(current) => Arc::new(IpTables {
                v4: current.ip.v4.updated(add4, del4),
                v6: current.ip.v6.updated(add6, del6),
            }),
            None => Arc::new(IpTables::build(add4, add6)),
        };
        let mut geo = current.and_then(|current| current.geo);
        if !geo_changes.is_empty() {
            // Copies the shard pointers and, below, each shard edited: never the tables.
            let mut rules = geo.as_deref().cloned().unwrap_or_default();
            for change in geo_changes {
                rules.remove(change.rule_id, &change.target);
                if change.op == ChangeOp::Put {
                    rules.put(Arc::new(texts.change(change)));
                }
            }
            rules.refresh();
            geo = (!rules.is_empty()).then(|| Arc::new(rules));
        }
        tenants[slot] = Some(TenantIndex { ip, geo });
    }
    Generation {
        tenants,
        geo: base.geo.clone(),
    }
}

fn push_entry(net: IpNet, rule: RuleRef, v4: &mut Vec<Entry<u32>>, v6: &mut Vec<Entry<u128>>) {
    match net {
        IpNet::V4(n) => v4.push(Entry::new(u32::from(n.network()), n.prefix_len(), rule)),
        IpNet::V6(n) => v6.push(Entry::new(u128::from(n.network()), n.prefix_len(), rule)),
    }
}

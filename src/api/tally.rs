//! Look-ups and blocks per tenant and minute over the last hour, for the console's chart. One
//! slot per minute of the hour, reused an hour later. Every look-up records here, so the path
//! takes no lock and shares no cache line between threads: the tenant's hour is found in a
//! map swapped whole when a tenant first looks something up, and each thread adds to its own
//! copy of the hour (see [`crate::telemetry::sharded`]); the chart sums the copies.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use crossbeam_utils::CachePadded;
use rustc_hash::FxBuildHasher;

use crate::rules::{TenantId, UnixMillis};
use crate::telemetry::sharded::{SLOTS, slot};

pub const MINUTES: usize = 60;

#[derive(Default)]
struct Slot {
    minute: AtomicI64,
    lookups: AtomicU64,
    blocks: AtomicU64,
}

/// One thread slot's view of the hour.
struct Hour {
    slots: [Slot; MINUTES],
}

impl Default for Hour {
    fn default() -> Self {
        Self {
            slots: std::array::from_fn(|_| Slot::default()),
        }
    }
}

/// A tenant's hour, one copy per thread slot.
#[derive(Default)]
struct Hours {
    copies: [CachePadded<Hour>; SLOTS],
}

/// Every tenant's hour (tenants are made by administrators, so they stay few).
#[derive(Default)]
pub struct Tally {
    tenants: ArcSwap<HashMap<TenantId, Arc<Hours>, FxBuildHasher>>,
}

/// One minute of the chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Minute {
    pub lookups: u64,
    pub blocks: u64,
}

impl Tally {
    pub fn record(&self, tenant: TenantId, at: UnixMillis, lookups: u64, blocks: u64) {
        if let Some(hours) = self.tenants.load().get(&tenant) {
            hours.copies[slot()].record(at, lookups, blocks);
            return;
        }
        self.tenants.rcu(|tenants| {
            let mut tenants = HashMap::clone(tenants);
            tenants.entry(tenant).or_default();
            tenants
        });
        if let Some(hours) = self.tenants.load().get(&tenant) {
            hours.copies[slot()].record(at, lookups, blocks);
        }
    }

    /// The tenant's last hour up to `now`, oldest minute first.
    pub fn last_hour(&self, tenant: TenantId, now: UnixMillis) -> [Minute; MINUTES] {
        let mut out = [Minute::default(); MINUTES];
        if let Some(hours) = self.tenants.load().get(&tenant) {
            for copy in &hours.copies {
                for (total, minute) in out.iter_mut().zip(copy.last(now)) {
                    total.lookups += minute.lookups;
                    total.blocks += minute.blocks;
                }
            }
        }
        out
    }
}

impl Hour {
    fn record(&self, at: UnixMillis, lookups: u64, blocks: u64) {
        let minute = at.0.div_euclid(60_000);
        let slot = &self.slots[minute.rem_euclid(MINUTES as i64) as usize];
        // Only this copy's thread (or threads sharing its slot) writes here; two of them
        // starting a new minute at once may lose a few counts of it: the chart shows a trend,
        // not an account.
        if slot.minute.load(Ordering::Relaxed) != minute {
            slot.minute.store(minute, Ordering::Relaxed);
            slot.lookups.store(0, Ordering::Relaxed);
            slot.blocks.store(0, Ordering::Relaxed);
        }
        slot.lookups.fetch_add(lookups, Ordering::Relaxed);
        slot.blocks.fetch_add(blocks, Ordering::Relaxed);
    }

    fn last(&self, now: UnixMillis) -> [Minute; MINUTES] {
        let current = now.0.div_euclid(60_000);
        let mut out = [Minute::default(); MINUTES];
        for (i, minute) in (current - MINUTES as i64 + 1..=current).enumerate() {
            let slot = &self.slots[minute.rem_euclid(MINUTES as i64) as usize];
            if slot.minute.load(Ordering::Relaxed) == minute {
                out[i] = Minute {
                    lookups: slot.lookups.load(Ordering::Relaxed),
                    blocks: slot.blocks.load(Ordering::Relaxed),
                };
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_older_than_an_hour_are_forgotten() {
        let tally = Tally::default();
        let (t, other) = (TenantId(1), TenantId(2));
        let start = UnixMillis(10 * 3_600_000);
        tally.record(t, start, 3, 1);
        tally.record(t, UnixMillis(start.0 + 59_999), 1, 0);
        tally.record(t, UnixMillis(start.0 + 60_000), 2, 2);
        tally.record(other, start, 5, 5);
        let hour = tally.last_hour(t, UnixMillis(start.0 + 60_000));
        assert_eq!(
            hour[MINUTES - 2],
            Minute {
                lookups: 4,
                blocks: 1
            }
        );
        assert_eq!(
            hour[MINUTES - 1],
            Minute {
                lookups: 2,
                blocks: 2
            }
        );
        // An hour on, the slot of the first minute is reused.
        tally.record(t, UnixMillis(start.0 + 3_600_000), 1, 0);
        let hour = tally.last_hour(t, UnixMillis(start.0 + 3_600_000));
        assert_eq!(
            hour[MINUTES - 1],
            Minute {
                lookups: 1,
                blocks: 0
            }
        );
        assert_eq!(
            hour[MINUTES - 60],
            Minute {
                lookups: 2,
                blocks: 2
            }
        );
    }
}

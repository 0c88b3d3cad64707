//! Look-ups and blocks per minute over the last hour, for the console's chart. One slot per
//! minute of the hour, reused an hour later: recording is two relaxed atomic additions and
//! never waits. Two requests starting a new minute at once may lose a few counts of it; the
//! chart shows a trend, not an account.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::rules::UnixMillis;

pub const MINUTES: usize = 60;

#[derive(Default)]
struct Slot {
    minute: AtomicI64,
    lookups: AtomicU64,
    blocks: AtomicU64,
}

pub struct Tally {
    slots: [Slot; MINUTES],
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            slots: std::array::from_fn(|_| Slot::default()),
        }
    }
}

/// One minute of the chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Minute {
    pub lookups: u64,
    pub blocks: u64,
}

impl Tally {
    pub fn record(&self, at: UnixMillis, lookups: u64, blocks: u64) {
        let minute = at.0.div_euclid(60_000);
        let slot = &self.slots[minute.rem_euclid(MINUTES as i64) as usize];
        if slot.minute.load(Ordering::Relaxed) != minute {
            slot.minute.store(minute, Ordering::Relaxed);
            slot.lookups.store(0, Ordering::Relaxed);
            slot.blocks.store(0, Ordering::Relaxed);
        }
        slot.lookups.fetch_add(lookups, Ordering::Relaxed);
        slot.blocks.fetch_add(blocks, Ordering::Relaxed);
    }

    /// The last hour up to `now`, oldest minute first.
    pub fn last_hour(&self, now: UnixMillis) -> [Minute; MINUTES] {
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
        let start = UnixMillis(10 * 3_600_000);
        tally.record(start, 3, 1);
        tally.record(UnixMillis(start.0 + 59_999), 1, 0);
        tally.record(UnixMillis(start.0 + 60_000), 2, 2);
        let hour = tally.last_hour(UnixMillis(start.0 + 60_000));
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
        tally.record(UnixMillis(start.0 + 3_600_000), 1, 0);
        let hour = tally.last_hour(UnixMillis(start.0 + 3_600_000));
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

//! Time source. Everything that compares against "now" takes it from a [`Clock`], so tests can
//! put the clock at an exact instant instead of sleeping.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::rules::UnixMillis;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> UnixMillis;

    /// A time that never goes backwards, for measuring intervals (rate limits). The wall clock
    /// can be stepped back by NTP; this cannot. By default the same as [`Clock::now`].
    fn monotonic(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.now().0).unwrap_or(0))
    }
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        UnixMillis(since_epoch.as_millis() as i64)
    }

    fn monotonic(&self) -> Duration {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed()
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock {
    wall: AtomicI64,
    /// How far the wall clock was stepped away from the steady time.
    stepped: AtomicI64,
}

impl ManualClock {
    pub fn new(start: UnixMillis) -> Self {
        Self {
            wall: AtomicI64::new(start.0),
            stepped: AtomicI64::new(0),
        }
    }

    /// Puts the wall clock at `at`, as time passing would.
    pub fn set(&self, at: UnixMillis) {
        self.wall.store(at.0, Ordering::SeqCst);
    }

    /// Lets `ms` pass.
    pub fn advance_ms(&self, ms: i64) {
        self.wall.fetch_add(ms, Ordering::SeqCst);
    }

    /// Steps the wall clock by `ms` without time passing (an NTP step, an operator's typo).
    pub fn step_wall_ms(&self, ms: i64) {
        self.wall.fetch_add(ms, Ordering::SeqCst);
        self.stepped.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(self.wall.load(Ordering::SeqCst))
    }

    fn monotonic(&self) -> Duration {
        let steady = self.wall.load(Ordering::SeqCst) - self.stepped.load(Ordering::SeqCst);
        Duration::from_millis(u64::try_from(steady).unwrap_or(0))
    }
}

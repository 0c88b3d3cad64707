//! Per-key rate limits (governor's GCRA). A limit of N per minute allows a burst of N requests,
//! then one more every 60/N seconds. The limiters read the server's [`Clock`], so tests move
//! time instead of waiting for it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock as GovernorClock;
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::clock::Clock;

/// What a limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The abuse-report endpoints (`/v1/ip`, `/v1/unban/ip`, `/v1/false/*`).
    Reports,
    /// `POST /v1/signal`.
    Signal,
}

#[derive(Clone)]
struct ServerClock(Arc<dyn Clock>);

impl GovernorClock for ServerClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.0.monotonic()
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, ServerClock, StateInformationMiddleware>;

/// One key's limiter and what it last said, for reporting the remaining budget without spending
/// any of it.
struct KeyLimit {
    limiter: Limiter,
    per_minute: u32,
    last_remaining: u32,
    last_at: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No limit applies.
    Unlimited,
    Allowed {
        remaining: u32,
    },
    /// Over the limit: try again after this many seconds (rounded up).
    Limited {
        retry_after_secs: u64,
    },
}

/// The limits in force and the per-key state.
pub struct RateLimits {
    /// Per-minute limit of each scope; 0 turns the scope off.
    defaults: HashMap<Scope, u32>,
    /// Per-key overrides, by key id; they apply to every scope whose limit is on.
    per_key: HashMap<i64, u32>,
    clock: Arc<dyn Clock>,
    keys: Mutex<HashMap<(Scope, i64), KeyLimit>>,
}

impl RateLimits {
    pub fn new(
        reports_per_minute: u32,
        signal_per_minute: u32,
        per_key: HashMap<i64, u32>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            defaults: HashMap::from([
                (Scope::Reports, reports_per_minute),
                (Scope::Signal, signal_per_minute),
            ]),
            per_key,
            clock,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// The per-minute limit of a key in a scope; `None` when unlimited.
    pub fn limit(&self, scope: Scope, key_id: i64) -> Option<u32> {
        let default = self.defaults.get(&scope).copied().unwrap_or(0);
        if default == 0 {
            return None;
        }
        NonZeroU32::new(self.per_key.get(&key_id).copied().unwrap_or(default)).map(NonZeroU32::get)
    }

    /// Spends one request of the key's budget.
    pub fn check(&self, scope: Scope, key_id: i64) -> Verdict {
        let Some(per_minute) = self.limit(scope, key_id) else {
            return Verdict::Unlimited;
        };
        let now = self.clock.monotonic();
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let key = keys.entry((scope, key_id)).or_insert_with(|| {
            let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN));
            KeyLimit {
                limiter: RateLimiter::direct_with_clock(quota, ServerClock(self.clock.clone()))
                    .with_middleware::<StateInformationMiddleware>(),
                per_minute,
                last_remaining: per_minute,
                last_at: now,
            }
        });
        match key.limiter.check() {
            Ok(snapshot) => {
                key.last_remaining = snapshot.remaining_burst_capacity();
                key.last_at = now;
                Verdict::Allowed {
                    remaining: key.last_remaining,
                }
            }
            Err(not_until) => {
                // A refused request spends nothing: the last snapshot still tells the budget.
                let wait = not_until.wait_time_from(now);
                Verdict::Limited {
                    retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                }
            }
        }
    }

    /// The budget left now, without spending any: what the last check left, plus what has
    /// been replenished since (one request every 60/N seconds).
    pub fn remaining(&self, scope: Scope, key_id: i64) -> Option<(u32, u32)> {
        let per_minute = self.limit(scope, key_id)?;
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let Some(key) = keys.get(&(scope, key_id)) else {
            return Some((per_minute, per_minute));
        };
        let elapsed = self
            .clock
            .monotonic()
            .saturating_sub(key.last_at)
            .as_millis() as u64;
        let period_ms = 60_000 / u64::from(key.per_minute.max(1));
        let refilled = elapsed / period_ms.max(1);
        let remaining = (u64::from(key.last_remaining) + refilled).min(u64::from(key.per_minute));
        Some((key.per_minute, remaining as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::rules::UnixMillis;

    #[test]
    fn six_per_minute_then_one_every_ten_seconds() {
        let clock = Arc::new(ManualClock::new(UnixMillis(1_000_000)));
        let limits = RateLimits::new(6, 0, HashMap::from([(9, 2)]), clock.clone());
        for left in (0..6).rev() {
            assert_eq!(
                limits.check(Scope::Reports, 1),
                Verdict::Allowed { remaining: left }
            );
        }
        assert_eq!(
            limits.check(Scope::Reports, 1),
            Verdict::Limited {
                retry_after_secs: 10
            }
        );
        assert_eq!(limits.remaining(Scope::Reports, 1), Some((6, 0)));
        // Keys are independent; per-key limits apply.
        assert!(matches!(
            limits.check(Scope::Reports, 2),
            Verdict::Allowed { remaining: 5 }
        ));
        assert!(matches!(
            limits.check(Scope::Reports, 9),
            Verdict::Allowed { remaining: 1 }
        ));
        assert!(matches!(
            limits.check(Scope::Reports, 9),
            Verdict::Allowed { remaining: 0 }
        ));
        assert!(matches!(
            limits.check(Scope::Reports, 9),
            Verdict::Limited { .. }
        ));
        // Signals are not limited by default.
        assert_eq!(limits.check(Scope::Signal, 1), Verdict::Unlimited);

        clock.advance_ms(10_000);
        assert_eq!(limits.remaining(Scope::Reports, 1), Some((6, 1)));
        assert!(matches!(
            limits.check(Scope::Reports, 1),
            Verdict::Allowed { remaining: 0 }
        ));
        assert!(matches!(
            limits.check(Scope::Reports, 1),
            Verdict::Limited { .. }
        ));
        clock.advance_ms(60_000);
        assert_eq!(limits.remaining(Scope::Reports, 1), Some((6, 6)));
    }
}

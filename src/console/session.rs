//! Console sessions: the browser holds a random token in an HttpOnly cookie; the server holds
//! which key signed in with it, the session's CSRF token and when it was last used. The key
//! itself is never kept in the browser, and its role is read from the live key ring on every
//! request, so revoking a key ends its sessions at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::http::header::COOKIE;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::Clock;
use crate::keys::KeyDigest;

/// The cookie holding the session token.
pub const SESSION_COOKIE: &str = "palisade_console";
/// The cookie holding the sign-in form's CSRF token (there is no session yet to hold it).
pub const SIGN_IN_COOKIE: &str = "palisade_console_sign_in";

/// 256 random bits, base64url.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether two tokens are equal, in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The value of cookie `name` in the request, if any.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// A `Set-Cookie` value for the console's paths: never readable by scripts, never sent by
/// another site's requests, and only over TLS when the console is served over TLS.
pub fn set_cookie(name: &str, value: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/console; HttpOnly; SameSite=Strict{secure}")
}

/// A `Set-Cookie` value that removes the cookie.
pub fn clear_cookie(name: &str, secure: bool) -> String {
    format!("{}; Max-Age=0", set_cookie(name, "", secure))
}

#[derive(Debug, Clone)]
pub struct Session {
    /// Digest of the key that signed in.
    pub key: KeyDigest,
    /// Every form of the session carries it.
    pub csrf: String,
    last_seen: Duration,
}

/// Why a session could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// The open sessions, by digest of their token (a look-up never compares the token itself).
pub struct Sessions {
    open: Mutex<HashMap<[u8; 32], Session>>,
    idle: Duration,
    capacity: usize,
    clock: Arc<dyn Clock>,
}

fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Sessions {
    pub fn new(idle: Duration, capacity: usize, clock: Arc<dyn Clock>) -> Self {
        Self {
            open: Mutex::new(HashMap::new()),
            idle,
            capacity,
            clock,
        }
    }

    fn open_sessions(&self) -> MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session for `key`; returns its token. When `capacity` sessions are open and
    /// none has gone idle, the sign-in is refused rather than another session dropped.
    pub fn open(&self, key: KeyDigest) -> Result<String, Full> {
        let now = self.clock.monotonic();
        let mut open = self.open_sessions();
        if open.len() >= self.capacity {
            let idle = self.idle;
            open.retain(|_, s| now.saturating_sub(s.last_seen) <= idle);
        }
        if open.len() >= self.capacity {
            return Err(Full);
        }
        let token = random_token();
        open.insert(
            token_digest(&token),
            Session {
                key,
                csrf: random_token(),
                last_seen: now,
            },
        );
        Ok(token)
    }

    /// The live session of `token`, marked as used now; an idle one is closed instead.
    pub fn find(&self, token: &str) -> Option<Session> {
        let now = self.clock.monotonic();
        let digest = token_digest(token);
        let mut open = self.open_sessions();
        let session = open.get_mut(&digest)?;
        if now.saturating_sub(session.last_seen) > self.idle {
            open.remove(&digest);
            return None;
        }
        session.last_seen = now;
        Some(session.clone())
    }

    pub fn close(&self, token: &str) {
        self.open_sessions().remove(&token_digest(token));
    }

    pub fn len(&self) -> usize {
        self.open_sessions().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Wrong keys per client address: after `per_minute` of them within a minute, that address
/// may not try again until the minute is over. Bounded: when full it starts over.
pub struct SignInFailures {
    per_minute: u32,
    seen: Mutex<HashMap<IpAddr, (Duration, u32)>>,
    capacity: usize,
    clock: Arc<dyn Clock>,
}

const WINDOW: Duration = Duration::from_secs(60);

impl SignInFailures {
    pub fn new(per_minute: u32, capacity: usize, clock: Arc<dyn Clock>) -> Self {
        Self {
            per_minute,
            seen: Mutex::new(HashMap::new()),
            capacity,
            clock,
        }
    }

    fn seen(&self) -> MutexGuard<'_, HashMap<IpAddr, (Duration, u32)>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(seconds)` when `client` has used up its wrong keys for now.
    pub fn check(&self, client: IpAddr) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let now = self.clock.monotonic();
        match self.seen().get(&client) {
            Some((since, count))
                if *count >= self.per_minute && now.saturating_sub(*since) < WINDOW =>
            {
                let left = WINDOW.saturating_sub(now.saturating_sub(*since));
                Err(left.as_secs() + u64::from(left.subsec_nanos() > 0))
            }
            _ => Ok(()),
        }
    }

    pub fn record(&self, client: IpAddr) {
        if self.per_minute == 0 {
            return;
        }
        let now = self.clock.monotonic();
        let mut seen = self.seen();
        if seen.len() >= self.capacity && !seen.contains_key(&client) {
            seen.clear();
        }
        let entry = seen.entry(client).or_insert((now, 0));
        if now.saturating_sub(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::rules::UnixMillis;

    #[test]
    fn sessions_expire_when_idle_and_stay_bounded() {
        let clock = Arc::new(ManualClock::new(UnixMillis(1_000)));
        let sessions = Sessions::new(Duration::from_secs(60), 2, clock.clone());
        let a = sessions.open([1; 32]).unwrap();
        clock.advance_ms(30_000);
        assert_eq!(sessions.find(&a).unwrap().key, [1; 32]);
        let b = sessions.open([2; 32]).unwrap();
        assert_eq!(sessions.open([3; 32]), Err(Full));
        clock.advance_ms(61_000);
        assert!(sessions.find(&a).is_none());
        // b went idle too, so it makes room.
        let c = sessions.open([3; 32]).unwrap();
        assert!(sessions.find(&b).is_none());
        sessions.close(&c);
        assert!(sessions.find(&c).is_none());
    }

    #[test]
    fn wrong_keys_are_limited_per_address() {
        let clock = Arc::new(ManualClock::new(UnixMillis(1_000)));
        let failures = SignInFailures::new(2, 10, clock.clone());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        failures.record(ip);
        assert!(failures.check(ip).is_ok());
        failures.record(ip);
        assert_eq!(failures.check(ip), Err(60));
        assert!(failures.check(other).is_ok());
        clock.advance_ms(60_000);
        assert!(failures.check(ip).is_ok());
    }

    #[test]
    fn cookies_are_read_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, "a=1; palisade_console=xyz; b=2".parse().unwrap());
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&headers, "c"), None);
        assert!(set_cookie("n", "v", true).contains("HttpOnly; SameSite=Strict; Secure"));
    }
}

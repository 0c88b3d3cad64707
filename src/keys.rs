//! API keys, roles and tenants.
//!
//! A key is `pal_` followed by 256 random bits (base64url). Only its SHA-256 digest is stored:
//! the secret has full entropy, so a slow password hash would add ~30 ms per request and no
//! safety. The server keeps the digests of live keys in a [`KeyRing`] that it swaps whenever the
//! keys table changes, so keys made or revoked from the command line apply within a second.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::rules::{TenantId, UnixMillis};

pub const KEY_PREFIX: &str = "pal_";
pub const DEFAULT_TENANT: &str = "default";

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything within its tenant.
    Admin,
    /// Submit signals and reports, read and delete its tenant's rules.
    Writer,
    /// Read decisions and rules only.
    Reader,
}

/// What a request needs to be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    WriteRules,
    ReadRules,
    ReadAudit,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Writer => "writer",
            Role::Reader => "reader",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Role::Admin),
            "writer" => Some(Role::Writer),
            "reader" => Some(Role::Reader),
            _ => None,
        }
    }

    pub fn allows(self, permission: Permission) -> bool {
        match self {
            Role::Admin => true,
            Role::Writer => matches!(permission, Permission::WriteRules | Permission::ReadRules),
            Role::Reader => matches!(permission, Permission::ReadRules),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant name: 1 to 64 characters of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TenantName(String);

impl TenantName {
    pub fn parse(s: &str) -> Option<Self> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        ok.then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// SHA-256 of a key's full text.
pub type KeyDigest = [u8; 32];

pub fn digest(token: &str) -> KeyDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Makes a new secret key and its digest. The secret is shown once and never stored.
pub fn generate() -> (String, KeyDigest) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let digest = digest(&token);
    (token, digest)
}

/// Whether `token` has the shape of a key this server makes, so that text that could never be
/// a key is refused without asking the store.
pub fn well_formed(token: &str) -> bool {
    token.strip_prefix(KEY_PREFIX).is_some_and(|rest| {
        rest.len() == 43
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Digests recently looked up in the store and not found there, so that a client repeating a
/// wrong key costs a hash look-up, not a query. Bounded: when full it starts over.
pub struct UnknownKeys {
    seen: std::sync::Mutex<std::collections::HashSet<KeyDigest>>,
    capacity: usize,
}

impl UnknownKeys {
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: Default::default(),
            capacity,
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<KeyDigest>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn contains(&self, digest: &KeyDigest) -> bool {
        self.seen().contains(digest)
    }

    pub fn insert(&self, digest: KeyDigest) {
        let mut seen = self.seen();
        if seen.len() >= self.capacity {
            seen.clear();
        }
        seen.insert(digest);
    }
}

/// A key as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub tenant: TenantName,
    pub tenant_id: TenantId,
    pub created_at: UnixMillis,
    pub revoked_at: Option<UnixMillis>,
}

/// Who is making a request: the key's identity, role and tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: i64,
    pub key_name: String,
    pub role: Role,
    pub tenant: TenantName,
    pub tenant_id: TenantId,
}

/// The live (unrevoked) keys, by digest.
#[derive(Debug, Default)]
pub struct KeyRing {
    /// Keyed by the digest's first half; the whole digest is then compared in constant time.
    by_prefix: HashMap<[u8; 16], (KeyDigest, Arc<Principal>)>,
}

impl KeyRing {
    pub fn new(keys: impl IntoIterator<Item = (KeyDigest, Principal)>) -> Self {
        let by_prefix = keys
            .into_iter()
            .map(|(digest, principal)| {
                let mut prefix = [0u8; 16];
                prefix.copy_from_slice(&digest[..16]);
                (prefix, (digest, Arc::new(principal)))
            })
            .collect();
        Self { by_prefix }
    }

    pub fn len(&self) -> usize {
        self.by_prefix.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }

    pub fn authenticate(&self, token: &str) -> Option<Arc<Principal>> {
        self.authenticate_digest(&digest(token))
    }

    pub fn authenticate_digest(&self, presented: &KeyDigest) -> Option<Arc<Principal>> {
        let mut prefix = [0u8; 16];
        prefix.copy_from_slice(&presented[..16]);
        let (stored, principal) = self.by_prefix.get(&prefix)?;
        bool::from(stored.ct_eq(presented)).then(|| principal.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal() -> Principal {
        Principal {
            key_id: 1,
            key_name: "ci".into(),
            role: Role::Writer,
            tenant: TenantName::parse("default").unwrap(),
            tenant_id: TenantId(1),
        }
    }

    #[test]
    fn keys_authenticate_by_digest_only() {
        let (token, digest) = generate();
        assert!(token.starts_with(KEY_PREFIX));
        assert_eq!(token.len(), KEY_PREFIX.len() + 43);
        let ring = KeyRing::new([(digest, principal())]);
        assert_eq!(ring.authenticate(&token).unwrap().key_id, 1);
        assert!(ring.authenticate(&format!("{token}x")).is_none());
        assert!(ring.authenticate("").is_none());
    }

    #[test]
    fn only_well_formed_keys_are_looked_up() {
        let (token, _) = generate();
        assert!(well_formed(&token));
        assert!(!well_formed(&token[1..]));
        assert!(!well_formed(&format!("{token}x")));
        assert!(!well_formed("pal_"));
        assert!(!well_formed(&format!("{}/", &token[..token.len() - 1])));
    }

    #[test]
    fn unknown_keys_stay_bounded() {
        let unknown = UnknownKeys::new(2);
        unknown.insert([1; 32]);
        unknown.insert([2; 32]);
        assert!(unknown.contains(&[1; 32]));
        unknown.insert([3; 32]);
        assert!(unknown.contains(&[3; 32]) && !unknown.contains(&[1; 32]));
    }

    #[test]
    fn roles() {
        assert!(Role::Reader.allows(Permission::ReadRules));
        assert!(!Role::Reader.allows(Permission::WriteRules));
        assert!(Role::Writer.allows(Permission::WriteRules));
        assert!(!Role::Writer.allows(Permission::ReadAudit));
        assert!(Role::Admin.allows(Permission::ReadAudit));
    }

    #[test]
    fn tenant_names() {
        assert!(TenantName::parse("acme-prod.eu_1").is_some());
        for bad in ["", "a b", "x/y", &"a".repeat(65)] {
            assert!(TenantName::parse(bad).is_none(), "{bad}");
        }
    }
}

//! Palisade: a self-hosted security-signal service.
//!
//! Security tools send *signals* (block or unblock an IP range, an ASN or a country); enforcement
//! points ask whether a client is blocked. This crate is the whole service; `src/main.rs` is only
//! the command line around it.
//!
//! # Layout
//! A signal flows through the modules in this order:
//!
//! - [`api`]: HTTP handlers. They parse the request, call the domain and answer; nothing else.
//!   Every error becomes HTTP in one place, [`api::error`].
//! - [`signal`]: validation of `POST /v1/signal` events into commands, and the table of error texts.
//! - [`reports`]: the abuse-report API's validation and what a queued report does to the rules.
//! - [`ratelimit`]: per-key request limits.
//! - [`rules`]: domain types that are valid by construction (`Target`, `Asn`, `CountryCode`, ...).
//! - [`geo`]: IP address to ASN and country from the operator's data files, the networks of an
//!   ASN or a country, and reloading when the files change.
//! - [`keys`]: API keys, roles and tenants; the in-memory key ring the auth check reads.
//! - [`index`]: the in-memory decision engine, patched from the store's change log: IP rules in
//!   prefix tables, ASN and country rules matched through the geo data it holds beside them.
//! - [`store`]: persistence behind the [`store::Store`] trait. Every rule change gets a
//!   monotonically increasing sequence number, so anything downstream can follow "changes since N".
//! - [`app`]: wiring: configuration in, a bound server out.
//! - [`config`], [`clock`]: configuration layering and the time source (controllable in tests).

/// jemalloc rather than the system allocator, configured (`.cargo/config.toml`) to ask for
/// transparent huge pages: random reads over the index then rarely miss the TLB.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod api;
pub mod app;
pub mod clock;
pub mod config;
pub mod geo;
pub mod index;
pub mod keys;
pub mod ratelimit;
pub mod reports;
pub mod rules;
pub mod signal;
pub mod store;

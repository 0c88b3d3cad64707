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
//! - [`json`]: reading request JSON strictly: a key given twice is refused, long lists are
//!   counted past their limit without being kept.
//! - [`signal`]: validation of `POST /v1/signal` events into commands, and the table of error texts.
//! - [`reports`]: the abuse-report API's validation and what a queued report does to the rules.
//! - [`ratelimit`]: per-key request limits.
//! - [`rules`]: domain types that are valid by construction (`Target`, `Asn`, `CountryCode`, ...).
//! - [`geo`]: IP address to ASN and country from the operator's data files, the networks of an
//!   ASN or a country, and reloading when the files change.
//! - [`keys`]: API keys, roles and tenants; the in-memory key ring the auth check reads.
//! - [`engine`]: the use cases above the backends: every write (group commit, what a write does
//!   to a rule, audit, quota), the check of an address against the index, and the change feed
//!   the index and other followers read.
//! - [`crowdsec`]: CrowdSec's bouncer API: decisions on the wire, look-ups, listings and the
//!   per-bouncer decision stream, whose cursor the store keeps.
//! - [`index`]: the in-memory decision tables, patched from the change feed: IP rules in
//!   prefix tables, ASN and country rules matched through the geo data it holds beside them.
//! - [`store`]: persistence: the [`store::backend::Backend`] trait (reads, and write
//!   transactions of row operations), the embedded SQLite backend and PostgreSQL. Every rule
//!   change gets a sequence number in commit order, so anything downstream can follow "changes
//!   since N". The audit log is stored as one record per request ([`store::audit`]). On
//!   SQLite the rule key is kept by the writer in memory rather than as an index.
//! - [`export`]: the blocklist for enforcement points that do not ask per request (firewall
//!   sets, nginx `deny` lists, plain lists) and the geo expansion: ASN and country rules as the
//!   address ranges they cover, cached until a rule or the geo data changes.
//! - [`import`]: `palisade rules import`: downloaded blocklists read into rule writes.
//! - [`console`]: the operator console at `/console/`: pages over the same engine, store and
//!   index as the API, with sign-in sessions.
//! - [`subscriptions`]: blocklists fetched on an interval and kept as the rules of a dataset.
//! - [`app`]: wiring: configuration in, a bound server out.
//! - [`server`]: the connection loop under the API: connection cap, timeouts for clients that
//!   stall, shutdown within a deadline.
//! - [`telemetry`]: Prometheus metrics (`/metrics`), request ids and log formats.
//! - [`health`]: readiness: the index is loaded and the store accepts writes.
//! - [`config_check`]: `palisade config check`: a file read strictly, shown as it applies.
//! - [`config`], [`clock`]: configuration layering and the time source (controllable in tests).

/// jemalloc rather than the system allocator, configured (`.cargo/config.toml`) to ask for
/// transparent huge pages: random reads over the index then rarely miss the TLB.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod api;
pub mod app;
pub mod clock;
pub mod config;
pub mod config_check;
pub mod console;
pub mod crowdsec;
pub mod engine;
pub mod export;
pub mod geo;
pub mod health;
pub mod import;
pub mod index;
pub mod json;
pub mod keys;
pub mod ratelimit;
pub mod reports;
pub mod rules;
pub mod server;
pub mod signal;
pub mod store;
pub mod subscriptions;
pub mod telemetry;

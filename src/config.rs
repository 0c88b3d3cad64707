//! Configuration, layered: built-in defaults, then the TOML file (`--config`, `PALISADE_CONFIG`),
//! then `PALISADE_<SECTION>__<KEY>` environment variables (e.g. `PALISADE_GUARD__MIN_PREFIX_V4`),
//! then the command line and its own variables (`PALISADE_LISTEN`, `PALISADE_DATA_DIR`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::signal::Guard;
use crate::store::sqlite::Synchronous;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./palisade-data";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Where the SQLite database lives.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub store: StoreConfig,
    pub guard: GuardConfig,
    pub limits: LimitsConfig,
    pub geo: GeoConfig,
    /// Peers whose `X-Forwarded-For` / `X-Real-IP` are believed (forward-auth). Empty by
    /// default: the TCP peer is the client. Env `PALISADE_TRUSTED_PROXIES`, comma-separated.
    pub trusted_proxies: Vec<IpNet>,
    /// The one header forward-auth reads the client address from when the peer is a trusted
    /// proxy: `X-Forwarded-For` (its rightmost address that is not a trusted proxy),
    /// `X-Real-IP`, or any header the proxy sets to the bare client address. Other forwarding
    /// headers are ignored, so a visitor cannot slip one past a proxy that does not set it.
    /// Env `PALISADE_CLIENT_IP_HEADER`.
    pub client_ip_header: String,
    pub reports: ReportsConfig,
    pub rate_limits: RateLimitConfig,
    pub audit: AuditConfig,
    /// CrowdSec bouncers (`/v1/decisions`, `/v1/decisions/stream`) and what enforcement
    /// points are given of ASN and country rules.
    pub crowdsec: crate::crowdsec::CrowdsecConfig,
    /// Blocklists fetched on an interval, each kept as the rules of its dataset
    /// (`[[subscriptions]]`).
    pub subscriptions: Vec<crate::subscriptions::SubscriptionConfig>,
    pub exports: ExportsConfig,
    /// A second address serving only `GET /metrics`, without a key (keep it on a private
    /// network); unset: metrics only on `listen`, for admin keys. Env `PALISADE_METRICS_LISTEN`.
    pub metrics_listen: Option<SocketAddr>,
    pub console: crate::console::ConsoleConfig,
}

/// `GET /v1/blocklist` and `GET /v1/config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportsConfig {
    /// Blocklist exports written at once; one more is answered 503. Each holds a thread while
    /// its client reads.
    pub max_concurrent: usize,
    /// Bytes a streamed export hands to the connection at a time; at most four such chunks
    /// wait for a slow client.
    pub chunk_bytes: usize,
    /// Most networks one `GET /v1/config` document may list (it is built whole, as the agent
    /// reads it whole); a larger one is refused with 422.
    pub agent_max_networks: usize,
}

impl Default for ExportsConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 4,
            chunk_bytes: 64 * 1024,
            agent_max_networks: 2_000_000,
        }
    }
}

/// What the audit log keeps, and for how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Events up to this size are kept whole; a larger one keeps its beginning, its size and
    /// its SHA-256. The default holds any valid signal event.
    pub max_event_bytes: usize,
    /// Largest `GET /v1/audit` answer (its events' bytes); a page stops early when full and
    /// its `next_cursor` continues from there.
    pub page_bytes: usize,
    /// Entries older than this many days are deleted; 0 keeps them for good.
    pub retention_days: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            max_event_bytes: 8192,
            page_bytes: 1024 * 1024,
            retention_days: 90,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReportsConfig {
    /// Accept reports of special-purpose addresses (private, shared, loopback, documentation,
    /// ..., and IPv6 forms carrying them; see `rules::special_purpose`).
    pub allow_private: bool,
    /// Datasets a report's `type` may name.
    pub datasets: Vec<String>,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        Self {
            allow_private: false,
            datasets: crate::reports::DEFAULT_DATASETS
                .iter()
                .map(|d| (*d).to_owned())
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per minute per key on the report endpoints; 0 turns the limit off.
    pub reports_per_minute: u32,
    /// Requests per minute per key on `POST /v1/signal`; 0 (the default) turns it off.
    pub signal_per_minute: u32,
    /// Per-key limits (key id -> requests per minute, at least 1), replacing the defaults above
    /// for that key in each scope that is on.
    pub per_key: std::collections::BTreeMap<String, u32>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            reports_per_minute: 6,
            signal_per_minute: 0,
            per_key: Default::default(),
        }
    }
}

impl RateLimitConfig {
    /// `per_key` with its keys read as key ids.
    pub fn per_key_ids(&self) -> Result<std::collections::HashMap<i64, u32>, String> {
        self.per_key
            .iter()
            .map(|(id, limit)| {
                let id = id
                    .parse::<i64>()
                    .map_err(|_| format!("rate_limits.per_key: {id:?} is not a key id"))?;
                if *limit == 0 {
                    // Revoke the key to shut it out; 0 would read as "unlimited" elsewhere.
                    return Err(format!(
                        "rate_limits.per_key: key {id}: the limit must be at least 1"
                    ));
                }
                Ok((id, *limit))
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoConfig {
    /// IP-to-ASN data: a MaxMind DB (GeoLite2-ASN or IPinfo Lite layout) or a CSV range file
    /// `start_ip,end_ip,asn,organisation`. Env `PALISADE_GEO_ASN`.
    pub asn: Option<PathBuf>,
    /// IP-to-country data: a MaxMind DB (GeoLite2-Country, `country_code` or IPinfo Lite
    /// layout) or a CSV range file `start_ip,end_ip,country_code`. May be the same file as `asn`
    /// (IPinfo Lite). Env `PALISADE_GEO_COUNTRY`.
    pub country: Option<PathBuf>,
    /// Seconds between checks of the files for changes (SIGHUP reloads at once); 0 turns the
    /// checks off.
    pub watch_interval_secs: u64,
}

impl Default for GeoConfig {
    fn default() -> Self {
        Self {
            asn: None,
            country: None,
            watch_interval_secs: 5,
        }
    }
}

/// Connections and their timeouts. The defaults suit a reverse proxy in front: its pooled
/// connections may idle longer than nginx's (60 s) and Traefik's (90 s) pooled upstream
/// connections do before being closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Open connections at most; more clients wait in the kernel's accept queue until one
    /// closes. The process raises its open-files limit to the hard limit at start-up.
    pub max_connections: usize,
    /// Seconds a client has to send a whole request head, from its first byte (or from
    /// connecting).
    pub header_read_timeout_secs: u64,
    /// Seconds a keep-alive connection may wait for its next request, and a request in flight
    /// may go without moving a byte, before the connection is closed.
    pub idle_timeout_secs: u64,
    /// Seconds a client has to send a whole request body; slower bodies get 408.
    pub body_read_timeout_secs: u64,
    /// Seconds requests in flight get to finish after SIGTERM before they are cut off.
    pub shutdown_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 120,
            body_read_timeout_secs: 30,
            shutdown_timeout_secs: 20,
        }
    }
}

impl ServerConfig {
    pub fn connection_limits(&self) -> crate::server::ConnectionLimits {
        let secs = |s: u64| std::time::Duration::from_secs(s.max(1));
        crate::server::ConnectionLimits {
            max_connections: self.max_connections.max(1),
            header_read_timeout: secs(self.header_read_timeout_secs),
            idle_timeout: secs(self.idle_timeout_secs),
            shutdown_timeout: secs(self.shutdown_timeout_secs),
        }
    }
}

/// A shared PostgreSQL database instead of the embedded SQLite file: several nodes on one
/// database enforce each other's writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:5432/database`; unset: SQLite in `data_dir`. Env
    /// `PALISADE_DATABASE_URL`, flag `--database-url`.
    pub url: Option<String>,
    /// Schema holding Palisade's tables (created when missing); unset: the server's default
    /// `search_path`.
    pub schema: Option<String>,
    /// Connections each node keeps at most.
    pub pool_size: u32,
    /// This node's name in `pg_stat_activity`.
    pub application_name: String,
    /// How long a request waits for a database connection, in milliseconds, before it answers
    /// 503. While the database is down every write waits this long: short enough that clients
    /// see the outage, long enough to ride over a brief restart or a full pool.
    pub acquire_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            schema: None,
            pool_size: 8,
            application_name: "palisade".into(),
            acquire_timeout_ms: 5000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `full` (default): an acknowledged write survives a power cut. `normal`: it survives a
    /// crash of the process but not of the machine; commits are cheaper.
    pub synchronous: Synchronous,
    /// Seconds between purges of expired rules. Expired rules stop matching at their expiry
    /// instant whatever this is; the purge only reclaims space.
    pub purge_interval_secs: u64,
    /// Page cache of the writing connection, in MiB. Writes to large tables slow down sharply
    /// once their hot index pages no longer fit.
    pub cache_mib: u32,
    /// Change-log entries older than this many days are deleted; 0 keeps them for good. A
    /// follower further behind than this (a node down that long) rebuilds from a snapshot.
    pub change_log_retention_days: u32,
    /// The node is not ready (`/readyz`) while the data directory's disk has less free space
    /// than this, in MiB; 0 turns the check off.
    pub min_free_disk_mib: u64,
    /// Seconds between the write probes behind `/readyz`.
    pub probe_interval_secs: u64,
    /// A write probe that has not finished after this many milliseconds makes the node not
    /// ready: a store that hangs (a lock held elsewhere, a database that stopped answering)
    /// takes writes no better than one that refuses them.
    pub probe_timeout_ms: u64,
    /// Milliseconds between reads of the change log for what other processes (the command
    /// line) or nodes committed; a backend that signals commits is read at once as well.
    pub follow_interval_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// IPv4 ranges broader than this prefix length are refused.
    pub min_prefix_v4: u8,
    /// IPv6 ranges broader than this prefix length are refused.
    pub min_prefix_v6: u8,
    /// Networks no block may overlap. Loopback by default.
    pub protected: Vec<IpNet>,
    /// Also protect the address the server listens on (when it is not a wildcard).
    pub protect_listen_address: bool,
}

/// Sizes of what clients may send and be sent. Each body limit fits the largest request its
/// route's contract allows, written plainly; larger bodies get 413 before they are read whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// `POST /v1/signal`: 1000 events with 1024-character descriptions and 255-character names.
    #[serde(alias = "max_body_bytes")]
    pub signal_body_bytes: usize,
    /// `POST /v1/check`: 10,000 addresses.
    pub check_body_bytes: usize,
    /// The report endpoints: 10,000 addresses and 32 tags.
    pub report_body_bytes: usize,
    /// Request bodies held in memory at once, over all requests; a request whose body does
    /// not fit waits up to a second for room, then gets 503 with `Retry-After: 1`.
    pub bodies_in_flight_bytes: usize,
    /// Rules one `/v1/check` answer lists for one address; the decision itself is never cut.
    pub matches_per_address: usize,
    /// Rules one `POST /v1/check` answer lists over all its addresses.
    pub matches_per_batch: usize,
    /// Rules one tenant may hold (expired ones count until purged); a write that would make
    /// one more is refused, the others of its batch are applied.
    pub rules_per_tenant: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("static address"),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            store: StoreConfig::default(),
            guard: GuardConfig::default(),
            limits: LimitsConfig::default(),
            geo: GeoConfig::default(),
            trusted_proxies: Vec::new(),
            client_ip_header: "X-Forwarded-For".into(),
            reports: ReportsConfig::default(),
            rate_limits: RateLimitConfig::default(),
            audit: AuditConfig::default(),
            crowdsec: crate::crowdsec::CrowdsecConfig::default(),
            exports: ExportsConfig::default(),
            metrics_listen: None,
            console: crate::console::ConsoleConfig::default(),
            subscriptions: Vec::new(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            purge_interval_secs: 60,
            cache_mib: 64,
            change_log_retention_days: 7,
            min_free_disk_mib: 64,
            probe_interval_secs: 5,
            probe_timeout_ms: 3000,
            follow_interval_ms: 500,
        }
    }
}

impl Default for GuardConfig {
    fn default() -> Self {
        let guard = Guard::default();
        Self {
            min_prefix_v4: guard.min_prefix_v4,
            min_prefix_v6: guard.min_prefix_v6,
            protected: guard.protected,
            protect_listen_address: true,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            signal_body_bytes: 8 * 1024 * 1024,
            check_body_bytes: 1024 * 1024,
            report_body_bytes: 1024 * 1024,
            bodies_in_flight_bytes: 256 * 1024 * 1024,
            matches_per_address: 32,
            matches_per_batch: 10_000,
            rules_per_tenant: 5_000_000,
        }
    }
}

/// Settings given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseOverride>,
}

/// `--database-url`.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseOverride {
    pub url: String,
}

impl Config {
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(
            Env::prefixed("PALISADE_")
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        );
        // The documented short names of a few settings.
        for (var, key) in [
            ("PALISADE_GEO_ASN", "geo.asn"),
            ("PALISADE_GEO_COUNTRY", "geo.country"),
            ("PALISADE_CLIENT_IP_HEADER", "client_ip_header"),
            ("PALISADE_DATABASE_URL", "database.url"),
            ("PALISADE_METRICS_LISTEN", "metrics_listen"),
        ] {
            if let Ok(path) = std::env::var(var) {
                figment = figment.merge(Serialized::default(key, path));
            }
        }
        if let Ok(list) = std::env::var("PALISADE_TRUSTED_PROXIES") {
            let proxies: Vec<&str> = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            figment = figment.merge(Serialized::default("trusted_proxies", proxies));
        }
        figment
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)
    }

    /// How the embedded store is opened.
    pub fn sqlite_options(&self) -> crate::store::sqlite::SqliteOptions {
        crate::store::sqlite::SqliteOptions {
            synchronous: self.store.synchronous,
            cache_mib: self.store.cache_mib,
            min_free_bytes: self.store.min_free_disk_mib * 1024 * 1024,
        }
    }

    /// How the engine checks and audits writes.
    pub fn write_policy(&self) -> crate::engine::WritePolicy {
        crate::engine::WritePolicy {
            audit_event_bytes: self.audit.max_event_bytes,
            rules_per_tenant: self.limits.rules_per_tenant,
        }
    }

    /// The guard rails in force: the configured ones plus, when asked, the listen address.
    pub fn guard(&self) -> Guard {
        let mut protected = self.guard.protected.clone();
        let own = self.listen.ip();
        if self.guard.protect_listen_address && !own.is_unspecified() {
            let host = IpNet::from(own);
            if !protected.iter().any(|p| p.contains(&host)) {
                protected.push(host);
            }
        }
        Guard {
            min_prefix_v4: self.guard.min_prefix_v4,
            min_prefix_v6: self.guard.min_prefix_v6,
            protected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("palisade.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:9000\"\n[guard]\nmin_prefix_v4 = 12\nprotected = [\"10.9.0.0/16\"]\n",
        )
        .unwrap();
        let overrides = Overrides {
            data_dir: Some("/var/lib/palisade".into()),
            ..Overrides::default()
        };
        let config = Config::load(Some(&file), &overrides).unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/palisade"));
        assert_eq!(config.guard.min_prefix_v4, 12);
        // A wildcard listen address protects nothing more.
        assert_eq!(
            config.guard().protected,
            vec!["10.9.0.0/16".parse::<IpNet>().unwrap()]
        );
    }

    /// The README's annotated example is a configuration the server accepts.
    #[test]
    fn the_readme_example_loads() {
        let readme = include_str!("../README.md");
        let start = readme.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let end = start + readme[start..].find("```").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("palisade.toml");
        std::fs::write(&file, &readme[start..end]).unwrap();
        let config = Config::load(Some(&file), &Overrides::default()).unwrap();
        assert_eq!(config.client_ip_header, "X-Forwarded-For");
        assert_eq!(config.trusted_proxies.len(), 1);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("palisade.toml");
        std::fs::write(&file, "[guard]\nmin_prefix = 12\n").unwrap();
        assert!(Config::load(Some(&file), &Overrides::default()).is_err());
    }

    #[test]
    fn crowdsec_settings() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("palisade.toml");
        std::fs::write(
            &file,
            "[crowdsec]\nmax_decisions = 60000\n[crowdsec.max_decisions_per_key]\n\"7\" = 5\n",
        )
        .unwrap();
        let config = Config::load(Some(&file), &Overrides::default()).unwrap();
        let limits = config.crowdsec.range_limits().unwrap();
        assert_eq!(limits.default, Some(60000));
        assert_eq!(limits.per_key.get(&7), Some(&5));
        assert!(config.crowdsec.expand_geo(true));
        assert!(!config.crowdsec.expand_geo(false));
        let off = crate::crowdsec::CrowdsecConfig {
            expand_geo: Some(false),
            ..crate::crowdsec::CrowdsecConfig::default()
        };
        assert!(!off.expand_geo(true));
        let bad = crate::crowdsec::CrowdsecConfig {
            max_decisions_per_key: [("admin".to_owned(), 1)].into(),
            ..crate::crowdsec::CrowdsecConfig::default()
        };
        assert!(
            bad.range_limits()
                .unwrap_err()
                .contains("\"admin\" is not a key id")
        );
    }
}

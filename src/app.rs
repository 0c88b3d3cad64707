//! Wiring: configuration in, a bound server out. Tests build the same [`Application`] on port 0
//! with a temporary data directory.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api::{self, AppState, Shared};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::geo::Geo;
use crate::index::Index;
use crate::keys::{self, DEFAULT_TENANT, KeyRing, Role, TenantName};
use crate::ratelimit::RateLimits;
use crate::reports::{self, ReportPayload, ReportPolicy};
use crate::signal::{AsnCatalog, SignalPolicy};
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::{NewKey, ProcessedReport, SharedStore, Store};
use tokio::sync::Notify;

/// How often the server re-reads the keys table, so that keys made or revoked from the command
/// line (another process) take effect within a second.
const KEY_REFRESH: Duration = Duration::from_millis(500);

/// Rules purged per transaction: bounded so a purge never holds the writer for long.
const PURGE_BATCH: usize = 10_000;

pub struct Application {
    listener: TcpListener,
    state: AppState,
    tasks: BackgroundTasks,
    /// Set when this start created the first admin key; shown to the operator once.
    pub bootstrap_key: Option<String>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    pub async fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let geo = Arc::new(Geo::open(&config.geo).context("loading the geo data")?);
        if !geo.has_asn_source() {
            tracing::info!(
                "no ASN data configured (geo.asn): ASN signals are format-checked only, their existence is not checked, and ASN rules match no address"
            );
        }
        // Subscribed before the index takes the data in force: a reload from then on reaches it.
        let geo_versions = geo.subscribe();
        let index = Arc::new(Index::new(geo.current().clone()));
        let store: SharedStore = Arc::new(
            SqliteStore::open(
                &config.data_dir,
                SqliteOptions {
                    synchronous: config.store.synchronous,
                    cache_mib: config.store.cache_mib,
                },
                index.clone(),
            )
            .with_context(|| format!("opening the store in {}", config.data_dir.display()))?,
        );
        rebuild_index(&store, &index, &*clock).await?;
        let stats = index.stats();
        tracing::info!(
            prefixes = stats.prefixes,
            seq = index.seq(),
            "decision index built"
        );

        let bootstrap_key = if store.keys().await?.is_empty() {
            let (secret, _) = create_key(&*store, "admin", Role::Admin, DEFAULT_TENANT, &*clock)
                .await
                .context("creating the first admin key")?;
            Some(secret)
        } else {
            None
        };
        let keys = Arc::new(ArcSwap::from_pointee(KeyRing::new(
            store.live_keys().await?,
        )));

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;

        let asn_catalog: Option<Arc<dyn AsnCatalog>> = if geo.has_asn_source() {
            Some(geo.clone())
        } else {
            None
        };
        let limits = Arc::new(RateLimits::new(
            config.rate_limits.reports_per_minute,
            config.rate_limits.signal_per_minute,
            config
                .rate_limits
                .per_key_ids()
                .map_err(anyhow::Error::msg)?,
            clock.clone(),
        ));
        let report_worker = Arc::new(Notify::new());
        let guard = config.guard();
        let state = AppState(Arc::new(Shared {
            store: store.clone(),
            index: index.clone(),
            geo: geo.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            keys: keys.clone(),
            key_reload: Default::default(),
            report_policy: ReportPolicy {
                datasets: config.reports.datasets.clone(),
                allow_private: config.reports.allow_private,
                protected: guard.protected.clone(),
            },
            policy: SignalPolicy { guard, asn_catalog },
            limits,
            report_worker: report_worker.clone(),
            clock: clock.clone(),
            max_body_bytes: config.limits.max_body_bytes,
        }));

        let tasks = BackgroundTasks(vec![
            tokio::spawn(refresh_keys(state.clone())),
            geo.spawn_watcher(),
            tokio::spawn(process_reports(store.clone(), report_worker, clock.clone())),
            tokio::spawn(watch_report_queue(store.clone(), clock.clone())),
            tokio::spawn(follow_geo_data(geo, geo_versions, index)),
            tokio::spawn(purge_expired(
                store,
                clock,
                Duration::from_secs(config.store.purge_interval_secs.max(1)),
            )),
        ]);
        Ok(Self {
            listener,
            state,
            tasks,
            bootstrap_key,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Self {
            listener,
            state,
            tasks: _running_until_return,
            ..
        } = self;
        axum::serve(
            listener,
            api::router(state).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
    }
}

/// Tasks that live exactly as long as the server: aborted when it stops or is dropped unstarted.
struct BackgroundTasks(Vec<JoinHandle<()>>);

impl Drop for BackgroundTasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Makes a key and returns its secret (shown once) with the stored record.
pub async fn create_key(
    store: &dyn Store,
    name: &str,
    role: Role,
    tenant: &str,
    clock: &dyn Clock,
) -> anyhow::Result<(String, keys::ApiKey)> {
    let tenant = TenantName::parse(tenant).with_context(|| {
        format!("tenant {tenant:?}: use 1 to 64 characters of A-Z a-z 0-9 . _ -")
    })?;
    let (secret, digest) = keys::generate();
    let key = store
        .create_key(NewKey {
            name: name.to_owned(),
            role,
            tenant,
            digest,
            at: clock.now(),
        })
        .await?;
    Ok((secret, key))
}

/// Builds the index from the store (start-up). A change applied to the index while the
/// snapshot is read makes the index refuse that snapshot; the next one holds the change.
pub async fn rebuild_index(
    store: &SharedStore,
    index: &Arc<Index>,
    clock: &dyn Clock,
) -> anyhow::Result<()> {
    let mut attempts = 0;
    loop {
        let snapshot = store
            .snapshot(clock.now())
            .await
            .context("reading the rules")?;
        let building = index.clone();
        let built = tokio::task::spawn_blocking(move || building.rebuild(snapshot))
            .await
            .context("building the index")?;
        match built {
            Ok(()) => return Ok(()),
            // Only writes racing the read get here, and each attempt reads a newer snapshot.
            Err(stale) if attempts < REBUILD_ATTEMPTS => {
                attempts += 1;
                tracing::debug!(error = %stale, "rules changed while the index was built; again");
            }
            Err(stale) => return Err(stale).context("building the index"),
        }
    }
}

/// Snapshots a rebuild reads before giving up on writes that keep racing it.
const REBUILD_ATTEMPTS: usize = 5;

/// Hands each new set of geo data to the index, which publishes it beside the same tables in
/// one swap: there is nothing to recompile, since ASN and country rules are matched at look-up
/// time.
async fn follow_geo_data(
    geo: Arc<Geo>,
    mut versions: tokio::sync::watch::Receiver<u64>,
    index: Arc<Index>,
) {
    while versions.changed().await.is_ok() {
        index.set_geo(geo.current().clone());
    }
}

/// Reports read from the queue at a time.
const REPORT_BATCH: usize = 256;

/// Addresses applied per transaction: one report may carry 10,000, and the single writer must
/// not be held long by a backlog.
const REPORT_ADDRESSES_PER_COMMIT: usize = 10_000;

/// Turns queued reports into rule changes. Each report leaves the queue in the transaction that
/// applies it, so a crash at any point means it is applied after restart, and never twice.
async fn process_reports(store: SharedStore, wake: Arc<Notify>, clock: Arc<dyn Clock>) {
    loop {
        // A queue left by a previous run, or a missed wake-up, waits at most a second.
        let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
        loop {
            let queued = match store.queued_reports(REPORT_BATCH).await {
                Ok(queued) if queued.is_empty() => break,
                Ok(queued) => queued,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the report queue failed");
                    break;
                }
            };
            let now = clock.now();
            let mut writes_so_far = 0;
            let processed: Vec<ProcessedReport> = queued
                .iter()
                .map(|q| {
                    let writes = match serde_json::from_str::<ReportPayload>(&q.payload) {
                        Ok(payload) => reports::writes(q.kind, &payload, q.received_at),
                        Err(e) => {
                            // Only a hand-edited database gets here; dropping the report keeps
                            // it from blocking every report behind it.
                            tracing::error!(queue_id = q.id, error = %e, "dropping an unreadable queued report");
                            Vec::new()
                        }
                    };
                    ProcessedReport {
                        queue_id: q.id,
                        tenant: q.tenant,
                        writes,
                        at: now,
                    }
                })
                // One write per address; always at least one report, however large.
                .take_while(|report| {
                    let first = writes_so_far == 0;
                    writes_so_far += report.writes.len().max(1);
                    first || writes_so_far <= REPORT_ADDRESSES_PER_COMMIT
                })
                .collect();
            if let Err(e) = store.process_reports(processed).await {
                tracing::warn!(error = %e, "applying queued reports failed; retrying");
                break;
            }
        }
    }
}

/// Logs the depth and age of the report queue while it is not empty.
async fn watch_report_queue(store: SharedStore, clock: Arc<dyn Clock>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tick.tick().await;
        if let Ok(stats) = store.queue_stats(None).await
            && let Some(oldest) = stats.oldest
        {
            let age = (clock.now().0 - oldest.0).max(0) as f64 / 1000.0;
            tracing::info!(
                depth = stats.depth,
                oldest_age_seconds = age,
                "report queue"
            );
        }
    }
}

async fn refresh_keys(state: AppState) {
    let mut tick = tokio::time::interval(KEY_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // On error keep serving with the keys we have: a transient read error must not lock
        // anyone out.
        if let Err(e) = state.reload_keys().await {
            tracing::warn!(error = %e, "could not refresh API keys");
        }
    }
}

async fn purge_expired(store: SharedStore, clock: Arc<dyn Clock>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        loop {
            match store.purge_expired(clock.now(), PURGE_BATCH).await {
                Ok(purged) if purged.len() == PURGE_BATCH => continue,
                Ok(purged) => {
                    if !purged.is_empty() {
                        tracing::debug!(count = purged.len(), "purged expired rules");
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purging expired rules failed");
                    break;
                }
            }
        }
    }
}

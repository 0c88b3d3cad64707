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
use crate::engine::{ChangeSink, Engine, Feed, Policies};
use crate::export::expand::Expansions;
use crate::geo::Geo;
use crate::health::Readiness;
use crate::index::Index;
use crate::keys::{self, DEFAULT_TENANT, KeyRing, Role, TenantName};
use crate::ratelimit::RateLimits;
use crate::reports::ReportPolicy;
use crate::rules::UnixMillis;
use crate::server::{self, ConnectionLimits};
use crate::signal::{AsnCatalog, SignalPolicy};
use crate::store::backend::SharedBackend;
use crate::store::postgres::{PgBackend, PgOptions};
use crate::store::sqlite::SqliteBackend;
use crate::store::{NewKey, StoreResult};
use crate::telemetry;
use tokio::sync::Notify;

/// How often the server re-reads the keys table, so that keys made or revoked from the command
/// line (another process) take effect within a second.
const KEY_REFRESH: Duration = Duration::from_millis(500);

/// Rules purged per transaction: bounded so a purge never holds the writer for long.
const PURGE_BATCH: usize = 10_000;

pub struct Application {
    listener: TcpListener,
    /// `metrics_listen`: `GET /metrics` without a key.
    metrics_listener: Option<TcpListener>,
    connection_limits: ConnectionLimits,
    state: AppState,
    tasks: BackgroundTasks,
    report_worker: ReportWorker,
    /// Set when this start created the first admin key; shown to the operator once.
    pub bootstrap_key: Option<String>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    pub async fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        // Before anything records: handles made earlier would record nowhere.
        crate::telemetry::recorder::handle();
        let geo = Arc::new(Geo::open(&config.geo).context("loading the geo data")?);
        if !geo.has_asn_source() {
            tracing::info!(
                "no ASN data configured (geo.asn): ASN signals are format-checked only, their existence is not checked, and ASN rules match no address"
            );
        }
        // Subscribed before the index takes the data in force: a reload from then on reaches it.
        let geo_versions = geo.subscribe();
        let index = Arc::new(Index::new(geo.current().clone()));
        let expansions = Expansions::new(index.clone(), geo.clone(), clock.clone());
        let backend = open_until_ready(&config).await?;
        let feed = Arc::new(Feed::new(
            backend.clone(),
            clock.clone(),
            // The index first: the expansions are built from it.
            vec![
                index.clone() as Arc<dyn ChangeSink>,
                expansions.clone() as Arc<dyn ChangeSink>,
            ],
        ));
        load_until_ready(&feed, config.database.url.is_some()).await?;
        // After the index: look-ups are answered first, writes are readied after.
        backend.prepare_for_writes();
        let stats = index.stats();
        tracing::info!(
            prefixes = stats.prefixes,
            seq = feed.applied(),
            "decision index built"
        );
        let readiness = Arc::new(Readiness::new());
        readiness.index_loaded();
        let expansions_follow_geo = expansions.follow_geo(geo.subscribe());
        let range_limits = config.crowdsec.range_limits().map_err(anyhow::Error::msg)?;
        let asn_catalog: Option<Arc<dyn AsnCatalog>> = if geo.has_asn_source() {
            Some(geo.clone())
        } else {
            None
        };
        let guard = config.guard();
        let engine = Arc::new(Engine::start(
            backend.clone(),
            feed.clone(),
            Policies {
                write: config.write_policy(),
                signals: SignalPolicy {
                    guard: guard.clone(),
                    asn_catalog,
                },
                reports: ReportPolicy {
                    datasets: config.reports.datasets.clone(),
                    allow_private: config.reports.allow_private,
                    protected: guard.protected,
                },
            },
        ));

        let bootstrap_key = if backend.keys().await?.is_empty() {
            let (secret, _) = create_key(
                &engine,
                "admin",
                Role::Admin,
                DEFAULT_TENANT,
                &*clock,
                crate::store::Actor::command_line(),
            )
            .await
            .context("creating the first admin key")?;
            Some(secret)
        } else {
            None
        };
        let keys = Arc::new(ArcSwap::from_pointee(KeyRing::new(
            backend.live_keys().await?,
        )));
        let probe_timeout = Duration::from_millis(config.store.probe_timeout_ms.max(1));
        readiness.store_probed(probe_once(&engine, &*clock, probe_timeout).await);

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let metrics_listener = match config.metrics_listen {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("binding metrics_listen {address}"))?,
            ),
            None => None,
        };

        let rate_limits = Arc::new(RateLimits::new(
            config.rate_limits.reports_per_minute,
            config.rate_limits.signal_per_minute,
            config
                .rate_limits
                .per_key_ids()
                .map_err(anyhow::Error::msg)?,
            clock.clone(),
        ));
        let expand_geo = config
            .crowdsec
            .expand_geo(geo.has_asn_source() || geo.has_country_source());
        let bouncers = Arc::new(crate::crowdsec::pull::Bouncers::new(
            backend.clone(),
            index.clone(),
            config.crowdsec.clone(),
            expand_geo.then(|| {
                crate::crowdsec::geo::GeoRanges::new(expansions.clone(), range_limits.clone())
            }),
        ));
        let state = AppState(Arc::new(Shared {
            engine: engine.clone(),
            bouncers,
            index: index.clone(),
            geo: geo.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            client_ip_header: axum::http::HeaderName::try_from(config.client_ip_header.as_str())
                .with_context(|| {
                    format!(
                        "client_ip_header {:?} is not a header name",
                        config.client_ip_header
                    )
                })?,
            keys: keys.clone(),
            key_reload: Default::default(),
            unknown_keys: crate::keys::UnknownKeys::new(api::UNKNOWN_KEYS_REMEMBERED),
            key_lookups: tokio::sync::Semaphore::new(api::KEY_LOOKUPS),
            rate_limits,
            clock: clock.clone(),
            readiness: readiness.clone(),
            audit_page_bytes: config.audit.page_bytes,
            bodies_in_flight: Arc::new(tokio::sync::Semaphore::new(
                config.limits.bodies_in_flight_bytes,
            )),
            body_limits: config.limits.clone(),
            body_read_timeout: Duration::from_secs(config.server.body_read_timeout_secs.max(1)),
            expansions: expansions.clone(),
            range_limits,
            expand_geo,
            export_turns: Arc::new(tokio::sync::Semaphore::new(config.exports.max_concurrent)),
            exports: config.exports.clone(),
            tally: Default::default(),
            console: config.console.clone(),
        }));

        let report_worker = ReportWorker::spawn(engine.clone(), clock.clone());
        let (engine_for_subscriptions, clock_for_subscriptions) = (engine.clone(), clock.clone());
        let mut tasks = BackgroundTasks(vec![
            expansions_follow_geo,
            tokio::spawn(refresh_keys(state.clone())),
            geo.spawn_watcher(),
            tokio::spawn(follow(
                feed.clone(),
                backend.change_signal(),
                Duration::from_millis(config.store.follow_interval_ms.max(10)),
            )),
            tokio::spawn(watch_report_queue(backend.clone(), clock.clone())),
            tokio::spawn(follow_geo_data(geo, geo_versions, index)),
            tokio::spawn(probe_store(
                engine.clone(),
                readiness,
                clock.clone(),
                Duration::from_secs(config.store.probe_interval_secs.max(1)),
                probe_timeout,
            )),
            tokio::spawn(keep_history(
                engine.clone(),
                clock.clone(),
                Retention::from_config(&config),
            )),
            tokio::spawn(purge_expired(
                engine,
                PurgeClock::new(clock),
                Duration::from_secs(config.store.purge_interval_secs.max(1)),
            )),
        ]);
        for subscription in config.subscriptions.iter().cloned() {
            tasks.0.push(tokio::spawn(crate::subscriptions::run(
                engine_for_subscriptions.clone(),
                clock_for_subscriptions.clone(),
                subscription,
            )));
        }
        Ok(Self {
            listener,
            metrics_listener,
            connection_limits: config.server.connection_limits(),
            state,
            tasks,
            report_worker,
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

    /// Where `GET /metrics` answers without a key, when `metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then lets requests in flight finish within the
    /// configured deadline.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Self {
            listener,
            metrics_listener,
            connection_limits,
            state,
            tasks: _running_until_return,
            mut report_worker,
            ..
        } = self;
        // Stopped with the tasks: a scrape during shutdown is worth nothing.
        let _metrics = metrics_listener.map(|listener| {
            let router = telemetry::scrape::keyless_router(state.clone());
            BackgroundTasks(vec![tokio::spawn(async move {
                if let Err(e) =
                    server::serve(listener, router, connection_limits, std::future::pending()).await
                {
                    tracing::error!(error = %e, "the metrics listener failed");
                }
            })])
        });
        let trusted = state.trusted_proxies.clone();
        let router = api::router(state.clone()).merge(telemetry::scrape::router(state));
        let router = telemetry::http::instrument(router, trusted);
        let deadline = connection_limits.shutdown_timeout;
        let began = Arc::new(std::sync::OnceLock::new());
        let stop_reports = report_worker.stop.clone();
        let shutdown = {
            let began = began.clone();
            async move {
                shutdown.await;
                let _ = began.set(tokio::time::Instant::now());
                // The worker finishes the report it holds while requests drain.
                let _ = stop_reports.send(true);
            }
        };
        let served = server::serve(listener, router, connection_limits, shutdown).await;
        let _ = report_worker.stop.send(true);
        let until = began.get().map_or_else(tokio::time::Instant::now, |at| *at) + deadline;
        match tokio::time::timeout_at(until, &mut report_worker.task).await {
            Ok(_) => tracing::info!("the report worker finished its report and stopped"),
            Err(_) => tracing::warn!(
                "the report worker did not finish within server.shutdown_timeout_secs; its report stays queued and is applied after the next start"
            ),
        }
        served
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

/// The configured store: PostgreSQL when `database.url` is set, else SQLite in `data_dir`.
pub async fn open_backend(config: &Config) -> anyhow::Result<SharedBackend> {
    if let Some(url) = &config.database.url {
        let options = PgOptions {
            schema: config.database.schema.clone(),
            pool_size: config.database.pool_size.max(2),
            application_name: config.database.application_name.clone(),
            acquire_timeout: Duration::from_millis(config.database.acquire_timeout_ms),
            ..PgOptions::default()
        };
        let backend = PgBackend::connect(url, options)
            .await
            .context("connecting to the PostgreSQL database (database.url)")?;
        return Ok(Arc::new(backend));
    }
    let backend = SqliteBackend::open(&config.data_dir, config.sqlite_options())
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    Ok(Arc::new(backend))
}

/// Waits between attempts to reach a shared database at start-up.
const START_RETRY: Duration = Duration::from_secs(2);

/// Opens the store. A shared database that cannot be reached is tried again until it answers,
/// so a node restarted while PostgreSQL is down starts serving as soon as it is back (it does
/// not listen before: a proxy sees a refused connection, never an answer made without the
/// rules). The embedded store's problems (a read-only directory) are reported at once.
async fn open_until_ready(config: &Config) -> anyhow::Result<SharedBackend> {
    loop {
        match open_backend(config).await {
            Ok(backend) => return Ok(backend),
            Err(e) if config.database.url.is_some() => {
                tracing::error!(error = %format!("{e:#}"), "the database is not reachable; trying again in {} s", START_RETRY.as_secs());
                tokio::time::sleep(START_RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Loads the rules into the feed's followers, trying a shared database again until it answers.
async fn load_until_ready(feed: &Feed, shared: bool) -> anyhow::Result<()> {
    loop {
        match feed.load().await {
            Ok(()) => return Ok(()),
            Err(e) if shared => {
                tracing::error!(error = %e, "reading the rules failed; trying again in {} s", START_RETRY.as_secs());
                tokio::time::sleep(START_RETRY).await;
            }
            Err(e) => return Err(e).context("loading the rules"),
        }
    }
}

/// Makes a key and returns its secret (shown once) with the stored record.
pub async fn create_key(
    engine: &Engine,
    name: &str,
    role: Role,
    tenant: &str,
    clock: &dyn Clock,
    by: crate::store::Actor,
) -> anyhow::Result<(String, keys::ApiKey)> {
    let tenant = TenantName::parse(tenant).with_context(|| {
        format!("tenant {tenant:?}: use 1 to 64 characters of A-Z a-z 0-9 . _ -")
    })?;
    let (secret, digest) = keys::generate();
    let key = engine
        .create_key(
            NewKey {
                name: name.to_owned(),
                role,
                tenant,
                digest,
                at: clock.now(),
            },
            by,
        )
        .await?;
    Ok((secret, key))
}

/// Reads what other processes and nodes commit: at once when the backend signals it, and at
/// least every `poll` (a signal can be lost, the change log cannot).
async fn follow(feed: Arc<Feed>, signal: Option<Arc<Notify>>, poll: Duration) {
    loop {
        match &signal {
            Some(signal) => {
                let _ = tokio::time::timeout(poll, signal.notified()).await;
            }
            None => tokio::time::sleep(poll).await,
        }
        if let Err(e) = feed.catch_up().await {
            tracing::warn!(error = %e, "reading the change log failed; retrying");
        }
    }
}

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

/// The task applying queued reports, and how to ask it to stop.
struct ReportWorker {
    stop: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ReportWorker {
    fn spawn(engine: Arc<Engine>, clock: Arc<dyn Clock>) -> Self {
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(process_reports(engine, clock, stopping));
        Self { stop, task }
    }
}

impl Drop for ReportWorker {
    /// A server dropped without running, or past its shutdown deadline.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Turns queued reports into rule changes. Each report leaves the queue in the transaction that
/// applies it, so a crash at any point means it is applied after restart, and never twice.
/// Asked to stop, it finishes the transaction it is in and takes no more.
async fn process_reports(
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let wake = engine.report_queued().clone();
    loop {
        // A queue left by a previous run, or a missed wake-up, waits at most a second.
        tokio::select! {
            changed = stopping.changed() => if changed.is_err() || *stopping.borrow() {
                return;
            },
            _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()) => {}
        }
        loop {
            if *stopping.borrow() {
                return;
            }
            match engine
                .process_reports(REPORT_BATCH, REPORT_ADDRESSES_PER_COMMIT, clock.now())
                .await
            {
                Ok(processed) if processed.reports == 0 => break,
                Ok(processed) => {
                    metrics::counter!(telemetry::names::REPORTS_APPLIED)
                        .increment(processed.reports as u64);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "applying queued reports failed; retrying");
                    break;
                }
            }
        }
    }
}

/// Logs the depth and age of the report queue while it is not empty.
async fn watch_report_queue(backend: SharedBackend, clock: Arc<dyn Clock>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tick.tick().await;
        if let Ok(stats) = backend.queue_stats(None).await
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

async fn probe_store(
    engine: Arc<Engine>,
    readiness: Arc<Readiness>,
    clock: Arc<dyn Clock>,
    every: Duration,
    within: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        readiness.store_probed(probe_once(&engine, &*clock, within).await);
    }
}

/// One write probe; one that has not finished `within` counts as failed (it still runs to its
/// end in the writer, and the next probe waits behind it).
async fn probe_once(engine: &Engine, clock: &dyn Clock, within: Duration) -> Result<(), String> {
    match tokio::time::timeout(within, engine.probe(clock.now())).await {
        Ok(outcome) => outcome.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "a write did not finish within {} ms",
            within.as_millis()
        )),
    }
}

/// How long the audit log and the change log are kept; `None`: for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub audit: Option<Duration>,
    pub changes: Option<Duration>,
}

impl Retention {
    pub fn from_config(config: &Config) -> Self {
        let days = |d: u32| (d > 0).then(|| Duration::from_secs(u64::from(d) * 86_400));
        Self {
            audit: days(config.audit.retention_days),
            changes: days(config.store.change_log_retention_days),
        }
    }
}

/// How often old audit and change-log entries are deleted.
const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// Entries deleted per transaction, so that retention never holds the writer for long.
const RETENTION_BATCH: usize = 10_000;

async fn keep_history(engine: Arc<Engine>, clock: Arc<dyn Clock>, retention: Retention) {
    let mut tick = tokio::time::interval(RETENTION_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = apply_retention(&engine, clock.now(), retention).await {
            tracing::warn!(error = %e, "deleting old audit and change-log entries failed");
        }
    }
}

/// Deletes the audit and change-log entries older than `retention` allows, in batches.
/// Returns how many of each went.
pub async fn apply_retention(
    engine: &Engine,
    now: UnixMillis,
    retention: Retention,
) -> StoreResult<(usize, usize)> {
    let before = |keep: Duration| UnixMillis(now.0 - keep.as_millis() as i64);
    let mut deleted = (0, 0);
    if let Some(keep) = retention.audit {
        loop {
            let n = engine.purge_audit(before(keep), RETENTION_BATCH).await?;
            deleted.0 += n;
            if n < RETENTION_BATCH {
                break;
            }
        }
    }
    if let Some(keep) = retention.changes {
        loop {
            let n = engine.purge_changes(before(keep), RETENTION_BATCH).await?;
            deleted.1 += n;
            if n < RETENTION_BATCH {
                break;
            }
        }
    }
    if deleted != (0, 0) {
        tracing::info!(
            audit = deleted.0,
            changes = deleted.1,
            "deleted entries past their retention"
        );
    }
    Ok(deleted)
}

/// The instant up to which expired rules may be purged. Expired rules stop matching by the
/// wall clock whatever this says, but purging deletes them for good, so a wall clock stepped
/// forward (a bad NTP source, an operator's typo) must not take rules still due to apply once
/// the clock is put right: the purge goes by the earlier of the wall clock and the time
/// measured since start, and says when the two disagree.
pub struct PurgeClock {
    clock: Arc<dyn Clock>,
    /// Wall time and steady time at start.
    anchor: (UnixMillis, Duration),
    /// Whether the current disagreement has been logged.
    warned: std::sync::atomic::AtomicBool,
}

/// How far the wall clock may run ahead of the time measured since start before it is called
/// a jump.
const CLOCK_JUMP: Duration = Duration::from_secs(60);

impl PurgeClock {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        let anchor = (clock.now(), clock.monotonic());
        Self {
            clock,
            anchor,
            warned: Default::default(),
        }
    }

    pub fn cutoff(&self) -> UnixMillis {
        use std::sync::atomic::Ordering;
        let wall = self.clock.now();
        let elapsed = self.clock.monotonic().saturating_sub(self.anchor.1);
        let steady = UnixMillis(self.anchor.0.0 + elapsed.as_millis() as i64);
        let ahead = wall.0 - steady.0;
        if ahead > CLOCK_JUMP.as_millis() as i64 {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    ahead_secs = ahead / 1000,
                    "the wall clock is ahead of the time measured since start; expired rules are purged by the latter until a restart"
                );
            }
        } else {
            self.warned.store(false, Ordering::Relaxed);
        }
        UnixMillis(wall.0.min(steady.0))
    }
}

async fn purge_expired(engine: Arc<Engine>, clock: PurgeClock, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        loop {
            match engine.purge_expired(clock.cutoff(), PURGE_BATCH).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn a_wall_clock_stepped_forward_does_not_purge_early() {
        let clock = Arc::new(ManualClock::new(UnixMillis(1_000_000)));
        let purge = PurgeClock::new(clock.clone());
        clock.advance_ms(5_000);
        assert_eq!(purge.cutoff(), UnixMillis(1_005_000));
        // A day ahead in one step: purging goes by the time that really passed.
        clock.step_wall_ms(86_400_000);
        assert_eq!(purge.cutoff(), UnixMillis(1_005_000));
        clock.advance_ms(1_000);
        assert_eq!(purge.cutoff(), UnixMillis(1_006_000));
        // Stepped back: the wall clock is the earlier of the two.
        clock.step_wall_ms(-86_400_000 - 10_000);
        assert_eq!(purge.cutoff(), UnixMillis(996_000));
    }
}

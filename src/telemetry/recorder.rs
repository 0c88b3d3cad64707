//! The Prometheus recorder. `metrics` macros record into one global recorder; it is installed
//! once per process (tests build many servers in one process, and they share it).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::sharded::SECONDS_BUCKETS;

/// Every metric Palisade exports. The Grafana dashboard in `deploy/` uses these names.
pub mod names {
    pub const HTTP_REQUESTS: &str = "palisade_http_requests_total";
    pub const HTTP_DURATION: &str = "palisade_http_request_duration_seconds";
    pub const CONNECTIONS_OPEN: &str = "palisade_http_connections_open";
    pub const SIGNALS: &str = "palisade_signals_total";
    pub const SIGNAL_BATCHES_REFUSED: &str = "palisade_signal_batches_refused_total";
    pub const REPORTS: &str = "palisade_reports_total";
    pub const REPORTS_APPLIED: &str = "palisade_reports_applied_total";
    pub const LOOKUPS: &str = "palisade_lookups_total";
    pub const RULES_ACTIVE: &str = "palisade_rules_active";
    pub const REPORT_QUEUE_DEPTH: &str = "palisade_report_queue_depth";
    pub const REPORT_QUEUE_OLDEST_AGE: &str = "palisade_report_queue_oldest_age_seconds";
    pub const FEED_APPLIED_SEQ: &str = "palisade_feed_applied_seq";
    pub const FEED_LAG: &str = "palisade_feed_lag_changes";
    pub const BOUNCER_LAG: &str = "palisade_bouncer_lag_changes";
    pub const BOUNCER_PULL_AGE: &str = "palisade_bouncer_last_pull_age_seconds";
    pub const GEO_DATA_AGE: &str = "palisade_geo_data_age_seconds";
    pub const GEO_RELOADS: &str = "palisade_geo_reloads";
    pub const STORE_COMMIT_DURATION: &str = "palisade_store_commit_duration_seconds";
    pub const STORE_COMMIT_FAILURES: &str = "palisade_store_commit_failures_total";
    pub const FEED_PUBLISH_DURATION: &str = "palisade_feed_publish_duration_seconds";
    pub const STORE_SYNC_DURATION: &str = "palisade_store_sync_duration_seconds";
    pub const BUILD_INFO: &str = "palisade_build_info";
}

/// Histogram samples are kept until folded into their buckets; folding every few seconds keeps
/// that memory small under load even when nobody scrapes.
const UPKEEP: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder on first use and returns its handle. `None` when another recorder was
/// installed first (an embedding program's): metrics then go there.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn({
                    let handle = handle.clone();
                    move || {
                        loop {
                            std::thread::sleep(UPKEEP);
                            handle.run_upkeep();
                        }
                    }
                })
                .ok()?;
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    use names::*;
    describe_gauge!(CONNECTIONS_OPEN, "Open client connections");
    describe_counter!(
        SIGNALS,
        "Signal events received: applied, or refused and why"
    );
    describe_counter!(
        SIGNAL_BATCHES_REFUSED,
        "POST /v1/signal bodies refused whole, by reason"
    );
    describe_counter!(
        REPORTS,
        "Reports received, by endpoint: queued, or refused and why"
    );
    describe_counter!(
        REPORTS_APPLIED,
        "Queued reports applied by the report worker"
    );
    describe_gauge!(RULES_ACTIVE, "Rules in force, by tenant, kind and action");
    describe_gauge!(REPORT_QUEUE_DEPTH, "Reports waiting to be applied");
    describe_gauge!(
        REPORT_QUEUE_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest report waiting"
    );
    describe_gauge!(
        FEED_APPLIED_SEQ,
        "The last change-log entry the decision index reflects"
    );
    describe_gauge!(
        BOUNCER_LAG,
        "Change numbers committed after a bouncer's stream cursor, by key id (all tenants' changes count)"
    );
    describe_gauge!(
        BOUNCER_PULL_AGE,
        "Seconds since a bouncer's last pull, by key id"
    );
    describe_gauge!(
        FEED_LAG,
        "Change-log entries committed but not yet handed to a consumer (capped at 1000)"
    );
    describe_gauge!(
        GEO_DATA_AGE,
        Unit::Seconds,
        "Time since the geo file in force was last modified"
    );
    describe_gauge!(GEO_RELOADS, "Geo data sets swapped in since start");
    describe_histogram!(
        STORE_COMMIT_DURATION,
        Unit::Seconds,
        "Time of one group-commit transaction of the store"
    );
    describe_counter!(
        STORE_COMMIT_FAILURES,
        "Group-commit transactions that failed"
    );
    describe_histogram!(
        FEED_PUBLISH_DURATION,
        Unit::Seconds,
        "Time to hand one round of committed changes to the decision index; writes are answered after it"
    );
    describe_histogram!(
        STORE_SYNC_DURATION,
        Unit::Seconds,
        "Time to make one round of commits durable, beside handing them to the index (SQLite at synchronous = full: a sync of its log)"
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version is in the label");
}

/// The exposition text, or `None` when another recorder holds the metrics. The per-request
/// series are kept apart from the recorder (see [`super::sharded`]) and written after its own.
pub fn render() -> Option<String> {
    handle().map(|handle| {
        let mut text = handle.render();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        super::http::render(&mut text);
        text
    })
}

#[cfg(test)]
mod tests {
    use super::names::*;

    /// The dashboard in `deploy/` charts only metrics that exist.
    #[test]
    fn the_dashboard_uses_only_exported_metrics() {
        let exported = [
            HTTP_REQUESTS,
            HTTP_DURATION,
            CONNECTIONS_OPEN,
            SIGNALS,
            SIGNAL_BATCHES_REFUSED,
            REPORTS,
            REPORTS_APPLIED,
            LOOKUPS,
            RULES_ACTIVE,
            REPORT_QUEUE_DEPTH,
            REPORT_QUEUE_OLDEST_AGE,
            FEED_APPLIED_SEQ,
            FEED_LAG,
            BOUNCER_LAG,
            BOUNCER_PULL_AGE,
            GEO_DATA_AGE,
            GEO_RELOADS,
            STORE_COMMIT_DURATION,
            STORE_COMMIT_FAILURES,
            FEED_PUBLISH_DURATION,
            STORE_SYNC_DURATION,
            BUILD_INFO,
        ];
        let dashboard = include_str!("../../deploy/grafana-dashboard.json");
        let parsed: serde_json::Value = serde_json::from_str(dashboard).unwrap();
        assert!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()));
        let mut used = 0;
        for (at, _) in dashboard.match_indices("palisade_") {
            let name: String = dashboard[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            assert!(
                exported.contains(&base),
                "the dashboard charts unknown {name}"
            );
            used += 1;
        }
        assert!(used >= 15);
    }
}

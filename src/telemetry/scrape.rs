//! `GET /metrics`: with an admin key on the API listener, or without a key on the separate
//! `metrics_listen` address (meant for a private network). Gauges that would cost the hot paths
//! to keep current are read here, at scrape time.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::SystemTime;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{names, recorder};
use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::keys::Role;

/// Change-log entries read to measure a consumer's lag; a lag beyond this shows as this.
const LAG_CAP: usize = 1000;

const CONTENT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics` for the API listener: admin keys only.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(with_key))
        .with_state(state)
}

/// `GET /metrics` without a key, for the `metrics_listen` address.
pub fn keyless_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(without_key))
        .with_state(state)
}

async fn with_key(State(app): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    if caller.0.role != Role::Admin {
        return Err(ApiError::Forbidden(
            "only admin keys may read metrics".into(),
        ));
    }
    exposition(&app).await
}

async fn without_key(State(app): State<AppState>) -> Result<Response, ApiError> {
    exposition(&app).await
}

async fn exposition(app: &AppState) -> Result<Response, ApiError> {
    refresh(app).await;
    let text = recorder::render()
        .ok_or_else(|| ApiError::Internal("metrics are recorded by another recorder".into()))?;
    Ok(([(CONTENT_TYPE, CONTENT)], text).into_response())
}

/// Sets the gauges read at scrape time. A part that cannot be read keeps its last value.
async fn refresh(app: &AppState) {
    let now = app.clock.now();
    let backend = app.engine.backend();
    if let Ok(stats) = backend.queue_stats(None).await {
        metrics::gauge!(names::REPORT_QUEUE_DEPTH).set(stats.depth as f64);
        let age = stats.oldest.map_or(0, |oldest| (now.0 - oldest.0).max(0));
        metrics::gauge!(names::REPORT_QUEUE_OLDEST_AGE).set(age as f64 / 1000.0);
    }
    let feed = app.engine.feed();
    let applied = feed.applied();
    metrics::gauge!(names::FEED_APPLIED_SEQ).set(applied as f64);
    if let Ok(pending) = backend.changes_since(applied, LAG_CAP).await {
        metrics::gauge!(names::FEED_LAG, "consumer" => "index").set(pending.len() as f64);
    }
    metrics::gauge!(names::FEED_LAG, "consumer" => "subscribers")
        .set(feed.subscriber_backlog() as f64);
    if let Ok(bouncers) = backend.bouncers().await {
        for bouncer in bouncers {
            let key = bouncer.key_id.to_string();
            let age = (now.0 - bouncer.last_pull.0).max(0) as f64 / 1000.0;
            metrics::gauge!(names::BOUNCER_PULL_AGE, "key_id" => key.clone()).set(age);
            if let Some(cursor) = bouncer.cursor {
                let behind = applied.saturating_sub(cursor.seq);
                metrics::gauge!(names::BOUNCER_LAG, "key_id" => key).set(behind as f64);
            }
        }
    }
    let wall = SystemTime::now();
    for (source, modified) in app.geo.files_modified() {
        let age = wall.duration_since(modified).unwrap_or_default();
        metrics::gauge!(names::GEO_DATA_AGE, "source" => source).set(age.as_secs_f64());
    }
    metrics::gauge!(names::GEO_RELOADS).set(app.geo.version() as f64);
    rule_gauges(app, now).await;
}

/// Label sets of `palisade_rules_active` each index reported last time, so that one whose rules
/// are all gone drops to 0 instead of keeping its last count.
static REPORTED: Mutex<Option<HashMap<usize, HashSet<[String; 3]>>>> = Mutex::new(None);

async fn rule_gauges(app: &AppState, now: crate::rules::UnixMillis) {
    let Ok(keys) = app.engine.backend().keys().await else {
        return;
    };
    let tenants: HashMap<_, _> = keys
        .into_iter()
        .map(|key| (key.tenant_id, key.tenant.to_string()))
        .collect();
    let index = app.index.clone();
    let whose = std::sync::Arc::as_ptr(&index) as usize;
    // A walk over every rule: off the async workers.
    let Ok(counts) = tokio::task::spawn_blocking(move || index.active_rules(now)).await else {
        return;
    };
    let mut current = HashSet::new();
    for ((tenant, kind, action), count) in counts {
        let tenant = tenants
            .get(&tenant)
            .cloned()
            .unwrap_or_else(|| tenant.0.to_string());
        let labels = [tenant, kind.as_str().to_owned(), action.as_str().to_owned()];
        set_rules(&labels, count as f64);
        current.insert(labels);
    }
    let mut reported = REPORTED.lock().unwrap_or_else(|e| e.into_inner());
    let reported = reported.get_or_insert_with(HashMap::new);
    for gone in reported
        .get(&whose)
        .into_iter()
        .flatten()
        .filter(|l| !current.contains(*l))
    {
        set_rules(gone, 0.0);
    }
    reported.insert(whose, current);
}

fn set_rules([tenant, kind, action]: &[String; 3], count: f64) {
    metrics::gauge!(names::RULES_ACTIVE, "tenant" => tenant.clone(), "kind" => kind.clone(), "action" => action.clone())
        .set(count);
}

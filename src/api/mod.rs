//! The HTTP surface. Handlers parse the request, call the domain and the store, and answer;
//! every error goes through [`error::ApiError`].
//!
//! - [`signal`]: `POST /v1/signal`
//! - [`rules`]: `GET /v1/rules`, `GET|DELETE /v1/rules/{id}`
//! - [`audit`]: `GET /v1/audit`
//! - [`check`]: `GET|POST /v1/check`, `GET /v1/forward-auth`
//! - [`reports`]: `POST /v1/ip`, `/v1/unban/ip`, `/v1/false/{add,remove}/ip`, `POST /test`
//! - [`docs`]: OpenAPI document and Swagger UI under `/docs/signal/`

pub mod audit;
pub mod auth;
pub mod check;
pub mod docs;
pub mod error;
pub mod reports;
pub mod rules;
pub mod signal;

use std::ops::Deref;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use ipnet::IpNet;

use crate::clock::Clock;
use crate::geo::Geo;
use crate::index::Index;
use crate::keys::KeyRing;
use crate::ratelimit::RateLimits;
use crate::reports::ReportPolicy;
use crate::signal::SignalPolicy;
use crate::store::{SharedStore, StoreResult};
use error::ApiError;
use tokio::sync::Notify;

/// What every handler can reach.
pub struct Shared {
    pub store: SharedStore,
    pub index: Arc<Index>,
    pub geo: Arc<Geo>,
    /// Peers whose forwarding headers forward-auth believes.
    pub trusted_proxies: Vec<IpNet>,
    /// Swapped whole when keys change; handlers never wait on it.
    pub keys: Arc<ArcSwap<KeyRing>>,
    /// Held across a reload's read and swap, so that a slower reload that read the keys
    /// earlier never replaces the ring a later one built (a new key would vanish again).
    pub key_reload: tokio::sync::Mutex<()>,
    pub policy: SignalPolicy,
    pub report_policy: ReportPolicy,
    pub limits: Arc<RateLimits>,
    /// Woken when a report is queued, so the worker does not wait for its next poll.
    pub report_worker: Arc<Notify>,
    pub clock: Arc<dyn Clock>,
    pub max_body_bytes: usize,
    /// A request body must arrive whole within this; a slower one is a 408.
    pub body_read_timeout: std::time::Duration,
}

impl Shared {
    /// Re-reads the live keys and swaps the key ring in one step.
    pub async fn reload_keys(&self) -> StoreResult<()> {
        let _one_at_a_time = self.key_reload.lock().await;
        let live = self.store.live_keys().await?;
        self.keys.store(Arc::new(KeyRing::new(live)));
        Ok(())
    }
}

#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.max_body_bytes;
    Router::new()
        .route("/v1/signal", axum::routing::post(signal::submit))
        .route("/v1/rules", get(rules::list))
        .route("/v1/rules/{id}", get(rules::show).delete(rules::delete))
        .route("/v1/audit", get(audit::list))
        .route("/v1/check", get(check::check_one).post(check::check_many))
        .route("/v1/forward-auth", get(check::forward_auth))
        .route("/v1/ip", axum::routing::post(reports::report))
        .route("/v1/unban/ip", axum::routing::post(reports::unban))
        .route("/v1/false/add/ip", axum::routing::post(reports::false_add))
        .route(
            "/v1/false/remove/ip",
            axum::routing::post(reports::false_remove),
        )
        .route("/v1/reports/queue", get(reports::queue))
        .route("/test", axum::routing::post(reports::test_token))
        .route("/healthz", get(healthz))
        .merge(docs::router())
        .fallback(|| async { ApiError::NotFound("No such endpoint".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness: the process answers HTTP.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The server is up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// A request body read whole, whatever its `Content-Type` (curl's `-d` sends
/// `application/x-www-form-urlencoded`, and the contract's examples must still work).
pub struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &AppState) -> Result<Self, ApiError> {
        tokio::time::timeout(app.body_read_timeout, Bytes::from_request(req, app))
            .await
            .map_err(|_| ApiError::BodyTimeout(app.body_read_timeout.as_secs()))?
            .map(RawBody)
            .map_err(|rejection| match rejection {
                BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
                    ApiError::PayloadTooLarge(app.max_body_bytes)
                }
                other => ApiError::invalid("body", other.body_text(), Value::Null),
            })
    }
}

/// A fresh id tying a request's audit entries together.
pub fn request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Query parameters in order as received. A malformed query string is a 400 like any other.
pub struct Params(pub Vec<(String, String)>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map(|q| Params(q.0))
            .map_err(|rejection| ApiError::invalid("query", rejection.body_text(), Value::Null))
    }
}

/// `limit`: 1 to 1000.
pub fn parse_limit(value: &str) -> Result<usize, ApiError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=rules::MAX_PAGE).contains(n))
        .ok_or_else(|| {
            ApiError::invalid(
                "limit",
                "must be an integer from 1 to 1000",
                Value::from(value),
            )
        })
}

/// `cursor`: a `next_cursor` handed out earlier.
pub fn parse_cursor(value: &str) -> Result<i64, ApiError> {
    value
        .parse::<i64>()
        .ok()
        .filter(|c| *c >= 0)
        .ok_or_else(|| {
            ApiError::invalid(
                "cursor",
                "must be a cursor returned as next_cursor",
                Value::from(value),
            )
        })
}

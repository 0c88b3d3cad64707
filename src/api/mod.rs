//! The HTTP surface. Handlers parse the request, call the domain and the store, and answer;
//! every error goes through [`error::ApiError`].
//!
//! - [`signal`]: `POST /v1/signal`
//! - [`rules`]: `GET /v1/rules`, `GET|DELETE /v1/rules/{id}`
//! - [`audit`]: `GET /v1/audit`
//! - [`check`]: `GET|POST /v1/check`, `GET /v1/forward-auth`
//! - [`crowdsec`]: `GET|HEAD /v1/decisions`, `GET|HEAD /v1/decisions/stream`,
//!   `POST /v1/usage-metrics` (CrowdSec's bouncer API)
//! - [`reports`]: `POST /v1/ip`, `/v1/unban/ip`, `/v1/false/{add,remove}/ip`, `POST /test`
//! - [`exports`]: `GET /v1/blocklist`, `GET /v1/config` (the Gen0Sec agent's feed),
//!   `GET /v1/authcheck` (also `/authcheck`)
//! - [`docs`]: OpenAPI document and Swagger UI under `/docs/signal/`

pub mod audit;
pub mod auth;
pub mod check;
pub mod crowdsec;
pub mod docs;
pub mod error;
pub mod exports;
pub mod query;
pub mod reports;
pub mod rules;
pub mod signal;
pub mod tally;

use std::ops::Deref;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::{FromRequest, Request};
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::BodyExt;
use http_body_util::LengthLimitError;
use serde::Serialize;
use serde_json::Value;
use std::marker::PhantomData;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use utoipa::ToSchema;

use ipnet::IpNet;

use crate::clock::Clock;
use crate::config::LimitsConfig;
use crate::engine::Engine;
use crate::geo::Geo;
use crate::index::Index;
use crate::keys::{self, KeyRing, Principal, UnknownKeys};
use crate::ratelimit::RateLimits;
use crate::store::StoreResult;
use error::ApiError;

/// What every handler can reach.
pub struct Shared {
    /// Every write goes through it; reads go to its backend.
    pub engine: Arc<Engine>,
    /// What CrowdSec bouncers pull.
    pub bouncers: Arc<crate::crowdsec::pull::Bouncers>,
    pub index: Arc<Index>,
    pub geo: Arc<Geo>,
    /// Peers whose forwarding header forward-auth believes.
    pub trusted_proxies: Vec<IpNet>,
    /// The one header such a peer gives the client address in.
    pub client_ip_header: axum::http::HeaderName,
    /// Swapped whole when keys change; handlers never wait on it.
    pub keys: Arc<ArcSwap<KeyRing>>,
    /// Held across a reload's read and swap, so that a slower reload that read the keys
    /// earlier never replaces the ring a later one built (a new key would vanish again).
    pub key_reload: tokio::sync::Mutex<()>,
    /// Wrong keys already looked up in the store.
    pub unknown_keys: UnknownKeys,
    /// Turns for store look-ups of keys missing from the ring.
    pub key_lookups: Semaphore,
    pub rate_limits: Arc<RateLimits>,
    pub clock: Arc<dyn Clock>,
    pub readiness: Arc<crate::health::Readiness>,
    /// Largest `GET /v1/audit` answer, in bytes of events.
    pub audit_page_bytes: usize,
    pub body_limits: LimitsConfig,
    /// Bytes of request bodies held now, bounded by `body_limits.bodies_in_flight_bytes`.
    pub bodies_in_flight: Arc<Semaphore>,
    /// A request body must arrive whole within this; a slower one is a 408.
    pub body_read_timeout: std::time::Duration,
    /// ASN and country rules as address ranges, per tenant.
    pub expansions: Arc<crate::export::expand::Expansions>,
    /// How many expanded ranges each key may be given.
    pub range_limits: crate::export::expand::RangeLimits,
    /// Whether bouncers are served ASN and country rules as ranges (`crowdsec.expand_geo`,
    /// resolved against whether geo data is configured).
    pub expand_geo: bool,
    /// Turns for blocklist exports being written (`exports.max_concurrent`).
    pub export_turns: Arc<Semaphore>,
    pub exports: crate::config::ExportsConfig,
    /// Look-ups and blocks per minute, for the console's chart.
    pub tally: tally::Tally,
    pub console: crate::console::ConsoleConfig,
}

impl Shared {
    /// The owner of a presented key. A key missing from the ring is looked up in the store, so
    /// that a key made by another process (`palisade keys create`) works on the very next
    /// request; wrong keys are remembered, so repeating one costs no query, and at most
    /// [`KEY_LOOKUPS`] queries for unknown keys run at once.
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Principal>, ApiError> {
        let digest = keys::digest(token);
        if let Some(principal) = self.keys.load().authenticate_digest(&digest) {
            return Ok(principal);
        }
        if !keys::well_formed(token) || self.unknown_keys.contains(&digest) {
            return Err(ApiError::Unauthorized);
        }
        let _turn = self
            .key_lookups
            .acquire()
            .await
            .map_err(|_| ApiError::Unauthorized)?;
        // Another request with the same new key may have loaded it meanwhile.
        if let Some(principal) = self.keys.load().authenticate_digest(&digest) {
            return Ok(principal);
        }
        if self.engine.backend().live_key(digest).await?.is_none() {
            self.unknown_keys.insert(digest);
            return Err(ApiError::Unauthorized);
        }
        self.reload_keys().await?;
        self.keys
            .load()
            .authenticate_digest(&digest)
            .ok_or(ApiError::Unauthorized)
    }

    /// Re-reads the live keys and swaps the key ring in one step.
    pub async fn reload_keys(&self) -> StoreResult<()> {
        let _one_at_a_time = self.key_reload.lock().await;
        let live = self.engine.backend().live_keys().await?;
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
    Router::new()
        .route("/v1/signal", axum::routing::post(signal::submit))
        .route("/v1/rules", get(rules::list))
        .route("/v1/rules/{id}", get(rules::show).delete(rules::delete))
        .route("/v1/audit", get(audit::list))
        .route("/v1/check", get(check::check_one).post(check::check_many))
        .route("/v1/forward-auth", get(check::forward_auth))
        .route(
            "/v1/decisions",
            get(crowdsec::decisions).head(crowdsec::head),
        )
        .route(
            "/v1/decisions/stream",
            get(crowdsec::stream).head(crowdsec::head),
        )
        .route(
            "/v1/usage-metrics",
            axum::routing::post(crowdsec::usage_metrics),
        )
        .route("/v1/ip", axum::routing::post(reports::report))
        .route("/v1/unban/ip", axum::routing::post(reports::unban))
        .route("/v1/false/add/ip", axum::routing::post(reports::false_add))
        .route(
            "/v1/false/remove/ip",
            axum::routing::post(reports::false_remove),
        )
        .route("/v1/reports/queue", get(reports::queue))
        .route("/test", axum::routing::post(reports::test_token))
        .route("/v1/blocklist", get(exports::blocklist))
        .route("/v1/config", get(exports::agent_config))
        // The agent calls `{base_url}/authcheck` with a base URL ending in `/v1`.
        .route("/v1/authcheck", get(exports::authcheck))
        .route("/authcheck", get(exports::authcheck))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(docs::router())
        .merge(crate::console::router(&state))
        .fallback(|| async { ApiError::NotFound("No such endpoint".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
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

/// Store look-ups of unknown keys that may run at once; a flood of made-up keys queues here
/// instead of taking every read connection.
pub const KEY_LOOKUPS: usize = 2;

/// Wrong keys remembered before the memory of them starts over.
pub const UNKNOWN_KEYS_REMEMBERED: usize = 65_536;

/// The size limit a route reads its body under.
pub trait BodyRoute {
    fn limit(limits: &LimitsConfig) -> usize;
}

/// `POST /v1/signal`.
pub struct SignalRoute;
/// `POST /v1/check`.
pub struct CheckRoute;
/// The report endpoints.
pub struct ReportRoute;

impl BodyRoute for SignalRoute {
    fn limit(limits: &LimitsConfig) -> usize {
        limits.signal_body_bytes
    }
}

impl BodyRoute for CheckRoute {
    fn limit(limits: &LimitsConfig) -> usize {
        limits.check_body_bytes
    }
}

impl BodyRoute for ReportRoute {
    fn limit(limits: &LimitsConfig) -> usize {
        limits.report_body_bytes
    }
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// `ready` or `not ready`.
    #[schema(example = "ready")]
    pub status: &'static str,
    /// What keeps the node from being ready; empty when it is.
    pub problems: Vec<String>,
}

/// Readiness: the decision index is loaded and the store accepts writes (probed every
/// `store.probe_interval_secs`, 5 s by default).
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready for traffic", body = Ready),
        (status = 503, description = "Not ready, and why", body = Ready),
    ))]
pub async fn readyz(State(app): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let problems = app.readiness.problems();
    let status = if problems.is_empty() {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Ready {
        status: if problems.is_empty() {
            "ready"
        } else {
            "not ready"
        },
        problems,
    };
    (status, Json(body)).into_response()
}

/// A request body read whole, whatever its `Content-Type` (curl's `-d` sends
/// `application/x-www-form-urlencoded`, and the contract's examples must still work), under
/// its route's size limit and the body timeout. It holds its share of the memory budget for
/// bodies until the request is done with it.
pub struct RawBody<R> {
    bytes: Bytes,
    _budget: OwnedSemaphorePermit,
    _route: PhantomData<R>,
}

impl<R> RawBody<R> {
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

impl<R: BodyRoute + Send> FromRequest<AppState> for RawBody<R> {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &AppState) -> Result<Self, ApiError> {
        let limit = R::limit(&app.body_limits);
        let announced = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if announced.is_some_and(|n| n > limit) {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        // A chunked body may be as large as the limit, so it reserves that much.
        let reserve = announced
            .unwrap_or(limit)
            .min(app.body_limits.bodies_in_flight_bytes);
        let reserve = u32::try_from(reserve.max(1)).unwrap_or(u32::MAX);
        let budget = tokio::time::timeout(
            BODY_BUDGET_WAIT,
            app.bodies_in_flight.clone().acquire_many_owned(reserve),
        )
        .await
        .map_err(|_| ApiError::Busy)?
        .map_err(|_| ApiError::Busy)?;
        let read = http_body_util::Limited::new(req.into_body(), limit).collect();
        let bytes = match tokio::time::timeout(app.body_read_timeout, read).await {
            Err(_) => return Err(ApiError::BodyTimeout(app.body_read_timeout.as_secs())),
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(ApiError::PayloadTooLarge(limit));
            }
            Ok(Err(e)) => {
                return Err(ApiError::invalid(
                    "body",
                    format!("could not be read: {e}"),
                    Value::Null,
                ));
            }
        };
        Ok(RawBody {
            bytes,
            _budget: budget,
            _route: PhantomData,
        })
    }
}

/// How long a body waits for room in the memory budget before the request gets 503: a server
/// that full sheds load rather than queue it.
pub const BODY_BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The id tying a request's audit entries to its log lines and its answer's `X-Request-Id`.
pub fn request_id() -> String {
    crate::telemetry::current_request_id().unwrap_or_else(crate::telemetry::http::new_request_id)
}

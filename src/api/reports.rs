//! The abuse-report API: `POST /v1/ip`, `/v1/unban/ip`, `/v1/false/add/ip`,
//! `/v1/false/remove/ip` (202, queued durably, processed by a background worker), the token
//! check `POST /test`, and `GET /v1/reports/queue`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::{AppState, RawBody, ReportRoute};
use crate::keys::{Permission, Role};
use crate::ratelimit::{Scope, Verdict};
use crate::store::ReportKind;

/// Spends one request of the key's budget in `scope`; over the limit is a 429.
pub fn spend(app: &AppState, scope: Scope, key_id: i64) -> Result<(), ApiError> {
    match app.rate_limits.check(scope, key_id) {
        Verdict::Limited { retry_after_secs } => Err(ApiError::RateLimited(retry_after_secs)),
        Verdict::Allowed { .. } | Verdict::Unlimited => Ok(()),
    }
}

async fn accept(
    app: AppState,
    caller: Caller,
    kind: ReportKind,
    body: RawBody<ReportRoute>,
) -> Result<StatusCode, ApiError> {
    let principal = caller.require(Permission::WriteRules)?;
    spend(&app, Scope::Reports, principal.key_id)?;
    app.engine
        .submit_report(principal, kind, body.bytes().clone(), app.clock.now())
        .await?;
    Ok(StatusCode::ACCEPTED)
}

/// Body of `POST /v1/ip` (documentation).
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ReportBody {
    /// 1 to 10,000 public IPv4 or IPv6 addresses.
    #[schema(example = json!(["203.0.113.7"]))]
    addresses: Vec<String>,
    /// Seconds the ban lasts, 1 to 315360000; default 86400.
    #[schema(example = 86400)]
    ttl: Option<u64>,
    /// Dataset, one of the configured ones; default `ABUSE`.
    #[schema(example = "ABUSE")]
    r#type: Option<String>,
    /// Up to 32 tags of 1 to 64 characters of `[A-Za-z0-9._:-]`.
    tags: Option<Vec<String>>,
}

/// Body of the unban and false-positive endpoints (documentation).
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct AddressesBody {
    /// 1 to 10,000 IPv4 or IPv6 addresses.
    addresses: Vec<String>,
}

/// Report and ban addresses. Answered 202 once the report is committed to the queue; the
/// worker turns it into block rules (merging with existing ones) shortly after.
#[utoipa::path(post, path = "/v1/ip", tag = "reports",
    request_body(content = ReportBody, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted and queued; empty body"),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Reader keys may not report", body = ErrorBody),
        (status = 422, description = "Every offending field and value", body = ErrorBody),
        (status = 429, description = "More requests than the key's limit; see Retry-After", body = ErrorBody),
    ))]
pub async fn report(
    State(app): State<AppState>,
    caller: Caller,
    body: RawBody<ReportRoute>,
) -> Result<StatusCode, ApiError> {
    accept(app, caller, ReportKind::Report, body).await
}

/// End the bans of these addresses now.
#[utoipa::path(post, path = "/v1/unban/ip", tag = "reports",
    request_body(content = AddressesBody, content_type = "application/json"),
    security(("bearer" = [])),
    responses((status = 202), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn unban(
    State(app): State<AppState>,
    caller: Caller,
    body: RawBody<ReportRoute>,
) -> Result<StatusCode, ApiError> {
    accept(app, caller, ReportKind::Unban, body).await
}

/// Put addresses on the tenant's allowlist (false positives): never reported as blocked.
#[utoipa::path(post, path = "/v1/false/add/ip", tag = "reports",
    request_body(content = AddressesBody, content_type = "application/json"),
    security(("bearer" = [])),
    responses((status = 202), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn false_add(
    State(app): State<AppState>,
    caller: Caller,
    body: RawBody<ReportRoute>,
) -> Result<StatusCode, ApiError> {
    accept(app, caller, ReportKind::FalseAdd, body).await
}

/// Take addresses off the tenant's allowlist.
#[utoipa::path(post, path = "/v1/false/remove/ip", tag = "reports",
    request_body(content = AddressesBody, content_type = "application/json"),
    security(("bearer" = [])),
    responses((status = 202), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn false_remove(
    State(app): State<AppState>,
    caller: Caller,
    body: RawBody<ReportRoute>,
) -> Result<StatusCode, ApiError> {
    accept(app, caller, ReportKind::FalseRemove, body).await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Budget {
    pub per_minute: u32,
    /// Requests left now; refills at one per 60/`per_minute` seconds.
    pub remaining: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenInfo {
    pub tenant: String,
    pub key_id: i64,
    pub key_name: String,
    pub role: Role,
    /// The report endpoints' limit for this key; `null` when unlimited.
    pub rate_limit: Option<Budget>,
}

/// Is this token valid? Never counts against the rate limit.
#[utoipa::path(post, path = "/test", tag = "reports",
    security(("bearer" = [])),
    responses((status = 200, body = TokenInfo), (status = 401, body = ErrorBody)))]
pub async fn test_token(State(app): State<AppState>, caller: Caller) -> Json<TokenInfo> {
    let principal = &caller.0;
    Json(TokenInfo {
        tenant: principal.tenant.to_string(),
        key_id: principal.key_id,
        key_name: principal.key_name.clone(),
        role: principal.role,
        rate_limit: app
            .rate_limits
            .remaining(Scope::Reports, principal.key_id)
            .map(|(per_minute, remaining)| Budget {
                per_minute,
                remaining,
            }),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    /// Accepted reports not processed yet.
    pub depth: u64,
    /// Age of the oldest of them, in seconds; `null` when the queue is empty.
    pub oldest_age_seconds: Option<f64>,
}

/// The tenant's queue of accepted, not yet processed reports.
#[utoipa::path(get, path = "/v1/reports/queue", tag = "reports",
    security(("bearer" = [])),
    responses((status = 200, body = QueueView), (status = 401, body = ErrorBody)))]
pub async fn queue(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Json<QueueView>, ApiError> {
    let principal = caller.require(Permission::ReadRules)?;
    let stats = app
        .engine
        .backend()
        .queue_stats(Some(principal.tenant_id))
        .await?;
    let now = app.clock.now();
    Ok(Json(QueueView {
        depth: stats.depth,
        oldest_age_seconds: stats.oldest.map(|t| (now.0 - t.0).max(0) as f64 / 1000.0),
    }))
}

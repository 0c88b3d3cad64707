//! `POST /v1/signal`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, Detail, ErrorBody};
use super::{AppState, RawBody, SignalRoute, request_id};
use crate::keys::Permission;

/// The answer to a batch that had at least one valid event.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignalResult {
    pub success: bool,
    #[schema(example = "Processed 3 entries, 0 failed")]
    pub message: String,
    /// One line per refused event: `Entry I: Schema validation failed: FIELD: MESSAGE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<String>>,
}

/// One event of a batch, as documented. The server reads events field by field so that one bad
/// event fails alone; this type only describes them.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct SignalEvent {
    /// Event type; only `access_rules`.
    #[schema(example = "access_rules")]
    pub r#type: String,
    /// `block` or `unblock`.
    #[schema(example = "block")]
    pub action: String,
    /// IPv4/IPv6 address or CIDR range. Exactly one of `ip`, `asn`, `country`.
    #[schema(example = "192.168.1.100")]
    pub ip: Option<String>,
    /// `AS12345` (prefix in any case).
    #[schema(example = "AS12345")]
    pub asn: Option<String>,
    /// ISO-3166-1 alpha-2 code, any case.
    #[schema(example = "US")]
    pub country: Option<String>,
    /// Seconds until the rule expires, 1 to 315360000; absent: permanent.
    #[schema(example = 3600, minimum = 1, maximum = 315360000)]
    pub expiration: Option<u64>,
    #[schema(max_length = 1024)]
    pub description: Option<String>,
    #[schema(max_length = 255)]
    pub name: Option<String>,
}

/// Submit a batch of 1 to 1000 access-rule events.
///
/// Valid events are committed in one transaction before the answer is sent; every event, valid
/// or not, is written to the audit log. Any `Content-Type` is read as JSON.
#[utoipa::path(post, path = "/v1/signal", tag = "signal",
    request_body(content = Vec<SignalEvent>, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every event applied", body = SignalResult,
            example = json!({"success": true, "message": "Processed 3 entries, 0 failed"})),
        (status = 206, description = "Some events refused; the others applied", body = SignalResult,
            example = json!({"success": false, "message": "Processed 2 entries, 1 failed",
                "errors": ["Entry 1: Schema validation failed: country: Country must be a valid ISO-3166 Alpha-2 code (e.g., US, GB, JP)"]})),
        (status = 400, description = "Every event refused, or the body is not a batch", body = ErrorBody),
        (status = 401, description = "Missing, unknown or revoked key", body = ErrorBody),
        (status = 403, description = "The key's role may not submit signals", body = ErrorBody),
        (status = 408, description = "The body did not arrive within `server.body_read_timeout_secs`", body = ErrorBody),
        (status = 413, description = "Body larger than `limits.signal_body_bytes`", body = ErrorBody),
        (status = 429, description = "Over `rate_limits.signal_per_minute` (off by default)", body = ErrorBody),
        (status = 503, description = "The store failed; nothing was written", body = ErrorBody),
    ))]
pub async fn submit(
    State(app): State<AppState>,
    caller: Caller,
    body: RawBody<SignalRoute>,
) -> Result<Response, ApiError> {
    let principal = caller.require(Permission::WriteRules)?;
    super::reports::spend(&app, crate::ratelimit::Scope::Signal, principal.key_id)?;
    let outcome = app
        .engine
        .submit_signals(
            principal,
            body.bytes().clone(),
            request_id(),
            app.clock.now(),
        )
        .await?;
    let (total, refused) = (outcome.total, outcome.refused);
    let failed = refused.len();
    if failed == total {
        let details = refused
            .iter()
            .map(|(index, error)| Detail::of_entry(*index, error))
            .collect();
        return Err(ApiError::Validation(details));
    }
    let message = format!("Processed {} entries, {failed} failed", total - failed);
    let errors = (failed > 0).then(|| {
        refused
            .iter()
            .map(|(index, error)| error.line(*index))
            .collect()
    });
    let (status, success) = match errors {
        None => (StatusCode::OK, true),
        Some(_) => (StatusCode::PARTIAL_CONTENT, false),
    };
    let body = SignalResult {
        success,
        message,
        errors,
    };
    Ok((status, Json(body)).into_response())
}

//! `GET /v1/audit`: what the tenant's keys sent, newest first.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::query::{self, StrictQuery};
use super::rules::DEFAULT_PAGE;
use crate::keys::Permission;
use crate::store::AuditEntry;

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    pub at: String,
    pub key_id: i64,
    /// Shared by all entries of one request.
    pub request_id: String,
    /// Position in the batch; `null` for requests that are not batches.
    pub index: Option<u32>,
    /// The event exactly as received.
    #[schema(value_type = Object)]
    pub event: Box<RawValue>,
    /// `applied` or `rejected`.
    #[schema(example = "applied")]
    pub outcome: &'static str,
    /// Why it was rejected.
    pub error: Option<String>,
}

impl From<AuditEntry> for AuditView {
    fn from(entry: AuditEntry) -> Self {
        // Events were valid JSON when received (the batch parsed); anything else is kept as a
        // JSON string rather than dropped.
        let event = RawValue::from_string(entry.event.clone()).unwrap_or_else(|_| {
            RawValue::from_string(Value::from(entry.event).to_string())
                .expect("a JSON string is valid JSON")
        });
        Self {
            id: entry.id,
            at: entry.at.to_rfc3339(),
            key_id: entry.key_id,
            request_id: entry.request_id,
            index: entry.index,
            event,
            outcome: if entry.error.is_none() {
                "applied"
            } else {
                "rejected"
            },
            error: entry.error,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// `next_cursor` of the previous page.
    #[serde(default, deserialize_with = "query::cursor")]
    #[param(value_type = Option<String>)]
    cursor: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    #[serde(default, deserialize_with = "query::limit")]
    limit: Option<usize>,
}

/// The tenant's audit log, newest first (admin keys only).
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditParams),
    security(("bearer" = [])),
    responses(
        (status = 200, body = AuditPage),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Only admin keys read the audit log", body = ErrorBody),
    ))]
pub async fn list(
    State(app): State<AppState>,
    caller: Caller,
    StrictQuery(params): StrictQuery<AuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    let principal = caller.require(Permission::ReadAudit)?;
    let (before, limit) = (params.cursor, params.limit.unwrap_or(DEFAULT_PAGE));
    let mut page = app
        .engine
        .backend()
        .audit(principal.tenant_id, before, limit)
        .await?;
    // A page also stops at `audit.page_bytes` of events (always at least one entry), so an
    // answer's size is bounded whatever the entries hold.
    let mut bytes = 0;
    let fits = page
        .items
        .iter()
        .position(|entry| {
            bytes += entry.event.len();
            bytes > app.audit_page_bytes
        })
        .map_or(page.items.len(), |at| at.max(1));
    if fits < page.items.len() {
        page.items.truncate(fits);
        page.next_cursor = page.items.last().map(|e| e.id);
    }
    Ok(Json(AuditPage {
        entries: page.items.into_iter().map(AuditView::from).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    }))
}

//! `GET /v1/rules`, `GET /v1/rules/{id}`, `DELETE /v1/rules/{id}`: a tenant's active rules.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::query::{self, StrictQuery};
use super::{AppState, request_id};
use crate::keys::Permission;
use crate::rules::{Kind, Rule, RuleAction, Source, Target};
use crate::store::RuleQuery;

pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

/// A rule as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleView {
    pub id: i64,
    pub kind: Kind,
    /// Canonical form: `192.0.2.0/24`, `2001:db8::/32`, `AS12345`, `US`.
    #[schema(example = "192.168.1.100/32")]
    pub target: String,
    pub action: RuleAction,
    /// RFC 3339, UTC; `null` for a permanent rule.
    pub expires_at: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub source: Source,
    /// Dataset of a reported rule (`ABUSE`, `TOR`, ...).
    pub dataset: Option<String>,
    pub tags: Vec<String>,
    /// Reports merged into this rule.
    pub reports: u32,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Rule> for RuleView {
    fn from(rule: &Rule) -> Self {
        Self {
            id: rule.id,
            kind: rule.target.kind(),
            target: rule.target.to_string(),
            action: rule.action,
            expires_at: rule.expires_at.map(|t| t.to_rfc3339()),
            name: rule.name.clone(),
            description: rule.description.clone(),
            source: rule.source,
            dataset: rule.dataset.clone(),
            tags: rule.tags.clone(),
            reports: rule.reports,
            created_at: rule.created_at.to_rfc3339(),
            updated_at: rule.updated_at.to_rfc3339(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RulePage {
    pub rules: Vec<RuleView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Query parameters of `GET /v1/rules`. Unknown parameters are refused.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RuleFilter {
    /// `ip`, `asn` or `country`.
    #[serde(default, deserialize_with = "one_of")]
    #[param(value_type = Option<String>)]
    kind: Option<Kind>,
    /// Exact target, normalised like signals are (`192.168.1.100` finds `192.168.1.100/32`).
    target: Option<String>,
    /// Exact rule name.
    name: Option<String>,
    /// `block` or `allow`.
    #[serde(default, deserialize_with = "one_of")]
    #[param(value_type = Option<String>)]
    action: Option<RuleAction>,
    /// `signal` or `report`.
    #[serde(default, deserialize_with = "one_of")]
    #[param(value_type = Option<String>)]
    source: Option<Source>,
    /// Report dataset.
    dataset: Option<String>,
    /// Rules carrying this tag.
    tag: Option<String>,
    /// `next_cursor` of the previous page.
    #[serde(default, deserialize_with = "query::cursor")]
    #[param(value_type = Option<String>)]
    cursor: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    #[serde(default, deserialize_with = "query::limit")]
    limit: Option<usize>,
}

/// Values named in words: `kind`, `action`, `source`.
trait Named: Sized {
    const CHOICES: &'static str;
    fn parse(text: &str) -> Option<Self>;
}

impl Named for Kind {
    const CHOICES: &'static str = "must be one of: ip, asn, country";
    fn parse(text: &str) -> Option<Self> {
        Kind::parse(text)
    }
}

impl Named for RuleAction {
    const CHOICES: &'static str = "must be one of: block, allow";
    fn parse(text: &str) -> Option<Self> {
        RuleAction::parse(text)
    }
}

impl Named for Source {
    const CHOICES: &'static str = "must be one of: signal, report";
    fn parse(text: &str) -> Option<Self> {
        Source::parse(text)
    }
}

fn one_of<'de, D: serde::Deserializer<'de>, T: Named>(d: D) -> Result<Option<T>, D::Error> {
    let text = String::deserialize(d)?;
    T::parse(&text)
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(T::CHOICES))
}

impl RuleFilter {
    fn into_query(self) -> Result<RuleQuery, ApiError> {
        let target = self
            .target
            .map(|text| {
                let parsed = match self.kind {
                    Some(kind) => Target::from_stored(kind, &text),
                    None => Target::parse_any(&text),
                };
                parsed.ok_or_else(|| {
                    ApiError::invalid(
                        "target",
                        "must be an IP address or CIDR range, an ASN (AS12345) or a country code",
                        Value::from(text),
                    )
                })
            })
            .transpose()?;
        Ok(RuleQuery {
            kind: self.kind,
            target,
            name: self.name,
            action: self.action,
            source: self.source,
            dataset: self.dataset,
            tag: self.tag,
            after: self.cursor,
            limit: self.limit.unwrap_or(DEFAULT_PAGE),
            ..RuleQuery::default()
        })
    }
}

/// List the tenant's active rules, oldest first.
#[utoipa::path(get, path = "/v1/rules", tag = "rules", params(RuleFilter),
    security(("bearer" = [])),
    responses(
        (status = 200, body = RulePage),
        (status = 400, description = "A bad filter", body = ErrorBody),
        (status = 401, body = ErrorBody),
    ))]
pub async fn list(
    State(app): State<AppState>,
    caller: Caller,
    StrictQuery(filter): StrictQuery<RuleFilter>,
) -> Result<Json<RulePage>, ApiError> {
    let principal = caller.require(Permission::ReadRules)?;
    let mut query = filter.into_query()?;
    query.now = app.clock.now();
    let page = app
        .engine
        .backend()
        .rules(principal.tenant_id, query)
        .await?;
    Ok(Json(RulePage {
        rules: page.items.iter().map(RuleView::from).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    }))
}

fn not_found() -> ApiError {
    ApiError::NotFound("Rule not found".into())
}

/// One active rule of the tenant. Another tenant's rule is "not found", never "forbidden".
#[utoipa::path(get, path = "/v1/rules/{id}", tag = "rules",
    params(("id" = i64, Path, description = "Rule id")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = RuleView),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No active rule with this id in the key's tenant", body = ErrorBody),
    ))]
pub async fn show(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RuleView>, ApiError> {
    let principal = caller.require(Permission::ReadRules)?;
    let id: i64 = id.parse().map_err(|_| not_found())?;
    let rule = app
        .engine
        .backend()
        .rule(principal.tenant_id, id, app.clock.now())
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(RuleView::from(&rule)))
}

/// Delete one rule of the tenant (audited). Takes effect for look-ups before the answer.
#[utoipa::path(delete, path = "/v1/rules/{id}", tag = "rules",
    params(("id" = i64, Path, description = "Rule id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Readers may not delete", body = ErrorBody),
        (status = 404, description = "No active rule with this id in the key's tenant", body = ErrorBody),
    ))]
pub async fn delete(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let principal = caller.require(Permission::WriteRules)?;
    let id: i64 = id.parse().map_err(|_| not_found())?;
    app.engine
        .delete_rule(
            principal.tenant_id,
            id,
            principal.key_id,
            request_id(),
            app.clock.now(),
        )
        .await?
        .ok_or_else(not_found)?;
    Ok(StatusCode::NO_CONTENT)
}

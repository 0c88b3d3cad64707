//! Who is calling: the presented key checked against the live key ring.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use serde_json::Value;

use crate::keys::{Permission, Principal};

/// The authenticated key behind a request.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Principal>);

impl Caller {
    /// A key of the wrong role gets 403; the tenant never changes what is allowed.
    pub fn require(&self, permission: Permission) -> Result<&Principal, ApiError> {
        if self.0.role.allows(permission) {
            Ok(&self.0)
        } else {
            Err(ApiError::Forbidden(format!(
                "API key role '{}' may not do this",
                self.0.role
            )))
        }
    }
}

/// The key in `X-Api-Key`, if any.
fn api_key_header(parts: &Parts) -> Option<&str> {
    let token = parts.headers.get("x-api-key")?.to_str().ok()?.trim();
    (!token.is_empty()).then_some(token)
}

/// The key in `Authorization: Bearer <key>` (scheme in any case), if any. Other schemes (a
/// site's Basic credentials) carry no key of ours.
fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The key of an API request: `X-Api-Key` or `Authorization: Bearer`. Two different keys are
/// refused: whichever was picked, the other sender would be surprised by what it could do.
pub fn presented_key(parts: &Parts) -> Result<Option<&str>, ApiError> {
    match (api_key_header(parts), bearer(parts)) {
        (Some(a), Some(b)) if a != b => Err(ApiError::invalid(
            "Authorization",
            "carries a different key than X-Api-Key; send one key",
            Value::Null,
        )),
        (Some(key), _) | (None, Some(key)) => Ok(Some(key)),
        (None, None) => Ok(None),
    }
}

async fn authenticate(app: &AppState, token: Option<&str>) -> Result<Caller, ApiError> {
    let token = token.ok_or(ApiError::Unauthorized)?;
    app.authenticate(token).await.map(Caller)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        authenticate(app, presented_key(parts)?).await
    }
}

/// The caller of forward-auth: the proxy. Proxies pass the visitor's own headers on, so an
/// `Authorization` header there is the visitor's (a site's Basic credentials, or some other
/// service's token); when the proxy sends `X-Api-Key`, that alone decides whose rules apply.
pub struct ProxyCaller(pub Caller);

impl FromRequestParts<AppState> for ProxyCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let token = api_key_header(parts).or_else(|| bearer(parts));
        authenticate(app, token).await.map(ProxyCaller)
    }
}

/// The caller of a CrowdSec bouncer route: a key that may read rules, in `X-Api-Key` or
/// `Authorization: Bearer`. Anything else gets CrowdSec's own 403, which bouncers expect.
#[derive(Debug, Clone)]
pub struct Bouncer(pub Arc<Principal>);

impl FromRequestParts<AppState> for Bouncer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let token = presented_key(parts)
            .ok()
            .flatten()
            .ok_or(ApiError::BouncerForbidden)?;
        let principal = app.authenticate(token).await.map_err(|e| match e {
            // The store failing is not the bouncer's fault: it may retry.
            ApiError::Store(e) => ApiError::Store(e),
            _ => ApiError::BouncerForbidden,
        })?;
        if !principal.role.allows(Permission::ReadRules) {
            return Err(ApiError::BouncerForbidden);
        }
        Ok(Bouncer(principal))
    }
}

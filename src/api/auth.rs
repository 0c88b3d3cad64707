//! Who is calling: the presented key checked against the live key ring.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
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

/// The key of a request: `X-Api-Key`, else `Authorization: Bearer <key>` (scheme in any case).
///
/// `X-Api-Key` wins because reverse proxies pass the visitor's own headers on to forward-auth:
/// the proxy sets `X-Api-Key`, and a blocked visitor's `Authorization` header (with some other
/// valid key, or a site's Basic credentials) must not decide whose rules apply.
pub fn presented_key(parts: &Parts) -> Option<&str> {
    if let Some(value) = parts.headers.get("x-api-key") {
        let token = value.to_str().ok()?.trim();
        return (!token.is_empty()).then_some(token);
    }
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let token = presented_key(parts).ok_or(ApiError::Unauthorized)?;
        app.keys
            .load()
            .authenticate(token)
            .map(Caller)
            .ok_or(ApiError::Unauthorized)
    }
}

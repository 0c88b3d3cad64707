//! Every error an HTTP client can see, and the one place that turns them into responses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::engine::EngineError;
use crate::signal::{BatchProblem, EntryError};
use crate::store::StoreError;

/// The text of every 401, as the contract words it.
pub const UNAUTHORIZED_MESSAGE: &str = "Invalid or missing API key";

/// The text of CrowdSec's answer to a bouncer with a missing or wrong key, which bouncers log.
pub const BOUNCER_FORBIDDEN_MESSAGE: &str = "access forbidden";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{UNAUTHORIZED_MESSAGE}")]
    Unauthorized,
    /// A bouncer route without a valid reader key: 403 in CrowdSec's own shape.
    #[error("{BOUNCER_FORBIDDEN_MESSAGE}")]
    BouncerForbidden,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("Client {0} is blocked")]
    Blocked(std::net::IpAddr),
    #[error("Method not allowed")]
    MethodNotAllowed,
    #[error("Validation failed")]
    Validation(Vec<Detail>),
    #[error("Request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("Request body not received within {0} s")]
    BodyTimeout(u64),
    #[error("Invalid request body")]
    Unprocessable(Vec<Detail>),
    #[error("Rate limit exceeded; retry in {0} s")]
    RateLimited(u64),
    #[error("The store is unavailable; nothing was written")]
    Store(#[from] StoreError),
    #[error("The server is busy; retry shortly")]
    Busy,
    /// An answer would be larger than a configured limit allows.
    #[error("{0}")]
    TooLarge(String),
    #[error("Internal error")]
    Internal(String),
}

impl From<crate::export::expand::TooManyRanges> for ApiError {
    fn from(e: crate::export::expand::TooManyRanges) -> Self {
        ApiError::TooLarge(e.to_string())
    }
}

impl From<crate::export::agent::TooManyNetworks> for ApiError {
    fn from(e: crate::export::agent::TooManyNetworks) -> Self {
        ApiError::TooLarge(e.to_string())
    }
}

impl From<crate::crowdsec::pull::PullError> for ApiError {
    fn from(e: crate::crowdsec::pull::PullError) -> Self {
        match e {
            crate::crowdsec::pull::PullError::Store(e) => ApiError::Store(e),
            crate::crowdsec::pull::PullError::Contended => ApiError::Busy,
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotABatch(problem) => ApiError::batch(problem),
            EngineError::InvalidReport(problems) => ApiError::Unprocessable(
                problems
                    .into_iter()
                    .map(|p| Detail {
                        field: p.field,
                        message: p.message,
                        value: p.value,
                        index: p.index,
                    })
                    .collect(),
            ),
            EngineError::Store(e) => ApiError::Store(e),
            EngineError::Internal(e) => ApiError::Internal(e),
        }
    }
}

/// One problem of a 400 answer.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Detail {
    /// The field at fault (`body` for the request as a whole).
    pub field: String,
    pub message: String,
    /// The value received, `null` when it was missing.
    #[schema(value_type = Object)]
    pub value: Value,
    /// 0-based position of the event in the batch; `null` for request-level problems.
    pub index: Option<usize>,
}

impl Detail {
    pub fn new(field: &str, message: impl Into<String>, value: Value) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
            value,
            index: None,
        }
    }

    pub fn of_entry(index: usize, error: &EntryError) -> Self {
        Self {
            field: error.field.clone(),
            message: error.problem.to_string(),
            value: error.value.clone(),
            index: Some(index),
        }
    }
}

impl ApiError {
    pub fn invalid(field: &str, message: impl Into<String>, value: Value) -> Self {
        ApiError::Validation(vec![Detail::new(field, message, value)])
    }

    pub fn batch(problem: BatchProblem) -> Self {
        let value = match problem {
            BatchProblem::TooMany(n) => Value::from(n),
            _ => Value::Null,
        };
        ApiError::invalid("body", problem.to_string(), value)
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::BouncerForbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Blocked(_) => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Validation(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unprocessable(_) | ApiError::TooLarge(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Store(_) | ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error` field of the body.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden(_) | ApiError::Blocked(_) | ApiError::BouncerForbidden => {
                "Forbidden"
            }
            ApiError::NotFound(_) => "NotFound",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::Validation(_) => "ValidationError",
            ApiError::PayloadTooLarge(_) => "PayloadTooLarge",
            ApiError::BodyTimeout(_) => "RequestTimeout",
            ApiError::Unprocessable(_) | ApiError::TooLarge(_) => "UnprocessableEntity",
            ApiError::RateLimited(_) => "TooManyRequests",
            ApiError::Store(_) | ApiError::Busy => "ServiceUnavailable",
            ApiError::Internal(_) => "InternalError",
        }
    }
}

/// The body of every error answer. `details` only appears on 400s and 422s.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    #[schema(example = "ValidationError")]
    pub error: &'static str,
    #[schema(example = "Validation failed")]
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<Detail>>,
    #[schema(example = 400)]
    pub code: u16,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::BouncerForbidden = self {
            let body = serde_json::json!({ "message": BOUNCER_FORBIDDEN_MESSAGE });
            return (status, Json(body)).into_response();
        }
        match &self {
            // The cause stays in the log; the client learns only that nothing was written.
            ApiError::Store(e) => tracing::error!(error = %e, "store failure"),
            ApiError::Internal(e) => tracing::error!(error = %e, "internal error"),
            _ => {}
        }
        let message = self.to_string();
        let error = self.kind();
        let retry_after = match &self {
            ApiError::RateLimited(secs) => Some(*secs),
            ApiError::Busy => Some(1),
            _ => None,
        };
        let details = match self {
            ApiError::Validation(details) | ApiError::Unprocessable(details) => Some(details),
            _ => None,
        };
        let body = ErrorBody {
            error,
            message,
            details,
            code: status.as_u16(),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still be on its way: the connection cannot be reused.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

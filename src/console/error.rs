//! Every error a console page can end in, and the one place that turns them into responses.

use askama::Template;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use crate::api::error::ApiError;
use crate::engine::EngineError;
use crate::keys::Role;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No session, or it went idle, or its key was revoked.
    #[error("Sign in to continue")]
    SignInNeeded,
    #[error("A key with role '{0}' may not do this")]
    Forbidden(Role),
    #[error(
        "This form is out of date or was not sent from this console; reload the page and try again"
    )]
    Csrf,
    #[error("Too many sign-ins are open; try again later")]
    TooManySessions,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// A form body that could not be read (too large, not a form), with the status axum gave.
    #[error("{message}")]
    Form { status: StatusCode, message: String },
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("The page could not be rendered")]
    Render(#[from] askama::Error),
}

impl From<StoreError> for ConsoleError {
    fn from(e: StoreError) -> Self {
        ConsoleError::Api(ApiError::Store(e))
    }
}

impl From<EngineError> for ConsoleError {
    fn from(e: EngineError) -> Self {
        ConsoleError::Api(ApiError::from(e))
    }
}

impl ConsoleError {
    pub fn status(&self) -> StatusCode {
        match self {
            ConsoleError::SignInNeeded => StatusCode::SEE_OTHER,
            ConsoleError::Forbidden(_) | ConsoleError::Csrf => StatusCode::FORBIDDEN,
            ConsoleError::TooManySessions => StatusCode::SERVICE_UNAVAILABLE,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::Form { status, .. } => *status,
            ConsoleError::Api(e) => e.status(),
            ConsoleError::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage<'a> {
    status: u16,
    message: &'a str,
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        if let ConsoleError::SignInNeeded = self {
            return (
                StatusCode::SEE_OTHER,
                [(
                    header::LOCATION,
                    HeaderValue::from_static("/console/sign-in"),
                )],
            )
                .into_response();
        }
        let status = self.status();
        match &self {
            ConsoleError::Api(ApiError::Store(e)) => tracing::error!(error = %e, "store failure"),
            ConsoleError::Api(ApiError::Internal(e)) => {
                tracing::error!(error = %e, "internal error")
            }
            ConsoleError::Render(e) => tracing::error!(error = %e, "rendering a console page"),
            _ => {}
        }
        let message = self.to_string();
        let page = ErrorPage {
            status: status.as_u16(),
            message: &message,
        };
        let mut response = match page.render() {
            Ok(html) => (status, super::PAGE_HEADERS, Html(html)).into_response(),
            Err(_) => (status, message).into_response(),
        };
        if let ConsoleError::Api(ApiError::RateLimited(secs)) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, secs.into());
        }
        response
    }
}

//! The console's static files, compiled into the binary: it needs no file beside it and no
//! network, and a page never meets a script or stylesheet of another version.

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::error::ConsoleError;

/// htmx, as published (its licence header kept; `assets/console/htmx.LICENSE`).
pub const HTMX: &[u8] = include_bytes!("../../assets/console/htmx.min.js");
pub const STYLESHEET: &[u8] = include_bytes!("../../assets/console/console.css");

/// `GET /console/assets/{file}`.
pub async fn serve(Path(file): Path<String>) -> Result<Response, ConsoleError> {
    let (body, kind) = match file.as_str() {
        "htmx.min.js" => (HTMX, "text/javascript; charset=utf-8"),
        "console.css" => (STYLESHEET, "text/css; charset=utf-8"),
        _ => return Err(ConsoleError::NotFound("No such file".into())),
    };
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        body,
    )
        .into_response())
}

//! `GET /v1/blocklist` (the tenant's blocklist as a file for firewalls, nginx and scripts),
//! `GET /v1/config` (the Gen0Sec edge agent's access-rules feed) and `GET /v1/authcheck` (the
//! agent's key check; also at `/authcheck`).

use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body::Frame;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::query::StrictQuery;
use super::{AppState, Shared};
use crate::export::Export;
use crate::export::agent::{self, Inputs};
use crate::export::format::Format;
use crate::keys::{Permission, Principal};
use crate::rules::UnixMillis;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BlocklistParams {
    /// `plain` (default), `nftables`, `ipset`, `nginx` or `json`.
    pub format: Option<Format>,
    /// Also list the ranges the tenant's ASN and country block rules cover.
    pub expand: Option<bool>,
}

/// The tenant's blocked addresses as a file, streamed: what is blocked now (allow rules taken
/// out), neighbouring ranges joined, each with the time its rules have left.
#[utoipa::path(get, path = "/v1/blocklist", tag = "exports", params(BlocklistParams),
    responses(
        (status = 200, description = "The list, in the format asked for", content_type = "text/plain"),
        (status = 400, description = "Unknown format or parameter", body = ErrorBody),
        (status = 401, description = "Invalid or missing API key", body = ErrorBody),
        (status = 422, description = "The expansion exceeds the key's max_decisions", body = ErrorBody),
        (status = 503, description = "Too many exports being written", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn blocklist(
    State(app): State<AppState>,
    caller: Caller,
    StrictQuery(params): StrictQuery<BlocklistParams>,
) -> Result<Response, ApiError> {
    let key = caller.require(Permission::ReadRules)?;
    let format = params.format.unwrap_or(Format::Plain);
    let expand = params.expand.unwrap_or(false);
    let turn = app
        .export_turns
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Busy)?;
    let geo = app.expansions.get(key.tenant_id).await;
    if expand {
        geo.within(app.range_limits.of(key))?;
    }
    let export = Export::new(
        app.index.ip_rules(key.tenant_id),
        Some(geo),
        expand,
        app.clock.now(),
    );
    let body = stream(app.exports.chunk_bytes, turn, move |out| {
        export.write_to(format, out)
    });
    Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response())
}

/// A body written by `write` on a blocking thread, a chunk at a time: at most a few chunks wait
/// for the client, and the writer waits when they do. `turn` is held until the last byte.
fn stream(
    chunk_bytes: usize,
    turn: OwnedSemaphorePermit,
    write: impl FnOnce(&mut ChannelWriter) -> io::Result<()> + Send + 'static,
) -> Body {
    let (sender, receiver) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let mut out = ChannelWriter {
            sender,
            buffer: Vec::with_capacity(chunk_bytes),
            chunk_bytes: chunk_bytes.max(1),
        };
        if let Err(error) = write(&mut out).and_then(|()| out.send()) {
            // The client went away (nothing to tell), or the export failed: end the body with
            // an error so the client cannot take a cut list for a whole one.
            let _ = out.sender.blocking_send(Err(error));
        }
    });
    Body::new(ChannelBody(receiver))
}

struct ChannelWriter {
    sender: mpsc::Sender<io::Result<Bytes>>,
    buffer: Vec<u8>,
    chunk_bytes: usize,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(self.chunk_bytes));
        self.sender
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= self.chunk_bytes {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

struct ChannelBody(mpsc::Receiver<io::Result<Bytes>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| chunk.map(Frame::data)))
    }
}

/// The access rules of the key's tenant in the document the Gen0Sec edge agent parses: IP rules
/// as CIDR blocks, ASN and country rules as their networks. Gzipped when asked; an `ETag`, and
/// 304 to an `If-None-Match` that names it.
#[utoipa::path(get, path = "/v1/config", tag = "exports",
    responses(
        (status = 200, description = "The agent's config document", content_type = "application/json"),
        (status = 304, description = "Unchanged since the ETag sent"),
        (status = 401, description = "Invalid or missing API key", body = ErrorBody),
        (status = 422, description = "More networks than exports.agent_max_networks", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn agent_config(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = caller.require(Permission::ReadRules)?.clone();
    let now = app.clock.now();
    let body = tokio::task::spawn_blocking(move || agent_document(&app, &key, now))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    json_with_etag(&headers, body)
}

/// The agent's document for the key's tenant, as JSON. Big ones take a while: call it off the
/// async runtime.
fn agent_document(app: &Shared, key: &Principal, now: UnixMillis) -> Result<Vec<u8>, ApiError> {
    let geo_rules = app.index.geo_rules(key.tenant_id, now);
    let document = agent::document(Inputs {
        tenant: key.tenant.as_str(),
        ip: &app.index.ip_rules(key.tenant_id),
        geo_rules: &geo_rules,
        geo: &app.geo.current(),
        changed_at: app.expansions.last_change(key.tenant_id),
        now,
        max_networks: app.exports.agent_max_networks,
    })?;
    serde_json::to_vec(&document).map_err(|e| ApiError::Internal(e.to_string()))
}

/// A JSON answer with an ETag of its bytes: 304 when `If-None-Match` names it, gzipped when
/// `Accept-Encoding` takes gzip.
fn json_with_etag(headers: &HeaderMap, body: Vec<u8>) -> Result<Response, ApiError> {
    let digest = sha2::Sha256::digest(&body);
    let tag: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let etag = format!("\"{tag}\"");
    let json = (header::CONTENT_TYPE, "application/json");
    let mut response = if matches_etag(headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else if accepts_gzip(headers) {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zipped = gz
            .write_all(&body)
            .and_then(|()| gz.finish())
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        ([json, (header::CONTENT_ENCODING, "gzip")], zipped).into_response()
    } else {
        ([json], body).into_response()
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// Whether `If-None-Match` names `etag` (weakly compared, as RFC 9110 says for this header).
fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// Whether `Accept-Encoding` takes gzip (and does not refuse it with `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuthCheck {
    pub success: bool,
    pub message: String,
}

/// The agent's check of its key at start-up: 200 with `success` for any live key, 401 otherwise.
#[utoipa::path(get, path = "/v1/authcheck", tag = "exports",
    responses(
        (status = 200, description = "The key is live", body = AuthCheck),
        (status = 401, description = "Invalid or missing API key", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn authcheck(caller: Caller) -> Json<AuthCheck> {
    Json(AuthCheck {
        success: true,
        message: format!("key of tenant {}", caller.0.tenant),
    })
}

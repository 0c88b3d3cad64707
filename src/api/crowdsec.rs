//! CrowdSec's Local API for bouncers: `GET|HEAD /v1/decisions`, `GET|HEAD
//! /v1/decisions/stream` and `POST /v1/usage-metrics`. What a pull sends is decided in
//! [`crate::crowdsec`]; these handlers only read the request and send the answer.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::header::{CONTENT_TYPE, USER_AGENT};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body::Frame;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Bouncer;
use super::check::client_ip;
use super::error::{ApiError, ErrorBody};
use super::query::StrictQuery;
use crate::crowdsec::pull::{Selection, StreamAnswer};
use crate::crowdsec::{Filter, list};
use crate::rules::parse_ip_target;
use crate::store::{Pull, StoreError};
use crate::telemetry::http::LookupEndpoint;

/// Longest user agent kept in a bouncer's record.
const MAX_USER_AGENT: usize = 256;

/// A pull by a bouncer: its key and what it says about itself.
pub struct BouncerPull(pub Pull);

impl FromRequestParts<AppState> for BouncerPull {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let Bouncer(principal) = Bouncer::from_request_parts(parts, app).await?;
        let user_agent = parts
            .headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(MAX_USER_AGENT).collect::<String>());
        // `crowdsec-firewall-bouncer/v0.0.25-debian`: the version follows the first slash.
        let version = user_agent
            .as_deref()
            .and_then(|ua| ua.split_whitespace().next()?.split_once('/'))
            .map(|(_, version)| version.to_owned());
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip());
        let address = peer.map(|peer| {
            client_ip(
                peer,
                &parts.headers,
                &app.trusted_proxies,
                &app.client_ip_header,
            )
            .unwrap_or(peer)
            .to_string()
        });
        Ok(BouncerPull(Pull {
            key_id: principal.key_id,
            tenant: principal.tenant_id,
            at: app.clock.now(),
            user_agent,
            address,
            version,
        }))
    }
}

/// One decision (documentation of [`crate::crowdsec::Decision`]'s JSON).
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct DecisionView {
    /// The rule's id.
    id: i64,
    /// `palisade` for signals, the dataset for reports (configurable).
    #[schema(example = "palisade")]
    origin: String,
    #[serde(rename = "type")]
    #[schema(example = "ban")]
    kind: String,
    /// `Ip`, `Range`, `AS` or `Country`.
    #[schema(example = "Ip")]
    scope: String,
    #[schema(example = "192.0.2.7")]
    value: String,
    /// Time left as a Go duration in whole seconds, at least `1s`.
    #[schema(example = "23h59m58s")]
    duration: String,
    /// The rule's name, else its description.
    #[schema(example = "ssh-bf")]
    scenario: String,
    simulated: bool,
}

/// A stream pull's answer.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct StreamView {
    new: Vec<DecisionView>,
    deleted: Vec<DecisionView>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DecisionsParams {
    /// The decisions covering this address (IP, range, ASN and country rules).
    ip: Option<String>,
    /// An address or CIDR range; see `contains`.
    range: Option<String>,
    /// `Ip`, `Range`, `AS` or `Country` (any case).
    scope: Option<String>,
    /// Exact value (`192.0.2.7`, `192.0.2.0/24`, `64500`, `FR`).
    value: Option<String>,
    /// Only `ban` decisions exist.
    #[serde(rename = "type")]
    kind: Option<String>,
    /// With `range`: `true` (default) for decisions whose range holds it, `false` for those
    /// inside it.
    contains: Option<String>,
    /// Comma-separated origins.
    origins: Option<String>,
    /// Comma-separated: the scenario contains one of these.
    scenarios_containing: Option<String>,
    /// Comma-separated: the scenario contains none of these.
    scenarios_not_containing: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// `true`: every active decision, and the stream starts over from here.
    startup: Option<String>,
    /// Comma-separated scopes, any case; default `ip,range`.
    scopes: Option<String>,
    /// Comma-separated origins.
    origins: Option<String>,
    /// Comma-separated: the scenario contains one of these.
    scenarios_containing: Option<String>,
    /// Comma-separated: the scenario contains none of these.
    scenarios_not_containing: Option<String>,
    /// Sent by newer bouncers; Palisade has no community or third-party lists to leave out.
    #[allow(dead_code)]
    community_pull: Option<String>,
    #[allow(dead_code)]
    additional_pull: Option<String>,
}

fn boolean(name: &str, text: Option<&str>, default: bool) -> Result<bool, ApiError> {
    match text {
        None => Ok(default),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(ApiError::invalid(
            name,
            "must be true or false",
            Value::from(other),
        )),
    }
}

impl DecisionsParams {
    fn selection(self) -> Result<(Option<IpAddr>, Selection), ApiError> {
        let ip = self
            .ip
            .as_deref()
            .map(|text| {
                text.trim().parse::<IpAddr>().map_err(|_| {
                    ApiError::invalid("ip", "must be an IPv4 or IPv6 address", Value::from(text))
                })
            })
            .transpose()?;
        let range = self
            .range
            .as_deref()
            .map(|text| {
                parse_ip_target(text.trim()).map_err(|_| {
                    ApiError::invalid(
                        "range",
                        "must be an address or CIDR range",
                        Value::from(text),
                    )
                })
            })
            .transpose()?;
        let selection = Selection {
            filter: Filter {
                scopes: Vec::new(),
                origins: list(self.origins.as_deref()),
                scenarios_containing: list(self.scenarios_containing.as_deref()),
                scenarios_not_containing: list(self.scenarios_not_containing.as_deref()),
            },
            ip,
            range,
            contains: boolean("contains", self.contains.as_deref(), true)?,
            scope: self.scope,
            value: self.value,
            kind: self.kind,
        };
        Ok((ip, selection))
    }
}

fn json(body: impl Into<Body>) -> Response {
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body.into(),
    )
        .into_response()
}

/// An answer's pieces as they are encoded.
struct Pieces(mpsc::Receiver<Result<Vec<u8>, StoreError>>);

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = StoreError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StoreError>>> {
        self.0
            .poll_recv(cx)
            .map(|piece| piece.map(|piece| piece.map(|bytes| Frame::data(Bytes::from(bytes)))))
    }
}

/// The decisions for an address (`?ip=`), or every decision the parameters select: a JSON
/// array, or `null` when there is none.
#[utoipa::path(get, path = "/v1/decisions", tag = "crowdsec", params(DecisionsParams),
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The decisions, or the literal `null` when none matches", body = Vec<DecisionView>),
        (status = 400, description = "A malformed or unknown parameter", body = ErrorBody),
        (status = 403, description = "Missing or wrong key: `{\"message\":\"access forbidden\"}`"),
    ))]
pub async fn decisions(
    State(app): State<AppState>,
    BouncerPull(pull): BouncerPull,
    StrictQuery(params): StrictQuery<DecisionsParams>,
) -> Result<Response, ApiError> {
    let (ip, selection) = params.selection()?;
    let (tenant, now) = (pull.tenant, pull.at);
    app.bouncers.record(pull).await?;
    if let Some(ip) = ip {
        let (body, verdict) = app.bouncers.lookup(tenant, ip, &selection, now);
        app.count_decisions(
            LookupEndpoint::Bouncer,
            tenant,
            now,
            [(verdict.blocked, verdict.allowed)],
        );
        return Ok(json(body));
    }
    let pieces = app.bouncers.list(tenant, selection, now).await?;
    Ok(json(Body::new(Pieces(pieces))))
}

/// `{"new": [...], "deleted": [...]}`: everything at `startup=true`, else what changed since
/// this key's previous pull.
#[utoipa::path(get, path = "/v1/decisions/stream", tag = "crowdsec", params(StreamParams),
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, body = StreamView),
        (status = 400, description = "A malformed or unknown parameter", body = ErrorBody),
        (status = 403, description = "Missing or wrong key: `{\"message\":\"access forbidden\"}`"),
        (status = 503, description = "The store is unavailable, or other pulls of this key keep moving its cursor", body = ErrorBody),
    ))]
pub async fn stream(
    State(app): State<AppState>,
    BouncerPull(pull): BouncerPull,
    StrictQuery(params): StrictQuery<StreamParams>,
) -> Result<Response, ApiError> {
    let startup = boolean("startup", params.startup.as_deref(), false)?;
    let scopes = list(Some(params.scopes.as_deref().unwrap_or("ip,range")));
    let filter = Filter {
        scopes,
        origins: list(params.origins.as_deref()),
        scenarios_containing: list(params.scenarios_containing.as_deref()),
        scenarios_not_containing: list(params.scenarios_not_containing.as_deref()),
    };
    let now = pull.at;
    match app.bouncers.stream(pull, startup, &filter).await? {
        StreamAnswer::Incremental(body) => Ok(json(body)),
        StreamAnswer::Full(chunks, ranges) => {
            let pieces = app.bouncers.startup(chunks, ranges, filter, now);
            Ok(json(Body::new(Pieces(pieces))))
        }
    }
}

/// `HEAD` on the decision routes: the key is checked, nothing is recorded.
pub async fn head(_: Bouncer) -> StatusCode {
    StatusCode::OK
}

/// Usage metrics newer bouncers send: accepted and not kept.
#[utoipa::path(post, path = "/v1/usage-metrics", tag = "crowdsec",
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 201, description = "Accepted; empty body"),
        (status = 403, description = "Missing or wrong key: `{\"message\":\"access forbidden\"}`"),
    ))]
pub async fn usage_metrics(_: Bouncer) -> StatusCode {
    StatusCode::CREATED
}

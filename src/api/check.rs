//! Decision look-ups: `GET /v1/check`, `POST /v1/check` and `GET /v1/forward-auth`.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use serde::Serialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiError, Detail, ErrorBody};
use super::{AppState, Params, RawBody};
use crate::index::{RuleRef, View};
use crate::keys::Permission;
use crate::rules::{Asn, CountryCode, Kind, RuleAction, UnixMillis, normalize_ip};
use crate::signal::BatchProblem;

/// Most addresses one `POST /v1/check` may ask about.
pub const MAX_CHECK_BATCH: usize = 10_000;

/// Header carrying the client address forward-auth decided about.
pub const CLIENT_IP_HEADER: &str = "x-palisade-client-ip";

/// One active rule covering the address (documentation of [`Match`]'s JSON).
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct MatchView {
    id: i64,
    kind: Kind,
    #[schema(example = "192.0.2.0/24")]
    target: String,
    /// `block`, or `allow` for an allowlist entry (which wins over any block).
    action: RuleAction,
    expires_at: Option<String>,
    name: Option<String>,
}

/// A matching rule, rendered only when the answer is serialised.
#[derive(Debug, Clone, Copy)]
pub struct Match<'a>(pub &'a RuleRef);

impl Serialize for Match<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let rule = &self.0;
        let mut out = serializer.serialize_struct("Match", 6)?;
        out.serialize_field("id", &rule.id)?;
        out.serialize_field("kind", &rule.target.kind())?;
        out.serialize_field("target", &rule.target.to_string())?;
        out.serialize_field("action", &rule.action)?;
        out.serialize_field("expires_at", &rule.expires_at.map(UnixMillis::to_rfc3339))?;
        out.serialize_field("name", &rule.name.as_deref())?;
        out.end()
    }
}

/// The decision for one address. Computing it is a table look-up and a geo look-up; the text
/// of the JSON is only made when it is sent, from the rules the index's [`View`] lends.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckAnswer<'a> {
    /// The address as decided about (IPv4-mapped IPv6 shown as IPv4).
    #[schema(value_type = String, example = "192.0.2.7")]
    pub ip: IpAddr,
    pub blocked: bool,
    /// An allowlist entry covers the address; it is then never blocked.
    pub allowed: bool,
    /// From the configured ASN data; `null` when unknown.
    #[schema(value_type = Option<String>, example = "AS64500")]
    #[serde(serialize_with = "display_opt")]
    pub asn: Option<Asn>,
    /// From the configured country data; `null` when unknown.
    #[schema(value_type = Option<String>, example = "FR")]
    #[serde(serialize_with = "display_opt")]
    pub country: Option<CountryCode>,
    /// Every active rule covering the address (its range, its ASN, its country), most specific
    /// range first.
    #[schema(value_type = Vec<MatchView>)]
    pub matches: Vec<Match<'a>>,
}

fn display_opt<T: std::fmt::Display, S: serde::Serializer>(
    value: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => serializer.collect_str(v),
        None => serializer.serialize_none(),
    }
}

/// The full answer for one address: decision, geo data and matching rules.
pub fn answer(view: &View, ip: IpAddr, now: UnixMillis) -> CheckAnswer<'_> {
    let ip = normalize_ip(ip);
    // One geo look-up for both the ASN and country shown and the ASN and country rules matched,
    // so that they always agree.
    let found = view.lookup_with_geo(ip, now);
    CheckAnswer {
        ip,
        blocked: found.verdict.blocked,
        allowed: found.verdict.allowed,
        asn: found.geo.asn,
        country: found.geo.country,
        matches: found.rules.into_iter().map(Match).collect(),
    }
}

fn parse_client_ip(text: &str) -> Option<IpAddr> {
    IpAddr::from_str(text.trim()).ok()
}

#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct CheckParams {
    /// IPv4 or IPv6 address.
    ip: String,
}

/// Is this address blocked for the key's tenant, and by what?
#[utoipa::path(get, path = "/v1/check", tag = "decisions", params(CheckParams),
    security(("bearer" = [])),
    responses(
        (status = 200, body = CheckAnswer),
        (status = 400, description = "Missing or malformed `ip`", body = ErrorBody),
        (status = 401, body = ErrorBody),
    ))]
pub async fn check_one(
    State(app): State<AppState>,
    caller: Caller,
    Params(params): Params,
) -> Result<Response, ApiError> {
    let principal = caller.require(Permission::ReadRules)?;
    let mut ip = None;
    for (key, value) in &params {
        match key.as_str() {
            "ip" if ip.is_some() => {
                return Err(ApiError::invalid(
                    "ip",
                    "given more than once",
                    Value::from(value.as_str()),
                ));
            }
            "ip" => {
                ip = Some(parse_client_ip(value).ok_or_else(|| {
                    ApiError::invalid(
                        "ip",
                        "must be an IPv4 or IPv6 address",
                        Value::from(value.as_str()),
                    )
                })?)
            }
            _ => {
                return Err(ApiError::invalid(
                    key,
                    "unknown query parameter",
                    Value::from(value.as_str()),
                ));
            }
        }
    }
    let ip = ip.ok_or_else(|| ApiError::invalid("ip", "is required", Value::Null))?;
    let view = app.index.view(principal.tenant_id);
    Ok(Json(answer(&view, ip, app.clock.now())).into_response())
}

/// Body of `POST /v1/check`.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct CheckBatch {
    /// 1 to 10,000 IPv4 or IPv6 addresses.
    #[schema(example = json!(["192.0.2.7", "2001:db8::1"]))]
    ips: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckResults<'a> {
    /// One answer per address, in the order asked.
    pub results: Vec<CheckAnswer<'a>>,
}

/// Decisions for many addresses at once.
#[utoipa::path(post, path = "/v1/check", tag = "decisions",
    request_body(content = CheckBatch, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, body = CheckResults),
        (status = 400, description = "Not `{\"ips\": [...]}`, more than 10,000 addresses, or a malformed address (each listed)", body = ErrorBody),
        (status = 401, body = ErrorBody),
    ))]
pub async fn check_many(
    State(app): State<AppState>,
    caller: Caller,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let principal = caller.require(Permission::ReadRules)?;
    let ips = parse_check_batch(&body)?;
    let now = app.clock.now();
    // One view for the whole batch: every answer sees the same rules.
    let view = app.index.view(principal.tenant_id);
    let results = ips.into_iter().map(|ip| answer(&view, ip, now)).collect();
    Ok(Json(CheckResults { results }).into_response())
}

fn parse_check_batch(body: &[u8]) -> Result<Vec<IpAddr>, ApiError> {
    let shape = || {
        ApiError::invalid(
            "body",
            "must be a JSON object {\"ips\": [\"192.0.2.7\", ...]}",
            Value::Null,
        )
    };
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid("body", BatchProblem::not_json(&e).to_string(), Value::Null)
    })?;
    let Value::Object(object) = value else {
        return Err(shape());
    };
    if let Some(key) = object.keys().find(|k| k.as_str() != "ips") {
        return Err(ApiError::invalid(
            key,
            "unknown field (allowed: ips)",
            object[key].clone(),
        ));
    }
    let Some(Value::Array(items)) = object.get("ips") else {
        return Err(ApiError::invalid(
            "ips",
            "must be a list of addresses",
            object.get("ips").cloned().unwrap_or(Value::Null),
        ));
    };
    if items.is_empty() || items.len() > MAX_CHECK_BATCH {
        return Err(ApiError::invalid(
            "ips",
            "must hold 1 to 10000 addresses",
            Value::from(items.len()),
        ));
    }
    let mut ips = Vec::with_capacity(items.len());
    let mut bad = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match item.as_str().and_then(parse_client_ip) {
            Some(ip) => ips.push(ip),
            None => bad.push(Detail {
                field: "ips".into(),
                message: "must be an IPv4 or IPv6 address".into(),
                value: item.clone(),
                index: Some(index),
            }),
        }
    }
    if bad.is_empty() {
        Ok(ips)
    } else {
        Err(ApiError::Validation(bad))
    }
}

/// The address a request is really from. Forwarding headers are believed only when the TCP
/// peer is a trusted proxy; then `X-Forwarded-For` is read from the right, skipping trusted
/// proxies, because only the entries added by our own proxies are trustworthy and a client can
/// put anything on the left. `X-Real-IP` is used when there is no `X-Forwarded-For`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> Result<IpAddr, ApiError> {
    let peer = normalize_ip(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Ok(peer);
    }
    let bad = |name: &str, value: &str| {
        ApiError::invalid(name, "must hold IP addresses", Value::from(value))
    };
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().map_err(|_| bad("X-Forwarded-For", "(not text)")))
        .collect::<Result<_, _>>()?;
    if !forwarded.is_empty() {
        let hops: Vec<&str> = forwarded.iter().flat_map(|v| v.split(',')).collect();
        let mut leftmost = peer;
        for hop in hops.iter().rev() {
            let ip =
                normalize_ip(parse_forwarded_hop(hop).ok_or_else(|| bad("X-Forwarded-For", hop))?);
            if !is_trusted(&ip) {
                return Ok(ip);
            }
            leftmost = ip;
        }
        return Ok(leftmost);
    }
    if let Some(real) = headers.get("x-real-ip") {
        let text = real.to_str().map_err(|_| bad("X-Real-IP", "(not text)"))?;
        return parse_client_ip(text)
            .map(normalize_ip)
            .ok_or_else(|| bad("X-Real-IP", text));
    }
    Ok(peer)
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`192.0.2.1:443`,
/// `[2001:db8::1]:443`).
fn parse_forwarded_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Some(ip) = parse_client_ip(hop) {
        return Some(ip);
    }
    SocketAddr::from_str(hop).ok().map(|s| s.ip())
}

/// For reverse proxies (nginx `auth_request`, Traefik ForwardAuth, Caddy `forward_auth`): 204
/// when the client may pass, 403 when it is blocked. The key may also come in `X-Api-Key`.
#[utoipa::path(get, path = "/v1/forward-auth", tag = "decisions",
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 204, description = "Allowed", headers(("x-palisade-client-ip" = String, description = "The address decided about"))),
        (status = 400, description = "A trusted proxy sent a malformed forwarding header", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Blocked", body = ErrorBody),
    ))]
pub async fn forward_auth(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = caller.require(Permission::ReadRules)?;
    let ip = client_ip(peer.ip(), &headers, &app.trusted_proxies)?;
    let verdict = app.index.decide(principal.tenant_id, ip, app.clock.now());
    if verdict.blocked {
        return Err(ApiError::Blocked(ip));
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&ip.to_string()) {
        response.headers_mut().insert(CLIENT_IP_HEADER, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                axum::http::HeaderName::from_str(k).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn forwarding_headers_only_from_trusted_peers() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let outsider: IpAddr = "203.0.113.9".parse().unwrap();
        let xff = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.4, 10.0.0.3")]);
        // The rightmost untrusted hop; the spoofable left part is ignored.
        assert_eq!(
            client_ip(peer, &xff, &trusted).unwrap(),
            "198.51.100.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(outsider, &xff, &trusted).unwrap(), outsider);
        assert_eq!(client_ip(peer, &xff, &[]).unwrap(), peer);
        let real = headers(&[("x-real-ip", "::ffff:192.0.2.5")]);
        assert_eq!(
            client_ip(peer, &real, &trusted).unwrap(),
            "192.0.2.5".parse::<IpAddr>().unwrap()
        );
        let two = headers(&[
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-for", "[2001:db8::1]:443"),
        ]);
        assert_eq!(
            client_ip(peer, &two, &trusted).unwrap(),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert!(client_ip(peer, &headers(&[("x-forwarded-for", "nonsense")]), &trusted).is_err());
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted).unwrap(), peer);
    }
}

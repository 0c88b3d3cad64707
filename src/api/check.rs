//! Decision look-ups: `GET /v1/check`, `POST /v1/check` and `GET /v1/forward-auth`.

use crate::telemetry::http::LookupEndpoint;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::{Caller, ProxyCaller};
use super::error::{ApiError, Detail, ErrorBody};
use super::query::StrictQuery;
use super::{AppState, CheckRoute, RawBody};
pub use crate::engine::check::{CheckAnswer, Match, MatchView, answer, answer_bounded};
use crate::engine::off_worker;
use crate::json::{BoundedList, Members, NotAnObject, Offending, value_of};
use crate::keys::Permission;
use crate::rules::normalize_ip;
use crate::signal::BatchProblem;
use serde_json::value::RawValue;

/// Most addresses one `POST /v1/check` may ask about.
pub const MAX_CHECK_BATCH: usize = 10_000;

/// Header carrying the client address forward-auth decided about.
pub const CLIENT_IP_HEADER: &str = "x-palisade-client-ip";

/// An address as `GET /v1/check` reads its `ip`.
pub fn parse_client_ip(text: &str) -> Option<IpAddr> {
    IpAddr::from_str(text.trim()).ok()
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CheckParams {
    /// IPv4 or IPv6 address.
    #[serde(deserialize_with = "address")]
    #[param(value_type = String)]
    ip: IpAddr,
}

fn address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
    let text = String::deserialize(d)?;
    parse_client_ip(&text)
        .ok_or_else(|| serde::de::Error::custom("must be an IPv4 or IPv6 address"))
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
    StrictQuery(params): StrictQuery<CheckParams>,
) -> Result<Response, ApiError> {
    let principal = caller.require(Permission::ReadRules)?;
    let view = app.index.view(principal.tenant_id);
    let max_matches = app.body_limits.matches_per_address;
    let now = app.clock.now();
    let answer = answer_bounded(&view, params.ip, now, max_matches);
    app.count_decisions(
        LookupEndpoint::Check,
        principal.tenant_id,
        now,
        [(answer.blocked, answer.allowed)],
    );
    Ok(Json(answer).into_response())
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
pub struct CheckResults {
    /// One answer per address, in the order asked.
    pub results: Vec<CheckAnswer>,
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
    body: RawBody<CheckRoute>,
) -> Result<Response, ApiError> {
    let principal = caller.require(Permission::ReadRules)?;
    let now = app.clock.now();
    let bytes = body.bytes().clone();
    let index = app.index.clone();
    let limits = (
        app.body_limits.matches_per_address,
        app.body_limits.matches_per_batch,
    );
    let tenant = principal.tenant_id;
    let shared = app.0.clone();
    let json = off_worker(bytes.len(), move || {
        let ips = parse_check_batch(&bytes)?;
        // One view for the whole batch: every answer sees the same rules.
        let view = index.view(tenant);
        let (per_address, mut budget) = limits;
        let results = ips
            .into_iter()
            .map(|ip| {
                let answer = answer_bounded(&view, ip, now, per_address.min(budget));
                budget -= answer.matches.len();
                answer
            })
            .collect::<Vec<_>>();
        shared.count_decisions(
            LookupEndpoint::CheckBatch,
            tenant,
            now,
            results.iter().map(|a| (a.blocked, a.allowed)),
        );
        serde_json::to_vec(&CheckResults { results })
            .map_err(|e| ApiError::Internal(format!("encoding answers: {e}")))
    })
    .await??;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json,
    )
        .into_response())
}

fn parse_check_batch(body: &[u8]) -> Result<Vec<IpAddr>, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| {
        ApiError::invalid(
            "body",
            BatchProblem::NotJson { line: 1, column: 0 }.to_string(),
            Value::Null,
        )
    })?;
    let members = Members::<&RawValue>::parse(text).map_err(|e| match e {
        NotAnObject::Syntax(e) => {
            ApiError::invalid("body", BatchProblem::not_json(&e).to_string(), Value::Null)
        }
        NotAnObject::Other => ApiError::invalid(
            "body",
            "must be a JSON object {\"ips\": [\"192.0.2.7\", ...]}",
            Value::Null,
        ),
    })?;
    match members.first_offending(&["ips"]) {
        Some(Offending::Unknown(key, value)) => {
            return Err(ApiError::invalid(
                key,
                "unknown field (allowed: ips)",
                value_of(value),
            ));
        }
        Some(Offending::Repeated(key, value)) => {
            return Err(ApiError::invalid(
                key,
                "is given more than once",
                value_of(value),
            ));
        }
        None => {}
    }
    let raw = members.get("ips").copied();
    let Some(list) = raw.and_then(|raw| BoundedList::parse(raw, MAX_CHECK_BATCH)) else {
        return Err(ApiError::invalid(
            "ips",
            "must be a list of addresses",
            raw.map(value_of).unwrap_or(Value::Null),
        ));
    };
    if list.total == 0 || list.total > MAX_CHECK_BATCH {
        return Err(ApiError::invalid(
            "ips",
            "must hold 1 to 10000 addresses",
            Value::from(list.total),
        ));
    }
    let mut ips = Vec::with_capacity(list.items.len());
    let mut bad = Vec::new();
    for (index, item) in list.items.iter().enumerate() {
        let parsed = serde_json::from_str::<std::borrow::Cow<str>>(item.get())
            .ok()
            .and_then(|text| parse_client_ip(&text));
        match parsed {
            Some(ip) => ips.push(ip),
            None => bad.push(Detail {
                field: "ips".into(),
                message: "must be an IPv4 or IPv6 address".into(),
                value: value_of(item),
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

/// The address a request is really from. The TCP peer, unless it is a trusted proxy: then
/// the one configured `header`, which such a proxy must send (deciding about the proxy's own
/// address instead would let every visitor through). `X-Forwarded-For` is read from the right,
/// skipping trusted proxies, because only the entries added by our own proxies are
/// trustworthy and a client can put anything on the left; any other header must hold exactly
/// one address.
pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    header: &HeaderName,
) -> Result<IpAddr, ApiError> {
    let peer = normalize_ip(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Ok(peer);
    }
    let name = header.as_str();
    let bad = |value: &str| ApiError::invalid(name, "must hold IP addresses", Value::from(value));
    let values: Vec<&str> = headers
        .get_all(header)
        .iter()
        .map(|v| v.to_str().map_err(|_| bad("(not text)")))
        .collect::<Result<_, _>>()?;
    if values.is_empty() {
        return Err(ApiError::invalid(
            name,
            "is required from a trusted proxy (the header set by client_ip_header)",
            Value::Null,
        ));
    }
    if header != X_FORWARDED_FOR {
        return match values.as_slice() {
            [one] => parse_client_ip(one)
                .map(normalize_ip)
                .ok_or_else(|| bad(one)),
            _ => Err(ApiError::invalid(
                name,
                "is given more than once",
                Value::from(values.join(", ")),
            )),
        };
    }
    let hops: Vec<&str> = values.iter().flat_map(|v| v.split(',')).collect();
    let mut leftmost = peer;
    for hop in hops.iter().rev() {
        let ip = normalize_ip(parse_forwarded_hop(hop).ok_or_else(|| bad(hop))?);
        if !is_trusted(&ip) {
            return Ok(ip);
        }
        leftmost = ip;
    }
    Ok(leftmost)
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

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
    ProxyCaller(caller): ProxyCaller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = caller.require(Permission::ReadRules)?;
    let ip = client_ip(
        peer.ip(),
        &headers,
        &app.trusted_proxies,
        &app.client_ip_header,
    )?;
    let now = app.clock.now();
    let verdict = app.index.decide(principal.tenant_id, ip, now);
    app.count_decisions(
        LookupEndpoint::ForwardAuth,
        principal.tenant_id,
        now,
        [(verdict.blocked, verdict.allowed)],
    );
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
        let client =
            |peer, h: &HeaderMap, trusted: &[IpNet]| client_ip(peer, h, trusted, &X_FORWARDED_FOR);
        // The rightmost untrusted hop; the spoofable left part is ignored.
        assert_eq!(
            client(peer, &xff, &trusted).unwrap(),
            "198.51.100.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client(outsider, &xff, &trusted).unwrap(), outsider);
        assert_eq!(client(peer, &xff, &[]).unwrap(), peer);
        let two = headers(&[
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-for", "[2001:db8::1]:443"),
        ]);
        assert_eq!(
            client(peer, &two, &trusted).unwrap(),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert!(client(peer, &headers(&[("x-forwarded-for", "nonsense")]), &trusted).is_err());
        // A trusted proxy that sends no client address gets an error, not its own address.
        assert!(client(peer, &HeaderMap::new(), &trusted).is_err());
    }

    #[test]
    fn only_the_configured_header_counts() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let real_ip = HeaderName::from_static("x-real-ip");
        // The proxy sets X-Real-IP and passes the visitor's own X-Forwarded-For along.
        let spoofed = headers(&[
            ("x-real-ip", "::ffff:192.0.2.5"),
            ("x-forwarded-for", "198.51.100.77"),
        ]);
        assert_eq!(
            client_ip(peer, &spoofed, &trusted, &real_ip).unwrap(),
            "192.0.2.5".parse::<IpAddr>().unwrap()
        );
        let only_xff = headers(&[("x-forwarded-for", "198.51.100.77")]);
        assert!(client_ip(peer, &only_xff, &trusted, &real_ip).is_err());
        let twice = headers(&[("x-real-ip", "192.0.2.5"), ("x-real-ip", "192.0.2.6")]);
        assert!(client_ip(peer, &twice, &trusted, &real_ip).is_err());
        let list = headers(&[("x-real-ip", "192.0.2.5, 192.0.2.6")]);
        assert!(client_ip(peer, &list, &trusted, &real_ip).is_err());
    }
}

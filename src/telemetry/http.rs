//! Per request: an id its log lines carry, and the request counted and timed by the route
//! it matched (the route's pattern, so that metrics have one series per route, not per URI).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

use super::names;
use crate::rules::normalize_ip;

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id taken from a proxy; longer ones are replaced by a fresh one.
pub const MAX_REQUEST_ID_CHARS: usize = 128;

/// The id of the request being served: in the request's extensions, on every log line of the
/// request, in its audit entries and in the `X-Request-Id` of its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub Arc<str>);

tokio::task_local! {
    static CURRENT: RequestId;
}

/// The id of the request this task serves, if it serves one.
pub fn current_request_id() -> Option<String> {
    CURRENT.try_with(|id| id.0.to_string()).ok()
}

/// A fresh id.
pub fn new_request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Wraps every route of `router`: ids, counts and latencies. `trusted_proxies` are the
/// peers whose `X-Request-Id` is kept; anyone else could forge one to muddle the logs.
pub fn instrument(router: Router, trusted_proxies: Vec<IpNet>) -> Router {
    // `Router::layer` wraps each route (and the fallback) after routing, so the matched route
    // is known inside.
    router.layer(axum::middleware::from_fn_with_state(
        Arc::new(trusted_proxies),
        track,
    ))
}

async fn track(
    State(trusted): State<Arc<Vec<IpNet>>>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let id: Arc<str> = request_id_of(&request, peer, &trusted).into();
    let method = method_label(request.method());
    let matched = request.extensions().get::<MatchedPath>().cloned();
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = CURRENT
        .scope(RequestId(id.clone()), next.run(request))
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    if tracing::enabled!(tracing::Level::DEBUG) {
        CURRENT.sync_scope(RequestId(id.clone()), || {
            tracing::debug!(method, route, status, elapsed, "answered");
        });
    }
    record(route, method, status, elapsed);
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// The handles of one route, method and status.
type Handles = (metrics::Counter, metrics::Histogram);

/// Handles by method and status, then by route.
type HandleCache =
    std::collections::HashMap<(&'static str, u16), std::collections::HashMap<Box<str>, Handles>>;

thread_local! {
    /// Handles made on this thread, by method and status, then route: the look-up path pays two
    /// small hash look-ups and no allocation, instead of building label sets for the registry.
    static HANDLES: std::cell::RefCell<HandleCache> = Default::default();
}

fn record(route: &str, method: &'static str, status: u16, elapsed: f64) {
    HANDLES.with_borrow_mut(|handles| {
        let by_route = handles.entry((method, status)).or_default();
        if let Some((count, time)) = by_route.get(route) {
            count.increment(1);
            time.record(elapsed);
            return;
        }
        let labels = [
            ("route", route.to_owned()),
            ("method", method.to_owned()),
            ("status", status.to_string()),
        ];
        let made = (
            metrics::counter!(names::HTTP_REQUESTS, &labels),
            metrics::histogram!(names::HTTP_DURATION, &labels),
        );
        made.0.increment(1);
        made.1.record(elapsed);
        by_route.insert(route.into(), made);
    });
}

/// The proxy's id when a trusted proxy sent a usable one, else a fresh one.
fn request_id_of(request: &Request, peer: Option<IpAddr>, trusted: &[IpNet]) -> String {
    let from_proxy = peer
        .map(normalize_ip)
        .is_some_and(|peer| trusted.iter().any(|net| net.contains(&peer)));
    if from_proxy
        && let Some(given) = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
        && usable(given)
    {
        return given.to_owned();
    }
    new_request_id()
}

/// Short and made of characters that need no quoting in any log format.
fn usable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+=/".contains(&b))
}

/// Methods as a fixed set of labels: a client inventing methods must not add series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Decisions by endpoint, counted through handles made once: the look-up path pays one atomic
/// add, no registry look-up.
pub struct LookupCounters {
    /// Indexed by `[endpoint][outcome]`.
    counters: [[metrics::Counter; 3]; 4],
}

/// Where a decision was asked for.
#[derive(Debug, Clone, Copy)]
pub enum LookupEndpoint {
    Check = 0,
    CheckBatch = 1,
    ForwardAuth = 2,
    /// A CrowdSec bouncer's `GET /v1/decisions?ip=`.
    Bouncer = 3,
}

impl LookupCounters {
    fn new() -> Self {
        let make = |endpoint: &'static str| {
            ["block", "allow", "none"].map(|decision| {
                metrics::counter!(names::LOOKUPS, "endpoint" => endpoint, "decision" => decision)
            })
        };
        Self {
            counters: [
                make("check"),
                make("check_batch"),
                make("forward_auth"),
                make("bouncer"),
            ],
        }
    }

    pub fn count(&self, endpoint: LookupEndpoint, blocked: bool, allowed: bool) {
        let outcome = match (blocked, allowed) {
            (true, _) => 0,
            (false, true) => 1,
            (false, false) => 2,
        };
        self.counters[endpoint as usize][outcome].increment(1);
    }
}

static LOOKUPS: std::sync::OnceLock<LookupCounters> = std::sync::OnceLock::new();

/// Counts one decision.
pub fn count_lookup(endpoint: LookupEndpoint, blocked: bool, allowed: bool) {
    LOOKUPS
        .get_or_init(|| {
            // The handles bind to the recorder in force when they are made.
            super::recorder::handle();
            LookupCounters::new()
        })
        .count(endpoint, blocked, allowed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_ids_are_kept_only_when_plain() {
        assert!(usable("req-1234_abcd.ef:01"));
        assert!(!usable(""));
        assert!(!usable("with space"));
        assert!(!usable("quote\"d"));
        assert!(!usable(&"a".repeat(MAX_REQUEST_ID_CHARS + 1)));
    }
}

//! Per request: an id its log lines carry, and the request counted and timed by the route
//! it matched (the route's pattern, so that metrics have one series per route, not per URI).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::Response;
use ipnet::IpNet;
use rustc_hash::FxBuildHasher;
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};

use super::names;
use super::sharded::{
    Counter, Histogram, HistogramSnapshot, write_header, write_histogram, write_sample,
};
use crate::rules::normalize_ip;

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id taken from a proxy; longer ones are replaced by a fresh one.
pub const MAX_REQUEST_ID_CHARS: usize = 128;

/// The id of the request being served: on every log line of the request, in its audit entries
/// and in the `X-Request-Id` of its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(Repr);

/// Fresh ids are kept inline, so that giving one to a request allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Repr {
    Fresh([u8; 16]),
    /// From a trusted proxy, checked by [`usable`].
    Given(Arc<str>),
}

impl RequestId {
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Fresh ids are hex digits, ASCII.
            Repr::Fresh(digits) => std::str::from_utf8(digits).unwrap_or_default(),
            Repr::Given(given) => given,
        }
    }

    fn header_value(&self) -> Option<HeaderValue> {
        match &self.0 {
            Repr::Fresh(digits) => HeaderValue::from_bytes(digits).ok(),
            Repr::Given(given) => HeaderValue::from_str(given).ok(),
        }
    }
}

tokio::task_local! {
    static CURRENT: RequestId;
}

/// The id of the request this task serves, if it serves one.
pub fn current_request_id() -> Option<String> {
    CURRENT.try_with(|id| id.as_str().to_owned()).ok()
}

/// A fresh id: 16 hex digits of a random number.
pub fn new_request_id() -> String {
    fresh_id().as_str().to_owned()
}

thread_local! {
    /// A random start per thread; ids are its successive values mixed, so they are distinct
    /// within a thread and collide across threads only by chance (one in 2^64), at the cost of
    /// an addition and a few multiplications instead of a draw from the system's generator.
    static NEXT_ID: std::cell::Cell<u64> = std::cell::Cell::new(rand::random());
}

fn fresh_id() -> RequestId {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let counter = NEXT_ID.with(|next| {
        let value = next.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        next.set(value);
        value
    });
    // SplitMix64's finaliser, a bijection: consecutive counters give unrelated-looking ids.
    let mut value = counter;
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^= value >> 31;
    RequestId(Repr::Fresh(std::array::from_fn(|i| {
        HEX[((value >> (60 - 4 * i)) & 0xf) as usize]
    })))
}

/// Wraps every route of `router`: ids, counts and latencies. `trusted_proxies` are the
/// peers whose `X-Request-Id` is kept; anyone else could forge one to muddle the logs.
pub fn instrument(router: Router, trusted_proxies: Vec<IpNet>) -> Router {
    // `Router::layer` wraps each route (and the fallback) after routing, so the matched route
    // is known inside.
    router.layer(Instrument {
        trusted: Arc::new(trusted_proxies),
    })
}

/// The layer of [`instrument`]. A service of its own rather than `middleware::from_fn`, which
/// boxes every request's future and clones the route's service per request: the look-up
/// routes measurably paid for that.
#[derive(Clone)]
struct Instrument {
    trusted: Arc<Vec<IpNet>>,
}

impl<S> Layer<S> for Instrument {
    type Service = Instrumented<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Instrumented {
            inner,
            trusted: self.trusted.clone(),
        }
    }
}

#[derive(Clone)]
struct Instrumented<S> {
    inner: S,
    trusted: Arc<Vec<IpNet>>,
}

impl<S> Service<Request> for Instrumented<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Tracked<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let id = request_id_of(&request, peer, &self.trusted);
        let method = method_label(request.method());
        let route = request.extensions().get::<MatchedPath>().cloned();
        Tracked {
            inner: CURRENT.scope(id.clone(), self.inner.call(request)),
            started,
            id,
            method,
            route,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request being answered: counted, timed and given its id header when the answer is
    /// ready.
    struct Tracked<F> {
        #[pin]
        inner: TaskLocalFuture<RequestId, F>,
        started: Instant,
        id: RequestId,
        method: &'static str,
        route: Option<MatchedPath>,
    }
}

impl<F> Future for Tracked<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = std::task::ready!(this.inner.poll(cx));
        let elapsed = this.started.elapsed();
        let status = response.status().as_u16();
        let route = this.route.as_ref().map_or("unmatched", MatchedPath::as_str);
        let method = *this.method;
        if tracing::enabled!(tracing::Level::DEBUG) {
            let seconds = elapsed.as_secs_f64();
            CURRENT.sync_scope(this.id.clone(), || {
                tracing::debug!(method, route, status, elapsed = seconds, "answered");
            });
        }
        record(route, method, status, elapsed);
        if let Some(value) = this.id.header_value() {
            response.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
        Poll::Ready(Ok(response))
    }
}

/// Every route, method and status answered so far, for the scrape.
type SeriesMap = BTreeMap<(String, &'static str, u16), Arc<Histogram>>;

static SERIES: Mutex<SeriesMap> = Mutex::new(BTreeMap::new());

/// A thread's handles on the series it has recorded into, by where the route's name lives,
/// the method and the status. The router keeps one allocation per route name, so its address
/// finds the series without hashing the name; the name is still compared on every hit, since
/// an address can be reused by another router's route after the first is dropped.
type SeriesCache = HashMap<(usize, &'static str, u16), (Box<str>, Arc<Histogram>), FxBuildHasher>;

thread_local! {
    static CACHED: std::cell::RefCell<SeriesCache> = Default::default();
}

fn record(route: &str, method: &'static str, status: u16, elapsed: Duration) {
    let key = (route.as_ptr() as usize, method, status);
    CACHED.with_borrow_mut(|cached| {
        if let Some((name, series)) = cached.get(&key)
            && **name == *route
        {
            series.record(elapsed);
            return;
        }
        let series = SERIES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route.to_owned(), method, status))
            .or_default()
            .clone();
        series.record(elapsed);
        cached.insert(key, (route.into(), series));
    });
}

/// The proxy's id when a trusted proxy sent a usable one, else a fresh one.
fn request_id_of(request: &Request, peer: Option<IpAddr>, trusted: &[IpNet]) -> RequestId {
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
        return RequestId(Repr::Given(given.into()));
    }
    fresh_id()
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

/// Where a decision was asked for.
#[derive(Debug, Clone, Copy)]
pub enum LookupEndpoint {
    Check = 0,
    CheckBatch = 1,
    ForwardAuth = 2,
    /// A CrowdSec bouncer's `GET /v1/decisions?ip=`.
    Bouncer = 3,
}

const ENDPOINTS: [&str; 4] = ["check", "check_batch", "forward_auth", "bouncer"];
const OUTCOMES: [&str; 3] = ["block", "allow", "none"];

/// Decisions by `[endpoint][outcome]`.
static LOOKUPS: LazyLock<[[Counter; 3]; 4]> = LazyLock::new(Default::default);

/// Counts one decision.
pub fn count_lookup(endpoint: LookupEndpoint, blocked: bool, allowed: bool) {
    let outcome = match (blocked, allowed) {
        (true, _) => 0,
        (false, true) => 1,
        (false, false) => 2,
    };
    LOOKUPS[endpoint as usize][outcome].add(1);
}

fn series_labels([route, method, status]: &[String; 3]) -> [(&'static str, &str); 3] {
    [("route", route), ("method", method), ("status", status)]
}

/// Appends the request and decision series to the exposition text.
pub fn render(out: &mut String) {
    // Label values and a snapshot per series, taken once for both families.
    let series: Vec<([String; 3], HistogramSnapshot)> = SERIES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|((route, method, status), histogram)| {
            let values = [route.clone(), (*method).to_owned(), status.to_string()];
            (values, histogram.snapshot())
        })
        .collect();
    write_header(
        out,
        names::HTTP_REQUESTS,
        "counter",
        "HTTP requests answered, by matched route, method and status",
    );
    for (values, snapshot) in &series {
        let count = snapshot.count as f64;
        write_sample(out, names::HTTP_REQUESTS, &series_labels(values), count);
    }
    write_header(
        out,
        names::HTTP_DURATION,
        "histogram",
        "Time to answer an HTTP request, by matched route, method and status",
    );
    for (values, snapshot) in &series {
        write_histogram(out, names::HTTP_DURATION, &series_labels(values), snapshot);
    }
    write_header(
        out,
        names::LOOKUPS,
        "counter",
        "Decisions made, by endpoint and outcome (block, allow, none)",
    );
    for (endpoint, counters) in ENDPOINTS.iter().zip(LOOKUPS.iter()) {
        for (decision, counter) in OUTCOMES.iter().zip(counters) {
            let labels = [("endpoint", *endpoint), ("decision", *decision)];
            write_sample(out, names::LOOKUPS, &labels, counter.get() as f64);
        }
    }
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

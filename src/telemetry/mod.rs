//! What an operator watches: Prometheus metrics and request-scoped logs.
//!
//! - [`recorder`]: the process-wide Prometheus recorder and the names of every metric.
//! - [`http`]: per request: an id (echoed in `X-Request-Id`, on every log line of the request),
//!   counts and latency by matched route and status.
//! - [`sharded`]: counters and histograms that each thread adds to without contention, for the
//!   per-request series.
//! - [`scrape`]: `GET /metrics`, with the gauges that are read at scrape time (rules, queue,
//!   feed lag, each bouncer's lag, geo data age) rather than kept up to date on the hot paths.
//! - [`logging`]: the log subscriber, human or JSON.

pub mod http;
pub mod logging;
pub mod recorder;
pub mod scrape;
pub mod sharded;

pub use http::{RequestId, current_request_id};
pub use recorder::names;

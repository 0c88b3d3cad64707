//! The HTTP server: accepting connections under a cap, timing out clients that stall, and
//! stopping within a deadline.
//!
//! Palisade answers forward-auth for every site behind it, so a client that could hold its
//! connections or its file descriptors could open or close those sites. hyper's own
//! header-read timer also runs while a keep-alive connection waits for its next request, so
//! it cannot tell "slow to send a request head" (an attack, short limit) from "idle between
//! requests" (what every reverse proxy's connection pool does, long limit). A watchdog per
//! connection keeps those apart by watching the connection's bytes and its requests in
//! flight:
//!
//! - a request head must arrive within `header_read_timeout` of its first byte (and a new
//!   connection must send one within that time of opening);
//! - a connection with nothing in flight is closed after `idle_timeout`;
//! - a request in flight whose connection moves no byte for `idle_timeout` is cut (a client
//!   that stopped reading its answer);
//! - request bodies are read under their own deadline (`body_read_timeout`, in
//!   [`crate::api::RawBody`]).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::ServiceExt;

/// How long the server waits for clients, and how many it holds at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections at most; further clients wait in the kernel's accept queue.
    pub max_connections: usize,
    /// From the first byte of a request head (or from opening the connection) to its end.
    pub header_read_timeout: Duration,
    /// A connection with nothing in flight, or whose request moves no byte, is closed after this.
    pub idle_timeout: Duration,
    /// Requests still running this long after shutdown began are cut off.
    pub shutdown_timeout: Duration,
}

/// Wait after an accept failed for want of file descriptors or memory, so the loop does not
/// spin while connections close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown` completes, then lets requests in flight finish
/// for at most `limits.shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    // hyper's header timer would also close idle keep-alive connections; the watchdog owns
    // both limits. The timer stays for HTTP/2 keep-alive pings.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.idle_timeout / 2)
        .keep_alive_timeout(limits.header_read_timeout);
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut exhausted_since: Option<Instant> = None;
    let open = metrics::gauge!(crate::telemetry::names::CONNECTIONS_OPEN);

    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e, &mut exhausted_since).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        exhausted_since = None;
        // Forward-auth answers are small and latency-bound.
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
        });
        let service =
            TowerToHyperService::new(connection_service(router.clone(), peer, activity.clone()));
        let conn = builder
            .serve_connection_with_upgrades(io, service)
            .into_owned();
        let conn = graceful.watch(conn);
        open.increment(1.0);
        let open = open.clone();
        connections.spawn(async move {
            tokio::select! {
                result = conn => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                reason = watchdog(&activity, limits) => {
                    tracing::debug!(%peer, reason, "connection closed");
                }
            }
            drop(permit);
            open.decrement(1.0);
        });
        // Finished connections are reaped as we go so the set does not grow.
        while connections.try_join_next().is_some() {}
    }

    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "stopped accepting; finishing requests in flight"
    );
    if tokio::time::timeout(limits.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still running {} s after shutdown began were cut off",
            limits.shutdown_timeout.as_secs()
        );
    }
    connections.shutdown().await;
    Ok(())
}

/// Logs an accept failure, and backs off when it means the process is out of descriptors or
/// memory: retrying at once would only spin.
async fn accept_failed(e: io::Error, exhausted_since: &mut Option<Instant>) {
    let exhausted = matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    );
    if !exhausted {
        tracing::debug!(error = %e, "accept failed");
        return;
    }
    // Once per episode, not once per retry.
    if exhausted_since.is_none() {
        tracing::error!(error = %e, "cannot accept connections; retrying every {} ms", ACCEPT_BACKOFF.as_millis());
        *exhausted_since = Some(Instant::now());
    }
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// The router for one connection: the peer address goes into every request (for
/// `ConnectInfo`), and each request counts as in flight until its answer has been sent.
fn connection_service(
    router: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
) -> impl tower::Service<
    Request<Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future = impl Future<Output = Result<axum::response::Response, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |mut request: Request<Incoming>| {
        let in_flight = InFlight::begin(activity.clone());
        request.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            let response = router
                .oneshot(request.map(Body::new))
                .await
                .unwrap_or_else(|never| match never {});
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(Tracked {
                    body,
                    _in_flight: in_flight,
                })
            }))
        }
    })
}

/// What the watchdog knows of one connection. Times are milliseconds since the connection
/// opened; 0 in `head_started` means no request head is being read.
struct Activity {
    opened: Instant,
    in_flight: AtomicU32,
    /// When the connection last had nothing in flight.
    idle_since: AtomicU64,
    /// When the first byte of the request head now being read arrived.
    head_started: AtomicU64,
    /// When a byte last moved either way.
    last_io: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            // A new connection owes a request head at once.
            head_started: AtomicU64::new(1),
            last_io: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        // +1 keeps 0 free to mean "none".
        self.opened.elapsed().as_millis() as u64 + 1
    }

    fn moved(&self, read: bool) {
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        if read && self.in_flight.load(Ordering::Acquire) == 0 {
            let _ = self
                .head_started
                .compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

/// Counts a request as in flight from its head until its answer is sent (or dropped).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.head_started.store(0, Ordering::Release);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.idle_since.store(activity.now(), Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Resolves when the connection broke a limit; says which.
async fn watchdog(activity: &Activity, limits: ConnectionLimits) -> &'static str {
    let header = limits.header_read_timeout.as_millis() as u64;
    let idle = limits.idle_timeout.as_millis() as u64;
    loop {
        let now = activity.now();
        let (deadline, reason) = if activity.in_flight.load(Ordering::Acquire) > 0 {
            (
                activity.last_io.load(Ordering::Relaxed).max(1) + idle,
                "no byte moved while a request was in flight",
            )
        } else {
            match activity.head_started.load(Ordering::Acquire) {
                0 => (
                    activity.idle_since.load(Ordering::Acquire) + idle,
                    "idle timeout",
                ),
                started => (started + header, "request head not received in time"),
            }
        };
        if now >= deadline {
            return reason;
        }
        tokio::time::sleep(Duration::from_millis(deadline - now)).await;
    }
}

/// A socket that reports its reads and writes to the watchdog.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.moved(true);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved(false);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved(false);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request in flight until hyper has sent it and dropped it.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Raises the soft limit on open files to the hard limit, so that the connection cap, not the
/// default of 1024 descriptors, decides how many clients are held. Returns the limit in force.
pub fn raise_open_files_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

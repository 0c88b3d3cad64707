//! The operator console at `/console/`: server-rendered pages over the same engine, store and
//! index as the API, so that a page and its API call can never disagree. Every core action is
//! a plain link or form; htmx (embedded, see [`assets`]) only refreshes lists in place.
//!
//! - [`session`]: sign-in sessions, CSRF tokens, wrong-key limits.
//! - [`pages`]: the handlers, one per page or form.
//! - [`views`]: what the templates show (`templates/console/`).
//! - [`history`]: a rule's history, from the audit log.
//! - [`error`]: every console error, turned into a page in one place.

pub mod assets;
pub mod error;
pub mod history;
pub mod pages;
pub mod session;
pub mod views;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::AppState;
use crate::keys::{Permission, Principal};
use crate::rules::TenantId;
use crate::store::{RuleCount, StoreResult};
use error::ConsoleError;
use session::{SESSION_COOKIE, Sessions, SignInFailures};

/// The `[console]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the console at `/console/`.
    pub enabled: bool,
    /// A session unused for this many seconds is closed.
    pub session_idle_secs: u64,
    /// Sessions open at once; further sign-ins get 503 until one closes or goes idle.
    pub max_sessions: usize,
    /// Wrong keys one client address may try per minute; 0 turns the limit off.
    pub sign_in_failures_per_minute: u32,
    /// Always mark the session cookie `Secure`. Without it the cookie is `Secure` when a
    /// trusted proxy says the request came over TLS (`X-Forwarded-Proto: https`).
    pub secure_cookie: bool,
    /// Rules per page of the rules list, 1 to 1000.
    pub page_size: usize,
    /// Newest audit entries a rule's page reads to find that rule's history.
    pub history_scan_entries: usize,
    /// Seconds between refreshes of live lists in the browser.
    pub refresh_secs: u64,
    /// Counting a tenant's rules reads all of them, so the overview's counts are kept: they
    /// are counted again when the change feed has moved and the last count is at least this
    /// many seconds old, or when it is ten times as old (rules expire without a change).
    pub counts_refresh_secs: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            session_idle_secs: 1800,
            max_sessions: 10_000,
            sign_in_failures_per_minute: 10,
            secure_cookie: false,
            page_size: 50,
            history_scan_entries: 10_000,
            refresh_secs: 5,
            counts_refresh_secs: 10,
        }
    }
}

/// Sent with every page: scripts and styles only from the console itself, never inside another
/// site's frame, no page (a new key's secret) kept in caches or named in a `Referer`.
pub const PAGE_HEADERS: [(axum::http::HeaderName, axum::http::HeaderValue); 4] = [
    (
        axum::http::header::CONTENT_SECURITY_POLICY,
        axum::http::HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    ),
    (
        axum::http::header::X_FRAME_OPTIONS,
        axum::http::HeaderValue::from_static("DENY"),
    ),
    (
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    ),
    (
        axum::http::header::REFERRER_POLICY,
        axum::http::HeaderValue::from_static("no-referrer"),
    ),
];

/// Client addresses whose wrong keys are remembered before the memory of them starts over.
const FAILURES_REMEMBERED: usize = 65_536;

/// What every console handler can reach.
pub struct Inner {
    pub app: AppState,
    pub config: ConsoleConfig,
    pub sessions: Sessions,
    pub failures: SignInFailures,
    /// The geo data version last seen, and since when it is known to be in force.
    geo_seen: std::sync::Mutex<(u64, std::time::Duration)>,
    /// The last count of each tenant's rules: at which change, when, and what it was.
    counts: std::sync::Mutex<HashMap<TenantId, Counted>>,
}

#[derive(Clone)]
struct Counted {
    seq: u64,
    at: Duration,
    counts: Arc<[RuleCount]>,
}

#[derive(Clone)]
pub struct Console(pub Arc<Inner>);

impl Deref for Console {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Console {
    pub fn new(app: &AppState) -> Self {
        let config = app.console.clone();
        let clock = app.clock.clone();
        Console(Arc::new(Inner {
            sessions: Sessions::new(
                Duration::from_secs(config.session_idle_secs.max(1)),
                config.max_sessions.max(1),
                clock.clone(),
            ),
            failures: SignInFailures::new(
                config.sign_in_failures_per_minute,
                FAILURES_REMEMBERED,
                clock,
            ),
            geo_seen: std::sync::Mutex::new((app.geo.version(), app.clock.monotonic())),
            counts: Default::default(),
            app: app.clone(),
            config,
        }))
    }

    /// The address a request is from, read the way forward-auth reads it.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        crate::api::check::client_ip(
            peer.ip(),
            headers,
            &self.app.trusted_proxies,
            &self.app.client_ip_header,
        )
        .unwrap_or(peer.ip())
    }

    /// How long the geo data in force has been: since this process loaded it, or since the
    /// console first saw the version after a reload.
    pub fn geo_age(&self) -> String {
        let now = self.app.clock.monotonic();
        let version = self.app.geo.version();
        let mut seen = self.geo_seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.0 != version {
            *seen = (version, now);
        }
        let secs = now.saturating_sub(seen.1).as_secs();
        match secs {
            0..60 => format!("{secs} s"),
            60..3600 => format!("{} min", secs / 60),
            3600..86400 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
            _ => format!("{} days", secs / 86400),
        }
    }

    /// The tenant's active rules by kind and action, counted again only as often as
    /// `console.counts_refresh_secs` allows.
    pub async fn rule_counts(&self, tenant: TenantId) -> StoreResult<Arc<[RuleCount]>> {
        let seq = self.app.engine.feed().applied();
        let now = self.app.clock.monotonic();
        let every = Duration::from_secs(self.config.counts_refresh_secs);
        let kept = self.counted().get(&tenant).cloned();
        if let Some(kept) = kept {
            let age = now.saturating_sub(kept.at);
            if age < every * 10 && (kept.seq == seq || age < every) {
                return Ok(kept.counts);
            }
        }
        let now_ms = self.app.clock.now();
        let counts: Arc<[RuleCount]> = self
            .app
            .engine
            .backend()
            .rule_counts(tenant, now_ms)
            .await?
            .into();
        let counted = Counted {
            seq,
            at: now,
            counts: counts.clone(),
        };
        self.counted().insert(tenant, counted);
        Ok(counts)
    }

    fn counted(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Counted>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the browser reached us over TLS, so cookies must say `Secure`.
    pub fn secure(&self, peer: SocketAddr, headers: &HeaderMap) -> bool {
        if self.config.secure_cookie {
            return true;
        }
        let from_proxy = self
            .app
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&crate::rules::normalize_ip(peer.ip())));
        from_proxy
            && headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
    }
}

/// The console's routes, with their own state, for the API router to merge; none when the
/// console is turned off.
pub fn router<S: Clone + Send + Sync + 'static>(app: &AppState) -> Router<S> {
    if !app.console.enabled {
        return Router::new();
    }
    let console = Console::new(app);
    let body_limit = app.body_limits.signal_body_bytes;
    Router::new()
        .route("/console", get(pages::home))
        .route("/console/", get(pages::overview))
        .route("/console/state", get(pages::state))
        .route(
            "/console/sign-in",
            get(pages::sign_in_form).post(pages::sign_in),
        )
        .route("/console/sign-out", post(pages::sign_out))
        .route("/console/check", get(pages::check))
        .route("/console/rules", get(pages::rules).post(pages::add_rules))
        .route("/console/rules/new", get(pages::add_form))
        .route("/console/rules/{id}", get(pages::rule))
        .route(
            "/console/rules/{id}/delete",
            get(pages::confirm_delete).post(pages::delete),
        )
        .route("/console/audit", get(pages::audit))
        .route("/console/queue", get(pages::queue))
        .route("/console/keys", get(pages::keys).post(pages::create_key))
        .route("/console/keys/{id}/revoke", post(pages::revoke_key))
        .route("/console/assets/{file}", get(assets::serve))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(console)
}

/// A signed-in operator: the session and the key behind it, as the key ring has it now.
pub struct Operator {
    pub principal: Arc<Principal>,
    pub csrf: String,
    pub token: String,
}

impl Operator {
    /// A role that may not do this gets 403, exactly as on the API.
    pub fn require(&self, permission: Permission) -> Result<&Principal, ConsoleError> {
        if self.principal.role.allows(permission) {
            Ok(&self.principal)
        } else {
            Err(ConsoleError::Forbidden(self.principal.role))
        }
    }

    pub fn may(&self, permission: Permission) -> bool {
        self.principal.role.allows(permission)
    }

    /// Every form that changes something carries the session's CSRF token.
    pub fn verify(&self, presented: Option<&str>) -> Result<(), ConsoleError> {
        match presented {
            Some(token) if session::same_token(token, &self.csrf) => Ok(()),
            _ => Err(ConsoleError::Csrf),
        }
    }
}

impl FromRequestParts<Console> for Operator {
    type Rejection = ConsoleError;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Console,
    ) -> Result<Self, Self::Rejection> {
        let token = session::cookie(&parts.headers, SESSION_COOKIE)
            .ok_or(ConsoleError::SignInNeeded)?
            .to_owned();
        let session = console
            .sessions
            .find(&token)
            .ok_or(ConsoleError::SignInNeeded)?;
        let Some(principal) = console.app.keys.load().authenticate_digest(&session.key) else {
            console.sessions.close(&token);
            return Err(ConsoleError::SignInNeeded);
        };
        Ok(Operator {
            principal,
            csrf: session.csrf,
            token,
        })
    }
}

/// The peer and headers a handler needs for cookies and limits.
pub struct Peer {
    pub addr: SocketAddr,
    pub headers: HeaderMap,
}

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .ok_or_else(|| ConsoleError::BadRequest("no peer address".into()))?;
        Ok(Peer {
            addr,
            headers: parts.headers.clone(),
        })
    }
}

/// A form body (`application/x-www-form-urlencoded`), read under the console's body limit.
pub struct ConsoleForm<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ConsoleForm<T> {
    type Rejection = ConsoleError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::Form::<T>::from_request(req, state)
            .await
            .map(|axum::Form(form)| ConsoleForm(form))
            .map_err(|e| ConsoleError::Form {
                status: e.status(),
                message: e.body_text(),
            })
    }
}

/// A query string, leniently: a browser's forms send every field, empty or not.
pub struct ConsoleQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ConsoleQuery<T> {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(query)
            .map(ConsoleQuery)
            .map_err(|e| ConsoleError::BadRequest(format!("bad query: {e}")))
    }
}

/// A form or query value, `None` when empty.
pub fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

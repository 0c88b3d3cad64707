//! The console's handlers. Each reads its input, calls what the API calls for the same
//! question (the index's answer, the store's rule pages, the engine's use cases) and renders.

use std::collections::HashMap;
use std::net::IpAddr;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::error::ConsoleError;
use super::session::{self, SESSION_COOKIE, SIGN_IN_COOKIE};
use super::views::*;
use super::{Console, ConsoleForm, ConsoleQuery, Operator, Peer, given};
use crate::api::check::parse_client_ip;
use crate::api::error::ApiError;
use crate::api::request_id;
use crate::api::rules::{MAX_PAGE, RuleView};
use crate::engine::EngineError;
use crate::engine::check::answer_bounded;
use crate::keys::{Permission, Role};
use crate::ratelimit::Scope;
use crate::rules::{Kind, RuleAction, Source, Target, TenantId};
use crate::store::{ChangeOp, RuleQuery};

type Page = Result<Response, ConsoleError>;

fn render(status: StatusCode, page: impl Template) -> Page {
    Ok((status, super::PAGE_HEADERS, Html(page.render()?)).into_response())
}

fn see_other(location: &str) -> Response {
    let location = HeaderValue::from_str(location).unwrap_or(HeaderValue::from_static("/console/"));
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

fn rule_id(text: &str) -> Result<i64, ConsoleError> {
    text.parse()
        .map_err(|_| ConsoleError::NotFound("Rule not found".into()))
}

/// A form that only carries the CSRF token.
#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: Option<String>,
}

/// `GET /console`.
pub async fn home() -> Response {
    see_other("/console/")
}

/// `GET /console/sign-in`: the form, with a fresh CSRF token in a cookie of its own.
pub async fn sign_in_form(State(console): State<Console>, peer: Peer) -> Page {
    let token = session::random_token();
    let secure = console.secure(peer.addr, &peer.headers);
    let page = SignInPage {
        layout: Layout::anonymous("Sign in"),
        csrf: token.clone(),
        error: None,
    };
    let mut response = render(StatusCode::OK, page)?;
    set_cookie(
        &mut response,
        &session::set_cookie(SIGN_IN_COOKIE, &token, secure),
    );
    Ok(response)
}

fn set_cookie(response: &mut Response, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

#[derive(Deserialize)]
pub struct SignInForm {
    key: Option<String>,
    csrf: Option<String>,
}

/// `POST /console/sign-in`: the key is checked exactly as an API request's key is; wrong keys
/// count against the client address.
pub async fn sign_in(
    State(console): State<Console>,
    peer: Peer,
    ConsoleForm(form): ConsoleForm<SignInForm>,
) -> Page {
    let expected = session::cookie(&peer.headers, SIGN_IN_COOKIE);
    let csrf = match (expected, given(&form.csrf)) {
        (Some(a), Some(b)) if session::same_token(a, b) => a.to_owned(),
        _ => return Err(ConsoleError::Csrf),
    };
    let client = console.client(peer.addr, &peer.headers);
    if let Err(secs) = console.failures.check(client) {
        let error = format!("Too many wrong keys from this address; try again in {secs} s");
        let mut page = refused(StatusCode::TOO_MANY_REQUESTS, csrf, error)?;
        page.headers_mut().insert(header::RETRY_AFTER, secs.into());
        return Ok(page);
    }
    let key = given(&form.key).unwrap_or("");
    match console.app.authenticate(key).await {
        Ok(_) => {}
        Err(ApiError::Unauthorized) => {
            console.failures.record(client);
            let error = "This key is not valid: wrong, revoked or mistyped".to_owned();
            return refused(StatusCode::UNAUTHORIZED, csrf, error);
        }
        Err(e) => return Err(e.into()),
    }
    // A new session each time: a token planted in the browser before sign-in is worth nothing.
    if let Some(earlier) = session::cookie(&peer.headers, SESSION_COOKIE) {
        console.sessions.close(earlier);
    }
    let token = console
        .sessions
        .open(crate::keys::digest(key))
        .map_err(|_| ConsoleError::TooManySessions)?;
    let secure = console.secure(peer.addr, &peer.headers);
    let mut response = see_other("/console/");
    set_cookie(
        &mut response,
        &session::set_cookie(SESSION_COOKIE, &token, secure),
    );
    set_cookie(
        &mut response,
        &session::clear_cookie(SIGN_IN_COOKIE, secure),
    );
    Ok(response)
}

/// The sign-in form again, saying why the key was not taken.
fn refused(status: StatusCode, csrf: String, error: String) -> Page {
    let layout = Layout::anonymous("Sign in");
    render(
        status,
        SignInPage {
            layout,
            csrf,
            error: Some(error),
        },
    )
}

/// `POST /console/sign-out`.
pub async fn sign_out(
    State(console): State<Console>,
    operator: Operator,
    peer: Peer,
    ConsoleForm(form): ConsoleForm<CsrfForm>,
) -> Page {
    operator.verify(form.csrf.as_deref())?;
    console.sessions.close(&operator.token);
    let mut response = see_other("/console/sign-in");
    let secure = console.secure(peer.addr, &peer.headers);
    set_cookie(
        &mut response,
        &session::clear_cookie(SESSION_COOKIE, secure),
    );
    Ok(response)
}

#[derive(Deserialize)]
pub struct CheckQuery {
    ip: Option<String>,
}

/// `GET /console/check?ip=`: the answer of `GET /v1/check`, in words.
pub async fn check(
    State(console): State<Console>,
    operator: Operator,
    ConsoleQuery(query): ConsoleQuery<CheckQuery>,
) -> Page {
    let tenant = operator.require(Permission::ReadRules)?.tenant_id;
    let layout = Layout::of(&operator, "Check an address", "check");
    let text = given(&query.ip).unwrap_or("").to_owned();
    let (status, result, error) = if text.is_empty() {
        (StatusCode::OK, None, None)
    } else if let Some(ip) = parse_client_ip(&text) {
        (
            StatusCode::OK,
            Some(check_view(&console, tenant, ip).await?),
            None,
        )
    } else {
        let error = format!("{text:?} is not an IPv4 or IPv6 address");
        (StatusCode::BAD_REQUEST, None, Some(error))
    };
    render(
        status,
        CheckPage {
            layout,
            ip: text,
            result,
            error,
        },
    )
}

/// The decision for `ip` from the index, as `GET /v1/check` makes it; then when each matching
/// rule was made, from the store.
async fn check_view(
    console: &Console,
    tenant: TenantId,
    ip: IpAddr,
) -> Result<CheckView, ConsoleError> {
    let app = &console.app;
    let now = app.clock.now();
    let mut view = {
        let index = app.index.view(tenant);
        let answer = answer_bounded(&index, ip, now, app.body_limits.matches_per_address);
        let (class, verdict) = match (answer.blocked, answer.allowed) {
            (true, _) => ("blocked", "blocked"),
            (false, true) => (
                "allowed",
                "allowed (an allowlist entry covers it; never blocked)",
            ),
            (false, false) => ("clear", "not blocked"),
        };
        CheckView {
            ip: answer.ip.to_string(),
            class,
            verdict: verdict.to_owned(),
            asn: answer
                .asn
                .map_or_else(|| "unknown".into(), |a| a.to_string()),
            country: answer
                .country
                .map_or_else(|| "unknown".into(), |c| c.to_string()),
            matches: answer
                .matches
                .iter()
                .map(|m| MatchRow {
                    id: m.0.id,
                    kind: m.0.target.kind().as_str(),
                    target: m.0.target.to_string(),
                    action: m.0.action.as_str(),
                    since: String::new(),
                    until: until(m.0.expires_at),
                    name: m.0.name().unwrap_or("").to_owned(),
                })
                .collect(),
            truncated: answer.matches_truncated,
        }
    };
    for row in &mut view.matches {
        if let Some(rule) = app.engine.backend().rule(tenant, row.id, now).await? {
            row.since = when(rule.created_at);
        }
    }
    Ok(view)
}

/// Query of the rules list: the search form's fields.
#[derive(Deserialize, Default)]
pub struct RuleSearch {
    q: Option<String>,
    kind: Option<String>,
    action: Option<String>,
    source: Option<String>,
    name: Option<String>,
    dataset: Option<String>,
    tag: Option<String>,
    cursor: Option<String>,
    /// The change the page was rendered at (live refresh).
    seen: Option<String>,
    /// A rule just deleted, to say so.
    deleted: Option<String>,
}

impl RuleSearch {
    fn values(&self) -> SearchValues {
        let v = |f: &Option<String>| given(f).unwrap_or("").to_owned();
        SearchValues {
            q: v(&self.q),
            kind: v(&self.kind),
            action: v(&self.action),
            source: v(&self.source),
            name: v(&self.name),
            dataset: v(&self.dataset),
            tag: v(&self.tag),
        }
    }

    /// The list's URL with these filters, and `extra` parameters.
    fn url(&self, extra: &[(&str, &str)]) -> String {
        let v = self.values();
        let mut pairs: Vec<(&str, &str)> = [
            ("q", v.q.as_str()),
            ("kind", &v.kind),
            ("action", &v.action),
            ("source", &v.source),
            ("name", &v.name),
            ("dataset", &v.dataset),
            ("tag", &v.tag),
        ]
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .collect();
        pairs.extend_from_slice(extra);
        let query = serde_urlencoded::to_string(&pairs).unwrap_or_default();
        format!("/console/rules?{query}")
    }
}

/// What the store is asked for, or what is wrong with the search.
enum Listing {
    /// Every rule covering an address, from the index's answer.
    Covering(IpAddr),
    Query(RuleQuery),
}

fn named<T>(
    value: &Option<String>,
    parse: impl Fn(&str) -> Option<T>,
    field: &str,
    choices: &str,
) -> Result<Option<T>, String> {
    given(value)
        .map(|text| parse(text).ok_or_else(|| format!("{field} must be one of: {choices}")))
        .transpose()
}

fn listing(search: &RuleSearch, page_size: usize) -> Result<Listing, String> {
    let q = given(&search.q);
    if let Some(ip) = q.and_then(parse_client_ip) {
        return Ok(Listing::Covering(ip));
    }
    let target = q
        .map(|text| {
            Target::parse_any(text).ok_or_else(|| {
                format!("{text:?} is not an address, CIDR range, ASN (AS12345) or country code")
            })
        })
        .transpose()?;
    let cursor = given(&search.cursor)
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| "cursor must be a number".to_owned())
        })
        .transpose()?;
    Ok(Listing::Query(RuleQuery {
        kind: named(&search.kind, Kind::parse, "kind", "ip, asn, country")?,
        target,
        name: given(&search.name).map(str::to_owned),
        action: named(&search.action, RuleAction::parse, "action", "block, allow")?,
        source: named(&search.source, Source::parse, "source", "signal, report")?,
        dataset: given(&search.dataset).map(str::to_owned),
        tag: given(&search.tag).map(str::to_owned),
        after: cursor,
        limit: page_size.clamp(1, MAX_PAGE),
        ..RuleQuery::default()
    }))
}

/// `GET /console/rules`: search and pages. Polled by htmx with `seen`: 204 while nothing has
/// changed since, so an idle list costs no query.
pub async fn rules(
    State(console): State<Console>,
    operator: Operator,
    headers: HeaderMap,
    ConsoleQuery(search): ConsoleQuery<RuleSearch>,
) -> Page {
    let tenant = operator.require(Permission::ReadRules)?.tenant_id;
    let applied = console.app.engine.feed().applied();
    let polled = headers.contains_key("hx-request");
    if polled && given(&search.seen) == Some(applied.to_string().as_str()) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let (rules, heading, next, error) = match listing(&search, console.config.page_size) {
        Ok(listing) => list(&console, tenant, listing, &search).await?,
        Err(error) => (Vec::new(), "Rules".to_owned(), None, Some(error)),
    };
    let page = RulesPage {
        layout: Layout::of(&operator, "Rules", "rules"),
        first: given(&search.cursor).map(|_| search.url(&[])),
        notice: given(&search.deleted).map(|id| format!("Rule {id} deleted.")),
        refresh_url: search.url(&[
            ("cursor", given(&search.cursor).unwrap_or("")),
            ("seen", &applied.to_string()),
        ]),
        refresh_secs: console.config.refresh_secs.max(1),
        can_write: operator.may(Permission::WriteRules),
        search: search.values(),
        rules,
        heading,
        next,
        error,
    };
    let status = if page.error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    render(status, page)
}

type Listed = (Vec<RuleRow>, String, Option<String>, Option<String>);

async fn list(
    console: &Console,
    tenant: TenantId,
    listing: Listing,
    search: &RuleSearch,
) -> Result<Listed, ConsoleError> {
    let app = &console.app;
    let now = app.clock.now();
    match listing {
        Listing::Covering(ip) => {
            let ids: Vec<i64> = {
                let index = app.index.view(tenant);
                let answer = answer_bounded(&index, ip, now, app.body_limits.matches_per_address);
                answer.matches.iter().map(|m| m.0.id).collect()
            };
            let mut rows = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(rule) = app.engine.backend().rule(tenant, id, now).await? {
                    rows.push(RuleRow::from(&rule));
                }
            }
            Ok((rows, format!("Rules covering {ip}"), None, None))
        }
        Listing::Query(query) if query.target.is_some() && query.action.is_none() => {
            // One rule per action at most: asking for each action is a probe of the unique
            // (tenant, action, kind, target) index each, where one query without the action
            // would read the tenant's rules in id order.
            let mut rows = Vec::new();
            for action in [RuleAction::Block, RuleAction::Allow] {
                let exact = RuleQuery {
                    action: Some(action),
                    now,
                    ..query.clone()
                };
                let page = app.engine.backend().rules(tenant, exact).await?;
                rows.extend(page.items.iter().map(RuleRow::from));
            }
            rows.sort_by_key(|r| r.id);
            Ok((rows, "Rules".to_owned(), None, None))
        }
        Listing::Query(mut query) => {
            query.now = now;
            let page = app.engine.backend().rules(tenant, query).await?;
            let next = page
                .next_cursor
                .map(|c| search.url(&[("cursor", &c.to_string())]));
            let rows = page.items.iter().map(RuleRow::from).collect();
            Ok((rows, "Rules".to_owned(), next, None))
        }
    }
}

/// `GET /console/rules/new`: only keys that may write see the form.
pub async fn add_form(State(_console): State<Console>, operator: Operator) -> Page {
    operator.require(Permission::WriteRules)?;
    let form = AddValues {
        action: "block".into(),
        ..AddValues::default()
    };
    let layout = Layout::of(&operator, "Add rules", "add");
    render(
        StatusCode::OK,
        AddPage {
            layout,
            csrf: operator.csrf.clone(),
            form,
            outcome: None,
        },
    )
}

/// The add form: the fields of a signal event, and many addresses at once.
#[derive(Deserialize)]
pub struct AddForm {
    csrf: Option<String>,
    action: Option<String>,
    ip: Option<String>,
    asn: Option<String>,
    country: Option<String>,
    expiration: Option<String>,
    name: Option<String>,
    description: Option<String>,
    ips: Option<String>,
}

impl AddForm {
    /// One signal event per target given, in the form's order: `ip`, `asn`, `country`, then
    /// each address of the list. Values go as typed, so the engine's checks judge them.
    fn events(&self) -> Vec<serde_json::Value> {
        use serde_json::{Map, Value};
        let mut targets: Vec<(&str, &str)> = Vec::new();
        for (field, value) in [
            ("ip", &self.ip),
            ("asn", &self.asn),
            ("country", &self.country),
        ] {
            if let Some(text) = given(value) {
                targets.push((field, text));
            }
        }
        let list = given(&self.ips).unwrap_or("");
        targets.extend(
            list.split(|c: char| c.is_whitespace() || c == ',')
                .filter(|t| !t.is_empty())
                .map(|t| ("ip", t)),
        );
        targets
            .into_iter()
            .map(|(field, text)| {
                let mut event = Map::new();
                event.insert("type".into(), "access_rules".into());
                event.insert(
                    "action".into(),
                    given(&self.action).unwrap_or("block").into(),
                );
                event.insert(field.into(), text.into());
                if let Some(seconds) = given(&self.expiration) {
                    let value = seconds
                        .parse::<u64>()
                        .map_or_else(|_| Value::from(seconds), Value::from);
                    event.insert("expiration".into(), value);
                }
                for (key, value) in [("name", &self.name), ("description", &self.description)] {
                    if let Some(text) = given(value) {
                        event.insert(key.into(), text.into());
                    }
                }
                Value::Object(event)
            })
            .collect()
    }

    fn values(&self) -> AddValues {
        let v = |f: &Option<String>| f.clone().unwrap_or_default();
        AddValues {
            action: given(&self.action).unwrap_or("block").to_owned(),
            ip: v(&self.ip),
            asn: v(&self.asn),
            country: v(&self.country),
            expiration: v(&self.expiration),
            name: v(&self.name),
            description: v(&self.description),
            ips: v(&self.ips),
        }
    }
}

/// `POST /console/rules`: the form's events go through `Engine::submit_signals`, as a
/// `POST /v1/signal` body would, under the same rate limit, with the same per-entry errors.
pub async fn add_rules(
    State(console): State<Console>,
    operator: Operator,
    ConsoleForm(form): ConsoleForm<AddForm>,
) -> Page {
    operator.verify(form.csrf.as_deref())?;
    let principal = operator.require(Permission::WriteRules)?;
    crate::api::reports::spend(&console.app, Scope::Signal, principal.key_id)?;
    let outcome = submit(&console, principal, form.events()).await?;
    // As the API: some events applied is a success with errors, none applied a bad request.
    let status = if outcome.applied > 0 {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let values = if outcome.ok {
        AddValues {
            action: "block".into(),
            ..AddValues::default()
        }
    } else {
        form.values()
    };
    let page = AddPage {
        layout: Layout::of(&operator, "Add rules", "add"),
        csrf: operator.csrf.clone(),
        form: values,
        outcome: Some(outcome),
    };
    render(status, page)
}

/// Commits `events` as one `POST /v1/signal` batch would be, and says what became of them.
async fn submit(
    console: &Console,
    principal: &crate::keys::Principal,
    events: Vec<serde_json::Value>,
) -> Result<AddOutcome, ConsoleError> {
    let refused = |message: String| AddOutcome {
        message,
        errors: vec![],
        ok: false,
        applied: 0,
    };
    if events.is_empty() {
        return Ok(refused(
            "Give an address or range, an ASN or a country".into(),
        ));
    }
    let body = serde_json::to_vec(&events).map_err(|e| ApiError::Internal(e.to_string()))?;
    let now = console.app.clock.now();
    let engine = &console.app.engine;
    match engine
        .submit_signals(principal, body.into(), request_id(), now)
        .await
    {
        Ok(outcome) => {
            let failed = outcome.refused.len();
            Ok(AddOutcome {
                message: format!(
                    "Processed {} entries, {failed} failed",
                    outcome.total - failed
                ),
                errors: outcome.refused.iter().map(|(i, e)| e.line(*i)).collect(),
                ok: failed == 0,
                applied: outcome.total - failed,
            })
        }
        Err(EngineError::NotABatch(problem)) => Ok(refused(problem.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// `GET /console/rules/{id}`: the rule, and for keys that may read the audit log, its history.
pub async fn rule(
    State(console): State<Console>,
    operator: Operator,
    Path(id): Path<String>,
) -> Page {
    let tenant = operator.require(Permission::ReadRules)?.tenant_id;
    let app = &console.app;
    let now = app.clock.now();
    let rule = app
        .engine
        .backend()
        .rule(tenant, rule_id(&id)?, now)
        .await?
        .ok_or_else(|| ConsoleError::NotFound("Rule not found".into()))?;
    let can_audit = operator.may(Permission::ReadAudit);
    let (history, scanned) = if can_audit {
        let scan = console.config.history_scan_entries;
        let found = super::history::of_rule(app.engine.backend(), tenant, &rule, scan).await?;
        (
            found.entries.into_iter().map(history_row).collect(),
            found.scanned,
        )
    } else {
        (Vec::new(), 0)
    };
    let page = RulePage {
        layout: Layout::of(&operator, format!("Rule {}", rule.id), "rules"),
        since: when(rule.created_at),
        until: until(rule.expires_at),
        rule: RuleView::from(&rule),
        history,
        scanned,
        can_write: operator.may(Permission::WriteRules),
        can_audit,
    };
    render(StatusCode::OK, page)
}

fn history_row(entry: crate::store::AuditEntry) -> HistoryRow {
    HistoryRow {
        at: when(entry.at),
        key_id: entry.key_id,
        event: entry.event,
        outcome: if entry.error.is_none() {
            "applied"
        } else {
            "refused"
        },
        error: entry.error.unwrap_or_default(),
    }
}

/// `GET /console/rules/{id}/delete`: asks before deleting.
pub async fn confirm_delete(
    State(console): State<Console>,
    operator: Operator,
    Path(id): Path<String>,
) -> Page {
    let tenant = operator.require(Permission::WriteRules)?.tenant_id;
    let now = console.app.clock.now();
    let rule = console
        .app
        .engine
        .backend()
        .rule(tenant, rule_id(&id)?, now)
        .await?
        .ok_or_else(|| ConsoleError::NotFound("Rule not found".into()))?;
    let page = ConfirmDeletePage {
        layout: Layout::of(&operator, format!("Delete rule {}", rule.id), "rules"),
        rule: RuleView::from(&rule),
        csrf: operator.csrf.clone(),
    };
    render(StatusCode::OK, page)
}

/// `POST /console/rules/{id}/delete`: as `DELETE /v1/rules/{id}`.
pub async fn delete(
    State(console): State<Console>,
    operator: Operator,
    Path(id): Path<String>,
    ConsoleForm(form): ConsoleForm<CsrfForm>,
) -> Page {
    operator.verify(form.csrf.as_deref())?;
    let principal = operator.require(Permission::WriteRules)?;
    let id = rule_id(&id)?;
    let app = &console.app;
    app.engine
        .delete_rule(
            principal.tenant_id,
            id,
            principal.key_id,
            request_id(),
            app.clock.now(),
        )
        .await?
        .ok_or_else(|| ConsoleError::NotFound("Rule not found".into()))?;
    Ok(see_other(&format!("/console/rules?deleted={id}")))
}

/// Newest changes the overview lists.
const RECENT_CHANGES: usize = 10;

#[derive(Deserialize)]
pub struct SeenQuery {
    seen: Option<String>,
}

/// `GET /console/`: what is in force, what changed, what is waiting. Polled by htmx with
/// `seen`: 204 while no change has been committed since.
pub async fn overview(
    State(console): State<Console>,
    operator: Operator,
    headers: HeaderMap,
    ConsoleQuery(query): ConsoleQuery<SeenQuery>,
) -> Page {
    let tenant = operator.require(Permission::ReadRules)?.tenant_id;
    let app = &console.app;
    let seen = app.engine.feed().applied();
    if headers.contains_key("hx-request") && given(&query.seen) == Some(seen.to_string().as_str()) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let counts = console.rule_counts(tenant).await?;
    let recent = recent_changes(&console, tenant).await?;
    let (rows, total) = count_rows(&counts);
    let page = OverviewPage {
        layout: Layout::of(&operator, "Overview", "overview"),
        counts: rows,
        total,
        recent,
        state: state_view(&console, tenant).await?,
        seen,
        refresh_secs: console.config.refresh_secs.max(1),
    };
    render(StatusCode::OK, page)
}

/// `GET /console/state`: the overview's state panel.
pub async fn state(State(console): State<Console>, operator: Operator) -> Page {
    let tenant = operator.require(Permission::ReadRules)?.tenant_id;
    let state = state_view(&console, tenant).await?;
    let refresh_secs = console.config.refresh_secs.max(1);
    render(
        StatusCode::OK,
        StatePart {
            state,
            refresh_secs,
        },
    )
}

async fn state_view(console: &Console, tenant: TenantId) -> Result<StateView, ConsoleError> {
    let app = &console.app;
    let queue = app.engine.backend().queue_stats(Some(tenant)).await?;
    Ok(StateView {
        chart: chart(&app.tally.last_hour(tenant, app.clock.now())),
        queue_depth: queue.depth,
        queue_oldest: queue.oldest.map(when).unwrap_or_default(),
        geo: geo_summary(console),
    })
}

fn count_rows(counts: &[crate::store::RuleCount]) -> (Vec<CountRow>, u64) {
    let kinds = [
        ("IP address", Kind::Ip, false),
        ("IP range", Kind::Ip, true),
        ("ASN", Kind::Asn, false),
        ("Country", Kind::Country, false),
    ];
    let of = |kind, range, action| {
        counts
            .iter()
            .filter(|c| c.kind == kind && c.range == range && c.action == action)
            .map(|c| c.count)
            .sum()
    };
    let rows = kinds
        .into_iter()
        .map(|(label, kind, range)| CountRow {
            kind: label,
            block: of(kind, range, RuleAction::Block),
            allow: of(kind, range, RuleAction::Allow),
        })
        .collect();
    (rows, counts.iter().map(|c| c.count).sum())
}

/// The tenant's newest changes from the change log's tail.
async fn recent_changes(
    console: &Console,
    tenant: TenantId,
) -> Result<Vec<ChangeRow>, ConsoleError> {
    // The log is shared by all tenants; its tail is read, and this tenant's part of it shown.
    const TAIL: u64 = 1000;
    let feed = console.app.engine.feed();
    let from = feed.applied().saturating_sub(TAIL);
    let changes = console
        .app
        .engine
        .backend()
        .changes_since(from, TAIL as usize)
        .await?;
    Ok(changes
        .iter()
        .rev()
        .filter(|c| c.tenant == tenant)
        .take(RECENT_CHANGES)
        .map(|c| ChangeRow {
            at: when(c.at),
            op: match c.op {
                ChangeOp::Put => "added or renewed",
                ChangeOp::Delete => "deleted",
                ChangeOp::Expire => "expired",
            },
            rule_id: c.rule_id,
            target: c.target.to_string(),
            action: c.action.as_str(),
            live: c.op == ChangeOp::Put,
        })
        .collect())
}

fn geo_summary(console: &Console) -> String {
    let geo = &console.app.geo;
    let mut sources = Vec::new();
    if geo.has_asn_source() {
        sources.push("ASN");
    }
    if geo.has_country_source() {
        sources.push("country");
    }
    if sources.is_empty() {
        return "No geo data configured: ASN and country rules match no address".into();
    }
    let age = console.geo_age();
    format!(
        "{} data, version {}, in force for {}",
        sources.join(" and "),
        geo.version(),
        age
    )
}

/// The chart's two lines, scaled to the busiest minute.
fn chart(hour: &[crate::api::tally::Minute]) -> Chart {
    let max = hour
        .iter()
        .map(|m| m.lookups.max(m.blocks))
        .max()
        .unwrap_or(0)
        .max(1);
    let line = |value: fn(&crate::api::tally::Minute) -> u64| {
        hour.iter()
            .enumerate()
            .map(|(i, m)| {
                let x = i as f64 * 600.0 / (hour.len().max(2) - 1) as f64;
                let y = 110.0 - value(m) as f64 * 100.0 / max as f64;
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    Chart {
        lookups: line(|m| m.lookups),
        blocks: line(|m| m.blocks),
        max,
        total_lookups: hour.iter().map(|m| m.lookups).sum(),
        total_blocks: hour.iter().map(|m| m.blocks).sum(),
    }
}

#[derive(Deserialize)]
pub struct AuditQuery {
    before: Option<String>,
}

/// Audit entries per page of the console's audit log.
const AUDIT_PAGE: usize = 100;

/// `GET /console/audit`: admin keys only, as `GET /v1/audit`.
/// Reports shown on the queue page; the depth counts them all.
const QUEUE_PAGE: usize = 100;

/// Characters of a waiting report's request shown.
const REQUEST_PREVIEW: usize = 300;

pub async fn queue(State(console): State<Console>, operator: Operator) -> Page {
    let tenant = operator.require(Permission::ReadRules)?.tenant_id;
    let backend = console.app.engine.backend();
    let stats = backend.queue_stats(Some(tenant)).await?;
    let waiting = backend.waiting_reports(tenant, QUEUE_PAGE).await?;
    let waiting = waiting
        .into_iter()
        .map(|report| WaitingRow {
            id: report.id,
            kind: report.kind.as_str(),
            received: when(report.received_at),
            key_id: report.key_id,
            request: report.payload.chars().take(REQUEST_PREVIEW).collect(),
        })
        .collect();
    render(
        StatusCode::OK,
        QueuePage {
            layout: Layout::of(&operator, "Report queue", "queue"),
            depth: stats.depth,
            oldest: stats.oldest.map(when).unwrap_or_default(),
            waiting,
        },
    )
}

pub async fn audit(
    State(console): State<Console>,
    operator: Operator,
    ConsoleQuery(query): ConsoleQuery<AuditQuery>,
) -> Page {
    let tenant = operator.require(Permission::ReadAudit)?.tenant_id;
    let before = given(&query.before)
        .map(|b| b.parse::<i64>())
        .transpose()
        .map_err(|_| ConsoleError::BadRequest("before must be a number".into()))?;
    let backend = console.app.engine.backend();
    let page = backend.audit(tenant, before, AUDIT_PAGE).await?;
    let entries = page.items.into_iter().map(audit_row).collect();
    let layout = Layout::of(&operator, "Audit log", "audit");
    let next = page
        .next_cursor
        .map(|c| format!("/console/audit?before={c}"));
    render(
        StatusCode::OK,
        AuditPage {
            layout,
            entries,
            next,
        },
    )
}

fn audit_row(e: crate::store::AuditEntry) -> AuditRow {
    AuditRow {
        id: e.id,
        at: when(e.at),
        key_id: e.key_id,
        request_id: e.request_id,
        event: e.event,
        outcome: if e.error.is_none() {
            "applied"
        } else {
            "refused"
        },
        error: e.error.unwrap_or_default(),
    }
}

/// `GET /console/keys`: the tenant's keys (admin keys only).
pub async fn keys(State(console): State<Console>, operator: Operator) -> Page {
    operator.require(Permission::ReadAudit)?;
    keys_page(&console, &operator, StatusCode::OK, None, None, None).await
}

async fn keys_page(
    console: &Console,
    operator: &Operator,
    status: StatusCode,
    created: Option<NewSecret>,
    notice: Option<String>,
    error: Option<String>,
) -> Page {
    let tenant = operator.principal.tenant_id;
    let backend = console.app.engine.backend();
    let pulls: HashMap<i64, String> = backend
        .bouncers()
        .await?
        .into_iter()
        .filter(|b| b.tenant == tenant)
        .map(|b| {
            let seen = [b.address, b.version, b.user_agent].into_iter().flatten();
            let mut text = vec![when(b.last_pull)];
            text.extend(seen);
            (b.key_id, text.join(" · "))
        })
        .collect();
    let keys = backend
        .keys()
        .await?
        .into_iter()
        .filter(|k| k.tenant_id == tenant)
        .map(|k| KeyRow {
            id: k.id,
            live: k.revoked_at.is_none(),
            last_pull: pulls.get(&k.id).cloned().unwrap_or_default(),
            name: k.name,
            role: k.role.as_str(),
            tenant: k.tenant.to_string(),
            created: when(k.created_at),
            revoked: k.revoked_at.map(when).unwrap_or_default(),
        })
        .collect();
    let layout = Layout::of(operator, "API keys", "keys");
    let csrf = operator.csrf.clone();
    render(
        status,
        KeysPage {
            layout,
            csrf,
            keys,
            created,
            notice,
            error,
        },
    )
}

#[derive(Deserialize)]
pub struct NewKeyForm {
    csrf: Option<String>,
    name: Option<String>,
    role: Option<String>,
}

/// Longest key name the console accepts.
pub const MAX_KEY_NAME: usize = 100;

/// `POST /console/keys`: a new key of the admin's tenant; its secret is shown once.
pub async fn create_key(
    State(console): State<Console>,
    operator: Operator,
    ConsoleForm(form): ConsoleForm<NewKeyForm>,
) -> Page {
    operator.verify(form.csrf.as_deref())?;
    let principal = operator.require(Permission::ReadAudit)?;
    let Some((name, role)) = form.valid() else {
        let error = format!(
            "Give a name of 1 to {MAX_KEY_NAME} characters and a role (admin, writer or reader)"
        );
        let status = StatusCode::BAD_REQUEST;
        return keys_page(&console, &operator, status, None, None, Some(error)).await;
    };
    let app = &console.app;
    let tenant = principal.tenant.as_str();
    let by = crate::store::Actor {
        key_id: principal.key_id,
        request_id: request_id(),
    };
    let (secret, key) = crate::app::create_key(&app.engine, name, role, tenant, &*app.clock, by)
        .await
        .map_err(|e| ApiError::Internal(format!("{e:#}")))?;
    app.reload_keys().await?;
    let created = NewSecret {
        name: key.name,
        role: key.role.as_str(),
        secret,
    };
    keys_page(
        &console,
        &operator,
        StatusCode::OK,
        Some(created),
        None,
        None,
    )
    .await
}

impl NewKeyForm {
    fn valid(&self) -> Option<(&str, Role)> {
        let name = given(&self.name)?;
        let role = given(&self.role).and_then(Role::parse)?;
        (name.chars().count() <= MAX_KEY_NAME).then_some((name, role))
    }
}

/// `POST /console/keys/{id}/revoke`: a key of the admin's own tenant only.
pub async fn revoke_key(
    State(console): State<Console>,
    operator: Operator,
    Path(id): Path<String>,
    ConsoleForm(form): ConsoleForm<CsrfForm>,
) -> Page {
    operator.verify(form.csrf.as_deref())?;
    let principal = operator.require(Permission::ReadAudit)?;
    let tenant = principal.tenant_id;
    let app = &console.app;
    let not_found = || ConsoleError::NotFound("Key not found".into());
    let id: i64 = id.parse().map_err(|_| not_found())?;
    let keys = app.engine.backend().keys().await?;
    keys.iter()
        .find(|k| k.id == id && k.tenant_id == tenant)
        .ok_or_else(not_found)?;
    let by = crate::store::Actor {
        key_id: principal.key_id,
        request_id: request_id(),
    };
    app.engine.revoke_key(id, app.clock.now(), by).await?;
    app.reload_keys().await?;
    let notice = Some(format!("Key {id} revoked."));
    keys_page(&console, &operator, StatusCode::OK, None, notice, None).await
}

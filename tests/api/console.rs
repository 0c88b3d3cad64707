//! The operator console over plain HTTP, as a browser without JavaScript uses it: forms,
//! redirects and cookies.

use std::collections::HashMap;

use palisade::keys::Role;
use palisade::rules::UnixMillis;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::json;

use crate::helpers::{TestApp, spawn_app, spawn_app_at, spawn_with};

/// A browser of one: keeps cookies, never follows redirects by itself.
pub struct Browser<'a> {
    app: &'a TestApp,
    http: reqwest::Client,
    cookies: HashMap<String, String>,
    /// `Set-Cookie` values of the last answer.
    pub set_cookies: Vec<String>,
}

pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The CSRF token the page's forms carry.
    pub fn csrf(&self) -> String {
        let at = self
            .body
            .find(r#"name="csrf" value=""#)
            .unwrap_or_else(|| panic!("no CSRF field in:\n{}", self.body));
        let rest = &self.body[at + r#"name="csrf" value=""#.len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

impl<'a> Browser<'a> {
    pub fn new(app: &'a TestApp) -> Self {
        Self {
            app,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: HashMap::new(),
            set_cookies: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn keep(&mut self, response: reqwest::Response) -> Page {
        self.set_cookies = response
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        for cookie in &self.set_cookies {
            let pair = cookie.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || cookie.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap();
        Page {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let response = self
            .http
            .get(self.app.url(path))
            .header("Cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep(response).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let response = self
            .http
            .post(self.app.url(path))
            .header("Cookie", self.cookie_header())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form).unwrap())
            .send()
            .await
            .unwrap();
        self.keep(response).await
    }

    /// Signs in through the form; returns the answer to the form.
    pub async fn sign_in(&mut self, key: &str) -> Page {
        let form = self.get("/console/sign-in").await;
        assert_eq!(form.status, StatusCode::OK);
        let csrf = form.csrf();
        self.post("/console/sign-in", &[("key", key), ("csrf", &csrf)])
            .await
    }
}

/// The first rule a page links to.
fn rule_id_in(body: &str) -> i64 {
    body.split("href=\"/console/rules/")
        .skip(1)
        .find_map(|rest| rest[..rest.find('"').unwrap()].parse().ok())
        .expect("a link to a rule")
}

#[tokio::test]
async fn sign_in_add_a_range_check_delete_check_again() {
    let app = spawn_app().await;
    let mut browser = Browser::new(&app);
    assert_eq!(
        browser.get("/console/check").await.location(),
        "/console/sign-in"
    );

    let signed_in = browser.sign_in(&app.admin).await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER);
    assert_eq!(signed_in.location(), "/console/");
    let session = browser
        .set_cookies
        .iter()
        .find(|c| c.starts_with("palisade_console="))
        .unwrap();
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict"));
    let overview = browser.get("/console/").await;
    assert_eq!(overview.status, StatusCode::OK);
    assert_eq!(overview.headers["x-frame-options"], "DENY");
    assert!(
        overview.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert!(overview.body.contains("Active rules: 0"));

    let form = browser.get("/console/rules/new").await;
    assert_eq!(form.status, StatusCode::OK);
    let added = browser
        .post(
            "/console/rules",
            &[
                ("csrf", &form.csrf()),
                ("action", "block"),
                ("ip", "198.51.100.0/24"),
                ("name", "scanners"),
                ("expiration", ""),
            ],
        )
        .await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.body);
    assert!(added.body.contains("Processed 1 entries, 0 failed"));

    let list = browser.get("/console/rules").await;
    assert!(list.body.contains("198.51.100.0/24") && list.body.contains("scanners"));
    let id = rule_id_in(&list.body);
    let found = browser.get("/console/rules?q=198.51.100.0%2F24").await;
    assert!(found.body.contains(&format!("#{id}")));
    let covering = browser.get("/console/rules?q=198.51.100.77").await;
    assert!(covering.body.contains("Rules covering 198.51.100.77"));
    assert!(covering.body.contains(&format!("#{id}")));

    let check = browser.get("/console/check?ip=198.51.100.7").await;
    assert_eq!(check.status, StatusCode::OK);
    assert!(
        check.body.contains("is <strong>blocked</strong>"),
        "{}",
        check.body
    );
    assert!(
        check
            .body
            .contains(&format!("href=\"/console/rules/{id}\""))
    );
    assert!(check.body.contains("198.51.100.0/24") && check.body.contains("permanent"));
    // The same answer as the API's.
    let (_, api) = app.get("/v1/check?ip=198.51.100.7", &app.admin).await;
    assert_eq!(api["blocked"], json!(true));
    assert_eq!(api["matches"][0]["id"], json!(id));

    let rule = browser.get(&format!("/console/rules/{id}")).await;
    assert!(rule.body.contains("198.51.100.0/24") && rule.body.contains("History"));
    assert!(rule.body.contains("applied") && rule.body.contains("scanners&#34;"));

    let confirm = browser.get(&format!("/console/rules/{id}/delete")).await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(confirm.body.contains("Delete rule #"));
    let deleted = browser
        .post(
            &format!("/console/rules/{id}/delete"),
            &[("csrf", &confirm.csrf())],
        )
        .await;
    assert_eq!(deleted.status, StatusCode::SEE_OTHER);
    assert_eq!(deleted.location(), format!("/console/rules?deleted={id}"));
    assert!(
        browser
            .get(deleted.location())
            .await
            .body
            .contains(&format!("Rule {id} deleted."))
    );

    let check = browser.get("/console/check?ip=198.51.100.7").await;
    assert!(
        check.body.contains("is <strong>not blocked</strong>"),
        "{}",
        check.body
    );
    let (_, api) = app.get("/v1/check?ip=198.51.100.7", &app.admin).await;
    assert_eq!(api["blocked"], json!(false));

    let bad = browser.get("/console/check?ip=nonsense").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("is not an IPv4 or IPv6 address"));
}

#[tokio::test]
async fn the_form_shows_the_same_per_entry_errors_as_the_api() {
    let app = spawn_app().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.admin).await;
    let form = browser.get("/console/rules/new").await;
    let page = browser
        .post(
            "/console/rules",
            &[
                ("csrf", &form.csrf()),
                ("action", "block"),
                ("ips", "192.0.2.1\n192.0.2.300, 10.0.0.0/4"),
                ("expiration", "600"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK);
    let events: Vec<_> = ["192.0.2.1", "192.0.2.300", "10.0.0.0/4"]
        .iter()
        .map(|ip| json!({"type": "access_rules", "action": "block", "ip": ip, "expiration": 600}))
        .collect();
    let (_, api) = app.signal(&app.admin, &json!(events)).await;
    assert!(page.body.contains(api["message"].as_str().unwrap()));
    let errors = api["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    for error in errors {
        let escaped = error
            .as_str()
            .unwrap()
            .replace('\'', "&#39;")
            .replace('"', "&#34;");
        assert!(
            page.body.contains(&escaped),
            "{escaped} missing from:\n{}",
            page.body
        );
    }
    // What was refused stays in the form, to be corrected.
    assert!(page.body.contains("192.0.2.300"));

    let empty = browser
        .post(
            "/console/rules",
            &[("csrf", &form.csrf()), ("action", "block")],
        )
        .await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    assert!(empty.body.contains("Give an address or range"));

    // A batch too large for the API is too large here, in the same words.
    let ips: Vec<String> = (0..1001u32)
        .map(|i| std::net::Ipv4Addr::from(0x0A00_0000 + i).to_string())
        .collect();
    let page = browser
        .post(
            "/console/rules",
            &[("csrf", &form.csrf()), ("ips", &ips.join("\n"))],
        )
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    let events: Vec<_> = ips.iter().map(|ip| crate::helpers::block_ip(ip)).collect();
    let (_, api) = app.signal(&app.admin, &json!(events)).await;
    let message = api["details"][0]["message"].as_str().unwrap();
    assert!(page.body.contains(message), "{message}");
}

#[tokio::test]
async fn a_reader_sees_but_cannot_change() {
    let app = spawn_app().await;
    app.signal(
        &app.admin,
        &json!([crate::helpers::block_ip("203.0.113.9")]),
    )
    .await;
    let reader = app.key(Role::Reader, "default").await;
    let mut browser = Browser::new(&app);
    assert_eq!(browser.sign_in(&reader).await.status, StatusCode::SEE_OTHER);

    let list = browser.get("/console/rules").await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(list.body.contains("203.0.113.9/32"));
    assert!(!list.body.contains("/console/rules/new") && !list.body.contains("Delete"));
    let check = browser.get("/console/check?ip=203.0.113.9").await;
    assert!(check.body.contains("is <strong>blocked</strong>"));

    assert_eq!(
        browser.get("/console/rules/new").await.status,
        StatusCode::FORBIDDEN
    );
    let csrf = list.csrf();
    let posted = browser
        .post(
            "/console/rules",
            &[("csrf", &csrf), ("action", "block"), ("ip", "192.0.2.0/24")],
        )
        .await;
    assert_eq!(posted.status, StatusCode::FORBIDDEN);
    let id = rule_id_in(&list.body);
    let delete = browser
        .post(&format!("/console/rules/{id}/delete"), &[("csrf", &csrf)])
        .await;
    assert_eq!(delete.status, StatusCode::FORBIDDEN);
    assert_eq!(app.targets(&app.admin).await, vec!["203.0.113.9/32"]);

    // Only admin keys see the audit log and the keys.
    assert_eq!(
        browser.get("/console/audit").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        browser.get("/console/keys").await.status,
        StatusCode::FORBIDDEN
    );
    let rule = browser.get(&format!("/console/rules/{id}")).await;
    assert!(rule.body.contains("only admin keys may read"));
    let writer = app.key(Role::Writer, "default").await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&writer).await;
    assert_eq!(
        browser.get("/console/rules/new").await.status,
        StatusCode::OK
    );
    assert_eq!(
        browser.get("/console/audit").await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn wrong_keys_are_refused_and_limited_per_address() {
    let app = spawn_with(|c| c.console.sign_in_failures_per_minute = 3, None).await;
    let mut browser = Browser::new(&app);
    let wrong = "pal_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for _ in 0..3 {
        let page = browser.sign_in(wrong).await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED);
        assert!(page.body.contains("This key is not valid"));
        assert!(!browser.cookies.contains_key("palisade_console"));
    }
    let limited = browser.sign_in(&app.admin).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers.contains_key("retry-after"));
    assert_eq!(
        browser.get("/console/").await.location(),
        "/console/sign-in"
    );
}

#[tokio::test]
async fn a_post_without_the_csrf_token_is_refused() {
    let app = spawn_app().await;
    let mut browser = Browser::new(&app);
    // The sign-in form's own token.
    browser.get("/console/sign-in").await;
    let page = browser
        .post("/console/sign-in", &[("key", &app.admin)])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    browser.sign_in(&app.admin).await;

    let block = [("action", "block"), ("ip", "192.0.2.0/24")];
    let page = browser.post("/console/rules", &block).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(
        page.body
            .contains("out of date or was not sent from this console")
    );
    let mut forged = block.to_vec();
    forged.push(("csrf", "forged"));
    assert_eq!(
        browser.post("/console/rules", &forged).await.status,
        StatusCode::FORBIDDEN
    );
    // Another session's token is no good either.
    let mut other = Browser::new(&app);
    other.sign_in(&app.admin).await;
    let theirs = other.get("/console/rules/new").await.csrf();
    let mut stolen = block.to_vec();
    stolen.push(("csrf", &theirs));
    assert_eq!(
        browser.post("/console/rules", &stolen).await.status,
        StatusCode::FORBIDDEN
    );
    assert!(app.targets(&app.admin).await.is_empty());
    assert_eq!(
        browser.post("/console/sign-out", &[]).await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn sessions_end_by_sign_out_idleness_or_revocation() {
    let app = spawn_app_at(UnixMillis(1_700_000_000_000)).await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.admin).await;
    let page = browser.get("/console/").await;
    assert_eq!(page.status, StatusCode::OK);
    let out = browser
        .post("/console/sign-out", &[("csrf", &page.csrf())])
        .await;
    assert_eq!(out.location(), "/console/sign-in");
    assert_eq!(
        browser.get("/console/").await.location(),
        "/console/sign-in"
    );

    browser.sign_in(&app.admin).await;
    let clock = app.clock.as_ref().unwrap();
    clock.advance_ms(29 * 60 * 1000);
    assert_eq!(browser.get("/console/").await.status, StatusCode::OK);
    clock.advance_ms(31 * 60 * 1000);
    assert_eq!(
        browser.get("/console/").await.location(),
        "/console/sign-in"
    );

    // Revoking the key ends its sessions.
    let writer = app.key(Role::Writer, "default").await;
    let mut theirs = Browser::new(&app);
    theirs.sign_in(&writer).await;
    assert_eq!(theirs.get("/console/rules").await.status, StatusCode::OK);
    browser.sign_in(&app.admin).await;
    let keys = browser.get("/console/keys").await;
    let writer_id = app
        .state
        .engine
        .backend()
        .keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.role == Role::Writer)
        .unwrap()
        .id;
    let revoked = browser
        .post(
            &format!("/console/keys/{writer_id}/revoke"),
            &[("csrf", &keys.csrf())],
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert!(revoked.body.contains(&format!("Key {writer_id} revoked.")));
    assert_eq!(
        theirs.get("/console/rules").await.location(),
        "/console/sign-in"
    );
}

#[tokio::test]
async fn an_admin_makes_a_key_whose_secret_is_shown_once() {
    let app = spawn_app().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.admin).await;
    let keys = browser.get("/console/keys").await;
    let created = browser
        .post(
            "/console/keys",
            &[
                ("csrf", &keys.csrf()),
                ("name", "edge proxy"),
                ("role", "reader"),
            ],
        )
        .await;
    assert_eq!(created.status, StatusCode::OK);
    let at = created.body.find("id=\"secret\">").unwrap() + "id=\"secret\">".len();
    let secret = &created.body[at..at + created.body[at..].find('<').unwrap()];
    assert!(secret.starts_with("pal_"));
    let (status, _) = app.get("/v1/rules", secret).await;
    assert_eq!(status, StatusCode::OK);
    let again = browser.get("/console/keys").await;
    assert!(again.body.contains("edge proxy") && !again.body.contains(secret));

    let bad = browser
        .post(
            "/console/keys",
            &[("csrf", &keys.csrf()), ("name", ""), ("role", "root")],
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let audit = browser.get("/console/audit").await;
    assert_eq!(audit.status, StatusCode::OK);
}

#[tokio::test]
async fn the_overview_counts_rules_and_look_ups() {
    let app = spawn_app().await;
    let events = json!([
        {"type": "access_rules", "action": "block", "ip": "192.0.2.0/24"},
        {"type": "access_rules", "action": "block", "ip": "198.51.100.1"},
        {"type": "access_rules", "action": "block", "country": "FR"},
    ]);
    app.signal(&app.admin, &events).await;
    app.get("/v1/check?ip=192.0.2.5", &app.admin).await;
    app.get("/v1/check?ip=203.0.113.5", &app.admin).await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.admin).await;
    let page = browser.get("/console/").await;
    assert!(page.body.contains("Active rules: 3"), "{}", page.body);
    assert!(page.body.contains("<td>IP range</td><td>1</td>"));
    assert!(page.body.contains("<td>IP address</td><td>1</td>"));
    assert!(page.body.contains("<td>Country</td><td>1</td>"));
    assert!(page.body.contains("look-ups: 2") && page.body.contains("blocked: 1"));
    assert!(page.body.contains("<polyline"));
    assert!(page.body.contains("added or renewed"));
    assert!(page.body.contains("0 waiting"));

    // The rules list answers a poll with 204 until something changes.
    let list = browser.get("/console/rules").await;
    let at = list.body.find("seen=").unwrap() + "seen=".len();
    let seen: String = list.body[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let poll = |browser: &Browser| {
        browser
            .http
            .get(app.url(&format!("/console/rules?seen={seen}")))
            .header("Cookie", browser.cookie_header())
            .header("HX-Request", "true")
            .send()
    };
    assert_eq!(
        poll(&browser).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    app.signal(
        &app.admin,
        &json!([crate::helpers::block_ip("203.0.113.7")]),
    )
    .await;
    let fresh = poll(&browser).await.unwrap();
    assert_eq!(fresh.status(), StatusCode::OK);
    assert!(fresh.text().await.unwrap().contains("203.0.113.7/32"));

    let htmx = browser.get("/console/assets/htmx.min.js").await;
    assert_eq!(htmx.status, StatusCode::OK);
    assert!(htmx.body.starts_with("/*! htmx 2."));
}

#[tokio::test]
async fn the_rules_list_pages_through_the_rules() {
    let app = spawn_with(|c| c.console.page_size = 2, None).await;
    let events: Vec<_> = (1..=5)
        .map(|i| crate::helpers::block_ip(&format!("192.0.2.{i}")))
        .collect();
    app.signal(&app.admin, &json!(events)).await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.admin).await;
    let mut seen = Vec::new();
    let mut page = browser.get("/console/rules").await;
    loop {
        assert!(page.body.contains("(2 shown)") || page.body.contains("(1 shown)"));
        seen.extend(
            (1..=5)
                .map(|i| format!("192.0.2.{i}/32"))
                .filter(|t| page.body.contains(&format!("<code>{t}</code>"))),
        );
        let Some(at) = page.body.find("rel=\"next\"") else {
            break;
        };
        let head = &page.body[..at];
        let href = &head[head.rfind("href=\"").unwrap() + 6..];
        let href = href[..href.find('"').unwrap()].replace("&amp;", "&");
        page = browser.get(&href).await;
        assert!(page.body.contains("First page"));
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    let bad = browser.get("/console/rules?kind=planet").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("kind must be one of: ip, asn, country"));
}

#[tokio::test]
async fn the_cookie_is_secure_behind_a_tls_proxy_or_when_configured() {
    let app = spawn_with(
        |c| {
            c.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
            c.client_ip_header = "X-Real-IP".into();
        },
        None,
    )
    .await;
    let mut browser = Browser::new(&app);
    browser.get("/console/sign-in").await;
    assert!(!browser.set_cookies[0].contains("Secure"));
    let response = browser
        .http
        .get(app.url("/console/sign-in"))
        .header("X-Forwarded-Proto", "https")
        .header("X-Real-IP", "198.51.100.9")
        .send()
        .await
        .unwrap();
    let cookie = response.headers()[SET_COOKIE].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");

    let app = spawn_with(|c| c.console.secure_cookie = true, None).await;
    let mut browser = Browser::new(&app);
    browser.get("/console/sign-in").await;
    assert!(browser.set_cookies[0].contains("; Secure"));
}

#[tokio::test]
async fn a_form_larger_than_the_signal_body_limit_is_refused() {
    let app = spawn_with(|c| c.limits.signal_body_bytes = 2000, None).await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.admin).await;
    let form = browser.get("/console/rules/new").await;
    let many = (1..=200)
        .map(|i| format!("198.51.100.{i}"))
        .collect::<Vec<_>>()
        .join("\n");
    let page = browser
        .post("/console/rules", &[("csrf", &form.csrf()), ("ips", &many)])
        .await;
    assert_eq!(page.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(app.targets(&app.admin).await.is_empty());
}

#[tokio::test]
async fn the_console_can_be_turned_off() {
    let app = spawn_with(|c| c.console.enabled = false, None).await;
    let mut browser = Browser::new(&app);
    assert_eq!(
        browser.get("/console/sign-in").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn each_tenant_sees_its_own_look_ups() {
    let app = spawn_app().await;
    let other = app.key(Role::Admin, "other").await;
    app.get("/v1/check?ip=192.0.2.5", &other).await;
    app.get("/v1/check?ip=192.0.2.6", &other).await;
    app.get("/v1/check?ip=192.0.2.7", &app.admin).await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.admin).await;
    let state = browser.get("/console/state").await;
    assert_eq!(state.status, StatusCode::OK);
    assert!(state.body.contains("look-ups: 1"), "{}", state.body);
    let mut theirs = Browser::new(&app);
    theirs.sign_in(&other).await;
    assert!(
        theirs
            .get("/console/state")
            .await
            .body
            .contains("look-ups: 2")
    );

    // The overview's rule panel answers a poll with 204 until a rule changes.
    let page = browser.get("/console/").await;
    let at = page.body.find("/console/?seen=").unwrap() + "/console/?seen=".len();
    let seen: String = page.body[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let poll = browser
        .http
        .get(app.url(&format!("/console/?seen={seen}")))
        .header("Cookie", browser.cookie_header())
        .header("HX-Request", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn rule_counts_are_kept_for_counts_refresh_secs() {
    let app = spawn_app_at(UnixMillis(1_700_000_000_000)).await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.admin).await;
    assert!(
        browser
            .get("/console/")
            .await
            .body
            .contains("Active rules: 0")
    );
    app.signal(&app.admin, &json!([crate::helpers::block_ip("192.0.2.1")]))
        .await;
    assert!(
        browser
            .get("/console/")
            .await
            .body
            .contains("Active rules: 0")
    );
    app.clock.as_ref().unwrap().advance_ms(10_000);
    assert!(
        browser
            .get("/console/")
            .await
            .body
            .contains("Active rules: 1")
    );
}

#[tokio::test]
async fn the_keys_page_shows_each_bouncers_last_pull() {
    let app = spawn_app_at(UnixMillis(1_800_000_000_000)).await;
    let bouncer = app.key(Role::Reader, "default").await;
    let response = app
        .http
        .get(app.url("/v1/decisions/stream?startup=true"))
        .header("X-Api-Key", &bouncer)
        .header("User-Agent", "crowdsec-firewall-bouncer/v0.0.25")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.admin).await;
    let keys = browser.get("/console/keys").await;
    let row = keys
        .body
        .split("<tr>")
        .find(|row| row.contains("2027-01-15 08:00:00 UTC ·"))
        .unwrap_or_else(|| panic!("no last pull in:\n{}", keys.body));
    assert!(row.contains("crowdsec-firewall-bouncer/v0.0.25"), "{row}");
}

#[tokio::test]
async fn the_report_queue_page_shows_what_waits() {
    let app = spawn_app().await;
    let reader = app.key(Role::Reader, "default").await;
    let mut browser = Browser::new(&app);
    let before = browser.get("/console/queue").await;
    assert_ne!(before.status, StatusCode::OK, "signed out: no queue");
    browser.sign_in(&reader).await;
    let page = browser.get("/console/queue").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("0 waiting"), "{}", page.body);
    assert!(page.body.contains("No reports waiting"), "{}", page.body);
    assert!(
        page.body
            .contains(r#"href="/console/queue" aria-current="page""#)
    );
}

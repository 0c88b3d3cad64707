//! CrowdSec bouncers over HTTP: `GET /v1/decisions`, `GET /v1/decisions/stream` and
//! `POST /v1/usage-metrics`, checked against the shapes CrowdSec's Local API answers with, and
//! the stream's bookkeeping across pulls, bouncers, restarts and nodes.

use std::sync::Arc;

use palisade::clock::{Clock, ManualClock};
use palisade::keys::Role;
use palisade::rules::UnixMillis;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, spawn_app_at, spawn_config, spawn_with, test_config};

const T0: i64 = 1_800_000_000_000;
const FIREWALL_UA: &str = "crowdsec-firewall-bouncer/v0.0.25-debian-1 (linux/amd64)";

/// Status and body text of a bouncer's request, its key in `X-Api-Key` as bouncers send it.
async fn pull(app: &TestApp, path: &str, key: &str) -> (StatusCode, String) {
    let response = app
        .http
        .get(app.url(path))
        .header("X-Api-Key", key)
        .header("User-Agent", FIREWALL_UA)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.text().await.unwrap())
}

async fn pull_json(app: &TestApp, path: &str, key: &str) -> Value {
    let (status, text) = pull(app, path, key).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

/// Seconds of a Go duration, parsed as Go's `time.ParseDuration` reads it (units ns, us, µs,
/// ms, s, m, h; no days).
fn go_seconds(text: &str) -> f64 {
    assert!(!text.is_empty() && !text.starts_with('-'), "{text:?}");
    let mut rest = text;
    let mut total = 0.0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or_else(|| panic!("{text:?}: a number without a unit"));
        let (number, tail) = rest.split_at(number_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let factor = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => panic!("{text:?}: Go has no unit {other:?}"),
        };
        total += number.parse::<f64>().unwrap() * factor;
        rest = tail;
    }
    total
}

/// A decision's duration in whole seconds, checked to be what bouncers accept.
fn seconds(decision: &Value) -> u64 {
    let text = decision["duration"].as_str().unwrap();
    let seconds = go_seconds(text);
    assert!(seconds >= 1.0 && seconds.fract() == 0.0, "{text}");
    seconds as u64
}

/// Checks every field CrowdSec's swagger requires of a decision, and no others but `id` and
/// `simulated`.
fn check_shape(decision: &Value) {
    let object = decision.as_object().unwrap();
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "duration",
            "id",
            "origin",
            "scenario",
            "scope",
            "simulated",
            "type",
            "value"
        ]
    );
    assert!(decision["id"].as_i64().is_some_and(|id| id > 0));
    assert_eq!(decision["type"], "ban");
    assert_eq!(decision["simulated"], false);
    assert!(["Ip", "Range", "AS", "Country"].contains(&decision["scope"].as_str().unwrap()));
    assert!(!decision["scenario"].as_str().unwrap().is_empty());
    seconds(decision);
}

/// `value -> duration in seconds` of a list of decisions, every one's shape checked.
fn by_value(decisions: &Value) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = decisions
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {decisions}"))
        .iter()
        .map(|d| {
            check_shape(d);
            (d["value"].as_str().unwrap().to_owned(), seconds(d))
        })
        .collect();
    out.sort();
    out
}

fn values(decisions: &Value) -> Vec<String> {
    by_value(decisions).into_iter().map(|(v, _)| v).collect()
}

async fn block(app: &TestApp, events: Value) {
    let (status, body) = app.signal(&app.admin, &events).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn unblock_ip(ip: &str) -> Value {
    json!({"type": "access_rules", "action": "unblock", "ip": ip})
}

fn block_for(ip: &str, seconds: u64) -> Value {
    json!({"type": "access_rules", "action": "block", "ip": ip, "expiration": seconds, "name": "ssh-bf"})
}

fn advance(app: &TestApp, ms: i64) {
    app.clock.as_ref().unwrap().advance_ms(ms);
}

#[tokio::test]
async fn a_missing_or_wrong_key_gets_crowdsecs_403() {
    let app = spawn_app().await;
    for path in ["/v1/decisions", "/v1/decisions/stream?startup=true"] {
        for key in [
            "",
            "nope",
            "pal_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            let (status, text) = pull(&app, path, key).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path} {key:?}");
            assert_eq!(
                serde_json::from_str::<Value>(&text).unwrap(),
                json!({"message": "access forbidden"})
            );
        }
        let response = app.http.head(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    let reader = app.key(Role::Reader, "default").await;
    // The key may come as a bearer token too.
    let response = app
        .http
        .get(app.url("/v1/decisions"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = app
        .http
        .post(app.url("/v1/usage-metrics"))
        .header("X-Api-Key", "wrong")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn decisions_are_null_when_none_match_and_crowdsec_decisions_otherwise() {
    let app = spawn_app_at(UnixMillis(T0)).await;
    let key = app.key(Role::Reader, "default").await;
    // The literal `null` (the nginx bouncer compares the body with it), not `[]`.
    assert_eq!(
        pull(&app, "/v1/decisions", &key).await,
        (StatusCode::OK, "null".into())
    );
    assert_eq!(
        pull(&app, "/v1/decisions?ip=192.0.2.1", &key).await,
        (StatusCode::OK, "null".into())
    );
    block(
        &app,
        json!([
            block_for("192.0.2.1", 86_398),
            {"type": "access_rules", "action": "block", "ip": "198.51.100.0/24", "description": "scanner net"},
            {"type": "access_rules", "action": "block", "ip": "2001:db8::/48", "expiration": 3541},
            {"type": "access_rules", "action": "block", "asn": "AS64500", "expiration": 5},
            {"type": "access_rules", "action": "block", "country": "FR", "expiration": 60},
        ]),
    )
    .await;
    let all = pull_json(&app, "/v1/decisions", &key).await;
    let mut listed: Vec<(String, String, String, String)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            check_shape(d);
            let text = |k: &str| d[k].as_str().unwrap().to_owned();
            (
                text("scope"),
                text("value"),
                text("duration"),
                text("scenario"),
            )
        })
        .collect();
    listed.sort();
    let strings = |(a, b, c, d): (&str, &str, &str, &str)| {
        (a.to_owned(), b.to_owned(), c.to_owned(), d.to_owned())
    };
    assert_eq!(
        listed,
        [
            ("AS", "64500", "5s", "palisade"),
            ("Country", "FR", "1m0s", "palisade"),
            ("Ip", "192.0.2.1", "23h59m58s", "ssh-bf"),
            ("Range", "198.51.100.0/24", "596h31m23s", "scanner net"),
            ("Range", "2001:db8::/48", "59m1s", "palisade"),
        ]
        .map(strings)
    );
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .all(|d| d["origin"] == "palisade")
    );

    let one = pull_json(&app, "/v1/decisions?ip=192.0.2.1", &key).await;
    assert_eq!(values(&one), ["192.0.2.1"]);
    let (_, rules) = app.get("/v1/rules?target=192.0.2.1", &app.admin).await;
    assert_eq!(
        one[0]["id"], rules["rules"][0]["id"],
        "the id is the rule's"
    );
    assert_eq!(
        values(&pull_json(&app, "/v1/decisions?ip=198.51.100.77", &key).await),
        ["198.51.100.0/24"]
    );
    assert_eq!(
        values(&pull_json(&app, "/v1/decisions?ip=2001:db8::5", &key).await),
        ["2001:db8::/48"]
    );

    // The parameters bouncers send.
    let select = |query: &'static str| {
        let app = &app;
        let key = key.clone();
        async move {
            let (status, text) = pull(app, &format!("/v1/decisions?{query}"), &key).await;
            assert_eq!(status, StatusCode::OK, "{query}: {text}");
            if text == "null" {
                Vec::new()
            } else {
                values(&serde_json::from_str(&text).unwrap())
            }
        }
    };
    assert_eq!(select("scope=ip").await, ["192.0.2.1"]);
    assert_eq!(
        select("scope=Range&value=198.51.100.0/24").await,
        ["198.51.100.0/24"]
    );
    assert_eq!(select("type=ban&scope=country").await, ["FR"]);
    assert_eq!(select("type=captcha").await, Vec::<String>::new());
    assert_eq!(select("range=198.51.100.0/25").await, ["198.51.100.0/24"]);
    assert_eq!(
        select("range=198.51.0.0/16&contains=false").await,
        ["198.51.100.0/24"]
    );
    assert_eq!(select("scenarios_containing=ssh").await, ["192.0.2.1"]);
    assert_eq!(
        select("scenarios_not_containing=ssh,scanner&scope=range").await,
        ["2001:db8::/48"]
    );
    assert_eq!(select("origins=ABUSE").await, Vec::<String>::new());
    assert_eq!(select("origins=palisade&scope=as").await, ["64500"]);
    assert_eq!(
        select("ip=192.0.2.1&scenarios_not_containing=ssh").await,
        Vec::<String>::new()
    );

    // Bad parameters are named, as everywhere else.
    let (status, text) = pull(&app, "/v1/decisions?ip=nope", &key).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let (status, text) = pull(&app, "/v1/decisions?colour=red", &key).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");

    // Expired rules are not decisions, whether or not purged yet.
    advance(&app, 6_000);
    assert_eq!(select("scope=as").await, Vec::<String>::new());
}

#[tokio::test]
async fn an_ip_look_up_applies_asn_and_country_rules_and_the_allowlist() {
    let (app, _geo) = crate::decisions::spawn_with_geo(|c| {
        c.reports.allow_private = true;
    })
    .await;
    let key = app.key(Role::Reader, "default").await;
    block(
        &app,
        json!([
            {"type": "access_rules", "action": "block", "asn": "AS64500", "name": "bad asn"},
            {"type": "access_rules", "action": "block", "country": "DE"},
        ]),
    )
    .await;
    let asn = pull_json(&app, "/v1/decisions?ip=192.0.2.7", &key).await;
    assert_eq!(asn[0]["scope"], "AS");
    assert_eq!(asn[0]["value"], "64500");
    assert_eq!(asn[0]["scenario"], "bad asn");
    let country = pull_json(&app, "/v1/decisions?ip=203.0.113.9", &key).await;
    assert_eq!(values(&country), ["DE"]);
    assert_eq!(
        pull(&app, "/v1/decisions?ip=198.51.100.1", &key).await.1,
        "null"
    );
    // A reported address: its origin is the report's dataset.
    report(
        &app,
        "/v1/ip",
        r#"{"addresses": ["198.51.100.1"], "ttl": 600, "type": "tor"}"#,
    )
    .await;
    let reported = pull_json(&app, "/v1/decisions?ip=198.51.100.1", &key).await;
    let (_, rules) = app.get("/v1/rules?target=198.51.100.1", &app.admin).await;
    assert_eq!(reported[0]["origin"], rules["rules"][0]["dataset"]);
    assert_eq!(seconds(&reported[0]), 600);
    // An allowlisted address is not banned, whatever covers it.
    report(&app, "/v1/false/add/ip", r#"{"addresses": ["192.0.2.7"]}"#).await;
    assert_eq!(
        pull(&app, "/v1/decisions?ip=192.0.2.7", &key).await.1,
        "null"
    );
}

/// Sends a report and waits until the queue has applied it and the index has it.
async fn report(app: &TestApp, path: &str, body: &'static str) {
    let response = app
        .http
        .post(app.url(path))
        .bearer_auth(&app.admin)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    app.reports_processed().await;
}

/// The bouncer's record as the store keeps it.
async fn record(app: &TestApp, key_id: i64) -> Option<palisade::store::BouncerRecord> {
    app.state.engine.backend().bouncer(key_id).await.unwrap()
}

async fn key_id(app: &TestApp, key: &str) -> i64 {
    app.state.authenticate(key).await.unwrap().key_id
}

#[tokio::test]
async fn pulls_are_recorded_and_head_never_moves_the_last_pull() {
    let app = spawn_app_at(UnixMillis(T0)).await;
    let key = app.key(Role::Reader, "default").await;
    let id = key_id(&app, &key).await;
    for path in ["/v1/decisions", "/v1/decisions/stream"] {
        let response = app
            .http
            .head(app.url(path))
            .header("X-Api-Key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(record(&app, id).await, None, "HEAD records nothing");

    pull(&app, "/v1/decisions/stream?startup=true", &key).await;
    let first = record(&app, id).await.unwrap();
    assert_eq!(first.last_pull, UnixMillis(T0));
    assert_eq!(first.user_agent.as_deref(), Some(FIREWALL_UA));
    assert_eq!(first.version.as_deref(), Some("v0.0.25-debian-1"));
    assert_eq!(first.address.as_deref(), Some("127.0.0.1"));
    assert!(first.cursor.is_some());

    advance(&app, 10_000);
    let response = app
        .http
        .head(app.url("/v1/decisions/stream"))
        .header("X-Api-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(record(&app, id).await.unwrap(), first, "HEAD moved nothing");

    pull(&app, "/v1/decisions?ip=192.0.2.1", &key).await;
    let looked_up = record(&app, id).await.unwrap();
    assert_eq!(looked_up.last_pull, UnixMillis(T0 + 10_000));
    assert_eq!(
        looked_up.cursor, first.cursor,
        "a look-up leaves the stream cursor"
    );
    // Look-ups are written at most once per `crowdsec.record_interval_ms` (1 s).
    advance(&app, 999);
    pull(&app, "/v1/decisions?ip=192.0.2.1", &key).await;
    assert_eq!(
        record(&app, id).await.unwrap().last_pull,
        UnixMillis(T0 + 10_000)
    );
    advance(&app, 1);
    pull(&app, "/v1/decisions?ip=192.0.2.1", &key).await;
    assert_eq!(
        record(&app, id).await.unwrap().last_pull,
        UnixMillis(T0 + 11_000)
    );

    let response = app
        .http
        .post(app.url("/v1/usage-metrics"))
        .header("X-Api-Key", &key)
        .json(&json!({"remediation_components": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(response.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn keys_list_shows_each_bouncers_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir);
    config.data_dir = dir.path().to_path_buf();
    let app = spawn_config(config, None).await;
    let key = app.key(Role::Reader, "default").await;
    pull(&app, "/v1/decisions/stream?startup=true", &key).await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["keys", "list", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listing = String::from_utf8(output.stdout).unwrap();
    let line = listing
        .lines()
        .find(|l| l.contains("reader"))
        .unwrap_or_else(|| panic!("{listing}"));
    for shown in ["127.0.0.1", "v0.0.25-debian-1", FIREWALL_UA] {
        assert!(line.contains(shown), "{shown} missing from {line}");
    }
    let admin = listing.lines().find(|l| l.contains("admin")).unwrap();
    assert!(admin.trim_end().ends_with('-'), "{admin}");
}

/// `(new, deleted)` of one stream pull, by value and seconds left.
type News = (Vec<(String, u64)>, Vec<String>);

async fn stream(app: &TestApp, key: &str, query: &str) -> News {
    let (status, text) = pull(app, &format!("/v1/decisions/stream{query}"), key).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    keys.sort_unstable();
    assert_eq!(keys, ["deleted", "new"], "{text}");
    (by_value(&body["new"]), values(&body["deleted"]))
}

fn nothing() -> News {
    (vec![], vec![])
}

fn new(items: &[(&str, u64)]) -> News {
    (
        items.iter().map(|(v, s)| ((*v).to_owned(), *s)).collect(),
        vec![],
    )
}

fn deleted(items: &[&str]) -> News {
    (vec![], items.iter().map(|v| (*v).to_owned()).collect())
}

#[tokio::test]
async fn the_stream_sends_each_change_once() {
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    let app = spawn_with(|c| c.reports.allow_private = true, Some(clock)).await;
    let key = app.key(Role::Reader, "default").await;
    block(
        &app,
        json!([
            block_for("192.0.2.1", 3600),
            {"type": "access_rules", "action": "block", "ip": "198.51.100.0/24"},
            {"type": "access_rules", "action": "block", "asn": "AS64500"},
            {"type": "access_rules", "action": "block", "country": "FR"},
        ]),
    )
    .await;
    report(&app, "/v1/false/add/ip", r#"{"addresses": ["192.0.2.99"]}"#).await;
    // Empty lists are `[]`, never `null`.
    let (_, text) = pull(
        &app,
        "/v1/decisions/stream?startup=true&scopes=country&origins=nobody",
        &key,
    )
    .await;
    assert_eq!(text, r#"{"new":[],"deleted":[]}"#);
    // Scopes default to ip and range, as CrowdSec's do.
    assert_eq!(
        stream(&app, &key, "?startup=true").await,
        new(&[("192.0.2.1", 3600), ("198.51.100.0/24", 2_147_483)])
    );
    let (_, text) = pull(&app, "/v1/decisions/stream", &key).await;
    assert_eq!(text, r#"{"new":[],"deleted":[]}"#);

    // Added.
    block(&app, json!([block_for("203.0.113.5", 60)])).await;
    assert_eq!(stream(&app, &key, "").await, new(&[("203.0.113.5", 60)]));
    assert_eq!(stream(&app, &key, "").await, nothing());

    // Renewed: sent again, with the new duration.
    advance(&app, 30_000);
    block(&app, json!([block_for("203.0.113.5", 600)])).await;
    assert_eq!(stream(&app, &key, "").await, new(&[("203.0.113.5", 600)]));

    // Unblocked between pulls.
    block(&app, json!([unblock_ip("192.0.2.1")])).await;
    assert_eq!(stream(&app, &key, "").await, deleted(&["192.0.2.1"]));

    // Expired between pulls, then purged: deleted once.
    block(&app, json!([block_for("203.0.113.6", 10)])).await;
    assert_eq!(stream(&app, &key, "").await, new(&[("203.0.113.6", 10)]));
    advance(&app, 20_000);
    assert_eq!(stream(&app, &key, "").await, deleted(&["203.0.113.6"]));
    let now = app.clock.as_ref().unwrap().now();
    app.state.engine.purge_expired(now, 100).await.unwrap();
    assert_eq!(stream(&app, &key, "").await, nothing());

    // Expired and purged between pulls: deleted once.
    block(&app, json!([block_for("203.0.113.7", 10)])).await;
    assert_eq!(stream(&app, &key, "").await, new(&[("203.0.113.7", 10)]));
    advance(&app, 20_000);
    let now = app.clock.as_ref().unwrap().now();
    app.state.engine.purge_expired(now, 100).await.unwrap();
    assert_eq!(stream(&app, &key, "").await, deleted(&["203.0.113.7"]));
    assert_eq!(stream(&app, &key, "").await, nothing());

    // Added and removed between two pulls: the bouncer may hold nothing, a delete is harmless.
    block(
        &app,
        json!([block_for("203.0.113.8", 600), unblock_ip("203.0.113.8")]),
    )
    .await;
    let (added, _) = stream(&app, &key, "").await;
    assert!(added.is_empty());

    // Allowlist entries, and scopes not asked for, are never sent.
    report(&app, "/v1/false/add/ip", r#"{"addresses": ["192.0.2.98"]}"#).await;
    block(
        &app,
        json!([{"type": "access_rules", "action": "block", "country": "DE"}]),
    )
    .await;
    assert_eq!(stream(&app, &key, "").await, nothing());

    // A new start-up sends what is active now.
    assert_eq!(
        stream(&app, &key, "?startup=true&scopes=Ip,Range,AS,Country").await,
        new(&[
            ("198.51.100.0/24", 2_147_483),
            ("203.0.113.5", 600 - 40),
            ("64500", 2_147_483),
            ("DE", 2_147_483),
            ("FR", 2_147_483),
        ])
    );
}

#[tokio::test]
async fn two_bouncers_keep_cursors_of_their_own() {
    let app = spawn_app_at(UnixMillis(T0)).await;
    let (one, two) = (
        app.key(Role::Reader, "default").await,
        app.key(Role::Writer, "default").await,
    );
    block(&app, json!([block_for("192.0.2.1", 600)])).await;
    assert_eq!(
        stream(&app, &one, "?startup=true").await,
        new(&[("192.0.2.1", 600)])
    );
    block(&app, json!([block_for("192.0.2.2", 600)])).await;
    assert_eq!(stream(&app, &one, "").await, new(&[("192.0.2.2", 600)]));
    // The second starts later: everything at its start-up, then only what follows.
    assert_eq!(
        stream(&app, &two, "?startup=true").await,
        new(&[("192.0.2.1", 600), ("192.0.2.2", 600)])
    );
    block(&app, json!([unblock_ip("192.0.2.1")])).await;
    assert_eq!(stream(&app, &two, "").await, deleted(&["192.0.2.1"]));
    assert_eq!(stream(&app, &two, "").await, nothing());
    assert_eq!(stream(&app, &one, "").await, deleted(&["192.0.2.1"]));
    // Another tenant's key sees another tenant's rules.
    let other = app.key(Role::Reader, "other").await;
    assert_eq!(stream(&app, &other, "?startup=true").await, nothing());
}

#[tokio::test]
async fn the_stream_carries_on_across_a_restart() {
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir);
    if crate::pg::http_suite_on_postgres() {
        config.database.url = Some(crate::pg::url());
        config.database.schema = Some(crate::pg::fresh_schema().await);
        config.database.pool_size = 4;
    }
    let app = spawn_config(config.clone(), Some(clock.clone())).await;
    let key = app.key(Role::Reader, "default").await;
    block(
        &app,
        json!([block_for("192.0.2.1", 600), block_for("192.0.2.2", 30)]),
    )
    .await;
    assert_eq!(
        stream(&app, &key, "?startup=true").await,
        new(&[("192.0.2.1", 600), ("192.0.2.2", 30)])
    );
    block(&app, json!([block_for("192.0.2.3", 600)])).await;
    let admin = app.admin.clone();
    drop(app);

    // While it is down, one rule expires; after the restart another is removed.
    clock.advance_ms(60_000);
    let mut app = spawn_config(config, Some(clock.clone())).await;
    app.admin = admin;
    block(&app, json!([unblock_ip("192.0.2.1")])).await;
    assert_eq!(
        stream(&app, &key, "").await,
        (
            vec![("192.0.2.3".to_owned(), 540)],
            vec!["192.0.2.1".to_owned(), "192.0.2.2".to_owned()]
        )
    );
    assert_eq!(stream(&app, &key, "").await, nothing());
}

#[tokio::test]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn two_nodes_share_each_bouncers_cursor() {
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir);
    config.database.url = Some(crate::pg::url());
    config.database.schema = Some(crate::pg::fresh_schema().await);
    config.database.pool_size = 4;
    let a = spawn_config(config.clone(), Some(clock.clone())).await;
    let mut b = spawn_config(config, Some(clock.clone())).await;
    b.admin = a.admin.clone();
    let key = a.key(Role::Reader, "default").await;
    block(&a, json!([block_for("192.0.2.1", 600)])).await;
    assert_eq!(
        stream(&a, &key, "?startup=true").await,
        new(&[("192.0.2.1", 600)])
    );
    // A write on one node, pulls alternating between the nodes (a bouncer behind a balancer).
    block(&b, json!([block_for("192.0.2.2", 600)])).await;
    assert_eq!(stream(&b, &key, "").await, new(&[("192.0.2.2", 600)]));
    assert_eq!(stream(&a, &key, "").await, nothing());
    block(&a, json!([unblock_ip("192.0.2.1")])).await;
    assert_eq!(stream(&a, &key, "").await, deleted(&["192.0.2.1"]));
    assert_eq!(stream(&b, &key, "").await, nothing());
    clock.advance_ms(600_000);
    assert_eq!(stream(&b, &key, "").await, deleted(&["192.0.2.2"]));
    assert_eq!(stream(&a, &key, "").await, nothing());
}

#[tokio::test]
async fn a_bouncer_far_behind_catches_up_over_several_pulls() {
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    let app = spawn_with(|c| c.crowdsec.max_changes_per_pull = 2, Some(clock)).await;
    let key = app.key(Role::Reader, "default").await;
    assert_eq!(stream(&app, &key, "?startup=true").await, nothing());
    block(
        &app,
        json!([
            block_for("192.0.2.1", 600),
            block_for("192.0.2.2", 600),
            block_for("192.0.2.3", 5)
        ]),
    )
    .await;
    advance(&app, 10_000);
    // Two changes a pull; the expiry between pulls comes with the pull that reaches the head.
    assert_eq!(
        stream(&app, &key, "").await,
        new(&[("192.0.2.1", 590), ("192.0.2.2", 590)])
    );
    assert_eq!(stream(&app, &key, "").await, deleted(&["192.0.2.3"]));
    assert_eq!(stream(&app, &key, "").await, nothing());
}

#[tokio::test]
async fn a_cursor_older_than_the_change_log_gets_every_decision_again() {
    let app = spawn_app_at(UnixMillis(T0)).await;
    let key = app.key(Role::Reader, "default").await;
    block(&app, json!([block_for("192.0.2.1", 600)])).await;
    assert_eq!(
        stream(&app, &key, "?startup=true").await,
        new(&[("192.0.2.1", 600)])
    );
    block(&app, json!([block_for("192.0.2.2", 600)])).await;
    // Retention deletes the change this bouncer has not seen.
    let removed = app
        .state
        .engine
        .purge_changes(UnixMillis(T0 + 1), 1000)
        .await
        .unwrap();
    assert!(removed >= 2, "{removed}");
    block(&app, json!([block_for("192.0.2.3", 600)])).await;
    assert_eq!(
        stream(&app, &key, "").await,
        new(&[("192.0.2.1", 600), ("192.0.2.2", 600), ("192.0.2.3", 600)])
    );
    assert_eq!(stream(&app, &key, "").await, nothing());
}

#[tokio::test]
async fn asn_and_country_rules_reach_the_stream_as_the_ranges_they_cover() {
    let (app, _geo) = crate::decisions::spawn_with_geo(|_| {}).await;
    let key = app.key(Role::Reader, "default").await;
    let ip_only = app.key(Role::Reader, "default").await;
    block(
        &app,
        json!([
            {"type": "access_rules", "action": "block", "asn": "AS64500"},
            {"type": "access_rules", "ip": "198.51.100.9", "action": "block"},
        ]),
    )
    .await;
    let (status, text) = pull(&app, "/v1/decisions/stream?startup=true", &key).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    let mut started = values(&body["new"]);
    started.sort();
    assert_eq!(
        started,
        ["192.0.2.0/24", "198.51.100.9", "2001:db8:64::/48"]
    );
    for decision in body["new"].as_array().unwrap() {
        check_shape(decision);
    }
    let range = body["new"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["value"] == "192.0.2.0/24")
        .unwrap();
    assert_eq!(range["scope"], "Range");
    assert_eq!(range["scenario"], "palisade/asn-country");
    assert_eq!(
        seconds(range),
        2_147_483,
        "permanent: the fixed long duration"
    );
    // Nothing changed: nothing sent, not even the ranges again.
    assert_eq!(stream(&app, &key, "").await, nothing());

    // A new country rule: only its ranges; the ASN's are not repeated.
    block(
        &app,
        json!([{"type": "access_rules", "action": "block", "country": "DE", "expiration": 600}]),
    )
    .await;
    assert_eq!(
        stream(&app, &key, "").await,
        new(&[("203.0.113.0/24", 600)])
    );
    // The ASN rule lifted: its ranges are deleted, the country's stay.
    block(
        &app,
        json!([{"type": "access_rules", "action": "unblock", "asn": "AS64500"}]),
    )
    .await;
    assert_eq!(
        stream(&app, &key, "").await,
        deleted(&["192.0.2.0/24", "2001:db8:64::/48"])
    );
    assert_eq!(stream(&app, &key, "").await, nothing());

    // A bouncer asking for addresses only gets no ranges.
    let (_, text) = pull(
        &app,
        "/v1/decisions/stream?startup=true&scopes=ip",
        &ip_only,
    )
    .await;
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(values(&body["new"]), ["198.51.100.9"]);
}

#[tokio::test]
async fn expand_geo_off_keeps_asn_and_country_rules_out_of_the_stream() {
    let (app, _geo) = crate::decisions::spawn_with_geo(|c| {
        c.crowdsec.expand_geo = Some(false);
    })
    .await;
    let key = app.key(Role::Reader, "default").await;
    block(
        &app,
        json!([{"type": "access_rules", "action": "block", "asn": "AS64500"}]),
    )
    .await;
    assert_eq!(stream(&app, &key, "?startup=true").await, nothing());
}

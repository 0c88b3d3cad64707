//! Look-ups over HTTP: `/v1/check`, `/v1/forward-auth`, with geo data the tests write themselves.

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use palisade::keys::Role;
use palisade::rules::UnixMillis;
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use crate::helpers::{TestApp, answer, block_ip, spawn_app, spawn_with};

#[derive(Serialize)]
struct AsnRecord<'a> {
    autonomous_system_number: u32,
    autonomous_system_organization: &'a str,
}

#[derive(Serialize)]
struct CountryRecord<'a> {
    country_code: &'a str,
}

/// A GeoLite2-ASN style file and a `country_code` style file.
pub fn write_geo(dir: &Path) -> (PathBuf, PathBuf) {
    let mut asn = mmdb_writer::Writer::new("GeoLite2-ASN");
    for (net, number, org) in [
        ("192.0.2.0/24", 64500, "Example Net"),
        ("2001:db8:64::/48", 64500, "Example Net"),
        ("198.51.100.0/24", 64501, "Other Net"),
    ] {
        let record = AsnRecord {
            autonomous_system_number: number,
            autonomous_system_organization: org,
        };
        asn.insert(net.parse::<IpNet>().unwrap(), &record).unwrap();
    }
    let mut country = mmdb_writer::Writer::new("country");
    for (net, code) in [
        ("192.0.2.0/24", "FR"),
        ("203.0.113.0/24", "DE"),
        ("2001:db8::/32", "FR"),
    ] {
        country
            .insert(
                net.parse::<IpNet>().unwrap(),
                &CountryRecord { country_code: code },
            )
            .unwrap();
    }
    let asn_path = dir.join("asn.mmdb");
    let country_path = dir.join("country.mmdb");
    std::fs::write(&asn_path, asn.to_bytes().unwrap()).unwrap();
    std::fs::write(&country_path, country.to_bytes().unwrap()).unwrap();
    (asn_path, country_path)
}

/// A server with the geo fixtures of [`write_geo`] loaded, configured further by `configure`.
pub async fn spawn_with_geo(
    configure: impl FnOnce(&mut palisade::config::Config),
) -> (TestApp, tempfile::TempDir) {
    let geo_dir = tempfile::tempdir().unwrap();
    let (asn, country) = write_geo(geo_dir.path());
    let app = spawn_with(
        |c| {
            c.geo.asn = Some(asn);
            c.geo.country = Some(country);
            configure(c);
        },
        None,
    )
    .await;
    (app, geo_dir)
}

/// Geo data, and the loopback peer trusted as a proxy (forward-auth from the tests).
async fn spawn_with_geo_behind_proxy() -> (TestApp, tempfile::TempDir) {
    spawn_with_geo(|c| c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await
}

async fn check(app: &TestApp, key: &str, ip: &str) -> Value {
    let (status, body) = app.get(&format!("/v1/check?ip={ip}"), key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn a_rule_written_is_enforced_by_the_very_next_request() {
    let app = spawn_app().await;
    let fresh = check(&app, &app.admin, "198.51.100.7").await;
    assert_eq!(
        fresh,
        json!({"ip": "198.51.100.7", "blocked": false, "allowed": false, "asn": null, "country": null, "matches": []})
    );
    for round in 0..20 {
        let ip = format!("198.51.100.{round}");
        app.signal(&app.admin, &json!([block_ip(&ip)])).await;
        assert_eq!(check(&app, &app.admin, &ip).await["blocked"], true, "{ip}");
        app.signal(
            &app.admin,
            &json!([{"type": "access_rules", "action": "unblock", "ip": ip}]),
        )
        .await;
        assert_eq!(check(&app, &app.admin, &ip).await["blocked"], false, "{ip}");
    }
    // And the rule listed in the answer is the stored one.
    app.signal(&app.admin, &json!([{"type": "access_rules", "action": "block", "ip": "198.51.100.0/24", "name": "net"}])).await;
    let (_, rules) = app.get("/v1/rules", &app.admin).await;
    let body = check(&app, &app.admin, "::ffff:198.51.100.9").await;
    assert_eq!(body["ip"], "198.51.100.9");
    assert_eq!(
        body["matches"],
        json!([{
            "id": rules["rules"][0]["id"], "kind": "ip", "target": "198.51.100.0/24",
            "action": "block", "expires_at": null, "name": "net"
        }])
    );
}

#[tokio::test]
async fn asn_and_country_rules_resolve_through_the_geo_data() {
    let (app, _geo) = spawn_with_geo_behind_proxy().await;
    let body = check(&app, &app.admin, "192.0.2.10").await;
    assert_eq!(
        (
            body["asn"].clone(),
            body["country"].clone(),
            body["blocked"].clone()
        ),
        (json!("AS64500"), json!("FR"), json!(false))
    );

    let (status, body) = app
        .signal(
            &app.admin,
            &json!([
                {"type": "access_rules", "action": "block", "asn": "AS64500", "name": "asn"},
                {"type": "access_rules", "action": "block", "country": "DE", "name": "de"},
                {"type": "access_rules", "action": "block", "asn": "AS65000"},
            ]),
        )
        .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        body["errors"],
        json!(["Entry 2: Schema validation failed: asn: AS65000 not found in the ASN database"])
    );

    let body = check(&app, &app.admin, "192.0.2.10").await;
    assert_eq!(body["blocked"], true);
    assert_eq!(body["matches"][0]["kind"], "asn");
    assert_eq!(body["matches"][0]["target"], "AS64500");
    assert_eq!(
        check(&app, &app.admin, "2001:db8:64::7").await["blocked"],
        true
    );
    assert_eq!(
        check(&app, &app.admin, "198.51.100.1").await["blocked"],
        false
    );
    let body = check(&app, &app.admin, "203.0.113.200").await;
    assert_eq!(
        (
            body["blocked"].clone(),
            body["country"].clone(),
            body["matches"][0]["name"].clone()
        ),
        (json!(true), json!("DE"), json!("de"))
    );

    // Unblocking an ASN absent from the data is still possible.
    let (status, _) = app
        .signal(
            &app.admin,
            &json!([{"type": "access_rules", "action": "unblock", "asn": "AS65000"}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn batch_check_answers_in_order() {
    let app = spawn_app().await;
    app.signal(
        &app.admin,
        &json!([block_ip("192.0.2.1"), block_ip("2001:db8::/48")]),
    )
    .await;
    let (status, body) = app
        .post_raw(
            "/v1/check",
            &app.admin,
            json!({"ips": ["192.0.2.1", "192.0.2.2", "2001:db8::5", "::ffff:192.0.2.1"]})
                .to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let blocked: Vec<bool> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["blocked"].as_bool().unwrap())
        .collect();
    assert_eq!(blocked, [true, false, true, true]);
    assert_eq!(body["results"][3]["ip"], "192.0.2.1");

    let (status, body) = app
        .post_raw(
            "/v1/check",
            &app.admin,
            json!({"ips": ["192.0.2.1", "nope", 5]}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let indexes: Vec<i64> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["index"].as_i64().unwrap())
        .collect();
    assert_eq!(indexes, [1, 2]);
    let too_many: Vec<String> = (0..10_001)
        .map(|i| format!("10.0.{}.{}", i / 256 % 256, i % 256))
        .collect();
    let (status, body) = app
        .post_raw(
            "/v1/check",
            &app.admin,
            json!({"ips": too_many}).to_string(),
        )
        .await;
    assert_eq!(
        (status, body["details"][0]["message"].clone()),
        (
            StatusCode::BAD_REQUEST,
            json!("must hold 1 to 10000 addresses")
        )
    );
    for bad in [
        "[]",
        "{}",
        "{\"ips\": []}",
        "{\"ips\": [\"192.0.2.1\"], \"extra\": 1}",
        "not json",
    ] {
        let (status, _) = app.post_raw("/v1/check", &app.admin, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    for query in ["", "?ip=", "?ip=1.2.3.4/24", "?ip=1.2.3.4&x=1"] {
        let (status, _) = app.get(&format!("/v1/check{query}"), &app.admin).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
    }
    // Which of two addresses an answer is about must not be a guess.
    let (status, body) = app
        .get("/v1/check?ip=192.0.2.1&ip=192.0.2.2", &app.admin)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["details"][0]["field"], "ip");
    assert_eq!(body["details"][0]["message"], "is given more than once");
}

#[tokio::test]
async fn look_ups_are_per_tenant_and_any_role() {
    let app = spawn_app().await;
    let other = app.key(Role::Reader, "other").await;
    let reader = app.key(Role::Reader, "default").await;
    app.signal(&app.admin, &json!([block_ip("192.0.2.1")]))
        .await;
    assert_eq!(check(&app, &reader, "192.0.2.1").await["blocked"], true);
    assert_eq!(check(&app, &other, "192.0.2.1").await["blocked"], false);
    let (status, _) = app.get("/v1/check?ip=192.0.2.1", "nope").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn expiry_is_exact_over_http() {
    let start = UnixMillis(1_900_000_000_000);
    let app = crate::helpers::spawn_app_at(start).await;
    let mut event = block_ip("192.0.2.1");
    event["expiration"] = json!(60);
    app.signal(&app.admin, &json!([event])).await;
    let clock = app.clock.as_ref().unwrap();
    clock.advance_ms(59_999);
    assert_eq!(check(&app, &app.admin, "192.0.2.1").await["blocked"], true);
    clock.advance_ms(1);
    let body = check(&app, &app.admin, "192.0.2.1").await;
    assert_eq!(
        (body["blocked"].clone(), body["matches"].clone()),
        (json!(false), json!([]))
    );
}

async fn forward(app: &TestApp, headers: &[(&str, &str)]) -> (StatusCode, Option<String>) {
    let mut request = app.http.get(app.url("/v1/forward-auth"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let client = response
        .headers()
        .get("x-palisade-client-ip")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status(), client)
}

#[tokio::test]
async fn forward_auth_decides_on_the_forwarded_client() {
    let (app, _geo) = spawn_with_geo_behind_proxy().await;
    app.signal(&app.admin, &json!([block_ip("203.0.113.66")]))
        .await;
    let bearer = format!("Bearer {}", app.admin);
    let allowed = forward(
        &app,
        &[
            ("Authorization", &bearer),
            ("X-Forwarded-For", "198.51.100.1"),
        ],
    )
    .await;
    assert_eq!(
        allowed,
        (StatusCode::NO_CONTENT, Some("198.51.100.1".into()))
    );
    let blocked = forward(
        &app,
        &[
            ("X-Api-Key", &app.admin),
            ("X-Forwarded-For", "6.6.6.6, 203.0.113.66"),
        ],
    )
    .await;
    assert_eq!(blocked.0, StatusCode::FORBIDDEN);
    // X-Real-IP is not the configured header: a trusted proxy that sends no X-Forwarded-For
    // gets an error rather than a decision about its own address.
    let (status, _) = forward(
        &app,
        &[("X-Api-Key", &app.admin), ("X-Real-IP", "203.0.113.66")],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = forward(&app, &[("X-Forwarded-For", "203.0.113.66")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = forward(
        &app,
        &[("X-Api-Key", &app.admin), ("X-Forwarded-For", "not-an-ip")],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let response = app
        .http
        .get(app.url("/v1/forward-auth"))
        .header("X-Api-Key", &app.admin)
        .header("X-Forwarded-For", "203.0.113.66")
        .send()
        .await
        .unwrap();
    let (_, body) = answer(response).await;
    assert_eq!(
        body,
        json!({"error": "Forbidden", "message": "Client 203.0.113.66 is blocked", "code": 403})
    );
}

#[tokio::test]
async fn forwarding_headers_from_untrusted_peers_are_ignored() {
    let app = spawn_app().await; // no trusted proxies
    app.signal(&app.admin, &json!([block_ip("203.0.113.66")]))
        .await;
    let (status, client) = forward(
        &app,
        &[
            ("X-Api-Key", &app.admin),
            ("X-Forwarded-For", "203.0.113.66"),
        ],
    )
    .await;
    assert_eq!(
        (status, client.as_deref()),
        (StatusCode::NO_CONTENT, Some("127.0.0.1"))
    );
}

#[tokio::test]
async fn geo_reload_moves_asn_rules_to_the_new_networks() {
    let (app, geo_dir) = spawn_with_geo_behind_proxy().await;
    app.signal(
        &app.admin,
        &json!([{"type": "access_rules", "action": "block", "asn": "AS64501"}]),
    )
    .await;
    assert_eq!(
        check(&app, &app.admin, "198.51.100.1").await["blocked"],
        true
    );
    // The operator's new data moves AS64501 to another network.
    let mut asn = mmdb_writer::Writer::new("GeoLite2-ASN");
    asn.insert(
        "203.0.113.0/24".parse::<IpNet>().unwrap(),
        &AsnRecord {
            autonomous_system_number: 64501,
            autonomous_system_organization: "Other Net",
        },
    )
    .unwrap();
    let tmp = geo_dir.path().join("asn.mmdb.new");
    std::fs::write(&tmp, asn.to_bytes().unwrap()).unwrap();
    std::fs::rename(&tmp, geo_dir.path().join("asn.mmdb")).unwrap();
    assert!(app.state.geo.reload().unwrap());
    // The index takes the new data in a background task right after the swap.
    let mut moved = false;
    for _ in 0..200 {
        let answer = check(&app, &app.admin, "203.0.113.9").await;
        // Never the new ASN beside rules still matched by the old networks, or the reverse.
        assert_eq!(
            answer["asn"] == "AS64501",
            answer["blocked"] == true,
            "{answer}"
        );
        if answer["blocked"] == true {
            moved = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(moved, "the ASN rule never followed the new data");
    assert_eq!(
        check(&app, &app.admin, "198.51.100.1").await["blocked"],
        false
    );
}

/// A rule id is never reused: unblocking one address and blocking another in the same batch
/// leaves the first one unblocked for look-ups.
#[tokio::test]
async fn unblock_and_block_in_one_batch() {
    let app = spawn_app().await;
    app.signal(&app.admin, &json!([block_ip("198.51.100.1")]))
        .await;
    let (status, _) = app
        .signal(&app.admin, &json!([{"type": "access_rules", "action": "unblock", "ip": "198.51.100.1"}, block_ip("203.0.113.9")]))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        check(&app, &app.admin, "198.51.100.1").await["blocked"],
        false
    );
    assert_eq!(
        check(&app, &app.admin, "203.0.113.9").await["blocked"],
        true
    );
    let (_, rules) = app.get("/v1/rules", &app.admin).await;
    assert_eq!(rules["rules"][0]["id"], 2);
}

/// Proxies pass the visitor's own headers to forward-auth; the proxy's X-Api-Key decides whose
/// rules apply, never a visitor's Authorization header.
#[tokio::test]
async fn a_visitors_authorization_header_cannot_choose_the_tenant() {
    let (app, _geo) = spawn_with_geo_behind_proxy().await;
    let elsewhere = app.key(Role::Reader, "elsewhere").await;
    app.signal(&app.admin, &json!([block_ip("203.0.113.66")]))
        .await;
    let visitor_bearer = format!("Bearer {elsewhere}");
    let (status, _) = forward(
        &app,
        &[
            ("X-Api-Key", &app.admin),
            ("Authorization", &visitor_bearer),
            ("X-Forwarded-For", "203.0.113.66"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = forward(
        &app,
        &[
            ("X-Api-Key", &app.admin),
            ("Authorization", "Basic dXNlcjpwYXNz"),
            ("X-Forwarded-For", "198.51.100.1"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// A proxy that sets X-Real-IP and passes the visitor's X-Forwarded-For along: only the
/// configured header is read, so the visitor cannot name another address.
#[tokio::test]
async fn forward_auth_reads_only_the_configured_header() {
    let app = spawn_with(
        |c| {
            c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
            c.client_ip_header = "X-Real-IP".into();
        },
        None,
    )
    .await;
    app.signal(&app.admin, &json!([block_ip("203.0.113.66")]))
        .await;
    let blocked = forward(
        &app,
        &[
            ("X-Api-Key", &app.admin),
            ("X-Real-IP", "203.0.113.66"),
            ("X-Forwarded-For", "198.51.100.1"),
        ],
    )
    .await;
    assert_eq!(blocked.0, StatusCode::FORBIDDEN);
    let allowed = forward(
        &app,
        &[
            ("X-Api-Key", &app.admin),
            ("X-Real-IP", "198.51.100.1"),
            ("X-Forwarded-For", "203.0.113.66"),
        ],
    )
    .await;
    assert_eq!(
        allowed,
        (StatusCode::NO_CONTENT, Some("198.51.100.1".into()))
    );
}

/// Two different keys in one API request are refused; which one was meant is not guessed.
#[tokio::test]
async fn two_different_keys_are_refused() {
    let app = spawn_app().await;
    let reader = app.key(Role::Reader, "default").await;
    let response = app
        .http
        .get(app.url("/v1/check?ip=192.0.2.1"))
        .header("X-Api-Key", &reader)
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap();
    let (status, body) = answer(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["details"][0]["field"], "Authorization");
    // The same key in both headers is one key.
    let response = app
        .http
        .get(app.url("/v1/check?ip=192.0.2.1"))
        .header("X-Api-Key", &reader)
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

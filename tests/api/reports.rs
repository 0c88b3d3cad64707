//! The abuse-report API over HTTP: 202 and the worker, unban, false positives, 401/403/422,
//! rate limits on a clock the test moves, and the token check of the seed.

use palisade::keys::Role;
use palisade::rules::UnixMillis;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, block_ip, require, spawn_app, spawn_app_at, spawn_with};

/// Posts a body and returns the status and the raw body text.
async fn post(app: &TestApp, path: &str, key: &str, body: &str) -> (StatusCode, String) {
    let response = app
        .http
        .post(app.url(path))
        .bearer_auth(key)
        .header("accept", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

async fn checked(app: &TestApp, ip: &str) -> Value {
    app.get(&format!("/v1/check?ip={ip}"), &app.admin).await.1
}

#[tokio::test]
#[ignore = "needs curl; bash .ci/run runs it"]
async fn seed_token_check_with_curl() {
    require("curl", &["--version"]);
    let app = spawn_app().await;
    let run = |key: String| {
        let url = app.url("/test");
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new("curl")
                    .args([
                        "-s",
                        "-w",
                        "\n%{http_code}",
                        "-X",
                        "POST",
                        &url,
                        "-H",
                        "accept: application/json",
                        "-H",
                    ])
                    .arg(format!("Authorization: Bearer {key}"))
                    .output()
            })
            .await
            .unwrap()
        }
    };
    let output = run(app.admin.clone()).await.unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    assert_eq!(status, "200");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["tenant"], "default");
    assert_eq!(body["role"], "admin");
    assert_eq!(body["rate_limit"], json!({"per_minute": 6, "remaining": 6}));
    let output = run("YOUR_API_KEY".into()).await.unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.ends_with("\n401"), "{text}");
}

#[tokio::test]
async fn report_is_accepted_then_enforced_and_merged() {
    let app = spawn_app().await;
    let (status, body) = post(&app, "/v1/ip", &app.admin, r#"{"addresses": ["8.8.4.4", "2606:4700::6810"], "ttl": 600, "type": "tor", "tags": ["ssh:bruteforce"]}"#).await;
    assert_eq!((status, body.as_str()), (StatusCode::ACCEPTED, ""));
    app.reports_processed().await;
    assert_eq!(checked(&app, "8.8.4.4").await["blocked"], true);
    assert_eq!(checked(&app, "2606:4700::6810").await["blocked"], true);

    let (_, rules) = app
        .get(
            "/v1/rules?source=report&dataset=TOR&tag=ssh:bruteforce&target=8.8.4.4",
            &app.admin,
        )
        .await;
    let rule = &rules["rules"][0];
    assert_eq!(
        (
            rule["source"].clone(),
            rule["dataset"].clone(),
            rule["reports"].clone()
        ),
        (json!("report"), json!("TOR"), json!(1))
    );
    let first_expiry = rule["expires_at"].as_str().unwrap().to_owned();

    // A second report: later expiry, tags merged, counted; no Content-Type at all is fine.
    let response = app
        .http
        .post(app.url("/v1/ip"))
        .bearer_auth(&app.admin)
        .body(r#"{"addresses": ["8.8.4.4"], "ttl": 3600, "tags": ["web:scan"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    app.reports_processed().await;
    let (_, rules) = app.get("/v1/rules?target=8.8.4.4", &app.admin).await;
    let rule = &rules["rules"][0];
    assert_eq!(rule["reports"], 2);
    assert_eq!(rule["tags"], json!(["ssh:bruteforce", "web:scan"]));
    assert_eq!(rule["dataset"], "ABUSE");
    assert!(rule["expires_at"].as_str().unwrap() > first_expiry.as_str());
    let (_, rules) = app.get("/v1/rules?tag=web:scan", &app.admin).await;
    assert_eq!(rules["rules"].as_array().unwrap().len(), 1);

    // Unban ends it now.
    let (status, _) = post(
        &app,
        "/v1/unban/ip",
        &app.admin,
        r#"{"addresses": ["8.8.4.4"]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    app.reports_processed().await;
    assert_eq!(checked(&app, "8.8.4.4").await["blocked"], false);
    assert_eq!(checked(&app, "2606:4700::6810").await["blocked"], true);
}

#[tokio::test]
async fn an_allowlisted_address_inside_a_blocked_range_is_allowed() {
    let app = spawn_app().await;
    app.signal(&app.admin, &json!([block_ip("9.9.9.0/24")]))
        .await;
    let (status, _) = post(
        &app,
        "/v1/false/add/ip",
        &app.admin,
        r#"{"addresses": ["9.9.9.9"]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    app.reports_processed().await;
    let answer = checked(&app, "9.9.9.9").await;
    assert_eq!(
        (answer["blocked"].clone(), answer["allowed"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!(
        answer["matches"][0]["action"], "allow",
        "the answer names the allowlist entry that won"
    );
    assert_eq!(answer["matches"][1]["target"], "9.9.9.0/24");
    assert_eq!(checked(&app, "9.9.9.10").await["blocked"], true);
    let forward = app
        .http
        .get(app.url("/v1/forward-auth"))
        .header("X-Api-Key", &app.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(forward.status(), StatusCode::NO_CONTENT);

    let (status, _) = post(
        &app,
        "/v1/false/remove/ip",
        &app.admin,
        r#"{"addresses": ["9.9.9.9"]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    app.reports_processed().await;
    assert_eq!(checked(&app, "9.9.9.9").await["blocked"], true);
}

#[tokio::test]
async fn bad_tokens_roles_and_bodies() {
    let app = spawn_app().await;
    let reader = app.key(Role::Reader, "default").await;
    let (status, _) = post(&app, "/v1/ip", "not-a-key", r#"{"addresses": ["8.8.8.8"]}"#).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post(&app, "/v1/ip", &reader, r#"{"addresses": ["8.8.8.8"]}"#).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let long_tag = "x".repeat(65);
    let many_tags: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
    let too_many: Vec<String> = (0..10_001)
        .map(|i| format!("11.0.{}.{}", i / 256 % 256, i % 256))
        .collect();
    let cases: Vec<(&str, String, &str)> = vec![
        ("/v1/ip", "".into(), "body"),
        ("/v1/ip", "not json".into(), "body"),
        ("/v1/ip", "[]".into(), "body"),
        ("/v1/ip", "{}".into(), "addresses"),
        ("/v1/ip", r#"{"addresses": null}"#.into(), "addresses"),
        ("/v1/ip", r#"{"addresses": "8.8.8.8"}"#.into(), "addresses"),
        ("/v1/ip", r#"{"addresses": []}"#.into(), "addresses"),
        (
            "/v1/ip",
            json!({"addresses": too_many}).to_string(),
            "addresses",
        ),
        ("/v1/ip", r#"{"addresses": ["eni"]}"#.into(), "addresses"),
        ("/v1/ip", r#"{"addresses": [8]}"#.into(), "addresses"),
        (
            "/v1/ip",
            r#"{"addresses": ["8.8.8.0/24"]}"#.into(),
            "addresses",
        ),
        (
            "/v1/ip",
            r#"{"addresses": ["10.0.0.1"]}"#.into(),
            "addresses",
        ),
        (
            "/v1/ip",
            r#"{"addresses": ["127.0.0.1"]}"#.into(),
            "addresses",
        ),
        (
            "/v1/ip",
            r#"{"addresses": ["fe80::1"]}"#.into(),
            "addresses",
        ),
        (
            "/v1/ip",
            r#"{"addresses": ["224.0.0.5"]}"#.into(),
            "addresses",
        ),
        (
            "/v1/ip",
            r#"{"addresses": ["192.0.2.1"]}"#.into(),
            "addresses",
        ),
        (
            "/v1/ip",
            r#"{"addresses": ["8.8.8.8"], "ttl": 0}"#.into(),
            "ttl",
        ),
        (
            "/v1/ip",
            r#"{"addresses": ["8.8.8.8"], "ttl": -5}"#.into(),
            "ttl",
        ),
        (
            "/v1/ip",
            r#"{"addresses": ["8.8.8.8"], "ttl": "60"}"#.into(),
            "ttl",
        ),
        (
            "/v1/ip",
            r#"{"addresses": ["8.8.8.8"], "ttl": 315360001}"#.into(),
            "ttl",
        ),
        (
            "/v1/ip",
            r#"{"addresses": ["8.8.8.8"], "type": "ea dolore"}"#.into(),
            "type",
        ),
        (
            "/v1/ip",
            r#"{"addresses": ["8.8.8.8"], "type": 3}"#.into(),
            "type",
        ),
        (
            "/v1/ip",
            r#"{"addresses": ["8.8.8.8"], "tags": "a"}"#.into(),
            "tags",
        ),
        (
            "/v1/ip",
            format!(r#"{{"addresses": ["8.8.8.8"], "tags": ["{long_tag}"]}}"#),
            "tags",
        ),
        (
            "/v1/ip",
            r#"{"addresses": ["8.8.8.8"], "tags": ["has space"]}"#.into(),
            "tags",
        ),
        (
            "/v1/ip",
            r#"{"addresses": ["8.8.8.8"], "tags": [""]}"#.into(),
            "tags",
        ),
        (
            "/v1/ip",
            json!({"addresses": ["8.8.8.8"], "tags": many_tags}).to_string(),
            "tags",
        ),
        (
            "/v1/ip",
            r#"{"addresses": ["8.8.8.8"], "ttls": 60}"#.into(),
            "ttls",
        ),
        (
            "/v1/unban/ip",
            r#"{"addresses": ["8.8.8.8"], "ttl": 60}"#.into(),
            "ttl",
        ),
        (
            "/v1/false/add/ip",
            r#"{"addresses": ["nope"]}"#.into(),
            "addresses",
        ),
        (
            "/v1/false/remove/ip",
            r#"{"address": ["8.8.8.8"]}"#.into(),
            "address",
        ),
    ];
    assert!(cases.len() >= 20);
    for (path, body, field) in &cases {
        // A fresh key per case keeps the matrix under the 6-per-minute limit.
        let writer = app.key(Role::Writer, "default").await;
        let (status, text) = post(&app, path, &writer, body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path} {body}: {text}"
        );
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["error"], "UnprocessableEntity");
        assert_eq!(answer["code"], 422);
        assert_eq!(
            answer["details"][0]["field"], *field,
            "{path} {body}: {answer}"
        );
    }
    // Every offending field is named, each with its value.
    let (_, text) = post(&app, "/v1/ip", &app.key(Role::Writer, "default").await,
        r#"{"addresses": ["eni"], "ttl": 97734842, "type": "ea dolore", "tags": ["3VM02G26V", "LB-OHIF1-Q-RNA050T990-JYRCK34-G1DBN-8FXM-4FOEYEOISS9-GIEIL-A2QYD-1S8T"]}"#).await;
    let answer: Value = serde_json::from_str(&text).unwrap();
    let named: Vec<(String, Value)> = answer["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["field"].as_str().unwrap().to_owned(), d["value"].clone()))
        .collect();
    assert_eq!(
        named,
        [
            ("addresses".into(), json!("eni")),
            ("type".into(), json!("ea dolore")),
            (
                "tags".into(),
                json!("LB-OHIF1-Q-RNA050T990-JYRCK34-G1DBN-8FXM-4FOEYEOISS9-GIEIL-A2QYD-1S8T")
            ),
        ]
    );
    let (_, queue) = app.get("/v1/reports/queue", &app.admin).await;
    assert_eq!(queue["depth"], 0, "nothing refused was queued");
}

/// Every special-purpose range, in either family, is refused by name.
#[tokio::test]
async fn special_purpose_addresses_are_refused() {
    let app = spawn_with(|c| c.rate_limits.reports_per_minute = 0, None).await;
    for ip in [
        "100.64.0.1",
        "240.0.0.1",
        "198.18.0.1",
        "0.1.2.3",
        "::10.0.0.1",
        "2002:c0a8:0101::1",
        "64:ff9b::192.168.1.1",
    ] {
        let body = format!(r#"{{"addresses": ["{ip}"]}}"#);
        let (status, answer) = post(&app, "/v1/ip", &app.admin, &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{ip}");
        assert!(
            answer.contains("must be a public address, not"),
            "{ip}: {answer}"
        );
    }
    let (status, _) = post(
        &app,
        "/v1/ip",
        &app.admin,
        r#"{"addresses": ["2002:0808:0808::1"]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn private_addresses_when_allowed() {
    let app = spawn_with(|c| c.reports.allow_private = true, None).await;
    let (status, _) = post(&app, "/v1/ip", &app.admin, r#"{"addresses": ["10.1.2.3"]}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    app.reports_processed().await;
    assert_eq!(checked(&app, "10.1.2.3").await["blocked"], true);
    // Loopback stays protected by the guard rails.
    let (status, _) = post(
        &app,
        "/v1/ip",
        &app.admin,
        r#"{"addresses": ["127.0.0.9"]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn the_seventh_request_in_a_minute_is_429() {
    let app = spawn_app_at(UnixMillis(1_900_000_000_000)).await;
    let other = app.key(Role::Writer, "default").await;
    let body = r#"{"addresses": ["8.8.8.8"]}"#;
    for _ in 0..6 {
        assert_eq!(
            post(&app, "/v1/ip", &app.admin, body).await.0,
            StatusCode::ACCEPTED
        );
    }
    // The token check never counts.
    let (status, info) = app.post_raw("/test", &app.admin, "").await;
    assert_eq!(
        (status, info["rate_limit"].clone()),
        (StatusCode::OK, json!({"per_minute": 6, "remaining": 0}))
    );
    let response = app
        .http
        .post(app.url("/v1/ip"))
        .bearer_auth(&app.admin)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "10");
    // Bad bodies and other endpoints count too; other tokens do not share the budget.
    assert_eq!(
        post(&app, "/v1/unban/ip", &app.admin, body).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        post(&app, "/v1/ip", &other, body).await.0,
        StatusCode::ACCEPTED
    );
    // Signals are not limited by default.
    assert_eq!(
        app.signal(&app.admin, &json!([block_ip("8.8.4.4")]))
            .await
            .0,
        StatusCode::OK
    );

    app.clock.as_ref().unwrap().advance_ms(10_000);
    assert_eq!(
        post(&app, "/v1/ip", &app.admin, body).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        post(&app, "/v1/ip", &app.admin, body).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    app.reports_processed().await;
    let (_, rules) = app.get("/v1/rules?target=8.8.8.8", &app.admin).await;
    assert_eq!(
        rules["rules"][0]["reports"], 8,
        "six + the other token's + one after the wait"
    );
}

#[tokio::test]
async fn signal_limit_when_configured() {
    let app = spawn_with(|c| c.rate_limits.signal_per_minute = 2, None).await;
    for _ in 0..2 {
        assert_eq!(
            app.signal(&app.admin, &json!([block_ip("8.8.4.4")]))
                .await
                .0,
            StatusCode::OK
        );
    }
    let (status, body) = app.signal(&app.admin, &json!([block_ip("8.8.4.4")])).await;
    assert_eq!(
        (status, body["error"].clone()),
        (StatusCode::TOO_MANY_REQUESTS, json!("TooManyRequests"))
    );
}

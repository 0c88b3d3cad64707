//! The validation matrix: every refused event with its exact error text, and the 200/206/400
//! choice for batches.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{block_ip, spawn_app, spawn_with};

fn ev(fields: Value) -> Value {
    let mut event = json!({"type": "access_rules", "action": "block"});
    for (k, v) in fields.as_object().unwrap() {
        if v.is_null() && k.starts_with('-') {
            event.as_object_mut().unwrap().remove(&k[1..]);
        } else {
            event[k] = v.clone();
        }
    }
    event
}

/// (event, "FIELD: MESSAGE")
fn bad_events() -> Vec<(Value, &'static str)> {
    let country = "country: Country must be a valid ISO-3166 Alpha-2 code (e.g., US, GB, JP)";
    let bad_ip = "ip: must be an IPv4 or IPv6 address or CIDR range";
    let bad_asn = "asn: must be in the format AS12345 (AS1 to AS4294967295)";
    let bad_exp = "expiration: must be a positive integer number of seconds";
    vec![
        (json!("192.168.1.100"), "entry: must be a JSON object"),
        (json!(null), "entry: must be a JSON object"),
        (json!([1]), "entry: must be a JSON object"),
        (
            ev(json!({"ip": "1.2.3.4", "expires": 60})),
            "expires: unknown field (allowed: type, action, ip, asn, country, expiration, description, name)",
        ),
        (
            ev(json!({"ip": "1.2.3.4", "Action": "block"})),
            "Action: unknown field (allowed: type, action, ip, asn, country, expiration, description, name)",
        ),
        (
            ev(json!({"ip": "1.2.3.4", "-type": null})),
            "type: is required",
        ),
        (
            ev(json!({"ip": "1.2.3.4", "type": "access_rule"})),
            "type: must be one of: access_rules",
        ),
        (
            ev(json!({"ip": "1.2.3.4", "type": 1})),
            "type: must be one of: access_rules",
        ),
        (
            ev(json!({"ip": "1.2.3.4", "-action": null})),
            "action: is required",
        ),
        (
            ev(json!({"ip": "1.2.3.4", "action": "invalid"})),
            "action: must be one of: block, unblock",
        ),
        (
            ev(json!({"ip": "1.2.3.4", "action": "BLOCK"})),
            "action: must be one of: block, unblock",
        ),
        (
            ev(json!({"ip": "1.2.3.4", "action": true})),
            "action: must be one of: block, unblock",
        ),
        (
            ev(json!({})),
            "target: exactly one of ip, asn, country must be provided",
        ),
        (
            ev(json!({"ip": null})),
            "target: exactly one of ip, asn, country must be provided",
        ),
        (
            ev(json!({"ip": "1.2.3.4", "asn": "AS1"})),
            "target: only one of ip, asn, country may be provided",
        ),
        (
            ev(json!({"asn": "AS1", "country": "US"})),
            "target: only one of ip, asn, country may be provided",
        ),
        (ev(json!({"ip": ""})), "ip: must not be empty"),
        (ev(json!({"country": ""})), "country: must not be empty"),
        (ev(json!({"ip": 1234})), "ip: must be a string"),
        (ev(json!({"asn": 12345})), "asn: must be a string"),
        (ev(json!({"country": ["US"]})), "country: must be a string"),
        (ev(json!({"ip": "256.1.1.1"})), bad_ip),
        (ev(json!({"ip": "1.2.3"})), bad_ip),
        (ev(json!({"ip": "1.2.3.4/33"})), bad_ip),
        (ev(json!({"ip": "1.2.3.4/"})), bad_ip),
        (ev(json!({"ip": "2001:db8::/129"})), bad_ip),
        (ev(json!({"ip": " 1.2.3.4"})), bad_ip),
        (ev(json!({"ip": "example.com"})), bad_ip),
        (
            ev(json!({"ip": "fe80::1%eth0"})),
            "ip: zone identifiers are not allowed",
        ),
        (
            ev(json!({"ip": "10.0.0.0/7"})),
            "ip: IPv4 ranges broader than /8 are not allowed",
        ),
        (
            ev(json!({"ip": "0.0.0.0/0"})),
            "ip: IPv4 ranges broader than /8 are not allowed",
        ),
        (
            ev(json!({"ip": "2001::/15"})),
            "ip: IPv6 ranges broader than /16 are not allowed",
        ),
        (
            ev(json!({"ip": "127.0.0.1"})),
            "ip: must not cover the protected range 127.0.0.0/8",
        ),
        (
            ev(json!({"ip": "::1"})),
            "ip: must not cover the protected range ::1/128",
        ),
        (
            ev(json!({"ip": "::ffff:127.0.0.1"})),
            "ip: must not cover the protected range 127.0.0.0/8",
        ),
        (ev(json!({"asn": "12345"})), bad_asn),
        (ev(json!({"asn": "AS0"})), bad_asn),
        (ev(json!({"asn": "AS4294967296"})), bad_asn),
        (ev(json!({"asn": "AS-5"})), bad_asn),
        (ev(json!({"asn": "ASN12345"})), bad_asn),
        (ev(json!({"asn": "AS 12345"})), bad_asn),
        (ev(json!({"country": "UK"})), country),
        (ev(json!({"country": "XX"})), country),
        (ev(json!({"country": "EU"})), country),
        (ev(json!({"country": "USA"})), country),
        (ev(json!({"country": "U1"})), country),
        (ev(json!({"ip": "1.2.3.4", "expiration": 0})), bad_exp),
        (ev(json!({"ip": "1.2.3.4", "expiration": -60})), bad_exp),
        (ev(json!({"ip": "1.2.3.4", "expiration": 60.5})), bad_exp),
        (ev(json!({"ip": "1.2.3.4", "expiration": 3600.0})), bad_exp),
        (ev(json!({"ip": "1.2.3.4", "expiration": "3600"})), bad_exp),
        (
            ev(json!({"ip": "1.2.3.4", "expiration": 315_360_001u64})),
            "expiration: must be at most 315360000 seconds (10 years)",
        ),
        (
            ev(json!({"ip": "1.2.3.4", "description": "x".repeat(1025)})),
            "description: must be at most 1024 characters",
        ),
        (
            ev(json!({"ip": "1.2.3.4", "name": "a\u{0}b"})),
            "name: must not contain the NUL character (U+0000)",
        ),
        (
            ev(json!({"ip": "1.2.3.4", "description": 5})),
            "description: must be a string",
        ),
        (
            ev(json!({"ip": "1.2.3.4", "name": "é".repeat(256)})),
            "name: must be at most 255 characters",
        ),
        (
            ev(json!({"ip": "1.2.3.4", "name": {"a": 1}})),
            "name: must be a string",
        ),
    ]
}

#[tokio::test]
async fn every_bad_event_gets_its_exact_error() {
    let app = spawn_app().await;
    let cases = bad_events();
    assert!(cases.len() >= 40);
    for (event, expected) in &cases {
        // Alone: 400 with one detail.
        let (status, body) = app.signal(&app.admin, &json!([event])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{event}: {body}");
        let detail = &body["details"][0];
        let got = format!(
            "{}: {}",
            detail["field"].as_str().unwrap(),
            detail["message"].as_str().unwrap()
        );
        assert_eq!(got, *expected, "{event}");
        assert_eq!(detail["index"], 0);

        // Next to a good event: 206, the good one applied, the bad one reported by index.
        let (status, body) = app
            .signal(&app.admin, &json!([block_ip("198.51.100.7"), event]))
            .await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{event}: {body}");
        assert_eq!(body["success"], false);
        assert_eq!(body["message"], "Processed 1 entries, 1 failed");
        assert_eq!(
            body["errors"],
            json!([format!("Entry 1: Schema validation failed: {expected}")])
        );
    }
    // Nothing but the good event ever became a rule.
    assert_eq!(app.targets(&app.admin).await, ["198.51.100.7/32"]);
}

#[tokio::test]
async fn edge_values_that_are_accepted() {
    let app = spawn_app().await;
    let good = json!([
        ev(json!({"ip": "10.0.0.0/8"})),
        ev(json!({"ip": "2001:db8::/16"})),
        ev(json!({"ip": "2001:DB8::1"})),
        ev(json!({"ip": "::ffff:192.0.2.1"})),
        ev(json!({"ip": "192.0.2.77/24", "expiration": 315_360_000u64})),
        ev(json!({"asn": "as4294967295"})),
        ev(json!({"asn": "As1", "ip": "", "country": null})),
        ev(json!({"country": "gb"})),
        ev(json!({"country": "jp", "description": "x".repeat(1024), "name": "é".repeat(255)})),
        ev(json!({"ip": "203.0.113.9", "expiration": null, "description": null, "name": null})),
    ]);
    let (status, body) = app.signal(&app.admin, &good).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["message"], "Processed 10 entries, 0 failed");
    let mut targets = app.targets(&app.admin).await;
    targets.sort();
    assert_eq!(
        targets,
        [
            "10.0.0.0/8",
            "192.0.2.0/24",
            "192.0.2.1/32",
            "2001::/16",
            "2001:db8::1/128",
            "203.0.113.9/32",
            "AS1",
            "AS4294967295",
            "GB",
            "JP"
        ]
    );
}

#[tokio::test]
async fn batch_limits_and_shapes() {
    let app = spawn_app().await;
    let thousand: Vec<Value> = (0..1000)
        .map(|i| block_ip(&format!("10.1.{}.{}", i / 256, i % 256)))
        .collect();
    let (status, body) = app.signal(&app.admin, &json!(thousand)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["message"], "Processed 1000 entries, 0 failed");

    let mut too_many = thousand.clone();
    too_many.push(block_ip("10.9.9.9"));
    let (status, body) = app.signal(&app.admin, &json!(too_many)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"error": "ValidationError", "message": "Validation failed",
               "details": [{"field": "body", "message": "must contain at most 1000 events", "value": 1001, "index": null}],
               "code": 400})
    );

    for (body, message) in [
        ("", "is not valid JSON (line 1, column 0)"),
        ("[{\"type\": ", "is not valid JSON (line 1, column 10)"),
        ("not json", "is not valid JSON (line 1, column 2)"),
        (
            "{\"type\": \"access_rules\"}",
            "must be a JSON array of events",
        ),
        ("\"access_rules\"", "must be a JSON array of events"),
        ("[]", "must contain at least 1 event"),
    ] {
        let (status, answer) = app.post_raw("/v1/signal", &app.admin, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer["details"][0]["field"], "body");
        assert_eq!(answer["details"][0]["message"], message, "{body}");
    }

    // All invalid: 400 listing every entry.
    let (status, body) = app
        .signal(
            &app.admin,
            &json!([ev(json!({"country": "UK"})), ev(json!({"asn": "AS0"}))]),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["details"].as_array().unwrap().len(), 2);
    assert_eq!(body["details"][1]["index"], 1);
    assert_eq!(body["details"][1]["value"], "AS0");
    assert_eq!(
        app.targets(&app.admin).await.len(),
        1000,
        "the refused batches wrote nothing"
    );
}

#[tokio::test]
async fn body_without_json_content_type_is_read_as_json() {
    let app = spawn_app().await;
    let response = app
        .http
        .post(app.url("/v1/signal"))
        .bearer_auth(&app.admin)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(json!([block_ip("192.0.2.1")]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = app
        .http
        .post(app.url("/v1/signal"))
        .bearer_auth(&app.admin)
        .body(json!([block_ip("192.0.2.2")]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn oversized_body_is_413_and_writes_nothing() {
    let app = spawn_with(|c| c.limits.signal_body_bytes = 1024, None).await;
    let big = json!([ev(
        json!({"ip": "192.0.2.1", "description": "x".repeat(2000)})
    )]);
    let (status, body) = app.signal(&app.admin, &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        body,
        json!({"error": "PayloadTooLarge", "message": "Request body is larger than 1024 bytes", "code": 413})
    );
    assert!(app.targets(&app.admin).await.is_empty());
}

#[tokio::test]
async fn guard_rails_follow_configuration() {
    let app = spawn_with(
        |c| {
            c.guard.min_prefix_v4 = 16;
            c.guard.protect_listen_address = false;
            c.guard.protected = vec!["192.0.2.0/24".parse().unwrap()];
        },
        None,
    )
    .await;
    let (_, body) = app
        .signal(&app.admin, &json!([ev(json!({"ip": "10.0.0.0/15"}))]))
        .await;
    assert_eq!(
        body["details"][0]["message"],
        "IPv4 ranges broader than /16 are not allowed"
    );
    let (_, body) = app
        .signal(&app.admin, &json!([ev(json!({"ip": "192.0.0.0/16"}))]))
        .await;
    assert_eq!(
        body["details"][0]["message"],
        "must not cover the protected range 192.0.2.0/24"
    );
    // Loopback is no longer in the configured list; unblocking a protected range is allowed.
    let (status, _) = app
        .signal(&app.admin, &json!([ev(json!({"ip": "127.0.0.1"})), {"type": "access_rules", "action": "unblock", "ip": "192.0.2.5"}]))
        .await;
    assert_eq!(status, StatusCode::OK);
}

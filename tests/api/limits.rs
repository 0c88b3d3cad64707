//! Size limits and ambiguous input: each route's body limit, the memory budget for bodies,
//! answers with too many matches, and JSON keys given twice.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::helpers::{block_ip, spawn_app, spawn_with};

#[tokio::test]
async fn each_route_has_its_own_body_limit() {
    let app = spawn_with(
        |c| {
            c.limits.check_body_bytes = 2048;
            c.limits.report_body_bytes = 1024;
        },
        None,
    )
    .await;
    let ips: Vec<String> = (0..200).map(|i| format!("192.0.2.{}", i % 250)).collect();
    let (status, body) = app
        .post_raw("/v1/check", &app.admin, json!({ "ips": ips }).to_string())
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["message"], "Request body is larger than 2048 bytes");
    let addresses: Vec<String> = (0..100).map(|i| format!("203.0.113.{i}")).collect();
    let (status, body) = app
        .post_raw(
            "/v1/ip",
            &app.admin,
            json!({ "addresses": addresses }).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    // The signal route keeps its own, larger limit.
    let (status, _) = app
        .post_raw(
            "/v1/signal",
            &app.admin,
            json!([block_ip("192.0.2.1")]).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_default_check_limit_takes_a_full_batch_and_no_more() {
    let app = spawn_app().await;
    // 10,000 of the longest IPv6 spellings fit.
    let longest = "0000:0000:0000:0000:0000:ffff:255.255.255.255";
    let ips = vec![longest; 10_000];
    let (status, body) = app
        .post_raw("/v1/check", &app.admin, json!({ "ips": ips }).to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 10_000);
    // A megabyte of numbers: refused by counting, never by holding half a million values.
    let numbers = format!("{{\"ips\":[{}1]}}", "1,".repeat(500_000));
    let (status, body) = app.post_raw("/v1/check", &app.admin, numbers).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["details"][0]["message"],
        "must hold 1 to 10000 addresses"
    );
    assert_eq!(body["details"][0]["value"], 500_001);
    // Over the megabyte: 413 before the body is read.
    let huge = format!("{{\"ips\":[{}1]}}", "1,".repeat(600_000));
    let (status, _) = app.post_raw("/v1/check", &app.admin, huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn bodies_wait_for_room_in_the_memory_budget() {
    let app = spawn_with(
        |c| {
            c.limits.bodies_in_flight_bytes = 2000;
            // Longer than the second a body waits for room.
            c.server.body_read_timeout_secs = 10;
        },
        None,
    )
    .await;
    // A client that announces 1500 bytes and sends a few holds most of the budget...
    let mut slow = TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/signal HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Length: 1500\r\n\r\n[",
        app.admin
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so a 1000-byte body finds no room before its deadline.
    let padded = format!(
        "[{}]",
        json!({"type": "access_rules", "action": "block", "ip": "192.0.2.1", "description": "x".repeat(900)})
    );
    let (status, body) = app.post_raw("/v1/signal", &app.admin, padded.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "ServiceUnavailable");
    drop(slow);
    // Once the slow client is gone the same body goes through.
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..100 {
        status = app
            .post_raw("/v1/signal", &app.admin, padded.clone())
            .await
            .0;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, StatusCode::OK);
}

/// Rules nested over one address: a /32 inside 39 wider ranges, each with a long name.
async fn deeply_covered(app: &crate::helpers::TestApp) {
    let events: Vec<Value> = (0..40)
        .map(|i| {
            json!({"type": "access_rules", "action": "block", "ip": format!("10.0.0.1/{}", 32 - i % 25),
                   "name": format!("{i}-{}", "n".repeat(200))})
        })
        .collect();
    let (status, body) = app.signal(&app.admin, &json!(events)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn answers_list_a_bounded_number_of_matches_and_say_so() {
    let app = spawn_with(
        |c| {
            c.limits.matches_per_address = 10;
            c.limits.matches_per_batch = 25;
        },
        None,
    )
    .await;
    deeply_covered(&app).await;
    let (_, one) = app.get("/v1/check?ip=10.0.0.1", &app.admin).await;
    assert_eq!(one["blocked"], true);
    assert_eq!(one["matches"].as_array().unwrap().len(), 10);
    assert_eq!(one["matches_truncated"], true);
    // An answer with room for all of its matches says nothing about truncation.
    let (_, other) = app.get("/v1/check?ip=192.0.2.9", &app.admin).await;
    assert!(other.get("matches_truncated").is_none(), "{other}");

    let (status, batch) = app
        .post_raw(
            "/v1/check",
            &app.admin,
            json!({"ips": ["10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.1"]}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let results = batch["results"].as_array().unwrap();
    let listed: Vec<usize> = results
        .iter()
        .map(|r| r["matches"].as_array().unwrap().len())
        .collect();
    assert_eq!(listed, [10, 10, 5, 0]);
    for result in results {
        // The decision never depends on what was listed.
        assert_eq!(result["blocked"], true);
        assert_eq!(result["matches_truncated"], true);
    }
}

#[tokio::test]
async fn keys_given_twice_are_refused_never_guessed() {
    let app = spawn_app().await;
    let twice = r#"[{"type":"access_rules","action":"unblock","action":"block","ip":"192.0.2.1"}]"#;
    let (status, body) = app.post_raw("/v1/signal", &app.admin, twice).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["details"][0]["field"], "action");
    assert_eq!(body["details"][0]["message"], "is given more than once");
    assert_eq!(body["details"][0]["value"], "block");
    assert!(app.targets(&app.admin).await.is_empty());
    // In a batch, only that event fails.
    let mixed = r#"[{"type":"access_rules","action":"block","ip":"192.0.2.1","ip":"192.0.2.2"},
                    {"type":"access_rules","action":"block","ip":"192.0.2.3"}]"#;
    let (status, body) = app.post_raw("/v1/signal", &app.admin, mixed).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{body}");
    assert_eq!(
        body["errors"][0],
        "Entry 0: Schema validation failed: ip: is given more than once"
    );

    let (status, body) = app
        .post_raw(
            "/v1/check",
            &app.admin,
            r#"{"ips":["192.0.2.1"],"ips":["192.0.2.2"]}"#,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["details"][0]["field"], "ips");
    assert_eq!(body["details"][0]["message"], "is given more than once");

    let (status, body) = app
        .post_raw(
            "/v1/ip",
            &app.admin,
            r#"{"addresses":["203.0.113.1"],"ttl":60,"ttl":600}"#,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["details"][0]["field"], "ttl");
    assert_eq!(body["details"][0]["message"], "is given more than once");
}

#[tokio::test]
async fn a_tenant_at_its_rule_quota_gets_refusals_for_new_rules_only() {
    let app = spawn_with(|c| c.limits.rules_per_tenant = 3, None).await;
    let other = app.key(palisade::keys::Role::Writer, "other").await;
    let events: Vec<Value> = (1..=5).map(|i| block_ip(&format!("192.0.2.{i}"))).collect();
    let (status, body) = app.signal(&app.admin, &json!(events)).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{body}");
    assert_eq!(body["message"], "Processed 3 entries, 2 failed");
    assert_eq!(
        body["errors"],
        json!([
            "Entry 3: Quota exceeded: target: the tenant's quota of 3 rules is reached",
            "Entry 4: Quota exceeded: target: the tenant's quota of 3 rules is reached"
        ])
    );
    // Each event's audit entry says what became of it, newest first.
    let (_, audit) = app.get("/v1/audit?limit=5", &app.admin).await;
    let outcomes: Vec<&Value> = (0..5).map(|i| &audit["entries"][i]["outcome"]).collect();
    assert_eq!(
        outcomes,
        ["rejected", "rejected", "applied", "applied", "applied"],
        "{audit}"
    );
    assert_eq!(
        audit["entries"][1]["error"],
        "target: the tenant's quota of 3 rules is reached"
    );
    // Refreshing a rule the tenant has, and removing one, are never over quota...
    let (status, _) = app
        .signal(
            &app.admin,
            &json!([block_ip("192.0.2.1"), {"type": "access_rules", "action": "unblock", "ip": "192.0.2.2"}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // ...and the room a removal makes can be used again.
    let (status, _) = app
        .signal(&app.admin, &json!([block_ip("192.0.2.9")]))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app
        .signal(&app.admin, &json!([block_ip("192.0.2.10")]))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["details"][0]["message"],
        "the tenant's quota of 3 rules is reached"
    );
    // Another tenant's quota is its own.
    let (status, _) = app.signal(&other, &json!([block_ip("198.51.100.1")])).await;
    assert_eq!(status, StatusCode::OK);
    // The refusals are audited with their reason.
    let (_, audit) = app.get("/v1/audit?limit=1", &app.admin).await;
    assert_eq!(audit["entries"][0]["outcome"], "rejected");
    assert_eq!(
        audit["entries"][0]["error"],
        "target: the tenant's quota of 3 rules is reached"
    );
}

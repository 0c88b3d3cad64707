//! Reading rules back: filters, pagination, refresh and unblock semantics, audit.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{block_ip, spawn_app, spawn_app_at};
use palisade::clock::Clock;
use palisade::rules::UnixMillis;

#[tokio::test]
async fn filters_and_pagination() {
    let app = spawn_app().await;
    let mut batch: Vec<Value> = (0..25)
        .map(|i| block_ip(&format!("198.51.100.{i}")))
        .collect();
    batch.push(
        json!({"type": "access_rules", "action": "block", "asn": "as64500", "name": "bad-asn"}),
    );
    batch.push(json!({"type": "access_rules", "action": "block", "country": "fr", "name": "geo"}));
    let (status, _) = app.signal(&app.admin, &json!(batch)).await;
    assert_eq!(status, StatusCode::OK);

    let (_, body) = app.get("/v1/rules?kind=asn", &app.admin).await;
    assert_eq!(body["rules"][0]["target"], "AS64500");
    assert_eq!(body["next_cursor"], Value::Null);
    let (_, body) = app.get("/v1/rules?target=198.51.100.7", &app.admin).await;
    assert_eq!(body["rules"][0]["target"], "198.51.100.7/32");
    let (_, body) = app.get("/v1/rules?target=FR", &app.admin).await;
    assert_eq!(body["rules"][0]["name"], "geo");
    let (_, body) = app
        .get("/v1/rules?name=bad-asn&action=block", &app.admin)
        .await;
    assert_eq!(body["rules"].as_array().unwrap().len(), 1);
    let (_, body) = app.get("/v1/rules?action=allow", &app.admin).await;
    assert_eq!(body["rules"], json!([]));

    // Walk all 27 rules, 10 at a time.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/rules?limit=10&cursor={c}"),
            None => "/v1/rules?limit=10".to_owned(),
        };
        let (status, body) = app.get(&path, &app.admin).await;
        assert_eq!(status, StatusCode::OK);
        seen.extend(
            body["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_i64().unwrap()),
        );
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 27);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));

    for (query, field) in [
        ("kind=cidr", "kind"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("cursor=abc", "cursor"),
        ("target=not-a-target", "target"),
        ("action=deny", "action"),
        ("sort=id", "sort"),
    ] {
        let (status, body) = app.get(&format!("/v1/rules?{query}"), &app.admin).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(body["details"][0]["field"], field, "{query}");
    }
}

#[tokio::test]
async fn block_refreshes_and_unblock_removes_exactly_its_target() {
    let start = UnixMillis(1_900_000_000_000);
    let app = spawn_app_at(start).await;
    let block = |ip: &str, expiration: Option<u64>, description: Option<&str>| {
        let mut event = block_ip(ip);
        if let Some(e) = expiration {
            event["expiration"] = json!(e);
        }
        if let Some(d) = description {
            event["description"] = json!(d);
        }
        event
    };
    app.signal(
        &app.admin,
        &json!([
            block("192.0.2.0/24", Some(60), Some("first")),
            block("192.0.2.1", None, None)
        ]),
    )
    .await;
    let (_, body) = app.get("/v1/rules?target=192.0.2.0/24", &app.admin).await;
    let rule = &body["rules"][0];
    assert_eq!(rule["expires_at"], "2030-03-17T17:47:40Z");
    assert_eq!(rule["description"], "first");
    let id = rule["id"].clone();

    // A second block of the same target refreshes the same rule.
    app.clock.as_ref().unwrap().advance_ms(30_000);
    app.signal(
        &app.admin,
        &json!([block("192.0.2.0/24", Some(3600), None)]),
    )
    .await;
    let (_, body) = app.get("/v1/rules?target=192.0.2.0/24", &app.admin).await;
    assert_eq!(body["rules"][0]["id"], id);
    assert_eq!(body["rules"][0]["expires_at"], "2030-03-17T18:47:10Z");
    assert_eq!(body["rules"][0]["description"], "first");

    // Unblocking the /24 leaves the /32 inside it; unblocking what is not blocked succeeds.
    let unblock = |ip: &str| json!({"type": "access_rules", "action": "unblock", "ip": ip});
    let (status, body) = app
        .signal(
            &app.admin,
            &json!([unblock("192.0.2.0/24"), unblock("203.0.113.0/24")]),
        )
        .await;
    assert_eq!(
        (status, body["message"].clone()),
        (StatusCode::OK, json!("Processed 2 entries, 0 failed"))
    );
    assert_eq!(app.targets(&app.admin).await, ["192.0.2.1/32"]);
}

#[tokio::test]
async fn rules_stop_counting_at_their_expiry_instant() {
    let start = UnixMillis(1_900_000_000_000);
    let app = spawn_app_at(start).await;
    let mut event = block_ip("192.0.2.9");
    event["expiration"] = json!(10);
    app.signal(&app.admin, &json!([event])).await;
    let (_, body) = app.get("/v1/rules", &app.admin).await;
    let path = format!("/v1/rules/{}", body["rules"][0]["id"]);

    let clock = app.clock.as_ref().unwrap();
    clock.advance_ms(9_999);
    assert_eq!(app.targets(&app.admin).await.len(), 1);
    clock.advance_ms(1);
    assert!(app.targets(&app.admin).await.is_empty());
    let (status, _) = app.get(&path, &app.admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The purge removes the row and logs the change; a new block starts a new life.
    let purged = app
        .state
        .engine
        .purge_expired(clock.now(), 100)
        .await
        .unwrap();
    assert_eq!(purged.len(), 1);
    let changes = app
        .state
        .engine
        .backend()
        .changes_since(0, 100)
        .await
        .unwrap();
    let ops: Vec<_> = changes.iter().map(|c| c.op.as_str()).collect();
    assert_eq!(ops, ["put", "expire"]);
    assert!(changes[0].seq < changes[1].seq);
}

#[tokio::test]
async fn audit_keeps_every_event_as_received() {
    let app = spawn_app().await;
    let raw = r#"[{"type":"access_rules","action":"block","ip":"192.0.2.1", "name" : "spaced"},{"type":"access_rules","action":"block","country":"UK"}]"#;
    let (status, _) = app.post_raw("/v1/signal", &app.admin, raw).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    let (_, body) = app.get("/v1/audit?limit=1", &app.admin).await;
    let newest = &body["entries"][0];
    assert_eq!(newest["index"], 1);
    assert_eq!(newest["outcome"], "rejected");
    assert_eq!(
        newest["error"],
        "country: Country must be a valid ISO-3166 Alpha-2 code (e.g., US, GB, JP)"
    );
    let cursor = body["next_cursor"].as_str().unwrap();
    let (_, body) = app
        .get(&format!("/v1/audit?cursor={cursor}"), &app.admin)
        .await;
    let first = &body["entries"][0];
    assert_eq!(first["outcome"], "applied");
    assert_eq!(first["event"]["name"], "spaced");
    assert_eq!(first["request_id"], newest["request_id"]);
    assert_eq!(body["next_cursor"], Value::Null);
}

#[tokio::test]
async fn docs_and_health() {
    let app = spawn_app().await;
    let (status, body) = app.get("/healthz", "").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, spec) = app.get("/docs/signal/openapi.json", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(spec["openapi"], "3.1.0");
    for path in [
        "/v1/signal",
        "/v1/rules",
        "/v1/rules/{id}",
        "/v1/audit",
        "/v1/blocklist",
        "/v1/config",
        "/v1/authcheck",
        "/healthz",
    ] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(spec["components"]["schemas"]["ErrorBody"].is_object());
    let page = app
        .http
        .get(app.url("/docs/signal/swagger/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("swagger"));
    let (status, body) = app.get("/v1/nothing-here", "").await;
    assert_eq!(
        (status, body["error"].clone()),
        (StatusCode::NOT_FOUND, json!("NotFound"))
    );
    let (status, body) = app.get("/v1/signal", &app.admin).await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::METHOD_NOT_ALLOWED, json!(405))
    );
}

#[tokio::test]
async fn an_expired_rule_blocked_again_keeps_nothing_of_its_old_life() {
    let start = UnixMillis(1_900_000_000_000);
    let app = spawn_app_at(start).await;
    let mut event = block_ip("8.8.8.8");
    event["expiration"] = json!(10);
    event["name"] = json!("old");
    event["description"] = json!("first life");
    app.signal(&app.admin, &json!([event])).await;
    app.clock.as_ref().unwrap().advance_ms(10_000);
    // Not purged yet: the row is still there, expired.
    app.signal(&app.admin, &json!([block_ip("8.8.8.8")])).await;
    let (_, body) = app.get("/v1/rules?target=8.8.8.8", &app.admin).await;
    let rule = &body["rules"][0];
    assert_eq!(
        (rule["name"].clone(), rule["description"].clone()),
        (json!(null), json!(null))
    );
    assert_eq!(rule["created_at"], "2030-03-17T17:46:50Z");
    assert_eq!(rule["expires_at"], json!(null));
}

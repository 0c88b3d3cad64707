//! Keys, roles and tenants across every endpoint.

use palisade::clock::{Clock, SystemClock};
use palisade::keys::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{block_ip, spawn_app};

#[tokio::test]
async fn tenants_never_see_each_other() {
    let app = spawn_app().await;
    let acme = app.key(Role::Admin, "acme").await;
    let globex = app.key(Role::Admin, "globex").await;

    let (status, _) = app.signal(&acme, &json!([block_ip("192.0.2.1")])).await;
    assert_eq!(status, StatusCode::OK);
    let (_, acme_rules) = app.get("/v1/rules", &acme).await;
    let acme_rule_id = acme_rules["rules"][0]["id"].as_i64().unwrap();

    // Lists, look-up by id, delete and audit are all scoped to the key's tenant.
    assert!(app.targets(&globex).await.is_empty());
    assert!(app.targets(&app.admin).await.is_empty());
    let path = format!("/v1/rules/{acme_rule_id}");
    let (status, body) = app.get(&path, &globex).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        json!({"error": "NotFound", "message": "Rule not found", "code": 404})
    );
    let (status, _) = app.delete(&path, &globex).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Globex's audit holds the making of its own key, nothing of acme's.
    let (_, audit) = app.get("/v1/audit", &globex).await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["event"]["op"], "create_key");

    // The same target in another tenant is another rule; unblocking it leaves acme's alone.
    let (status, _) = app.signal(&globex, &json!([block_ip("192.0.2.1")])).await;
    assert_eq!(status, StatusCode::OK);
    let (_, globex_rules) = app.get("/v1/rules", &globex).await;
    assert_ne!(
        globex_rules["rules"][0]["id"].as_i64().unwrap(),
        acme_rule_id
    );
    let unblock = json!([{"type": "access_rules", "action": "unblock", "ip": "192.0.2.1"}]);
    app.signal(&globex, &unblock).await;
    assert!(app.targets(&globex).await.is_empty());
    assert_eq!(app.targets(&acme).await, ["192.0.2.1/32"]);

    let (status, _) = app.get(&path, &acme).await;
    assert_eq!(status, StatusCode::OK);
    // Acme's own signal and the making of its key; none of globex's.
    let (_, audit) = app.get("/v1/audit", &acme).await;
    let ops: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["event"])
        .collect();
    assert_eq!(ops.len(), 2, "{audit}");
    assert_eq!(ops[1]["op"], "create_key");
}

#[tokio::test]
async fn roles_decide_what_a_key_may_do() {
    let app = spawn_app().await;
    let reader = app.key(Role::Reader, "default").await;
    let writer = app.key(Role::Writer, "default").await;

    let (status, body) = app.signal(&reader, &json!([block_ip("192.0.2.1")])).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        json!({"error": "Forbidden", "message": "API key role 'reader' may not do this", "code": 403})
    );

    let (status, _) = app.signal(&writer, &json!([block_ip("192.0.2.1")])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.targets(&reader).await, ["192.0.2.1/32"]);
    assert_eq!(app.targets(&writer).await, ["192.0.2.1/32"]);

    let (_, rules) = app.get("/v1/rules", &reader).await;
    let path = format!("/v1/rules/{}", rules["rules"][0]["id"]);
    let (status, _) = app.get(&path, &reader).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.delete(&path, &reader).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    for key in [&reader, &writer] {
        let (status, body) = app.get("/v1/audit", key).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["code"], 403);
    }
    let (status, audit) = app.get("/v1/audit", &app.admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(audit["entries"][0]["outcome"], "applied");

    let (status, _) = app.delete(&path, &writer).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(app.targets(&reader).await.is_empty());
    let (_, audit) = app.get("/v1/audit", &app.admin).await;
    assert_eq!(
        audit["entries"][0]["event"],
        json!({"op": "delete_rule", "id": rules["rules"][0]["id"]})
    );
}

#[tokio::test]
async fn revoked_keys_are_refused() {
    let app = spawn_app().await;
    let writer = app.key(Role::Writer, "default").await;
    let (status, _) = app.signal(&writer, &json!([block_ip("192.0.2.1")])).await;
    assert_eq!(status, StatusCode::OK);

    let keys = app.state.engine.backend().keys().await.unwrap();
    let id = keys.iter().find(|k| k.role == Role::Writer).unwrap().id;
    app.state
        .engine
        .revoke_key(
            id,
            SystemClock.now(),
            palisade::store::Actor::command_line(),
        )
        .await
        .unwrap();
    app.state.reload_keys().await.unwrap();

    let (status, body) = app.signal(&writer, &json!([block_ip("192.0.2.2")])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["message"], "Invalid or missing API key");
    let (status, _) = app.get("/v1/rules", &writer).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.targets(&app.admin).await, ["192.0.2.1/32"]);
}

/// A key made by another process (here: straight into the store, as `palisade keys create`
/// does) works on the very next request, without waiting for the periodic re-read.
#[tokio::test]
async fn a_new_key_works_on_the_next_request() {
    let app = spawn_app().await;
    let (secret, _) = palisade::app::create_key(
        &app.state.engine,
        "fresh",
        Role::Reader,
        "default",
        &SystemClock,
        palisade::store::Actor::command_line(),
    )
    .await
    .unwrap();
    let (status, body) = app.get("/v1/rules", &secret).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Made-up keys of the right shape are asked about once, then remembered as wrong.
    let (made_up, _) = palisade::keys::generate();
    for _ in 0..3 {
        assert_eq!(
            app.get("/v1/rules", &made_up).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert!(
        app.state
            .unknown_keys
            .contains(&palisade::keys::digest(&made_up))
    );
}

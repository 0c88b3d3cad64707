//! What the store keeps, and for how long: capped audit entries, bounded audit pages,
//! retention of the audit log and the change log, readiness, and file permissions.

use std::os::unix::fs::PermissionsExt;

use palisade::app::{Retention, apply_retention};
use palisade::clock::Clock;
use palisade::config::Config;
use palisade::rules::UnixMillis;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest;

use crate::helpers::{block_ip, spawn_app, spawn_with};

#[tokio::test]
async fn junk_events_are_audited_by_size_and_digest() {
    let app = spawn_app().await;
    let junk = format!(r#"[{{"junk":"{}"}}]"#, "A".repeat(3_000_000));
    let (status, _) = app.post_raw("/v1/signal", &app.admin, junk.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, audit) = app.get("/v1/audit", &app.admin).await;
    let entry = &audit["entries"][0];
    let event = &junk[1..junk.len() - 1];
    let kept = &entry["event"]["truncated"];
    assert_eq!(kept["bytes"], event.len());
    let digest: String = sha2::Sha256::digest(event.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(kept["sha256"], digest);
    assert!(
        kept["head"]
            .as_str()
            .unwrap()
            .starts_with(r#"{"junk":"AAAA"#)
    );
    assert!(
        entry["event"].to_string().len() <= 8192,
        "{}",
        entry["event"]
    );
    assert_eq!(entry["outcome"], "rejected");
    // A valid event, even a long one, is kept whole.
    let long = json!([{"type": "access_rules", "action": "block", "ip": "192.0.2.1",
                       "description": "é".repeat(1024), "name": "ñ".repeat(255)}]);
    let (status, _) = app.signal(&app.admin, &long).await;
    assert_eq!(status, StatusCode::OK);
    let (_, audit) = app.get("/v1/audit?limit=1", &app.admin).await;
    assert_eq!(audit["entries"][0]["event"], long[0]);
}

#[tokio::test]
async fn audit_pages_stop_at_their_byte_limit() {
    let app = spawn_with(|c| c.audit.page_bytes = 20_000, None).await;
    for _ in 0..5 {
        let junk = format!(r#"[{{"junk":"{}"}}]"#, "B".repeat(9_000));
        app.post_raw("/v1/signal", &app.admin, junk).await;
    }
    let mut seen = 0;
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let (status, page) = app
            .get(&format!("/v1/audit?limit=100{cursor}"), &app.admin)
            .await;
        assert_eq!(status, StatusCode::OK);
        let entries = page["entries"].as_array().unwrap();
        let bytes: usize = entries.iter().map(|e| e["event"].to_string().len()).sum();
        assert!(bytes <= 20_000 || entries.len() == 1, "{bytes}");
        seen += entries.len();
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    // The five signals and the first start's admin key.
    assert_eq!(seen, 6);
    assert!(pages >= 3, "{pages}");
}

#[tokio::test]
async fn old_audit_and_change_log_entries_are_deleted() {
    let start = UnixMillis(1_900_000_000_000);
    let app = crate::helpers::spawn_app_at(start).await;
    let clock = app.clock.clone().unwrap();
    app.signal(&app.admin, &json!([block_ip("192.0.2.1")]))
        .await;
    clock.advance_ms(91 * 86_400_000);
    app.signal(&app.admin, &json!([block_ip("192.0.2.2")]))
        .await;
    let retention = Retention::from_config(&Config::default());
    let engine = &app.state.engine;
    let (audit, changes) = apply_retention(engine, clock.now(), retention)
        .await
        .unwrap();
    // The first signal's entry and the first start's admin key, made before it.
    assert_eq!((audit, changes), (2, 1));
    let (_, page) = app.get("/v1/audit", &app.admin).await;
    let events: Vec<&Value> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["event"]["ip"])
        .collect();
    assert_eq!(events, [&json!("192.0.2.2")]);
    let log = engine.backend().changes_since(0, 10).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].target.to_string(), "192.0.2.2/32");
    // The rules themselves are untouched: retention is about history, not state.
    assert_eq!(app.targets(&app.admin).await.len(), 2);
    // Nothing is old enough a second time.
    assert_eq!(
        apply_retention(engine, clock.now(), retention)
            .await
            .unwrap(),
        (0, 0)
    );
}

#[tokio::test]
async fn a_healthy_node_is_ready() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"status": "ready", "problems": []}));
}

#[tokio::test]
async fn the_data_directory_is_private() {
    // About the embedded store's files, whichever backend the suite runs on.
    let sqlite = |c: &mut Config| c.database.url = None;
    let app = spawn_with(sqlite, None).await;
    app.signal(&app.admin, &json!([block_ip("192.0.2.1")]))
        .await;
    let mode = |name: &str| {
        std::fs::metadata(app._dir.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("palisade.db"), 0o600);
    assert_eq!(mode("palisade.db-wal"), 0o600);
    assert_eq!(mode("palisade.db-shm"), 0o600);
    let fresh = tempfile::tempdir().unwrap();
    let inside = fresh.path().join("new");
    spawn_with(
        |c| {
            sqlite(c);
            c.data_dir = inside.clone();
        },
        None,
    )
    .await;
    let dir_mode = std::fs::metadata(&inside).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
}

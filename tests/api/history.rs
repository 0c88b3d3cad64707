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

/// The store's write lock, held by another connection the way a stuck administrator's session
/// or a long migration would hold it, until `release`.
enum HeldLock {
    Sqlite(rusqlite::Connection),
    Postgres(sqlx::PgConnection),
}

impl HeldLock {
    async fn take(config: &Config) -> Self {
        use sqlx::Connection;
        match (&config.database.url, &config.database.schema) {
            (Some(url), Some(schema)) => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                for statement in [
                    format!("SET search_path TO \"{schema}\""),
                    "BEGIN".into(),
                    // Every write transaction takes this row first.
                    "SELECT seq FROM feed_head WHERE id = 1 FOR UPDATE".into(),
                ] {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                        .execute(&mut conn)
                        .await
                        .unwrap();
                }
                Self::Postgres(conn)
            }
            _ => {
                let conn = rusqlite::Connection::open(config.data_dir.join("palisade.db")).unwrap();
                conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                Self::Sqlite(conn)
            }
        }
    }

    async fn release(self) {
        match self {
            Self::Sqlite(conn) => conn.execute_batch("ROLLBACK").unwrap(),
            Self::Postgres(mut conn) => {
                sqlx::raw_sql("ROLLBACK").execute(&mut conn).await.unwrap();
            }
        }
    }
}

/// A store that hangs rather than refuses (its write lock held elsewhere) makes the node not
/// ready within the probe's time limit, and ready again once it answers.
#[tokio::test]
async fn a_store_that_stops_answering_makes_the_node_not_ready_until_it_answers() {
    let mut config = None;
    let app = spawn_with(
        |c| {
            c.store.probe_interval_secs = 1;
            c.store.probe_timeout_ms = 500;
            config = Some(c.clone());
        },
        None,
    )
    .await;
    let config = config.unwrap();
    let readiness = || async {
        let response = app.http.get(app.url("/readyz")).send().await.unwrap();
        let status = response.status();
        (status, response.json::<Value>().await.unwrap())
    };
    assert_eq!(readiness().await.0, StatusCode::OK);
    let lock = HeldLock::take(&config).await;
    let mut seen = Vec::new();
    let problems = loop {
        let (status, body) = readiness().await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break body["problems"].clone();
        }
        seen.push(status);
        assert!(
            seen.len() < 300,
            "still ready 30 s after the store stopped answering"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        problems,
        json!(["the store does not accept writes: a write did not finish within 500 ms"])
    );
    // Look-ups keep answering from memory meanwhile.
    let (status, _) = app.get("/v1/check?ip=192.0.2.1", &app.admin).await;
    assert_eq!(status, StatusCode::OK);
    lock.release().await;
    for waited in 0.. {
        if readiness().await.0 == StatusCode::OK {
            break;
        }
        assert!(
            waited < 300,
            "not ready 30 s after the store answered again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
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

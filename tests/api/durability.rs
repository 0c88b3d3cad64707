//! The real binary, killed with SIGKILL right after acknowledging writes, then restarted.

use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{answer, block_ip, start};

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (server, key) = start(dir.path(), true);
    let key = key.expect("the first start prints an admin key");
    let http = reqwest::Client::new();

    // Several concurrent batches; the server is killed the moment the last answer arrives.
    let mut acknowledged = Vec::new();
    let mut pending = Vec::new();
    for batch in 0..8 {
        let events: Vec<Value> = (0..250)
            .map(|i| block_ip(&format!("10.{batch}.{}.{}", i / 100, i % 100)))
            .collect();
        let request = http
            .post(format!("{}/v1/signal", server.base))
            .bearer_auth(&key)
            .json(&events)
            .send();
        pending.push((events, tokio::spawn(request)));
    }
    for (events, request) in pending {
        let response = request.await.unwrap().unwrap();
        let (status, body) = answer(response).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        acknowledged.extend(events);
    }
    server.kill_9();

    let (server, _) = start(dir.path(), false);
    let mut stored = std::collections::HashSet::new();
    let mut cursor = String::new();
    loop {
        let response = http
            .get(format!("{}/v1/rules?limit=1000{cursor}", server.base))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        let (status, body) = answer(response).await;
        assert_eq!(status, StatusCode::OK);
        for rule in body["rules"].as_array().unwrap() {
            stored.insert(rule["target"].as_str().unwrap().to_owned());
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(stored.len(), acknowledged.len());
    for event in &acknowledged {
        let target = format!("{}/32", event["ip"].as_str().unwrap());
        assert!(
            stored.contains(&target),
            "{target} was acknowledged but lost"
        );
    }
    let response = http
        .get(format!("{}/v1/audit?limit=1", server.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer(response).await.1["entries"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// `palisade keys create/revoke` against a running server's data directory.
#[tokio::test]
async fn keys_made_on_the_command_line_apply_to_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = start(dir.path(), true);
    let cli = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let out = cli(&[
        "keys", "create", "--name", "ids", "--role", "writer", "--tenant", "acme",
    ]);
    let key = out.lines().last().unwrap().to_owned();
    assert!(key.starts_with("pal_"), "{out}");
    let listed = cli(&["keys", "list"]);
    assert!(
        listed.contains("ids") && listed.contains("acme") && !listed.contains(&key),
        "{listed}"
    );

    let http = reqwest::Client::new();
    let signal = || {
        http.post(format!("{}/v1/signal", server.base))
            .bearer_auth(&key)
            .body(json!([block_ip("192.0.2.1")]).to_string())
            .send()
    };
    // Revocations reach the server at its next re-read of the keys (every 500 ms); allow
    // generous time before calling it broken.
    let status_within = |want: StatusCode| async move {
        for _ in 0..100 {
            if signal().await.unwrap().status() == want {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    };
    // No waiting: the key works on the very next request after `keys create` returned.
    assert_eq!(signal().await.unwrap().status(), StatusCode::OK);
    let id = listed
        .lines()
        .find(|l| l.contains("ids"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    cli(&["keys", "revoke", &id]);
    assert!(
        status_within(StatusCode::UNAUTHORIZED).await,
        "a revoked key kept working"
    );
}

/// Reports answered 202 are applied after a crash, exactly once: those the worker had not
/// reached, and one left in the queue by a process that died right after committing it.
#[tokio::test]
async fn accepted_reports_survive_kill_9_and_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let (server, key) = start(dir.path(), true);
    let key = key.unwrap();
    let http = reqwest::Client::new();
    let addresses = [
        "8.8.8.8",
        "8.8.4.4",
        "1.1.1.1",
        "9.9.9.9",
        "2606:4700::1111",
    ];
    for (i, ip) in addresses.iter().enumerate() {
        // Five reports: within one key's 6-per-minute limit.
        let body = json!({"addresses": [ip], "tags": [format!("n{i}")]}).to_string();
        let response = http
            .post(format!("{}/v1/ip", server.base))
            .bearer_auth(&key)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    server.kill_9();

    // A queued report as a process dying between commit and processing leaves it.
    {
        use palisade::engine::{Engine, Feed};
        use palisade::store::backend::SharedBackend;
        use palisade::store::{QueuedReport, ReportKind};
        let backend: SharedBackend = std::sync::Arc::new(
            palisade::store::sqlite::SqliteBackend::open(dir.path(), Default::default()).unwrap(),
        );
        let clock = std::sync::Arc::new(palisade::clock::SystemClock);
        let feed = std::sync::Arc::new(Feed::new(backend.clone(), clock, Vec::new()));
        let engine = Engine::start(backend.clone(), feed, Default::default());
        let tenant = backend.keys().await.unwrap()[0].tenant_id;
        engine
            .enqueue_report(QueuedReport {
                id: 0,
                tenant,
                key_id: 1,
                kind: ReportKind::Report,
                payload: r#"{"addresses":["4.4.4.4"],"ttl":3600,"dataset":"ABUSE"}"#.into(),
                received_at: palisade::rules::UnixMillis(4_000_000_000_000),
            })
            .await
            .unwrap();
    }

    let (server, _) = start(dir.path(), false);
    let mut drained = false;
    for _ in 0..200 {
        let response = http
            .get(format!("{}/v1/reports/queue", server.base))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        if answer(response).await.1["depth"] == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(drained, "the queue was not processed after restart");
    for ip in addresses.iter().chain(["4.4.4.4"].iter()) {
        let response = http
            .get(format!("{}/v1/rules?target={ip}", server.base))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        let (_, rules) = answer(response).await;
        assert_eq!(rules["rules"][0]["reports"], 1, "{ip}: {rules}");
        // The index follows the commit by a moment; the queue row is gone at the commit.
        let mut blocked = false;
        for _ in 0..200 {
            let response = http
                .get(format!("{}/v1/check?ip={ip}", server.base))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            if answer(response).await.1["blocked"] == true {
                blocked = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(blocked, "{ip} is not enforced");
    }
}

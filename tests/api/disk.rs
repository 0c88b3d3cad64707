//! Readiness follows the disk: a data directory that fills up while the server runs makes
//! `/readyz` say so while look-ups keep answering from memory, and one that is read-only at
//! start-up stops the server with the reason. The data directory is a small tmpfs in a
//! private mount namespace (root only: `unshare -m`).

use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Server, start_command};

/// Starts the server on a tmpfs of `size` mounted at `mount` in a mount namespace of its own.
fn start_on_tmpfs(mount: &std::path::Path, size: &str) -> (Server, String) {
    let mut command = Command::new("unshare");
    command.args(["-m", "sh", "-c"]).arg(format!(
        "mount -t tmpfs -o size={size} tmpfs {dir} && exec {bin} serve --listen 127.0.0.1:0 --data-dir {dir}/data",
        dir = mount.display(),
        bin = env!("CARGO_BIN_EXE_palisade"),
    ));
    command
        .env("PALISADE_STORE__PROBE_INTERVAL_SECS", "1")
        .env("PALISADE_STORE__MIN_FREE_DISK_MIB", "1");
    let (server, key) = start_command(command, true);
    (server, key.expect("a new data directory prints a key"))
}

async fn readiness(http: &reqwest::Client, server: &Server) -> (StatusCode, Value) {
    let response = http
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

/// Polls `/readyz` until its status is `want`; panics after a generous wait.
async fn until_ready_is(http: &reqwest::Client, server: &Server, want: StatusCode) -> Value {
    for _ in 0..300 {
        let (status, body) = readiness(http, server).await;
        if status == want {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "/readyz never answered {want}:\n{}",
        server.logs.lock().unwrap()
    );
}

fn batch(block: usize) -> Value {
    let events: Vec<Value> = (0..1000)
        .map(|i| {
            json!({"type": "access_rules", "action": "block",
                   "ip": format!("10.{}.{}.{}", block, i / 250, i % 250), "description": "x".repeat(500)})
        })
        .collect();
    json!(events)
}

#[tokio::test]
#[ignore = "needs root for a private tmpfs (unshare -m); bash .ci/run runs it"]
async fn a_full_disk_makes_the_node_not_ready() {
    let mount = tempfile::tempdir().unwrap();
    let (server, key) = start_on_tmpfs(mount.path(), "3m");
    let http = reqwest::Client::new();
    until_ready_is(&http, &server, StatusCode::OK).await;
    let mut refused = false;
    for block in 0..100 {
        let response = http
            .post(format!("{}/v1/signal", server.base))
            .bearer_auth(&key)
            .json(&batch(block))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            refused = true;
            break;
        }
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert!(refused, "the disk never filled");
    let body = until_ready_is(&http, &server, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["status"], "not ready");
    assert!(
        body["problems"][0]
            .as_str()
            .unwrap()
            .contains("does not accept writes"),
        "{body}"
    );
    // Still alive, and look-ups still answer from memory.
    let health = http
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let check: Value = http
        .get(format!("{}/v1/check?ip=10.0.0.1", server.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(check["blocked"], true);
}

/// A data directory that is read-only at start-up stops the server with the reason, rather
/// than a node that looks alive and answers every write with 503.
#[tokio::test]
#[ignore = "needs root for a private tmpfs (unshare -m); bash .ci/run runs it"]
async fn a_read_only_data_directory_stops_start_up_with_the_reason() {
    let mount = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_palisade");
    let dir = mount.path().display();
    let output = Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs tmpfs {dir} && {bin} keys create --name a --data-dir {dir}/data >/dev/null \
             && mount -o remount,ro {dir} && exec {bin} serve --listen 127.0.0.1:0 --data-dir {dir}/data"
        ))
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Read-only file system"), "{stderr}");
}

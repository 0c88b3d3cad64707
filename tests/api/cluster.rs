//! Several nodes (real `palisade serve` processes) on one PostgreSQL database: writes on one are
//! enforced by all, nodes that die or lose their connections catch up, and an outage of the
//! database loses no acknowledged write. Deadlines here are generous upper bounds for things
//! that must happen; how fast they happen is measured in `bench/cluster.sh`.

use std::future::Future;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::helpers::{Server, answer, block_ip, start_command};
use crate::private_pg::PrivatePostgres;

const EVENTUALLY: Duration = Duration::from_secs(20);

/// Nodes on one schema of one database.
struct Cluster {
    url: String,
    schema: String,
}

struct Node {
    server: Server,
    _data: tempfile::TempDir,
}

impl Cluster {
    async fn shared() -> Self {
        Self {
            url: crate::pg::url(),
            schema: crate::pg::fresh_schema().await,
        }
    }

    fn private(pg: &PrivatePostgres) -> Self {
        Self {
            url: pg.url(),
            schema: "palisade".into(),
        }
    }

    fn command(&self, name: &str, data: &std::path::Path, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_palisade"));
        command
            .args(args)
            .arg("--data-dir")
            .arg(data)
            .env("PALISADE_DATABASE_URL", &self.url)
            .env("PALISADE_DATABASE__SCHEMA", &self.schema)
            .env(
                "PALISADE_DATABASE__APPLICATION_NAME",
                format!("palisade-{name}"),
            )
            .env("PALISADE_STORE__FOLLOW_INTERVAL_MS", "200")
            .env("PALISADE_STORE__PROBE_INTERVAL_SECS", "1")
            // Far shorter than any outage these tests make, so every write sent while the
            // database is down is refused rather than held until it is back.
            .env("PALISADE_DATABASE__ACQUIRE_TIMEOUT_MS", "500");
        command
    }

    /// Starts a node; the first on a new database (`first`) prints the admin key.
    fn start(&self, name: &str, first: bool) -> (Node, Option<String>) {
        let data = tempfile::tempdir().unwrap();
        let command = self.command(name, data.path(), &["serve", "--listen", "127.0.0.1:0"]);
        let (server, key) = start_command(command, first);
        (
            Node {
                server,
                _data: data,
            },
            key,
        )
    }

    /// Starts another node of the cluster.
    fn node(&self, name: &str) -> (Node, Option<String>) {
        self.start(name, false)
    }

    /// Runs a `palisade` command against the database; its standard output.
    fn cli(&self, args: &[&str]) -> String {
        let data = tempfile::tempdir().unwrap();
        let output = self.command("cli", data.path(), args).output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

/// The first node of a new database and its admin key.
fn first_node(cluster: &Cluster) -> (Node, String) {
    let (node, key) = cluster.start("a", true);
    (node, key.expect("the first node prints an admin key"))
}

async fn signal(node: &Node, key: &str, events: &Value) -> (StatusCode, Value) {
    match reqwest::Client::new()
        .post(format!("{}/v1/signal", node.server.base))
        .bearer_auth(key)
        .json(events)
        .send()
        .await
    {
        Ok(response) => answer(response).await,
        Err(e) => panic!("{e}"),
    }
}

/// `blocked` of `GET /v1/check`, or `None` when the node does not answer 200.
async fn blocked(node: &Node, key: &str, ip: &str) -> Option<bool> {
    let response = reqwest::Client::new()
        .get(format!("{}/v1/check?ip={ip}", node.server.base))
        .bearer_auth(key)
        .send()
        .await
        .ok()?;
    if response.status() != StatusCode::OK {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    body["blocked"].as_bool()
}

async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + EVENTUALLY;
    while Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never: {what}");
}

#[tokio::test]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn a_write_on_one_node_is_enforced_by_all_and_keys_are_shared() {
    let cluster = Cluster::shared().await;
    let (a, key) = first_node(&cluster);
    let (b, _) = cluster.node("b");
    let (c, _) = cluster.node("c");
    let (status, body) = signal(&a, &key, &json!([block_ip("203.0.113.10")])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for node in [&b, &c] {
        eventually("the block reaches every node", || async {
            blocked(node, &key, "203.0.113.10").await == Some(true)
        })
        .await;
    }
    let (status, _) = signal(
        &c,
        &key,
        &json!([{"type": "access_rules", "action": "unblock", "ip": "203.0.113.10"}]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for node in [&a, &b] {
        eventually("the unblock reaches every node", || async {
            blocked(node, &key, "203.0.113.10").await == Some(false)
        })
        .await;
    }
    // A key made on the command line works at once on every node; revoked, it stops on all.
    let made = cluster.cli(&["keys", "create", "--name", "ids", "--role", "reader"]);
    let reader = made.lines().last().unwrap().to_owned();
    for node in [&a, &b, &c] {
        assert_eq!(blocked(node, &reader, "192.0.2.1").await, Some(false));
    }
    let listed = cluster.cli(&["keys", "list"]);
    let id = listed
        .lines()
        .find(|l| l.contains("ids"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    cluster.cli(&["keys", "revoke", &id]);
    for node in [&a, &b, &c] {
        eventually("a revoked key stops working everywhere", || async {
            blocked(node, &reader, "192.0.2.1").await.is_none()
        })
        .await;
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn a_node_killed_and_restarted_catches_up() {
    let cluster = Cluster::shared().await;
    let (a, key) = first_node(&cluster);
    let (b, _) = cluster.node("b");
    b.server.kill_9();
    let events: Vec<Value> = (0..200)
        .map(|i| block_ip(&format!("198.51.100.{}", i % 250)))
        .chain((0..50).map(|i| block_ip(&format!("203.0.113.{i}"))))
        .collect();
    let (status, _) = signal(&a, &key, &json!(events)).await;
    assert_eq!(status, StatusCode::OK);
    let (b, _) = cluster.node("b");
    for ip in ["198.51.100.0", "198.51.100.199", "203.0.113.49"] {
        assert_eq!(blocked(&b, &key, ip).await, Some(true), "{ip}");
    }
    // And it writes for the others again.
    signal(&b, &key, &json!([block_ip("192.0.2.200")])).await;
    eventually(
        "a write on the restarted node reaches the others",
        || async { blocked(&a, &key, "192.0.2.200").await == Some(true) },
    )
    .await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn a_node_whose_connections_are_cut_loses_no_change() {
    let cluster = Cluster::shared().await;
    let (a, key) = first_node(&cluster);
    let (b, _) = cluster.node("b");
    let mut admin = sqlx::PgConnection::connect(&cluster.url).await.unwrap();
    for round in 0..3 {
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'palisade-b'",
        )
        .fetch_all(&mut admin)
        .await
        .unwrap();
        assert!(!killed.is_empty(), "b had no connections to cut");
        let ip = format!("203.0.113.{round}");
        assert_eq!(
            signal(&a, &key, &json!([block_ip(&ip)])).await.0,
            StatusCode::OK
        );
        eventually(
            "b sees the change made while its connections were cut",
            || async { blocked(&b, &key, &ip).await == Some(true) },
        )
        .await;
    }
    // b writes again too (a write may fail while its pool reconnects; none is lost).
    eventually("b writes again", || async {
        signal(&b, &key, &json!([block_ip("192.0.2.99")])).await.0 == StatusCode::OK
    })
    .await;
    eventually("b's write reaches a", || async {
        blocked(&a, &key, "192.0.2.99").await == Some(true)
    })
    .await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn concurrent_writes_to_one_target_on_two_nodes_end_in_one_rule() {
    let cluster = Cluster::shared().await;
    let (a, key) = first_node(&cluster);
    let (b, _) = cluster.node("b");
    let write = |node: &Node, who: &'static str| {
        let node_base = node.server.base.clone();
        let key = key.clone();
        async move {
            let http = reqwest::Client::new();
            for i in 0..40 {
                let event = json!([{"type": "access_rules", "action": "block", "ip": "192.0.2.50",
                                    "name": format!("{who}-{i}"), "expiration": 3600 + i}]);
                let response = http
                    .post(format!("{node_base}/v1/signal"))
                    .bearer_auth(&key)
                    .json(&event)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK);
            }
        }
    };
    tokio::join!(write(&a, "a"), write(&b, "b"));
    let rules = |node: &Node| {
        let base = node.server.base.clone();
        let key = key.clone();
        async move {
            let response = reqwest::Client::new()
                .get(format!("{base}/v1/rules?target=192.0.2.50"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            answer(response).await.1["rules"].clone()
        }
    };
    let on_a = rules(&a).await;
    assert_eq!(on_a.as_array().unwrap().len(), 1, "{on_a}");
    assert_eq!(rules(&b).await, on_a);
    // Both nodes' look-ups name the same rule, as stored.
    let name = on_a[0]["name"].clone();
    for node in [&a, &b] {
        eventually("both nodes list the stored rule", || async {
            let response = reqwest::Client::new()
                .get(format!("{}/v1/check?ip=192.0.2.50", node.server.base))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            answer(response).await.1["matches"][0]["name"] == name
        })
        .await;
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL server binaries and root for a private server; bash .ci/run runs it"]
async fn postgres_stopped_and_started_under_load_loses_no_acknowledged_write() {
    let pg = PrivatePostgres::start();
    let cluster = Cluster::private(&pg);
    let (a, key) = first_node(&cluster);
    let (b, _) = cluster.node("b");
    // One writer on a, one address per request; what was answered 200 must survive.
    let writer = {
        let base = a.server.base.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let mut acknowledged = Vec::new();
            let mut refused = 0;
            let started = Instant::now();
            for i in 0u32.. {
                if started.elapsed() > Duration::from_secs(8) {
                    break;
                }
                let ip = format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255);
                let sent = http
                    .post(format!("{base}/v1/signal"))
                    .bearer_auth(&key)
                    .json(&json!([block_ip(&ip)]))
                    .send()
                    .await;
                match sent.map(|r| r.status()) {
                    Ok(StatusCode::OK) => acknowledged.push(ip),
                    Ok(StatusCode::SERVICE_UNAVAILABLE) => refused += 1,
                    Ok(other) => panic!("unexpected {other}"),
                    Err(_) => refused += 1,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acknowledged, refused)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.crash();
    // Down: look-ups still answer from memory; the nodes say they are not ready.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(blocked(&b, &key, "10.0.0.0").await, Some(true));
    for node in [&a, &b] {
        eventually("a node without its database is not ready", || async {
            reqwest::get(format!("{}/readyz", node.server.base))
                .await
                .is_ok_and(|r| r.status() == StatusCode::SERVICE_UNAVAILABLE)
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.resume();
    let (acknowledged, refused) = writer.await.unwrap();
    assert!(refused > 0, "the outage refused no write");
    assert!(acknowledged.len() > 10, "too few writes went through");
    for node in [&a, &b] {
        eventually("a node is ready again", || async {
            reqwest::get(format!("{}/readyz", node.server.base))
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .await;
    }
    for ip in &acknowledged {
        for node in [&a, &b] {
            eventually("every acknowledged write is enforced", || async {
                blocked(node, &key, ip).await == Some(true)
            })
            .await;
        }
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL server binaries and root for a private server; bash .ci/run runs it"]
async fn a_node_started_while_postgres_is_down_serves_once_it_is_back() {
    let pg = PrivatePostgres::start();
    let cluster = Cluster::private(&pg);
    let (a, key) = first_node(&cluster);
    assert_eq!(
        signal(&a, &key, &json!([block_ip("203.0.113.77")])).await.0,
        StatusCode::OK
    );
    drop(a);
    pg.crash();
    let starting = std::thread::spawn(move || {
        let data = tempfile::tempdir().unwrap();
        let command = cluster.command("b", data.path(), &["serve", "--listen", "127.0.0.1:0"]);
        let (server, _) = start_command(command, false);
        (server, data)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !starting.is_finished(),
        "the node listened before it had the rules"
    );
    pg.resume();
    let (server, _data) = starting.join().unwrap();
    let b = Node {
        server,
        _data: tempfile::tempdir().unwrap(),
    };
    assert_eq!(blocked(&b, &key, "203.0.113.77").await, Some(true));
}

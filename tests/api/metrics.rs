//! `/metrics`: Prometheus text that parses, with counters that move with traffic; request ids.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{block_ip, spawn_app, spawn_with};
use palisade::keys::Role;

/// One sample of the exposition: its name, labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parses the text format strictly enough that a malformed line fails the test.
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            let kind = words.next().unwrap();
            assert!(kind == "HELP" || kind == "TYPE", "comment: {line}");
            if kind == "TYPE" {
                words.next().unwrap();
                let t = words.next().unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "{line}"
                );
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value of {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                let mut labels = Vec::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (key, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                    let mut value = String::new();
                    let mut chars = after.char_indices();
                    let mut end = None;
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => value.push(chars.next().unwrap().1),
                            '"' => {
                                end = Some(i);
                                break;
                            }
                            c => value.push(c),
                        }
                    }
                    let end = end.unwrap_or_else(|| panic!("{line}"));
                    labels.push((key.to_owned(), value));
                    rest = after[end + 1..].trim_start_matches(',');
                }
                (name, labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

/// The sum of the samples named `name` carrying all of `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
        .sum()
}

async fn scrape(http: &reqwest::Client, url: &str, key: Option<&str>) -> Vec<Sample> {
    let mut request = http.get(url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    parse(&response.text().await.unwrap())
}

#[tokio::test]
async fn metrics_parse_and_move_with_traffic() {
    let app = spawn_app().await;
    let url = app.url("/metrics");
    let before = scrape(&app.http, &url, Some(&app.admin)).await;
    let check = [("route", "/v1/check"), ("method", "GET"), ("status", "200")];
    let requests_before = value(&before, "palisade_http_requests_total", &check);
    // A tenant of its own: gauges are per process, and other tests' servers share it.
    let writer = app.key(Role::Writer, "metrics-test").await;

    let (status, _) = app
        .signal(
            &writer,
            &json!([block_ip("192.0.2.1"), block_ip("198.51.100.0/24"), {"type": "access_rules", "action": "block", "ip": "nope"}]),
        )
        .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    for ip in ["192.0.2.1", "192.0.2.2", "198.51.100.7"] {
        let (status, _) = app.get(&format!("/v1/check?ip={ip}"), &writer).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = app.get("/no/such/path", &app.admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let after = scrape(&app.http, &url, Some(&app.admin)).await;
    assert!(value(&after, "palisade_http_requests_total", &check) >= requests_before + 3.0);
    // The matched route, never the raw URI.
    assert!(after.iter().all(|s| {
        s.labels
            .iter()
            .all(|(k, v)| k != "route" || !v.contains('?') && v != "/no/such/path")
    }));
    assert!(
        value(
            &after,
            "palisade_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ) >= 1.0
    );
    assert!(
        value(
            &after,
            "palisade_http_request_duration_seconds_count",
            &check
        ) >= requests_before + 3.0
    );
    let lookups = |s: &[Sample], decision| {
        value(
            s,
            "palisade_lookups_total",
            &[("endpoint", "check"), ("decision", decision)],
        )
    };
    assert!(lookups(&after, "block") >= lookups(&before, "block") + 2.0);
    assert!(lookups(&after, "none") >= lookups(&before, "none") + 1.0);
    let signals =
        |s: &[Sample], labels: &[(&str, &str)]| value(s, "palisade_signals_total", labels);
    assert!(
        signals(&after, &[("result", "applied")])
            >= signals(&before, &[("result", "applied")]) + 2.0
    );
    let bad_ip = [("result", "refused"), ("reason", "bad_ip")];
    assert!(signals(&after, &bad_ip) >= signals(&before, &bad_ip) + 1.0);
    assert!(value(&after, "palisade_store_commit_duration_seconds_count", &[]) >= 1.0);
    assert!(value(&after, "palisade_http_connections_open", &[]) >= 1.0);
    assert_eq!(
        value(
            &after,
            "palisade_rules_active",
            &[
                ("tenant", "metrics-test"),
                ("kind", "ip"),
                ("action", "block")
            ]
        ),
        2.0
    );
    assert_eq!(value(&after, "palisade_report_queue_depth", &[]), 0.0);
    assert!(after.iter().any(|s| s.name == "palisade_feed_lag_changes"));
    assert!(after.iter().any(|s| s.name == "palisade_build_info"));
}

#[tokio::test]
async fn metrics_need_an_admin_key_on_the_api_listener() {
    let app = spawn_app().await;
    let writer = app.key(Role::Writer, "default").await;
    let (status, _) = app.get("/metrics", &writer).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let status = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn metrics_listen_serves_metrics_without_a_key() {
    let app = spawn_with(
        |c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap()),
        None,
    )
    .await;
    let base = app.metrics_base.clone().expect("metrics_listen is set");
    let samples = scrape(&app.http, &format!("{base}/metrics"), None).await;
    assert!(samples.iter().any(|s| s.name == "palisade_build_info"));
    // Only metrics there: the API is not reachable keyless through it.
    let status = app
        .http
        .get(format!("{base}/v1/rules"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn request_ids_are_echoed_and_taken_only_from_trusted_proxies() {
    let untrusted = spawn_app().await;
    let response = untrusted
        .http
        .get(untrusted.url("/healthz"))
        .header("X-Request-Id", "from-the-client")
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(id, "from-the-client");
    assert_eq!(id.len(), 16);

    let proxied = spawn_with(
        |c| c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()],
        None,
    )
    .await;
    let response = proxied
        .http
        .post(proxied.url("/v1/signal"))
        .bearer_auth(&proxied.admin)
        .header("X-Request-Id", "edge-42")
        .body(json!([block_ip("192.0.2.9")]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "edge-42");
    // The audit log ties the write to the same id.
    let (status, audit) = proxied.get("/v1/audit", &proxied.admin).await;
    assert_eq!(status, StatusCode::OK);
    let entries = audit["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["request_id"] == "edge-42"),
        "{audit}"
    );
    // An id that could garble a log line is replaced.
    let response = proxied
        .http
        .get(proxied.url("/healthz"))
        .header("X-Request-Id", "a b\"c")
        .send()
        .await
        .unwrap();
    assert_ne!(response.headers()["x-request-id"], "a b\"c");
}

/// `--log-format json`: every line is a JSON object, and a request's lines carry its id.
#[tokio::test]
async fn json_logs_carry_the_request_id() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args([
            "--log-format",
            "json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data.path())
        .env("RUST_LOG", "info,palisade::telemetry=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || {
        let line = lines
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the server logs");
        let parsed: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        parsed
    };
    let address = loop {
        let line = next();
        if line["fields"]["message"] == "palisade listening" {
            break line["fields"]["address"].as_str().unwrap().to_owned();
        }
    };
    let response = reqwest::get(format!("http://{address}/healthz"))
        .await
        .unwrap();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let answered = loop {
        let line = next();
        if line["fields"]["message"] == "answered" {
            break line;
        }
    };
    assert_eq!(answered["request_id"], id.as_str(), "{answered}");
    assert_eq!(answered["fields"]["route"], "/healthz");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn each_bouncers_lag_is_a_gauge() {
    let app = spawn_app().await;
    let url = app.url("/metrics");
    let bouncer = app.key(Role::Reader, "default").await;
    let pull = |query: &'static str| {
        let request = app
            .http
            .get(app.url(&format!("/v1/decisions/stream{query}")))
            .header("x-api-key", &bouncer);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
    };
    pull("?startup=true").await;
    let lag = |samples: &[Sample]| value(samples, "palisade_bouncer_lag_changes", &[]);
    assert_eq!(lag(&scrape(&app.http, &url, Some(&app.admin)).await), 0.0);
    let (status, _) = app
        .signal(
            &app.admin,
            &json!([block_ip("192.0.2.1"), block_ip("192.0.2.2")]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let behind = scrape(&app.http, &url, Some(&app.admin)).await;
    assert_eq!(lag(&behind), 2.0, "two changes since its pull");
    assert!(value(&behind, "palisade_bouncer_last_pull_age_seconds", &[]) >= 0.0);
    pull("").await;
    assert_eq!(lag(&scrape(&app.http, &url, Some(&app.admin)).await), 0.0);
}

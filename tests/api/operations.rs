//! The operator's commands on the real binary: `rules import` into the store a running server
//! follows, on SQLite and PostgreSQL; `config check` of the shipped example; the systemd unit.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::{Server, start_command};

/// An upper bound for something that must happen, never a measure of how fast.
const EVENTUALLY: Duration = Duration::from_secs(20);

/// Where a test's processes keep their rules.
enum Store {
    Sqlite,
    Postgres { url: String, schema: String },
}

impl Store {
    fn command(&self, data: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_palisade"));
        command.args(args).arg("--data-dir").arg(data);
        if let Store::Postgres { url, schema } = self {
            command
                .env("PALISADE_DATABASE_URL", url)
                .env("PALISADE_DATABASE__SCHEMA", schema);
        }
        command.env("PALISADE_STORE__FOLLOW_INTERVAL_MS", "500");
        command
    }
}

fn import(store: &Store, data: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut full = vec!["rules", "import"];
    full.extend_from_slice(args);
    let mut command = store.command(data, &full);
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn blocked(server: &Server, key: &str, ip: &str) -> bool {
    let response = reqwest::Client::new()
        .get(format!("{}/v1/check?ip={ip}", server.base))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    body["blocked"].as_bool().unwrap()
}

async fn eventually_blocked(server: &Server, key: &str, ip: &str) {
    let start = Instant::now();
    while !blocked(server, key, ip).await {
        assert!(start.elapsed() < EVENTUALLY, "{ip} was never blocked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const NETSET: &str = "\
#
# firehol_level1 (excerpt)
#
192.0.2.0/24
198.51.100.7
# a line a person broke:
198.51.100.300
2001:db8:1::/48
127.0.0.0/8
";

async fn imports_are_enforced_by_a_running_server(store: Store) {
    let data = tempfile::tempdir().unwrap();
    let serve = store.command(data.path(), &["serve", "--listen", "127.0.0.1:0"]);
    let (server, key) = start_command(serve, true);
    let key = key.expect("a new store prints an admin key");
    let list = data.path().join("level1.netset");
    std::fs::write(&list, NETSET).unwrap();

    let output = import(
        &store,
        data.path(),
        &[
            list.to_str().unwrap(),
            "--format",
            "netset",
            "--dataset",
            "firehol_level1",
            "--name",
            "level1",
        ],
        None,
    );
    // Two bad lines: exit 1, but the good lines are in.
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let summary = stdout(&output);
    assert!(summary.contains("9 lines"), "{summary}");
    assert!(
        summary.contains("3 rules added, 0 refreshed, 2 invalid lines"),
        "{summary}"
    );
    assert!(summary.contains("line 7: "), "{summary}");
    assert!(
        summary.contains("line 9: must not cover the protected range 127.0.0.0/8"),
        "{summary}"
    );
    // The server (another process) enforces them without being told.
    eventually_blocked(&server, &key, "198.51.100.7").await;
    eventually_blocked(&server, &key, "192.0.2.200").await;
    eventually_blocked(&server, &key, "2001:db8:1::5").await;
    let rules = server
        .get_json("/v1/rules?dataset=firehol_level1&limit=100", &key)
        .await;
    let rules = rules["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 3, "{rules:?}");
    assert!(rules.iter().all(|r| r["name"] == "level1"));

    // Again, from standard input, auto-detected, with an expiry: the same rules refreshed.
    let valid: String = NETSET
        .lines()
        .filter(|l| !l.contains("300") && !l.starts_with("127."))
        .map(|l| format!("{l}\n"))
        .collect();
    let output = import(
        &store,
        data.path(),
        &["-", "--expiration", "3600"],
        Some(&valid),
    );
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout(&output).contains("0 rules added, 3 refreshed, 0 invalid lines"),
        "{}",
        stdout(&output)
    );
    // No progress bar off a terminal: stdout is the summary alone.
    assert_eq!(stdout(&output).lines().count(), 1, "{}", stdout(&output));
}

#[tokio::test]
async fn imports_are_enforced_by_a_running_server_on_sqlite() {
    imports_are_enforced_by_a_running_server(Store::Sqlite).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (PALISADE_TEST_DATABASE_URL); bash .ci/run runs it"]
async fn imports_are_enforced_by_a_running_server_on_postgres() {
    let store = Store::Postgres {
        url: crate::pg::url(),
        schema: crate::pg::fresh_schema().await,
    };
    imports_are_enforced_by_a_running_server(store).await;
}

#[tokio::test]
async fn each_import_format_reads_its_fixture() {
    let data = tempfile::tempdir().unwrap();
    let store = Store::Sqlite;
    // The store needs its tenant: the first start of a server makes it.
    let serve = store.command(data.path(), &["serve", "--listen", "127.0.0.1:0"]);
    let (server, _) = start_command(serve, true);
    drop(server);
    let fixtures = [
        (
            "drop",
            "; Spamhaus DROP List\n1.10.16.0/20 ; SBL256894\n1.19.0.0/16 ; SBL434604\n300.0.0.0/8 ; SBL1\n",
            2,
            vec![4],
        ),
        (
            "csv",
            "network,name\n203.0.113.0/24,scanners\n203.0.113.999,bad\n",
            1,
            vec![3],
        ),
        (
            "json",
            "[{\"target\":\"192.0.2.0/24\",\"action\":\"block\",\"name\":\"x\"},{\"target\":\"AS0\"}]",
            1,
            vec![2],
        ),
        ("plain", "198.51.100.1\n\nnonsense here\n", 1, vec![3]),
    ];
    for (format, text, added, bad) in fixtures {
        let output = import(&store, data.path(), &["-", "--format", format], Some(text));
        let summary = stdout(&output);
        assert_eq!(output.status.code(), Some(1), "{format}: {summary}");
        assert!(
            summary.contains(&format!("{added} rules added")),
            "{format}: {summary}"
        );
        for line in bad {
            assert!(
                summary.contains(&format!("line {line}: ")),
                "{format}: {summary}"
            );
        }
    }
}

#[test]
fn bad_import_options_are_refused_before_reading() {
    let data = tempfile::tempdir().unwrap();
    let output = import(
        &Store::Sqlite,
        data.path(),
        &["-", "--dataset", "no spaces"],
        Some("192.0.2.1\n"),
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--dataset"));
}

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The shipped example configuration passes `config check`, as CI runs it.
#[test]
fn the_deploy_configuration_passes_config_check() {
    let output = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["config", "check"])
        .arg(repo("deploy/palisade.toml"))
        .env_remove("PALISADE_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let shown = stdout(&output);
    assert!(shown.contains("max_connections = 10000"), "{shown}");
}

#[test]
fn config_check_names_the_line_of_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("palisade.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:8080\"\n[store]\nfollow_interval = 100\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(
        errors.contains("line 3: unknown field `follow_interval`"),
        "{errors}"
    );
}

#[test]
#[ignore = "needs systemd-analyze (package systemd); bash .ci/run runs it"]
fn the_systemd_unit_verifies() {
    crate::helpers::require("systemd-analyze", &["--version"]);
    // The unit names the binary where packages put it; verify resolves it, so point it at ours.
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(repo("deploy/palisade.service")).unwrap();
    let unit = unit.replace("/usr/bin/palisade", env!("CARGO_BIN_EXE_palisade"));
    let path = dir.path().join("palisade.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{errors}");
    // verify warns without failing; a warning about this unit is a fault in it.
    assert!(!errors.contains("palisade.service"), "{errors}");
}

/// SIGTERM while clients keep writing: the server stops accepting, answers what it took,
/// exits 0, and every write it acknowledged is there after a restart.
#[tokio::test]
async fn sigterm_under_load_loses_no_acknowledged_write() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let data = tempfile::tempdir().unwrap();
    let (mut server, key) = crate::helpers::start(data.path(), true);
    let key = key.unwrap();
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..4u32 {
        let (base, key, acknowledged) = (server.base.clone(), key.clone(), acknowledged.clone());
        clients.spawn(async move {
            let http = reqwest::Client::new();
            let mut written = Vec::new();
            for batch in 0u32.. {
                let ips: Vec<String> = (0..5)
                    .map(|n| {
                        let i = batch * 5 + n;
                        format!("10.{client}.{}.{}", i / 250, i % 250 + 1)
                    })
                    .collect();
                let events: Vec<_> = ips.iter().map(|ip| crate::helpers::block_ip(ip)).collect();
                let sent = http
                    .post(format!("{base}/v1/signal"))
                    .bearer_auth(&key)
                    .json(&events)
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status() == StatusCode::OK => {
                        written.extend(ips);
                        acknowledged.fetch_add(1, Ordering::Relaxed);
                    }
                    // Refused or cut off while stopping: not acknowledged, so not owed.
                    Ok(_) | Err(_) => break,
                }
            }
            written
        });
    }
    let start = Instant::now();
    while acknowledged.load(Ordering::Relaxed) < 200 {
        assert!(start.elapsed() < EVENTUALLY, "the clients made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The clients run on this runtime's other tasks while the server stops.
    let (status, logs) = server.terminate(EVENTUALLY * 2).await;
    assert!(status.success(), "{status:?}\n{logs}");
    let mut written = Vec::new();
    while let Some(done) = clients.join_next().await {
        written.extend(done.unwrap());
    }
    drop(server);

    let (server, _) = crate::helpers::start(data.path(), false);
    let mut missing = Vec::new();
    for ip in &written {
        let body = server.get_json(&format!("/v1/check?ip={ip}"), &key).await;
        if body["blocked"] != true {
            missing.push(ip.clone());
        }
    }
    assert!(written.len() >= 1000, "{}", written.len());
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
}

/// SIGTERM while the report worker works through a queue: it finishes the report it is
/// applying (it is not cut off and rolled back), exits 0, and after a restart the reports
/// it left are applied.
#[tokio::test]
async fn sigterm_lets_the_report_worker_finish_its_report() {
    const REPORTS: usize = 12;
    const ADDRESSES: usize = 10_000;
    let address = |report: usize, n: usize| format!("11.{report}.{}.{}", n / 250, n % 250 + 1);
    let data = tempfile::tempdir().unwrap();
    let limits = |command: &mut Command| {
        command.env("PALISADE_RATE_LIMITS__REPORTS_PER_MINUTE", "1000");
    };
    let (mut server, key) = crate::helpers::start_with(data.path(), true, limits);
    let key = key.unwrap();
    let http = reqwest::Client::new();
    for report in 0..REPORTS {
        let addresses: Vec<String> = (0..ADDRESSES).map(|n| address(report, n)).collect();
        let response = http
            .post(format!("{}/v1/ip", server.base))
            .bearer_auth(&key)
            .json(&serde_json::json!({"addresses": addresses, "ttl": 3600}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    let depth = async |server: &Server| {
        let queue = server.get_json("/v1/reports/queue", &key).await;
        queue["depth"].as_u64().unwrap()
    };
    let start = Instant::now();
    // Stopped once the worker is under way, with reports still waiting.
    while depth(&server).await == REPORTS as u64 {
        assert!(start.elapsed() < EVENTUALLY, "the worker never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, logs) = server.terminate(EVENTUALLY * 2).await;
    assert!(status.success(), "{status:?}\n{logs}");
    assert!(
        logs.contains("the report worker finished its report and stopped"),
        "{logs}"
    );
    drop(server);

    let (server, _) = crate::helpers::start_with(data.path(), false, limits);
    let start = Instant::now();
    while depth(&server).await > 0 {
        assert!(start.elapsed() < EVENTUALLY * 3, "the queue never drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for report in 0..REPORTS {
        let ips: Vec<String> = (0..ADDRESSES).map(|n| address(report, n)).collect();
        let body: serde_json::Value = http
            .post(format!("{}/v1/check", server.base))
            .bearer_auth(&key)
            .json(&serde_json::json!({ "ips": ips }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let results = body["results"].as_array().unwrap();
        let unblocked = results.iter().filter(|r| r["blocked"] != true).count();
        assert_eq!(
            unblocked, 0,
            "report {report}: {unblocked} addresses not applied"
        );
    }
}

/// The instructions of a container file, continuation lines joined: `(INSTRUCTION, arguments)`.
fn container_instructions(text: &str) -> Vec<(String, String)> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    joined
        .into_iter()
        .map(|line| {
            let (word, rest) = line.split_once(' ').unwrap_or((&line, ""));
            (word.to_uppercase(), rest.trim().to_owned())
        })
        .collect()
}

/// No container engine runs where CI does, so the container file is checked for what it relies
/// on: the files it copies exist, it builds this package's binary with the locked dependencies
/// and a toolchain new enough, it runs as a user that is not root and stops with the signal the
/// server drains on, and the binary started as the image starts it (its entrypoint, command,
/// environment and configuration file) comes up, prints the first admin key and is ready.
#[test]
fn the_container_file_runs_what_it_builds() {
    let text = std::fs::read_to_string(repo("deploy/Containerfile")).unwrap();
    let instructions = container_instructions(&text);
    let all = |word: &str| -> Vec<String> {
        instructions
            .iter()
            .filter(|(w, _)| w == word)
            .map(|(_, rest)| rest.clone())
            .collect()
    };
    let one = |word: &str| -> String {
        let found = all(word);
        assert_eq!(found.len(), 1, "{word}: {found:?}");
        found[0].clone()
    };

    let manifest = std::fs::read_to_string(repo("Cargo.toml")).unwrap();
    let wanted: Vec<u32> = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"')
        .split('.')
        .map(|n| n.parse().unwrap())
        .collect();
    let build_image = all("FROM")
        .into_iter()
        .find(|from| from.contains("/rust:"))
        .expect("a Rust build stage");
    let tag = build_image.split(':').nth(1).unwrap();
    let given: Vec<u32> = tag
        .split(['-', ' '])
        .next()
        .unwrap()
        .split('.')
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        given >= wanted,
        "{build_image} is older than rust-version {wanted:?}"
    );
    assert!(
        all("RUN")
            .iter()
            .any(|run| run.contains("cargo build --release --locked --bin palisade")),
        "{text}"
    );

    let mut config_file = None;
    for copy in all("COPY") {
        let words: Vec<&str> = copy.split_whitespace().collect();
        let (sources, target) = words.split_at(words.len() - 1);
        if sources[0].starts_with("--from=") {
            assert_eq!(sources[1], "/src/target/release/palisade", "{copy}");
            assert_eq!(target[0], "/usr/bin/palisade", "{copy}");
            continue;
        }
        for source in sources {
            assert!(repo(source).exists(), "COPY of a missing {source}");
            if source.ends_with(".toml") {
                config_file = Some((repo(source), target[0].to_owned()));
            }
        }
    }
    let (config_file, config_in_image) = config_file.expect("a configuration file copied in");
    assert_ne!(one("USER"), "root");
    assert_eq!(one("STOPSIGNAL"), "SIGTERM");
    let entrypoint: Vec<String> = serde_json::from_str(&one("ENTRYPOINT")).unwrap();
    assert_eq!(entrypoint, ["/usr/bin/palisade"]);
    let command: Vec<String> = serde_json::from_str(&one("CMD")).unwrap();

    let mut environment = Vec::new();
    for env in all("ENV") {
        for pair in env.split_whitespace() {
            let (name, value) = pair.split_once('=').unwrap();
            environment.push((name.to_owned(), value.to_owned()));
        }
    }
    let listen = environment
        .iter()
        .find(|(name, _)| name == "PALISADE_LISTEN")
        .map(|(_, value)| value.clone())
        .expect("PALISADE_LISTEN");
    let port = listen.rsplit(':').next().unwrap();
    assert_eq!(one("EXPOSE"), port, "EXPOSE and PALISADE_LISTEN disagree");

    // Started as the image starts it, with the image's paths mapped to this machine's.
    let data = tempfile::tempdir().unwrap();
    let mut started = Command::new(env!("CARGO_BIN_EXE_palisade"));
    started.args(&command).env_remove("PALISADE_DATABASE_URL");
    for (name, value) in &environment {
        let value = match name.as_str() {
            "PALISADE_LISTEN" => "127.0.0.1:0".to_owned(),
            "PALISADE_DATA_DIR" => data.path().display().to_string(),
            "PALISADE_CONFIG" => {
                assert_eq!(
                    value, &config_in_image,
                    "PALISADE_CONFIG names another file"
                );
                config_file.display().to_string()
            }
            _ => value.clone(),
        };
        started.env(name, value);
    }
    let mut child = started
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut output = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    while !printed.contains("pal_") {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut output, &mut line).unwrap() == 0 {
            let _ = child.kill();
            let mut errors = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut errors).unwrap();
            panic!("the image's command printed no admin key:\n{printed}\n{errors}");
        }
        printed.push_str(&line);
    }
    // JSON log lines, as the image asks for: the listening line carries the address.
    let mut logs = std::io::BufReader::new(child.stderr.take().unwrap());
    let address = loop {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut logs, &mut line).unwrap() > 0);
        let parsed: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if let Some(address) = parsed["fields"]["address"].as_str() {
            break address.to_owned();
        }
    };
    let ready = std::net::TcpStream::connect(&address).and_then(|mut stream| {
        use std::io::{Read, Write};
        stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    });
    let _ = child.kill();
    let _ = child.wait();
    let ready = ready.unwrap();
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
}

fn export(data: &Path, format: &str) -> String {
    let output = Store::Sqlite
        .command(data, &["rules", "export", "--format", format])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(&output)
}

/// What one store exports as JSON, another imports to the same blocklist.
#[tokio::test]
async fn an_export_imports_to_the_same_blocklist() {
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for data in [&first, &second] {
        let serve = Store::Sqlite.command(data.path(), &["serve", "--listen", "127.0.0.1:0"]);
        drop(start_command(serve, true));
    }
    let list = "192.0.2.0/25\n192.0.2.128/25\n198.51.100.7\n2001:db8:1::/48\n";
    let output = import(
        &Store::Sqlite,
        first.path(),
        &["-", "--expiration", "86400"],
        Some(list),
    );
    assert!(output.status.success(), "{}", stdout(&output));
    let allow = import(
        &Store::Sqlite,
        first.path(),
        &["-", "--action", "allow"],
        Some("198.51.100.7\n"),
    );
    assert!(allow.status.success(), "{}", stdout(&allow));

    let json = export(first.path(), "json");
    let output = import(
        &Store::Sqlite,
        second.path(),
        &["-", "--format", "json"],
        Some(&json),
    );
    assert!(output.status.success(), "{}\n{json}", stdout(&output));

    let plain = export(first.path(), "plain");
    // Neighbours joined, the allowed address taken out.
    assert!(plain.contains("192.0.2.0/24"), "{plain}");
    assert!(!plain.contains("198.51.100.7"), "{plain}");
    assert_eq!(export(second.path(), "plain"), plain);
    for format in ["nftables", "ipset", "nginx"] {
        assert!(
            export(second.path(), format).contains("192.0.2.0/24"),
            "{format}"
        );
    }
}

/// Precedence as `config check` shows it: defaults, then the file, then the environment.
#[test]
fn the_environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("palisade.toml");
    std::fs::write(&file, "[server]\nmax_connections = 7\n").unwrap();
    let check = |env: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_palisade"));
        command.args(["config", "check"]).arg(&file);
        if let Some(value) = env {
            command.env("PALISADE_SERVER__MAX_CONNECTIONS", value);
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout(&output)
    };
    let from_file = check(None);
    assert!(from_file.contains("max_connections = 7"), "{from_file}");
    assert!(from_file.contains("idle_timeout_secs = 120"), "{from_file}");
    assert!(check(Some("5")).contains("max_connections = 5"));
}

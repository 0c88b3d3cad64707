//! A real server on a real socket (port 0) with a real SQLite file in a temporary directory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use palisade::api::AppState;
use palisade::app::{Application, create_key};
use palisade::clock::{Clock, ManualClock, SystemClock};
use palisade::config::Config;
use palisade::keys::Role;
use palisade::rules::UnixMillis;
use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;

pub struct TestApp {
    pub base: String,
    /// The admin key of tenant `default` the first start created.
    pub admin: String,
    pub state: AppState,
    pub http: reqwest::Client,
    pub clock: Option<Arc<ManualClock>>,
    /// `http://host:port` of the keyless metrics listener, when `metrics_listen` is set.
    pub metrics_base: Option<String>,
    _stop: oneshot::Sender<()>,
    pub _dir: TempDir,
}

pub fn test_config(dir: &TempDir) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_with(|_| {}, None).await
}

/// A server whose clock only moves when the test moves it.
pub async fn spawn_app_at(start: UnixMillis) -> TestApp {
    spawn_with(|_| {}, Some(Arc::new(ManualClock::new(start)))).await
}

pub async fn spawn_with(
    configure: impl FnOnce(&mut Config),
    clock: Option<Arc<ManualClock>>,
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir);
    if crate::pg::http_suite_on_postgres() {
        config.database.url = Some(crate::pg::url());
        config.database.schema = Some(crate::pg::fresh_schema().await);
        config.database.pool_size = 4;
    }
    configure(&mut config);
    let app = spawn_config(config, clock).await;
    assert!(!app.admin.is_empty(), "a new data dir gets an admin key");
    TestApp { _dir: dir, ..app }
}

/// A server on `config` as given (a data directory or schema used before, say); `admin` is
/// empty unless this start created the first key.
pub async fn spawn_config(config: Config, clock: Option<Arc<ManualClock>>) -> TestApp {
    let app_clock: Arc<dyn Clock> = match &clock {
        Some(c) => c.clone(),
        None => Arc::new(SystemClock),
    };
    let app = Application::build_with_clock(config, app_clock)
        .await
        .unwrap();
    let base = format!("http://{}", app.local_addr());
    let admin = app.bootstrap_key.clone().unwrap_or_default();
    let state = app.state().clone();
    let metrics_base = app.metrics_addr().map(|a| format!("http://{a}"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    TestApp {
        base,
        admin,
        state,
        http: reqwest::Client::new(),
        clock,
        metrics_base,
        _stop: stop,
        _dir: tempfile::tempdir().unwrap(),
    }
}

impl TestApp {
    /// The report worker runs in the background; waits (with a generous deadline) until it has
    /// emptied the queue and the index has caught up with the store's change log.
    pub async fn reports_processed(&self) {
        for _ in 0..400 {
            let (_, queue) = self.get("/v1/reports/queue", &self.admin).await;
            let seq = self.state.index.seq();
            let behind = self
                .state
                .engine
                .backend()
                .changes_since(seq, 1)
                .await
                .unwrap();
            if queue["depth"] == 0 && behind.is_empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the report queue never drained");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Makes a key through the store and makes the server see it now, not at the next refresh.
    pub async fn key(&self, role: Role, tenant: &str) -> String {
        let (secret, _) = create_key(
            &self.state.engine,
            "test",
            role,
            tenant,
            &SystemClock,
            palisade::store::Actor::command_line(),
        )
        .await
        .unwrap();
        self.state.reload_keys().await.unwrap();
        secret
    }

    pub async fn post_raw(
        &self,
        path: &str,
        key: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(key)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        answer(response).await
    }

    pub async fn signal(&self, key: &str, body: &Value) -> (StatusCode, Value) {
        self.post_raw("/v1/signal", key, body.to_string()).await
    }

    pub async fn get(&self, path: &str, key: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        answer(response).await
    }

    pub async fn delete(&self, path: &str, key: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .delete(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        answer(response).await
    }

    /// Targets of the tenant's active rules, in id order.
    pub async fn targets(&self, key: &str) -> Vec<String> {
        let (status, body) = self.get("/v1/rules?limit=1000", key).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["target"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// Status and JSON body (`null` for an empty body).
pub async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
    };
    (status, body)
}

pub fn block_ip(ip: &str) -> Value {
    serde_json::json!({"type": "access_rules", "action": "block", "ip": ip})
}

/// The real binary, running `palisade serve`.
pub struct Server {
    pub child: Child,
    pub base: String,
    /// Everything the server has logged so far (stderr is read to the end in the background,
    /// so the server never writes into a closed pipe).
    pub logs: Arc<std::sync::Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `GET path` with `key`, the answer parsed as JSON whatever its status.
    pub async fn get_json(&self, path: &str, key: &str) -> Value {
        reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// SIGTERM, then waits for the exit, failing the test when it takes longer than `within`.
    /// Returns the exit status and everything logged by then.
    pub async fn terminate(&mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < within,
                "the server did not stop:\n{}",
                self.logs.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The thread copying the log may still hold the last lines.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let logs = self.logs.lock().unwrap().clone();
        (status, logs)
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Starts `palisade serve` on port 0 and reads its address from the log. On a new data
/// directory it also reads the admin key the first start prints.
pub fn start(data_dir: &Path, new: bool) -> (Server, Option<String>) {
    start_with(data_dir, new, |_| {})
}

/// As [`start`], with the command adjusted first (configuration variables, limits).
pub fn start_with(
    data_dir: &Path,
    new: bool,
    configure: impl FnOnce(&mut Command),
) -> (Server, Option<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_palisade"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir);
    configure(&mut command);
    start_command(command, new)
}

/// Runs `command`, which must end up running `palisade serve` (perhaps through a wrapper), and
/// reads its address and, when `new`, the admin key it prints.
pub fn start_command(mut command: Command, new: bool) -> (Server, Option<String>) {
    command
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command.spawn().unwrap();
    let mut server = Server {
        child,
        base: String::new(),
        logs: Default::default(),
    };
    let mut stderr = BufReader::new(server.child.stderr.take().unwrap()).lines();
    for line in stderr.by_ref() {
        let line = line.unwrap();
        server.logs.lock().unwrap().push_str(&line);
        server.logs.lock().unwrap().push('\n');
        if let Some(at) = line.find("address=") {
            let addr = line[at + "address=".len()..]
                .split_whitespace()
                .next()
                .unwrap();
            server.base = format!("http://{addr}");
            break;
        }
    }
    assert!(
        !server.base.is_empty(),
        "the server exited before listening:\n{}",
        server.logs.lock().unwrap()
    );
    let logs = server.logs.clone();
    std::thread::spawn(move || {
        for line in stderr.map_while(Result::ok) {
            let mut logs = logs.lock().unwrap();
            logs.push_str(&line);
            logs.push('\n');
        }
    });
    let mut key = None;
    if new {
        let stdout = BufReader::new(server.child.stdout.take().unwrap());
        for line in stdout.lines() {
            let line = line.unwrap();
            if line.trim().starts_with("pal_") {
                key = Some(line.trim().to_owned());
                break;
            }
        }
    }
    (server, key)
}

/// Panics unless `program` runs: a test that needs an outside program is `#[ignore]`d with the
/// reason (plain `cargo test` lists it as ignored) and run by `bash .ci/run`, which installs
/// the programs and runs ignored tests too; there a missing program is a failure, never a pass.
pub fn require(program: &str, args: &[&str]) {
    let ran = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        ran,
        "`{program} {}` failed: this test needs {program} (bash .ci/run installs it)",
        args.join(" ")
    );
}

//! A real server on a real socket (port 0) with a real SQLite file in a temporary directory.

use std::sync::Arc;

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
    configure(&mut config);
    let app_clock: Arc<dyn Clock> = match &clock {
        Some(c) => c.clone(),
        None => Arc::new(SystemClock),
    };
    let app = Application::build_with_clock(config, app_clock)
        .await
        .unwrap();
    let base = format!("http://{}", app.local_addr());
    let admin = app
        .bootstrap_key
        .clone()
        .expect("a new data dir gets an admin key");
    let state = app.state().clone();
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
        _stop: stop,
        _dir: dir,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Makes a key through the store and makes the server see it now, not at the next refresh.
    pub async fn key(&self, role: Role, tenant: &str) -> String {
        let (secret, _) = create_key(&*self.state.store, "test", role, tenant, &SystemClock)
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

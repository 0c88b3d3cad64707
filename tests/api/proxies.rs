//! The README's reverse-proxy snippets, run against real nginx, Caddy and Traefik (ignored by a
//! plain `cargo test`; `bash .ci/run` installs the proxies and runs them). The client addresses 127.0.0.2 and 127.0.0.3
//! stand for two visitors; the proxy itself is the trusted peer 127.0.0.1.

use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, block_ip, spawn_with};

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Panics unless the proxy runs (nginx answers `-v`, Caddy and Traefik `version`).
fn require_proxy(program: &str) {
    let runs = Command::new(program).arg("-v").output().is_ok()
        || Command::new(program).arg("version").output().is_ok();
    assert!(runs, "this test needs {program} (bash .ci/run installs it)");
}

async fn palisade_behind_proxy() -> TestApp {
    let app = spawn_with(
        |c| {
            c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
            // The test's visitors live on loopback; let them be blocked.
            c.guard.protected = vec![];
            c.guard.protect_listen_address = false;
        },
        None,
    )
    .await;
    app.signal(&app.admin, &json!([block_ip("127.0.0.2")]))
        .await;
    app
}

/// Visits the proxy from `from` until it answers (it may still be starting).
async fn visit(port: u16, from: &str) -> StatusCode {
    visit_path(port, from, "/").await
}

async fn visit_path(port: u16, from: &str, path: &str) -> StatusCode {
    let client = reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    for _ in 0..200 {
        if let Ok(response) = client
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .await
        {
            // Traefik answers 404 until it has read its routes.
            if response.status() != StatusCode::NOT_FOUND {
                return response.status();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the proxy never answered");
}

#[tokio::test]
#[ignore = "needs nginx; bash .ci/run installs it and runs it"]
async fn nginx_auth_request_snippet() {
    require_proxy("nginx");
    let app = palisade_behind_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let palisade = app.base.trim_start_matches("http://");
    // The `location` blocks are the README's snippet; the rest makes nginx run unprivileged in
    // a temporary directory. Palisade's own /healthz stands in for the protected application.
    let conf = format!(
        r#"daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};

        location / {{
            auth_request /_palisade;
            proxy_pass http://{palisade}/healthz;
        }}

        location = /_palisade {{
            internal;
            proxy_pass http://{palisade}/v1/forward-auth;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Api-Key "{key}";
            # Replace, never append: a client-sent X-Forwarded-For must not reach Palisade.
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
    }}
}}
"#,
        dir = dir.path().display(),
        key = app.admin,
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let _nginx = Proxy(
        Command::new("nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert_eq!(visit(port, "127.0.0.3").await, StatusCode::OK);
    assert_eq!(visit(port, "127.0.0.2").await, StatusCode::FORBIDDEN);
}

#[tokio::test]
#[ignore = "needs Caddy; bash .ci/run installs it and runs it"]
async fn caddy_forward_auth_snippet() {
    require_proxy("caddy");
    let app = palisade_behind_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let palisade = app.base.trim_start_matches("http://");
    let caddyfile = format!(
        r#"{{
    admin off
    auto_https off
    storage file_system {dir}
}}

http://127.0.0.1:{port} {{
    bind 127.0.0.1
    forward_auth {palisade} {{
        uri /v1/forward-auth
        header_up X-Api-Key "{key}"
    }}
    rewrite * /healthz
    reverse_proxy {palisade}
}}
"#,
        dir = dir.path().display(),
        key = app.admin,
    );
    let path = dir.path().join("Caddyfile");
    std::fs::write(&path, caddyfile).unwrap();
    let _caddy = Proxy(
        Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&path)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert_eq!(visit(port, "127.0.0.3").await, StatusCode::OK);
    assert_eq!(visit(port, "127.0.0.2").await, StatusCode::FORBIDDEN);
}

#[tokio::test]
#[ignore = "needs Traefik; bash .ci/run installs it and runs it"]
async fn traefik_forward_auth_snippet() {
    require_proxy("traefik");
    let app = palisade_behind_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let palisade = app.base.trim_start_matches("http://");
    // The middlewares are the README's snippet; the router and service stand in for an
    // application (Palisade's own /healthz).
    let dynamic = format!(
        r#"http:
  middlewares:
    palisade-key:
      headers:
        customRequestHeaders:
          X-Api-Key: "{key}"
    palisade:
      forwardAuth:
        address: "http://{palisade}/v1/forward-auth"
        trustForwardHeader: false
    palisade-strip-key:
      headers:
        customRequestHeaders:
          X-Api-Key: ""
  routers:
    app:
      rule: "PathPrefix(`/`)"
      entryPoints: ["web"]
      middlewares: ["palisade-key", "palisade", "palisade-strip-key"]
      service: app
  services:
    app:
      loadBalancer:
        servers:
          - url: "http://{palisade}"
"#,
        key = app.admin,
    );
    let dynamic_path = dir.path().join("dynamic.yml");
    std::fs::write(&dynamic_path, dynamic).unwrap();
    let static_config = format!(
        r#"entryPoints:
  web:
    address: "127.0.0.1:{port}"
providers:
  file:
    filename: "{dynamic}"
log:
  level: ERROR
"#,
        dynamic = dynamic_path.display(),
    );
    let static_path = dir.path().join("traefik.yml");
    std::fs::write(&static_path, static_config).unwrap();
    let _traefik = Proxy(
        Command::new("traefik")
            .arg(format!("--configFile={}", static_path.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert_eq!(
        visit_path(port, "127.0.0.3", "/healthz").await,
        StatusCode::OK
    );
    assert_eq!(
        visit_path(port, "127.0.0.2", "/healthz").await,
        StatusCode::FORBIDDEN
    );
}

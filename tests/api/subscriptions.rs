//! `[[subscriptions]]`: lists served by a local HTTP server, fetched on their interval.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::helpers::{TestApp, block_ip, spawn_with};
use palisade::import::{Format, ImportAction};
use palisade::subscriptions::SubscriptionConfig;

const EVENTUALLY: Duration = Duration::from_secs(30);

/// What the list server serves now, and what it was asked.
#[derive(Default)]
struct List {
    status: u16,
    etag: String,
    body: String,
    requests: usize,
    not_modified: usize,
}

type Shared = Arc<Mutex<List>>;

async fn serve_list(State(list): State<Shared>, headers: HeaderMap) -> Response {
    let mut list = list.lock().unwrap();
    list.requests += 1;
    if list.status != 200 {
        return StatusCode::from_u16(list.status).unwrap().into_response();
    }
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(&list.etag)
    {
        list.not_modified += 1;
        return StatusCode::NOT_MODIFIED.into_response();
    }
    ([(header::ETAG, list.etag.clone())], list.body.clone()).into_response()
}

async fn list_server(list: Shared) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/level1.netset", listener.local_addr().unwrap());
    let router = axum::Router::new()
        .route("/level1.netset", axum::routing::get(serve_list))
        .with_state(list);
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

async fn dataset(app: &TestApp) -> BTreeSet<String> {
    let (status, body) = app
        .get("/v1/rules?dataset=level1&limit=1000", &app.admin)
        .await;
    assert_eq!(status, StatusCode::OK);
    body["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["target"].as_str().unwrap().to_owned())
        .collect()
}

async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < EVENTUALLY, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn a_changed_list_adds_and_removes_exactly_the_difference() {
    let list: Shared = Arc::new(Mutex::new(List {
        status: 200,
        etag: "\"v1\"".into(),
        body: "# level1\n192.0.2.1\n192.0.2.2\n198.51.100.0/24\nbroken line\n".into(),
        ..List::default()
    }));
    let url = list_server(list.clone()).await;
    let app = spawn_with(
        |c| {
            c.subscriptions = vec![SubscriptionConfig {
                url,
                format: Format::Auto,
                interval: 1,
                dataset: "level1".into(),
                action: ImportAction::Block,
                tenant: "default".into(),
                max_bytes: 1024 * 1024,
                timeout_secs: 10,
                ca_file: None,
            }]
        },
        None,
    )
    .await;
    // A rule of the tenant's own, outside the list's dataset.
    let (status, _) = app
        .signal(&app.admin, &json!([block_ip("203.0.113.77")]))
        .await;
    assert_eq!(status, StatusCode::OK);

    let first = set(&["192.0.2.1/32", "192.0.2.2/32", "198.51.100.0/24"]);
    eventually("the list's rules", async || dataset(&app).await == first).await;
    // Unchanged: the next fetches are answered 304 and change nothing.
    eventually("a 304", async || list.lock().unwrap().not_modified >= 1).await;
    assert_eq!(dataset(&app).await, first);

    {
        let mut list = list.lock().unwrap();
        list.etag = "\"v2\"".into();
        list.body = "192.0.2.2\n198.51.100.0/24\n203.0.113.0/25\n".into();
    }
    let second = set(&["192.0.2.2/32", "198.51.100.0/24", "203.0.113.0/25"]);
    eventually("the changed list's rules", async || {
        dataset(&app).await == second
    })
    .await;
    let (_, check) = app.get("/v1/check?ip=192.0.2.1", &app.admin).await;
    assert_eq!(check["blocked"], false, "{check}");
    assert!(
        app.targets(&app.admin)
            .await
            .contains(&"203.0.113.77/32".to_owned())
    );

    // The source fails: the last good list stays.
    let seen = {
        let mut list = list.lock().unwrap();
        list.status = 500;
        list.requests
    };
    eventually("two failed fetches", async || {
        list.lock().unwrap().requests >= seen + 2
    })
    .await;
    assert_eq!(dataset(&app).await, second);
}

/// An HTTPS server for `list` whose certificate a CA made for the test signed, also answering
/// `/moved` with a redirect to `plain_url`. Returns its list URL and the CA's certificate (PEM).
async fn tls_list_server(list: Shared, plain_url: String) -> (String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Palisade test list CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/level1.netset", listener.local_addr().unwrap());
    let router = axum::Router::new()
        .route("/level1.netset", axum::routing::get(serve_list))
        .route(
            "/moved",
            axum::routing::get(move || async move { axum::response::Redirect::to(&plain_url) }),
        )
        .with_state(list);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(
                    hyper_util::rt::TokioIo::new(stream),
                    hyper_util::service::TowerToHyperService::new(router),
                )
                .await;
            });
        }
    });
    (url, ca.as_ref().pem())
}

async fn targets(app: &TestApp, dataset: &str) -> BTreeSet<String> {
    let (status, body) = app
        .get(
            &format!("/v1/rules?dataset={dataset}&limit=1000"),
            &app.admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    body["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["target"].as_str().unwrap().to_owned())
        .collect()
}

/// Over HTTPS, a list is taken only from a server the configured CAs vouch for, and a redirect
/// from https to http is refused rather than followed.
#[tokio::test]
async fn https_lists_come_only_from_servers_the_trusted_cas_vouch_for() {
    let tls_list: Shared = Default::default();
    let plain_list: Shared = Default::default();
    for list in [&tls_list, &plain_list] {
        let mut list = list.lock().unwrap();
        list.status = 200;
        list.etag = "\"v1\"".into();
        list.body = "192.0.2.1\n198.51.100.0/24\n".into();
    }
    let plain_url = list_server(plain_list.clone()).await;
    let (url, ca) = tls_list_server(tls_list.clone(), plain_url).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let moved = url.replace("/level1.netset", "/moved");
    let subscription =
        |url: &str, dataset: &str, ca_file: Option<std::path::PathBuf>| SubscriptionConfig {
            url: url.to_owned(),
            format: Format::Auto,
            interval: 1,
            dataset: dataset.into(),
            action: ImportAction::Block,
            tenant: "default".into(),
            max_bytes: 1024 * 1024,
            timeout_secs: 10,
            ca_file,
        };
    let app = spawn_with(
        |c| {
            c.subscriptions = vec![
                subscription(&url, "level1", Some(ca_file.clone())),
                // The system's roots do not include the test's CA.
                subscription(&url, "untrusted", None),
                subscription(&moved, "downgraded", Some(ca_file.clone())),
            ]
        },
        None,
    )
    .await;
    eventually("the list is fetched over https", async || {
        targets(&app, "level1").await == set(&["192.0.2.1/32", "198.51.100.0/24"])
    })
    .await;
    // By the list's third fetch every subscription has had a round or more.
    eventually("a second round", async || {
        tls_list.lock().unwrap().requests >= 3
    })
    .await;
    assert!(targets(&app, "untrusted").await.is_empty());
    assert!(targets(&app, "downgraded").await.is_empty());
    assert_eq!(
        plain_list.lock().unwrap().requests,
        0,
        "the redirect to http was followed"
    );
}

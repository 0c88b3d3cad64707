//! Console pages with 1,000,000 rules in the store: the real server on a loopback port, a
//! signed-in session, one request at a time; each sample is a whole HTTP request and answer.
//!
//! - `console/rules_first_page`: `GET /console/rules` (the first 50 rules).
//! - `console/rules_deep_page`: a page half way through the rules (`cursor`).
//! - `console/rules_by_target`: `GET /console/rules?q=CIDR`, an exact target.
//! - `console/rules_covering`: `GET /console/rules?q=ADDRESS`, every rule covering it.
//! - `console/check_blocked`, `console/check_clear`: `GET /console/check?ip=`.
//! - `console/overview_first` (printed once): the first `GET /console/`, which counts the
//!   rules by kind; `console/overview_counted`: later ones, which reuse that count for
//!   `console.counts_refresh_secs`.
//!
//! `cargo bench --bench console`

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::app::Application;
use palisade::config::Config;
use palisade::rules::{Target, TenantId, UnixMillis};
use palisade::store::sqlite::Synchronous;
use palisade::store::{BatchItem, RuleWrite, WriteBatch};

const RULES: u32 = 1_000_000;
const BATCH: u32 = 10_000;

/// `BATCH` permanent /32 blocks from `first` on, straight to the engine (validation is not
/// what is measured here).
fn batch(first: u32, at: UnixMillis) -> WriteBatch {
    let items = (first..first + BATCH)
        .map(|n| {
            let ip = Ipv4Addr::from(n);
            BatchItem {
                event: format!(r#"{{"ip":"{ip}"}}"#),
                write: Ok(RuleWrite::Put {
                    action: palisade::rules::RuleAction::Block,
                    target: Target::parse_any(&ip.to_string()).expect("an address"),
                    expires_at: None,
                    name: Some("bench".into()),
                    description: None,
                    source: palisade::rules::Source::Signal,
                    dataset: None,
                }),
            }
        })
        .collect();
    WriteBatch {
        tenant: TenantId(1),
        key_id: 1,
        request_id: "bench".into(),
        at,
        items,
    }
}

fn cookie_of(response: &reqwest::Response) -> String {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
        .collect::<Vec<_>>()
        .join("; ")
}

fn csrf_of(body: &str) -> String {
    let field = r#"name="csrf" value=""#;
    let at = body.find(field).expect("a CSRF field") + field.len();
    body[at..at + body[at..].find('"').expect("a closing quote")].to_owned()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.store.synchronous = Synchronous::Normal;
    let (base, admin, _stop) = runtime.block_on(async {
        let app = Application::build(config).await.unwrap();
        let state = app.state().clone();
        let first = u32::from(Ipv4Addr::new(20, 0, 0, 0));
        for chunk in (0..RULES / BATCH).map(|i| first + i * BATCH) {
            let now = state.clock.now();
            state.engine.write(batch(chunk, now)).await.unwrap();
        }
        let base = format!("http://{}", app.local_addr());
        let admin = app.bootstrap_key.clone().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        (base, admin, stop)
    });
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cookie = runtime.block_on(async {
        let form = http
            .get(format!("{base}/console/sign-in"))
            .send()
            .await
            .unwrap();
        let pre = cookie_of(&form);
        let csrf = csrf_of(&form.text().await.unwrap());
        let signed_in = http
            .post(format!("{base}/console/sign-in"))
            .header("cookie", pre)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string([("key", admin.as_str()), ("csrf", &csrf)]).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(signed_in.status(), 303);
        cookie_of(&signed_in)
    });
    let get = |path: String, needle: &'static str| {
        let body = runtime.block_on(async {
            let response = http
                .get(format!("{base}{path}"))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{path}");
            response.text().await.unwrap()
        });
        assert!(body.contains(needle), "{path}: {needle} missing");
        body
    };
    let middle = RULES / 2;
    let inside = Ipv4Addr::from(u32::from(Ipv4Addr::new(20, 0, 0, 0)) + 123_456);
    let pages = [
        (
            "rules_first_page",
            "/console/rules".to_owned(),
            "20.0.0.0/32",
        ),
        (
            "rules_deep_page",
            format!("/console/rules?cursor={middle}"),
            "bench",
        ),
        (
            "rules_by_target",
            format!("/console/rules?q={inside}%2F32"),
            "bench",
        ),
        (
            "rules_covering",
            format!("/console/rules?q={inside}"),
            "bench",
        ),
        (
            "check_blocked",
            format!("/console/check?ip={inside}"),
            "<strong>blocked</strong>",
        ),
        (
            "check_clear",
            "/console/check?ip=192.0.2.1".to_owned(),
            "not blocked",
        ),
        (
            "overview_counted",
            "/console/".to_owned(),
            "Active rules: 1000000",
        ),
    ];
    // The first overview counts the rules; later ones within counts_refresh_secs reuse that.
    let started = std::time::Instant::now();
    get("/console/".to_owned(), "Active rules: 1000000");
    println!("console/overview_first (counting): {:?}", started.elapsed());
    let mut group = c.benchmark_group("console");
    for (name, path, needle) in pages {
        group.bench_function(name, |b| b.iter(|| black_box(get(path.clone(), needle))));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

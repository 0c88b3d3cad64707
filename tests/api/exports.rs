//! `GET /v1/blocklist`, `GET /v1/config` (the Gen0Sec agent's feed) and `GET /authcheck`.

use std::collections::HashMap;
use std::io::Read;
use std::process::Command;

use palisade::keys::Role;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::decisions::spawn_with_geo;
use crate::helpers::{TestApp, block_ip, spawn_app, spawn_with};

async fn export(app: &TestApp, key: &str, query: &str) -> (StatusCode, String) {
    let response = app
        .http
        .get(app.url(&format!("/v1/blocklist?{query}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

async fn exported(app: &TestApp, query: &str) -> String {
    let (status, body) = export(app, &app.admin, query).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn signal(app: &TestApp, events: Value) {
    let (status, body) = app.signal(&app.admin, &events).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// An allow rule: a false positive reported, applied by the report worker.
async fn allow(app: &TestApp, ip: &str) {
    let response = app
        .http
        .post(app.url("/v1/false/add/ip"))
        .bearer_auth(&app.admin)
        .body(json!({"addresses": [ip]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    for _ in 0..400 {
        let (_, body) = app.get(&format!("/v1/check?ip={ip}"), &app.admin).await;
        if body["allowed"] == true {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the allow rule for {ip} was not applied");
}

/// Nested and overlapping rules, an allow rule inside a blocked range, both families.
async fn some_rules(app: &TestApp) {
    signal(
        app,
        json!([
            {"type": "access_rules", "action": "block", "ip": "192.0.2.0/24", "expiration": 3600},
            block_ip("192.0.2.7"),
            block_ip("198.51.100.0/25"),
            block_ip("198.51.100.128/25"),
            block_ip("2001:db8::/48"),
        ]),
    )
    .await;
    allow(app, "192.0.2.9").await;
}

#[tokio::test]
async fn blocklist_lists_what_is_blocked_now_in_every_format() {
    let app = spawn_app().await;
    some_rules(&app).await;

    let plain = exported(&app, "format=plain").await;
    assert_eq!(
        plain.lines().collect::<Vec<_>>(),
        [
            // The permanent /32 inside the /24 stays apart: it outlives the rest.
            "192.0.2.0/30",
            "192.0.2.4/31",
            "192.0.2.6/32",
            "192.0.2.7/32",
            "192.0.2.8/32",
            // 192.0.2.9 is allowed.
            "192.0.2.10/31",
            "192.0.2.12/30",
            "192.0.2.16/28",
            "192.0.2.32/27",
            "192.0.2.64/26",
            "192.0.2.128/25",
            // Two neighbouring rules are one block.
            "198.51.100.0/24",
            "2001:db8::/48",
        ]
    );
    assert_eq!(exported(&app, "").await, plain, "plain is the default");

    let nginx = exported(&app, "format=nginx").await;
    assert_eq!(nginx.lines().count(), plain.lines().count());
    assert!(
        nginx
            .lines()
            .all(|l| l.starts_with("deny ") && l.ends_with(';'))
    );

    let items: Vec<Value> = serde_json::from_str(&exported(&app, "format=json").await).unwrap();
    assert_eq!(items.len(), plain.lines().count());
    assert_eq!(items[0]["cidr"], "192.0.2.0/30");
    assert!(items[0]["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        items[3],
        json!({"cidr": "192.0.2.7/32", "expires_at": null})
    );

    let nft = exported(&app, "format=nftables").await;
    assert!(nft.contains("flags interval, timeout;"), "{nft}");
    // Ranges stay intervals: never the bare network address of a range.
    assert!(nft.contains("192.0.2.0-192.0.2.6 timeout "), "{nft}");
    assert!(nft.contains(", 192.0.2.7/32, "), "{nft}");
    assert!(nft.contains(", 192.0.2.10-192.0.2.255 timeout "), "{nft}");
    assert!(nft.contains(", 198.51.100.0/24 }"), "{nft}");
    assert!(nft.contains("palisade_v6 { 2001:db8::/48 }"), "{nft}");

    let ipset = exported(&app, "format=ipset").await;
    assert!(
        ipset.contains("add palisade_v4 192.0.2.7/32 timeout 0\n"),
        "{ipset}"
    );
    assert!(
        ipset.contains("add palisade_v6 2001:db8::/48 timeout 0\n"),
        "{ipset}"
    );
    let timeout: u64 = ipset
        .lines()
        .find_map(|l| l.strip_prefix("add palisade_v4 192.0.2.0/30 timeout "))
        .unwrap()
        .parse()
        .unwrap();
    assert!((3590..=3600).contains(&timeout), "{timeout}");
}

#[tokio::test]
async fn blocklist_is_the_callers_tenant_and_checks_its_parameters() {
    let app = spawn_app().await;
    signal(&app, json!([block_ip("192.0.2.1")])).await;
    let reader = app.key(Role::Reader, "default").await;
    let other = app.key(Role::Reader, "other").await;
    assert_eq!(export(&app, &reader, "").await.1, "192.0.2.1/32\n");
    assert_eq!(
        export(&app, &other, "").await,
        (StatusCode::OK, String::new())
    );
    assert_eq!(
        export(&app, &other, "format=json").await,
        (StatusCode::OK, "[]\n".to_owned())
    );
    for (query, field) in [
        ("format=xml", "format"),
        ("expand=maybe", "expand"),
        ("limit=3", "limit"),
    ] {
        let (status, body) = export(&app, &reader, query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["details"][0]["field"], field, "{query}");
    }
    assert_eq!(export(&app, "nope", "").await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn blocklist_exports_beyond_the_limit_are_refused() {
    let app = spawn_with(|c| c.exports.max_concurrent = 0, None).await;
    let (status, body) = export(&app, &app.admin, "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

#[tokio::test]
async fn blocklist_streams_a_long_list_in_chunks() {
    let app = spawn_with(|c| c.exports.chunk_bytes = 100, None).await;
    for run in 0..8 {
        let events: Vec<Value> = (0..250)
            .map(|i| block_ip(&format!("10.{run}.{i}.0/24")))
            .collect();
        signal(&app, Value::Array(events)).await;
    }
    let plain = exported(&app, "").await;
    // Neighbouring /24s join: eight runs of 250, each the blocks of 10.k.0.0-10.k.249.255.
    assert_eq!(plain.lines().count(), 8 * 6, "{plain}");
    assert!(plain.starts_with("10.0.0.0/17\n10.0.128.0/18\n"), "{plain}");
}

#[tokio::test]
async fn blocklist_expand_adds_asn_and_country_ranges() {
    let (app, _geo) = spawn_with_geo(|c| {
        // The first key (the admin's) may have more than the others.
        c.crowdsec.max_decisions = Some(2);
        c.crowdsec.max_decisions_per_key = [("1".to_owned(), 3)].into();
    })
    .await;
    let small = app.key(Role::Reader, "default").await;
    signal(
        &app,
        json!([
            block_ip("198.51.100.9"),
            {"type": "access_rules", "action": "block", "asn": "AS64500"},
            {"type": "access_rules", "action": "block", "country": "DE"},
        ]),
    )
    .await;
    assert_eq!(exported(&app, "").await, "198.51.100.9/32\n");
    assert_eq!(exported(&app, "expand=false").await, "198.51.100.9/32\n");
    assert_eq!(
        exported(&app, "expand=true").await,
        "192.0.2.0/24\n198.51.100.9/32\n203.0.113.0/24\n2001:db8:64::/48\n"
    );
    // Three ranges: within the admin key's limit, beyond the reader's.
    let (status, body) = export(&app, &small, "expand=true").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("max_decisions (2)"), "{body}");
    assert_eq!(export(&app, &small, "expand=false").await.0, StatusCode::OK);

    // A rule change reaches the next export: the expansion is rebuilt.
    signal(
        &app,
        json!([{"type": "access_rules", "action": "unblock", "country": "DE"}]),
    )
    .await;
    assert_eq!(
        exported(&app, "expand=true").await,
        "192.0.2.0/24\n198.51.100.9/32\n2001:db8:64::/48\n"
    );
}

fn run(script: &str) -> String {
    let output = Command::new("unshare")
        .args(["-n", "sh", "-ec", script])
        .output()
        .expect("unshare runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{script}: {text}");
    text
}

#[tokio::test]
#[ignore = "needs nft, ipset and root: installed by .ci/run"]
async fn nftables_and_ipset_exports_load_into_the_kernel() {
    let app = spawn_app().await;
    some_rules(&app).await;
    // Ten years: longer than nft and ipset take, so the export gives their longest.
    signal(
        &app,
        json!([{"type": "access_rules", "action": "block", "ip": "203.0.113.0/24", "expiration": 315_360_000}]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let nft = dir.path().join("blocklist.nft");
    let ipset = dir.path().join("blocklist.ipset");
    std::fs::write(&nft, exported(&app, "format=nftables").await).unwrap();
    std::fs::write(&ipset, exported(&app, "format=ipset").await).unwrap();
    let (nft, ipset) = (nft.display(), ipset.display());

    run(&format!("nft -c -f {nft}"));
    // Loaded twice, as a cron job would: the second run replaces the elements.
    let listed = run(&format!(
        "nft -f {nft}; nft -f {nft}; nft list set inet palisade palisade_v4; \
         nft list set inet palisade palisade_v6"
    ));
    assert!(
        listed.contains("192.0.2.0-192.0.2.6 timeout 1h"),
        "{listed}"
    );
    assert!(
        listed.contains("192.0.2.10-192.0.2.255 timeout 1h"),
        "{listed}"
    );
    assert!(listed.contains("198.51.100.0/24"), "{listed}");
    assert!(listed.contains("2001:db8::/48"), "{listed}");
    assert!(!listed.contains("192.0.2.9"), "{listed}");
    assert!(listed.contains("203.0.113.0/24 timeout 1095d"), "{listed}");

    let listed = run(&format!(
        "ipset restore < {ipset}; ipset restore < {ipset}; ipset list palisade_v4; \
         ipset test palisade_v4 192.0.2.200; ipset list palisade_v6"
    ));
    assert!(listed.contains("192.0.2.7 timeout 0"), "{listed}");
    assert!(listed.contains("198.51.100.0/24 timeout 0"), "{listed}");
    assert!(listed.contains("2001:db8::/48 timeout 0"), "{listed}");
    assert!(listed.contains("203.0.113.0/24 timeout 214748"), "{listed}");
    assert!(listed.contains("Number of entries: 13"), "{listed}");
}

/// The agent's types (gen0sec/synapse `src/worker/config.rs`), field for field: every field
/// required, unknown fields ignored, as its parser reads the document.
#[derive(Debug, Deserialize)]
struct ConfigApiResponse {
    success: bool,
    config: AgentConfig,
}

#[derive(Debug, Deserialize)]
struct AgentConfig {
    access_rules: AccessRule,
    waf_rules: WafRules,
    #[allow(dead_code)]
    created_at: String,
    #[allow(dead_code)]
    updated_at: String,
    #[allow(dead_code)]
    last_modified: String,
}

#[derive(Debug, Deserialize)]
struct AccessRule {
    #[allow(dead_code)]
    id: String,
    name: String,
    #[allow(dead_code)]
    description: String,
    allow: RuleSet,
    block: RuleSet,
}

#[derive(Debug, Deserialize)]
struct WafRules {
    rules: Vec<Value>,
}

#[derive(Debug, Deserialize)]
struct RuleSet {
    asn: Vec<HashMap<String, Vec<String>>>,
    country: Vec<HashMap<String, Vec<String>>>,
    ips: Vec<String>,
}

async fn agent_pull(app: &TestApp, key: &str) -> (reqwest::Response, Vec<u8>) {
    // What the agent sends.
    let response = app
        .http
        .get(app.url("/v1/config"))
        .header("Authorization", format!("Bearer {key}"))
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let zipped = response.bytes().await.unwrap();
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(&zipped[..])
        .read_to_end(&mut json)
        .unwrap();
    let response = app
        .http
        .get(app.url("/v1/config"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (response, json)
}

#[tokio::test]
async fn agent_config_is_the_document_the_agent_parses() {
    let (app, _geo) = spawn_with_geo(|_| {}).await;
    some_rules(&app).await;
    signal(
        &app,
        json!([
            {"type": "access_rules", "action": "block", "asn": "AS64500"},
            {"type": "access_rules", "action": "block", "country": "DE"},
        ]),
    )
    .await;
    let (plain, json) = agent_pull(&app, &app.admin).await;
    let etag = plain.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(
        plain.bytes().await.unwrap(),
        json,
        "the same document, gzipped or not"
    );

    let document: ConfigApiResponse = serde_json::from_slice(&json).unwrap();
    assert!(document.success);
    let rules = document.config.access_rules;
    assert_eq!(rules.name, "default");
    assert!(document.config.waf_rules.rules.is_empty());
    assert_eq!(rules.allow.ips, ["192.0.2.9/32"]);
    assert!(rules.allow.asn.is_empty() && rules.allow.country.is_empty());
    assert_eq!(rules.block.ips[0], "192.0.2.0/30");
    assert!(!rules.block.ips.contains(&"192.0.2.9/32".to_owned()));
    assert_eq!(
        rules.block.asn,
        [HashMap::from([(
            "AS64500".to_owned(),
            vec!["192.0.2.0/24".to_owned(), "2001:db8:64::/48".to_owned()]
        )])]
    );
    assert_eq!(
        rules.block.country,
        [HashMap::from([(
            "DE".to_owned(),
            vec!["203.0.113.0/24".to_owned()]
        )])]
    );
    let raw: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(
        raw["config"]["waf_rules"],
        json!({"rules": []}),
        "the agent requires it"
    );

    // Unchanged: 304 to a client that sends the ETag back, the same ETag without it.
    let response = app
        .http
        .get(app.url("/v1/config"))
        .bearer_auth(&app.admin)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    let (again, _) = agent_pull(&app, &app.admin).await;
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);

    // Changed: a new document.
    signal(&app, json!([block_ip("203.0.113.77")])).await;
    let response = app
        .http
        .get(app.url("/v1/config"))
        .bearer_auth(&app.admin)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_ne!(response.headers()["etag"].to_str().unwrap(), etag);

    // Another tenant sees only its own rules.
    let other = app.key(Role::Reader, "other").await;
    let (_, json) = agent_pull(&app, &other).await;
    let document: ConfigApiResponse = serde_json::from_slice(&json).unwrap();
    assert!(document.config.access_rules.block.ips.is_empty());
    assert!(document.config.access_rules.block.asn.is_empty());
}

#[tokio::test]
async fn agent_config_beyond_its_network_limit_is_refused() {
    let app = spawn_with(|c| c.exports.agent_max_networks = 2, None).await;
    signal(&app, json!([block_ip("192.0.2.1"), block_ip("192.0.2.3")])).await;
    assert_eq!(app.get("/v1/config", &app.admin).await.0, StatusCode::OK);
    signal(&app, json!([block_ip("192.0.2.5")])).await;
    let (status, body) = app.get("/v1/config", &app.admin).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        app.get("/v1/config", "nope").await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn authcheck_answers_the_agent() {
    let app = spawn_app().await;
    let reader = app.key(Role::Reader, "default").await;
    for path in ["/v1/authcheck", "/authcheck"] {
        let (status, body) = app.get(path, &reader).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["success"], true);
    }
    assert_eq!(
        app.get("/authcheck", "nope").await.0,
        StatusCode::UNAUTHORIZED
    );
}

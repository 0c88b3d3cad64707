//! Every example of the Signal API document, verbatim, with the status and body it shows.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{answer, require, spawn_app};

const BLOCK_IP: &str = r#"[
{
"type": "access_rules",
"action": "block",
"ip": "192.168.1.100",
"expiration": 3600,
"description": "Blocked due to suspicious activity",
"name": "suspicious-ip-block"
}
]"#;

const BLOCK_ASN: &str = r#"[
{
"type": "access_rules",
"action": "block",
"asn": "AS12345",
"expiration": 3600,
"description": "Blocked ASN due to malicious activity",
"name": "suspicious-asn-block"
}
]"#;

const BLOCK_COUNTRY: &str = r#"[
{
"type": "access_rules",
"action": "block",
"country": "US",
"expiration": 3600,
"description": "Blocked country due to threat intelligence",
"name": "suspicious-country-block"
}
]"#;

const BATCH: &str = r#"[
{
"type": "access_rules",
"action": "block",
"ip": "192.168.1.100",
"description": "Blocked IP"
},
{
"type": "access_rules",
"action": "block",
"asn": "AS12345",
"description": "Blocked ASN"
},
{
"type": "access_rules",
"action": "block",
"country": "US",
"description": "Blocked country"
}
]"#;

/// The bodies of the curl and Python examples (`description` only, no expiration).
const CURL_IP: &str = r#"[
{
"type": "access_rules",
"action": "block",
"ip": "192.168.1.100",
"description": "Blocked due to suspicious activity"
}
]"#;

const CURL_ASN: &str = r#"[
{
"type": "access_rules",
"action": "block",
"asn": "AS12345",
"description": "Blocked ASN due to malicious activity"
}
]"#;

const CURL_COUNTRY: &str = r#"[
{
"type": "access_rules",
"action": "block",
"country": "US",
"description": "Blocked country due to threat intelligence"
}
]"#;

#[tokio::test]
async fn every_seed_example_answers_as_documented() {
    let app = spawn_app().await;
    for body in [
        BLOCK_IP,
        BLOCK_ASN,
        BLOCK_COUNTRY,
        CURL_IP,
        CURL_ASN,
        CURL_COUNTRY,
    ] {
        let (status, answer) = app.post_raw("/v1/signal", &app.admin, body).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            answer,
            json!({"success": true, "message": "Processed 1 entries, 0 failed"})
        );
    }
    let (status, answer) = app.post_raw("/v1/signal", &app.admin, BATCH).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer,
        json!({"success": true, "message": "Processed 3 entries, 0 failed"})
    );

    // One active rule per target: the examples refreshed the same three rules.
    assert_eq!(
        app.targets(&app.admin).await,
        ["192.168.1.100/32", "AS12345", "US"]
    );
    let (_, rules) = app.get("/v1/rules?kind=ip", &app.admin).await;
    assert_eq!(rules["rules"][0]["description"], "Blocked IP");
    assert_eq!(
        rules["rules"][0]["name"], "suspicious-ip-block",
        "a refresh without a name keeps it"
    );
}

#[tokio::test]
async fn seed_partial_success_example() {
    let app = spawn_app().await;
    let body = json!([
        {"type": "access_rules", "action": "block", "ip": "192.168.1.100"},
        {"type": "access_rules", "action": "block", "country": "ZZ"},
        {"type": "access_rules", "action": "block", "asn": "AS12345"},
    ]);
    let (status, answer) = app.signal(&app.admin, &body).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        answer,
        json!({
            "success": false,
            "message": "Processed 2 entries, 1 failed",
            "errors": [
                "Entry 1: Schema validation failed: country: Country must be a valid ISO-3166 Alpha-2 code (e.g., US, GB, JP)"
            ]
        })
    );
    assert_eq!(
        app.targets(&app.admin).await,
        ["192.168.1.100/32", "AS12345"]
    );
}

#[tokio::test]
async fn seed_validation_error_and_unauthorized_examples() {
    let app = spawn_app().await;
    let body = json!([{"type": "access_rules", "action": "invalid", "ip": "192.168.1.100"}]);
    let (status, refused) = app.signal(&app.admin, &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        refused,
        json!({
            "error": "ValidationError",
            "message": "Validation failed",
            "details": [
                {"field": "action", "message": "must be one of: block, unblock", "value": "invalid", "index": 0}
            ],
            "code": 400
        })
    );

    let unauthorized =
        json!({"error": "Unauthorized", "message": "Invalid or missing API key", "code": 401});
    for key in [
        "your-api-key",
        "",
        "pal_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let (status, body) = app.post_raw("/v1/signal", key, CURL_IP).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body, unauthorized);
    }
    // No header at all, and a scheme other than Bearer.
    let response = app
        .http
        .post(app.url("/v1/signal"))
        .body(CURL_IP)
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer(response).await,
        (StatusCode::UNAUTHORIZED, unauthorized.clone())
    );
    let response = app
        .http
        .post(app.url("/v1/signal"))
        .header("Authorization", format!("Basic {}", app.admin))
        .body(CURL_IP)
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer(response).await,
        (StatusCode::UNAUTHORIZED, unauthorized)
    );
    assert!(app.targets(&app.admin).await.is_empty());
}

/// The curl lines of the document, run by the real curl (only host and key changed).
#[tokio::test]
#[ignore = "needs curl; bash .ci/run runs it"]
async fn seed_curl_examples_verbatim() {
    require("curl", &["--version"]);
    let app = spawn_app().await;
    for body in [CURL_IP, CURL_ASN, CURL_COUNTRY, BATCH] {
        let url = app.url("/v1/signal");
        let auth = format!("Authorization: Bearer {}", app.admin);
        let body = body.to_owned();
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args([
                    "-s",
                    "-X",
                    "POST",
                    &url,
                    "-H",
                    &auth,
                    "-H",
                    "Content-Type: application/json",
                    "-d",
                    &body,
                ])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(answer["success"], true, "{answer}");
    }
    // curl's -d without a Content-Type header sends application/x-www-form-urlencoded.
    let url = app.url("/v1/signal");
    let auth = format!("Authorization: Bearer {}", app.admin);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-s", "-X", "POST", &url, "-H", &auth, "-d", CURL_IP])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        answer,
        json!({"success": true, "message": "Processed 1 entries, 0 failed"})
    );
}

/// The Python example, run by Python with `requests`.
#[tokio::test]
#[ignore = "needs python3 with requests; bash .ci/run runs it"]
async fn seed_python_example_verbatim() {
    require("python3", &["-c", "import requests"]);
    let app = spawn_app().await;
    let script = format!(
        r#"import requests

url = "{url}"
headers = {{
"Authorization": "Bearer {key}",
"Content-Type": "application/json"
}}

# Batch request (multiple events)
data = {BATCH}

response = requests.post(url, json=data, headers=headers)
print(response.json())
"#,
        url = app.url("/v1/signal"),
        key = app.admin,
    );
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", &script])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        printed.trim(),
        "{'success': True, 'message': 'Processed 3 entries, 0 failed'}",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

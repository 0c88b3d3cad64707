//! The console in a real headless Chromium, driven over WebDriver: the flows of
//! `console.rs` as an operator clicks them. Also takes the README's screenshot.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use palisade::keys::Role;
use serde_json::json;

use crate::helpers::{require, spawn_app};

/// A chromedriver of this test's own, on a free port; killed when dropped.
struct Chromedriver {
    child: Child,
    port: u16,
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_chromedriver() -> Chromedriver {
    require("chromedriver", &["--version"]);
    require("chromium", &["--version"]);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let driver = Chromedriver { child, port };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return driver;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("chromedriver did not listen on port {port}");
}

async fn browser(driver: &Chromedriver) -> Client {
    let capabilities = json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,900",
                     "--force-prefers-reduced-motion"]
        }
    });
    let serde_json::Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session")
}

async fn text(client: &Client, css: &str) -> String {
    client
        .wait()
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .text()
        .await
        .unwrap()
}

async fn fill(client: &Client, css: &str, value: &str) {
    let field = client.find(Locator::Css(css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(value).await.unwrap();
}

async fn click(client: &Client, css: &str) {
    client
        .wait()
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap();
}

async fn sign_in(client: &Client, base: &str, key: &str) {
    client
        .goto(&format!("{base}/console/sign-in"))
        .await
        .unwrap();
    fill(client, "#key", key).await;
    click(client, "form button[type=submit]").await;
}

async fn sign_out(client: &Client) {
    click(client, ".signout button").await;
    client
        .wait()
        .for_element(Locator::Css("#key"))
        .await
        .unwrap();
}

#[tokio::test]
#[ignore = "needs chromium and chromedriver: installed by .ci/run"]
async fn an_operator_blocks_a_range_checks_it_and_deletes_it_in_chromium() {
    let driver = start_chromedriver();
    let app = spawn_app().await;
    let base = app.base.clone();
    let client = browser(&driver).await;

    sign_in(&client, &base, &app.admin).await;
    assert!(text(&client, "h1").await.contains("Overview"));

    click(&client, "nav a[href='/console/rules/new']").await;
    fill(&client, "#ip", "198.51.100.0/24").await;
    fill(&client, "#name", "scanners").await;
    fill(&client, "#expiration", "86400").await;
    click(&client, "form.panel button[type=submit]").await;
    assert!(
        text(&client, "#outcome")
            .await
            .contains("Processed 1 entries, 0 failed")
    );

    click(&client, "nav a[href='/console/rules']").await;
    assert!(text(&client, "#rules").await.contains("198.51.100.0/24"));

    click(&client, "nav a[href='/console/check']").await;
    fill(&client, "#ip", "198.51.100.7").await;
    click(&client, "form[role=search] button").await;
    assert_eq!(text(&client, "#verdict").await, "198.51.100.7 is blocked");
    assert!(text(&client, "#matches").await.contains("198.51.100.0/24"));
    let png = client.screenshot().await.unwrap();
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("console.png"), png).unwrap();

    // On a phone's width nothing sticks out sideways.
    client.set_window_size(390, 844).await.unwrap();
    let fits = client
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(fits, json!(true));
    client.set_window_size(1280, 900).await.unwrap();

    click(&client, "#matches a").await;
    click(&client, "a.button[href$='/delete']").await;
    click(&client, "button.danger").await;
    assert!(text(&client, ".notice").await.contains("deleted"));

    client
        .goto(&format!("{base}/console/check?ip=198.51.100.7"))
        .await
        .unwrap();
    assert_eq!(
        text(&client, "#verdict").await,
        "198.51.100.7 is not blocked"
    );

    // A form whose CSRF token was taken out is refused.
    client
        .goto(&format!("{base}/console/rules/new"))
        .await
        .unwrap();
    fill(&client, "#ip", "192.0.2.0/24").await;
    client
        .execute(
            "document.querySelector('form.panel input[name=csrf]').remove()",
            vec![],
        )
        .await
        .unwrap();
    click(&client, "form.panel button[type=submit]").await;
    assert_eq!(text(&client, "h1").await, "Error 403");
    assert!(app.targets(&app.admin).await.is_empty());

    // A reader sees the rules but no add form.
    client.goto(&format!("{base}/console/")).await.unwrap();
    sign_out(&client).await;
    let reader = app.key(Role::Reader, "default").await;
    sign_in(&client, &base, &reader).await;
    assert!(!text(&client, "nav").await.contains("Add rules"));
    client
        .goto(&format!("{base}/console/rules/new"))
        .await
        .unwrap();
    assert_eq!(text(&client, "h1").await, "Error 403");
    assert!(client.find(Locator::Css("#ips")).await.is_err());

    // A wrong key is refused.
    client.goto(&format!("{base}/console/")).await.unwrap();
    sign_out(&client).await;
    sign_in(&client, &base, "pal_not-a-key").await;
    assert!(
        text(&client, ".notice.error")
            .await
            .contains("This key is not valid")
    );

    client.close().await.unwrap();
}

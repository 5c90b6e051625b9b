//! The web page in a real browser: Debian's headless Chromium, driven through ChromeDriver's
//! WebDriver protocol (plain HTTP + JSON, spoken here with reqwest), against a real server with
//! the real model and Milvus Lite. It picks a file, sees the results, searches again from a
//! result, sees a clear error for a file that is not an image, and on a server that protects
//! reads, uses the token field. A screenshot of the results is left in
//! target/test-artifacts/web-page.png.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use imgsearch::api::auth::AuthConfig;
use imgsearch::api::{ServeConfig, ServerState};
use imgsearch::progress::Progress;
use imgsearch::search::SearchSettings;
use imgsearch::shutdown::Shutdown;
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A search server on a loopback port with four photos indexed.
async fn server(work: &Path, auth: Option<AuthConfig>) -> (String, tokio::task::JoinHandle<()>) {
    let images = work.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for name in ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"] {
        std::fs::copy(common::photo(name), images.join(name)).unwrap();
    }
    let index = common::index(work).await;
    let collection = common::unique_collection("page");
    imgsearch::ingest::run_directory(&index, &images, &common::options(&collection), &Progress::silent())
        .await
        .unwrap();
    let search = SearchSettings { upload_dir: work.join("uploads"), ..Default::default() };
    let config = ServeConfig { default_collection: collection, auth, search, ..Default::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        imgsearch::api::serve(listener, ServerState::new(index, config), Shutdown::never()).await.ok();
    });
    (format!("http://{address}/"), task)
}

/// ChromeDriver on a free port, stopped when dropped.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

async fn start_driver() -> Driver {
    let port = common::free_port();
    let child = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver runs (scripts/setup.sh --test-servers installs Debian's chromium-driver)");
    let driver = Driver { child, url: format!("http://127.0.0.1:{port}") };
    let client = common::http_client();
    for _ in 0..100 {
        if let Ok(response) = client.get(format!("{}/status", driver.url)).send().await
            && let Ok(status) = response.json::<Value>().await
            && status["value"]["ready"] == json!(true)
        {
            return driver;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not become ready within 10 s");
}

/// One browser session: the WebDriver commands this test needs, each failing loudly.
struct Browser {
    client: reqwest::Client,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn open(driver: &Driver) -> Self {
        let profile = tempfile::tempdir().unwrap();
        let client = common::http_client();
        // The flags this machine's closed network needs (no background connections), and a
        // fresh profile each run.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
        }}});
        let response: Value = client
            .post(format!("{}/session", driver.url))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = response["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {response}"))
            .to_string();
        Self { client, session: format!("{}/session/{session}", driver.url), _profile: profile }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.client.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response: Value = request.send().await.unwrap().json().await.unwrap();
        if let Some(error) = response["value"]["error"].as_str() {
            panic!("WebDriver {path}: {error}: {}", response["value"]["message"]);
        }
        response["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .command(reqwest::Method::POST, "/element", Some(json!({ "using": "css selector", "value": css })))
            .await;
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {found}")).to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.command(reqwest::Method::POST, &format!("/element/{element}/value"), Some(json!({ "text": text }))).await;
    }

    async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.command(reqwest::Method::POST, &format!("/element/{element}/click"), Some(json!({}))).await;
    }

    async fn eval(&self, script: &str) -> Value {
        self.command(reqwest::Method::POST, "/execute/sync", Some(json!({ "script": script, "args": [] }))).await
    }

    /// Polls `condition` (a JavaScript expression) until it is true, for up to 30 s.
    async fn wait_for(&self, condition: &str) {
        for _ in 0..300 {
            if self.eval(&format!("return Boolean({condition});")).await == json!(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let page = self.eval("return document.body.innerText;").await;
        panic!("timed out waiting for `{condition}`; the page says:\n{}", page.as_str().unwrap_or_default());
    }

    async fn text(&self, css: &str) -> String {
        let script = format!("return document.querySelector({css:?}).textContent;");
        self.eval(&script).await.as_str().unwrap_or_default().to_string()
    }

    async fn result_uris(&self) -> Vec<String> {
        let uris = self.eval("return [...document.querySelectorAll('#results .uri')].map(e => e.textContent);").await;
        uris.as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_string()).collect()
    }

    async fn screenshot(&self, path: &Path) {
        let encoded = self.command(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(encoded.as_str().unwrap()).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    async fn close(self) {
        self.client.delete(&self.session).send().await.ok();
    }
}

fn artifact(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts").join(name)
}

#[tokio::test]
async fn the_page_searches_by_picked_file_and_from_a_result_and_shows_clear_errors() {
    let work = tempfile::tempdir().unwrap();
    let (url, server) = server(work.path(), None).await;
    let driver = start_driver().await;
    let browser = Browser::open(&driver).await;

    browser.goto(&url).await;
    browser.wait_for("document.querySelector('#count').textContent.startsWith('4 images')").await;
    // Every control has a label a screen reader can read.
    let unlabelled = browser
        .eval("return [...document.querySelectorAll('input, select')].filter(e => !e.hidden && !document.querySelector(`label[for=\"${e.id}\"]`)).map(e => e.id);")
        .await;
    assert_eq!(unlabelled, json!([]));

    // Pick a file: the search runs and shows the photo itself first, with its score.
    browser.type_into("#file", common::photo("chelsea.jpg").to_str().unwrap()).await;
    browser.wait_for("document.querySelectorAll('#results li').length === 4").await;
    let uris = browser.result_uris().await;
    assert!(uris[0].ends_with("/chelsea.jpg"), "{uris:?}");
    assert!(
        browser.text("#results .score").await.starts_with("score 1.000"),
        "{}",
        browser.text("#results .score").await
    );
    assert!(browser.text("#status").await.contains("4 similar images"), "{}", browser.text("#status").await);
    // Thumbnails really loaded (served by /v1/images/{id}).
    browser
        .wait_for("[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")
        .await;
    browser.screenshot(&artifact("web-page.png")).await;

    // Click a result: "more like this" from the coffee photo; it is not among its own results.
    let coffee = uris.iter().position(|u| u.ends_with("/coffee.jpg")).expect("coffee among the results");
    browser.click(&format!("#results li:nth-child({}) button", coffee + 1)).await;
    browser.wait_for("document.querySelector('#preview').alt.endsWith('coffee.jpg')").await;
    browser.wait_for("document.querySelectorAll('#results li').length === 3").await;
    let again = browser.result_uris().await;
    assert!(again.iter().all(|u| !u.ends_with("/coffee.jpg")), "{again:?}");

    // A file that is not an image: the server's own message, shown as an error.
    let text_file = work.path().join("notes.png");
    std::fs::write(&text_file, "not an image at all").unwrap();
    browser.type_into("#file", text_file.to_str().unwrap()).await;
    browser.wait_for("document.querySelector('#status').classList.contains('error')").await;
    let status = browser.text("#status").await;
    assert!(status.contains("not a supported image") || status.contains("unrecognised"), "{status}");
    assert_eq!(browser.result_uris().await, Vec::<String>::new());

    browser.close().await;
    server.abort();
}

#[tokio::test]
async fn on_a_server_that_protects_reads_the_token_field_unlocks_the_page() {
    let work = tempfile::tempdir().unwrap();
    let (url, server) = server(work.path(), Some(AuthConfig::new("page-token", true).unwrap())).await;
    let driver = start_driver().await;
    let browser = Browser::open(&driver).await;

    browser.goto(&url).await;
    browser.wait_for("document.querySelector('#count').textContent.includes('Bearer')").await;

    browser.type_into("#token", "page-token").await;
    browser.click("h1").await; // leaving the field commits it
    browser.wait_for("document.querySelector('#count').textContent.startsWith('4 images')").await;
    browser.type_into("#file", common::photo("rocket.jpg").to_str().unwrap()).await;
    browser.wait_for("document.querySelectorAll('#results li').length === 4").await;
    assert!(browser.result_uris().await[0].ends_with("/rocket.jpg"));
    // Thumbnails need the token too: fetched with it, shown from blob: URLs.
    browser
        .wait_for("[...document.querySelectorAll('#results img')].every(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0)")
        .await;

    browser.close().await;
    server.abort();
}

//! A headless Chromium driven through chromedriver's W3C WebDriver API (plain
//! HTTP: no client crate needed for a dozen commands), for the tests of the
//! pages people use in a browser (OAuth consent, the console).

use std::{path::PathBuf, process::Stdio, time::Instant};

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::{Value, json};
use uuid::Uuid;

/// A headless Chromium driven through chromedriver's W3C WebDriver API (plain
/// HTTP: no client crate needed for five commands).
pub struct Chromium {
    http: reqwest::Client,
    session: String,
    driver: tokio::process::Child,
    profile: PathBuf,
}

impl Chromium {
    pub async fn start() -> Self {
        let chromedriver = std::env::var("TENGINE_TEST_CHROMEDRIVER").expect(
            "TENGINE_TEST_CHROMEDRIVER must name chromedriver (Debian's chromium-driver; deploy/local/test installs it)",
        );
        let port = tengine_tests::free_port();
        let driver = tokio::process::Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let ready = Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(ready.elapsed().as_secs() < 20, "chromedriver answers within 20 s");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let profile = std::env::temp_dir().join(format!("tengine-chromium-{}", Uuid::new_v4()));
        let binary = std::env::var("TENGINE_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        // Headless, and quiet: without the background-networking flags Chromium
        // keeps trying to reach Google's hosts.
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let answer: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
                "goog:chromeOptions": {"binary": binary, "args": args}}}}))
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("json");
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("a WebDriver session: {answer}"));
        Self {
            http,
            session: format!("{base}/session/{session}"),
            driver,
            profile,
        }
    }

    pub async fn command(&self, path: &str, body: Value) -> Value {
        let answer: Value = self
            .http
            .post(format!("{}{path}", self.session))
            .json(&body)
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("json");
        answer["value"].clone()
    }

    pub async fn get(&self, path: &str) -> Value {
        let answer: Value = self
            .http
            .get(format!("{}{path}", self.session))
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("json");
        answer["value"].clone()
    }

    pub async fn click(&self, css: &str) {
        let element = self
            .command("/element", json!({"using": "css selector", "value": css}))
            .await;
        let id = element
            .as_object()
            .and_then(|e| e.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{css} on the page: {element}"));
        self.command(&format!("/element/{id}/click"), json!({})).await;
    }

    /// The first element matching a WebDriver locator (`css selector`, `link text`, …).
    pub async fn find(&self, using: &str, value: &str) -> String {
        let element = self.command("/element", json!({"using": using, "value": value})).await;
        element
            .as_object()
            .and_then(|e| e.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{using} {value:?} on the page: {element}"))
            .to_string()
    }

    /// How many elements match a CSS selector.
    pub async fn count(&self, css: &str) -> usize {
        let found = self
            .command("/elements", json!({"using": "css selector", "value": css}))
            .await;
        found.as_array().map_or(0, Vec::len)
    }

    pub async fn open(&self, url: &str) {
        self.command("/url", json!({"url": url})).await;
    }

    pub async fn click_link(&self, text: &str) {
        let id = self.find("link text", text).await;
        self.command(&format!("/element/{id}/click"), json!({})).await;
    }

    /// Types into the element matching `css`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.find("css selector", css).await;
        self.command(&format!("/element/{id}/value"), json!({"text": text}))
            .await;
    }

    /// Runs axe-core (the npm package in tests/typescript, injected through
    /// WebDriver's execute-script: the pages' CSP allows no script of their own)
    /// over the page and fails on any serious or critical violation.
    pub async fn assert_accessible(&self, screen: &str) {
        let axe = axe_source();
        let script = format!(
            "{axe}\n;const done = arguments[arguments.length - 1];\n\
             axe.run(document).then(r => done(r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')\n\
               .map(v => ({{id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.html).slice(0, 5)}}))),\n\
               e => done({{error: String(e)}}));"
        );
        let found = self
            .command("/execute/async", json!({"script": script, "args": []}))
            .await;
        assert!(found.is_array(), "axe ran on {screen}: {found}");
        assert_eq!(
            found.as_array().map(Vec::len),
            Some(0),
            "serious or critical accessibility violations on {screen}: {}",
            serde_json::to_string_pretty(&found).unwrap_or_default()
        );
    }

    /// Presses and releases one key (a WebDriver key code: `\u{E004}` Tab,
    /// `\u{E007}` Enter) wherever the focus is, as a keyboard user would.
    pub async fn press(&self, key: &str) {
        self.command(
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
                {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]}),
        )
        .await;
    }

    /// The `id`, or else the text, of the focused element.
    pub async fn focused(&self) -> String {
        let element = self.get("/element/active").await;
        let id = element
            .as_object()
            .and_then(|e| e.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("a focused element: {element}"))
            .to_string();
        let attribute = self.get(&format!("/element/{id}/attribute/id")).await;
        match attribute.as_str() {
            Some(found) if !found.is_empty() => found.to_string(),
            _ => self
                .get(&format!("/element/{id}/text"))
                .await
                .as_str()
                .unwrap_or_default()
                .to_string(),
        }
    }

    /// Empties the input or textarea matching `css`.
    pub async fn clear(&self, css: &str) {
        let id = self.find("css selector", css).await;
        self.command(&format!("/element/{id}/clear"), json!({})).await;
    }

    /// Replaces the value of the input or textarea matching `css`.
    pub async fn fill(&self, css: &str, text: &str) {
        self.clear(css).await;
        self.type_into(css, text).await;
    }

    /// The accessible name the browser computes for the element matching `css`.
    pub async fn accessible_name(&self, css: &str) -> String {
        let id = self.find("css selector", css).await;
        self.get(&format!("/element/{id}/computedlabel"))
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The rendered text of the element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        let id = self.find("css selector", css).await;
        self.get(&format!("/element/{id}/text"))
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn source(&self) -> String {
        self.get("/source").await.as_str().unwrap_or_default().to_string()
    }

    pub async fn url(&self) -> String {
        self.get("/url").await.as_str().unwrap_or_default().to_string()
    }

    /// Waits (up to 10 s) until the page's URL ends with `suffix`: a form's
    /// click may return before the navigation it starts ends.
    pub async fn wait_for_url(&self, suffix: &str) {
        let start = Instant::now();
        while !self.url().await.ends_with(suffix) {
            assert!(
                start.elapsed().as_secs() < 10,
                "{} does not end with {suffix}",
                self.url().await
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to 10 s) until an element matches `css`.
    pub async fn wait_for(&self, css: &str) {
        let start = Instant::now();
        while self.count(css).await == 0 {
            assert!(
                start.elapsed().as_secs() < 10,
                "{css} does not appear: {}",
                self.source().await
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Writes a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &std::path::Path) {
        let png = self.get("/screenshot").await;
        let bytes = STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("a base64 screenshot");
        std::fs::write(path, bytes).expect("write the screenshot");
    }

    pub async fn stop(mut self) {
        let _ = self.http.delete(&self.session).send().await;
        let _ = self.driver.kill().await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// axe-core's browser build: `TENGINE_TEST_AXE` if set, else the npm package
/// installed in tests/typescript (`npm ci` there; deploy/local/test does it).
fn axe_source() -> String {
    let path = std::env::var("TENGINE_TEST_AXE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("typescript/node_modules/axe-core/axe.min.js")
        });
    std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "axe-core at {}: {err} (run `npm ci` in tests/typescript)",
            path.display()
        )
    })
}

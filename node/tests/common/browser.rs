//! A small W3C WebDriver client (blocking HTTP to ChromeDriver) for the dashboard's browser
//! tests: Debian's headless Chromium, started fresh per test with its own profile.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium session. Panics with what to install when
    /// they are missing (`.ci/prereqs` installs both).
    pub fn start() -> Browser {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: run .ci/prereqs (Debian's chromium and chromium-driver)"
            );
        }
        let port = super::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().map(|r| !r.status().is_success()).unwrap_or(true) {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().expect("profile dir");
        // Without the background-networking flags Chromium keeps dialling Google's hosts,
        // which a closed network refuses.
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--hide-scrollbars".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        } } });
        let reply: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .and_then(|r| r.json())
            .expect("new WebDriver session");
        let session = reply["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {reply}")).to_string();
        Browser { driver, base, session, http, _profile: profile }
    }

    fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply: Value = request.send().and_then(|r| r.json()).unwrap_or_else(|e| panic!("WebDriver {path}: {e}"));
        if reply["value"].get("error").is_some() {
            panic!("WebDriver {path}: {}", reply["value"]);
        }
        reply["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its result.
    pub fn eval(&self, script: &str, args: Value) -> Value {
        self.command(reqwest::Method::POST, "/execute/sync", Some(json!({ "script": script, "args": args })))
    }

    fn element(&self, selector: &str) -> String {
        let found = self.command(
            reqwest::Method::POST,
            "/element",
            Some(json!({ "using": "css selector", "value": selector })),
        );
        // The W3C element reference is the object's one value.
        found.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).unwrap_or_default().to_string()
    }

    /// Waits until `selector` matches, then clicks it as a user would.
    pub fn click(&self, selector: &str) {
        self.wait_for(selector, Duration::from_secs(20));
        let id = self.element(selector);
        self.command(reqwest::Method::POST, &format!("/element/{id}/click"), Some(json!({})));
    }

    /// Types `text` into the field `selector` (after clearing it).
    pub fn type_into(&self, selector: &str, text: &str) {
        self.wait_for(selector, Duration::from_secs(20));
        let id = self.element(selector);
        self.command(reqwest::Method::POST, &format!("/element/{id}/clear"), Some(json!({})));
        self.command(reqwest::Method::POST, &format!("/element/{id}/value"), Some(json!({ "text": text })));
    }

    /// The text of the first element matching `selector`, if any.
    pub fn text(&self, selector: &str) -> Option<String> {
        let v = self.eval(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            json!([selector]),
        );
        v.as_str().map(String::from)
    }

    pub fn wait_for(&self, selector: &str, timeout: Duration) {
        self.wait_until(&format!("{selector} to appear"), timeout, || self.text(selector).is_some());
    }

    /// Waits until the text of `selector` satisfies `ok`; returns it.
    pub fn wait_text(&self, selector: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let mut last = None;
        let deadline = Instant::now() + timeout;
        loop {
            last = self.text(selector).or(last);
            if let Some(text) = &last {
                if ok(text) {
                    return text.clone();
                }
            }
            assert!(Instant::now() < deadline, "timed out waiting on {selector}; last text: {last:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_until(&self, what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sets the window's size (CSS pixels at a device scale of 1).
    pub fn resize(&self, width: u32, height: u32) {
        self.command(reqwest::Method::POST, "/window/rect", Some(json!({ "width": width, "height": height })));
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        let encoded = self.command(reqwest::Method::GET, "/screenshot", None);
        base64::engine::general_purpose::STANDARD.decode(encoded.as_str().unwrap_or_default()).expect("PNG in base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(format!("{}/session/{}", self.base, self.session)).send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

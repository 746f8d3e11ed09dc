//! A real headless Chromium for the board's test and benchmark: Debian's
//! `chromium`, driven by `chromedriver` over WebDriver (fantoccini).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use ocs_testkit::{Process, free_port, tool};
use serde_json::{Value, json};

/// Where screenshots are kept as artifacts.
pub fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Polls `probe` every 50 ms until it gives a value; panics after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Chromium at 1280×800, headless, and the chromedriver that drives it
/// (stopped, with the browser, when this drops).
pub struct Browser {
    _driver: Process,
    /// The WebDriver session.
    pub client: Client,
}

impl Browser {
    /// Starts chromedriver and a Chromium session; panics, naming the
    /// package, when either is missing.
    pub async fn start() -> Self {
        let port = free_port();
        let mut command = Command::new(tool("chromedriver", "apt-get install chromium-driver"));
        command.arg(format!("--port={port}"));
        let driver = Process::spawn("chromedriver", command);
        let chromium = tool("chromium", "apt-get install chromium");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,800"],
            }),
        );
        let webdriver = format!("http://127.0.0.1:{port}");
        let client = eventually(
            "chromedriver to start a session",
            Duration::from_secs(30),
            || {
                let capabilities = capabilities.clone();
                let webdriver = webdriver.clone();
                async move {
                    ClientBuilder::new(HttpConnector::new())
                        .capabilities(capabilities)
                        .connect(&webdriver)
                        .await
                        .ok()
                }
            },
        )
        .await;
        Browser {
            _driver: driver,
            client,
        }
    }

    /// Runs `script` in the page.
    pub async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Evaluates `expression` in the page until it is truthy; returns its value.
    pub async fn until(&self, what: &str, limit: Duration, expression: &str) -> Value {
        let script = format!("return ({expression}) || null;");
        eventually(what, limit, || async {
            let value = self.client.execute(&script, vec![]).await.ok()?;
            (!value.is_null()).then_some(value)
        })
        .await
    }

    /// Logs in to the board at `board` through its form.
    pub async fn log_in(&self, board: &str, user: &str, password: &str) {
        eventually("the login page", Duration::from_secs(20), || async {
            self.client.goto(&format!("{board}/login")).await.ok()?;
            self.client.find(Locator::Id("user")).await.ok()
        })
        .await
        .send_keys(user)
        .await
        .unwrap();
        self.client
            .find(Locator::Id("password"))
            .await
            .unwrap()
            .send_keys(password)
            .await
            .unwrap();
        self.client
            .find(Locator::Id("login"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        self.until(
            "the board after logging in",
            Duration::from_secs(10),
            "location.pathname === '/' && document.getElementById('who').textContent",
        )
        .await;
    }
}

/// A users file with `alice` (operator) and `bob` (viewer) and their passwords.
pub fn users_file(path: &std::path::Path, operator_password: &str, viewer_password: &str) {
    std::fs::write(
        path,
        format!(
            "alice:operator:{}\nbob:viewer:{}\n",
            ocs_web::users::hash_password(operator_password),
            ocs_web::users::hash_password(viewer_password)
        ),
    )
    .unwrap();
}

/// `ocs-web` on `nats_url`, serving on a free port; returns it and the board's URL.
pub fn web(nats_url: &str, users: &std::path::Path, extra: &[&str]) -> (Process, String) {
    let port = free_port();
    let mut command = Command::new(ocs_testkit::workspace_binary("ocs-web"));
    command
        .args([
            "--nats-url",
            nats_url,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--users")
        .arg(users)
        .args(extra)
        .env("RUST_LOG", "warn")
        .env_remove("INSTANCE_ID")
        .env_remove("OCS_SITE_FILE");
    (
        Process::spawn("ocs-web", command),
        format!("http://127.0.0.1:{port}"),
    )
}

//! The board in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over WebDriver), against a real nats-server,
//! registry and fake-data agents: the list, an agent's death seen without a
//! reload, an operator's start, a viewer who cannot control, forged and
//! CSRF-less requests refused, and the stale banner when the registry stops.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use ocs_testkit::{NatsServer, Process, TempDir, free_port, launch, tool, workspace_binary};
use serde_json::{Value, json};

const AGENT_TIMEOUT: Duration = Duration::from_secs(3);
const OPERATOR_PASSWORD: &str = "operator's password";
const VIEWER_PASSWORD: &str = "viewer's password";

/// Where screenshots are kept as test artifacts.
fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Site {
    _nats: NatsServer,
    _dir: TempDir,
    registry: Process,
    agents: Vec<Process>,
    _web: Process,
    _driver: Process,
    board: String,
    browser: Client,
}

async fn site() -> Site {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let nats = NatsServer::start();
    let url = nats.url();
    let timeout = AGENT_TIMEOUT.as_secs().to_string();
    let registry = launch::registry(&url, 0, &["--agent-timeout", &timeout, "--wait-time", "2"]);
    let agents = vec![
        launch::agent(&url, "ocs-fake-data-agent", "faker1", &[]),
        launch::idle_faker(&url, "faker2"),
    ];
    let dir = TempDir::new("ocs-web-browser");
    let users = dir.path().join("users");
    std::fs::write(
        &users,
        format!(
            "alice:operator:{}\nbob:viewer:{}\n",
            ocs_web::users::hash_password(OPERATOR_PASSWORD),
            ocs_web::users::hash_password(VIEWER_PASSWORD)
        ),
    )
    .unwrap();
    let port = free_port();
    let mut command = Command::new(workspace_binary("ocs-web"));
    command
        .args(["--nats-url", &url, "--listen", &format!("127.0.0.1:{port}")])
        .arg("--users")
        .arg(&users)
        .args(["--probe-interval", "1", "--stale-after", "30"])
        .env("RUST_LOG", "warn")
        .env_remove("INSTANCE_ID")
        .env_remove("OCS_SITE_FILE");
    let web = Process::spawn("ocs-web", command);

    let driver_port = free_port();
    let mut command = Command::new(tool("chromedriver", "apt-get install chromium-driver"));
    command.arg(format!("--port={driver_port}"));
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
    let webdriver = format!("http://127.0.0.1:{driver_port}");
    let browser = eventually(
        "chromedriver to start a session",
        Duration::from_secs(30),
        || {
            let capabilities = capabilities.clone();
            let webdriver = webdriver.clone();
            async move {
                ClientBuilder::rustls()
                    .ok()?
                    .capabilities(capabilities)
                    .connect(&webdriver)
                    .await
                    .ok()
            }
        },
    )
    .await;
    let board = format!("http://127.0.0.1:{port}");
    eventually("ocs-web to serve", Duration::from_secs(20), || {
        let browser = browser.clone();
        let login = format!("{board}/login");
        async move { browser.goto(&login).await.ok() }
    })
    .await;
    Site {
        _nats: nats,
        _dir: dir,
        registry,
        agents,
        _web: web,
        _driver: driver,
        board,
        browser,
    }
}

/// Polls `probe` every 100 ms until it gives a value; panics after `limit`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
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
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Site {
    async fn js(&self, script: &str) -> Value {
        self.browser.execute(script, vec![]).await.unwrap()
    }

    /// Evaluates `expression` in the page until it is truthy.
    async fn until(&self, what: &str, limit: Duration, expression: &str) -> Value {
        let script = format!("return ({expression}) || null;");
        eventually(what, limit, || async {
            let value = self.browser.execute(&script, vec![]).await.ok()?;
            (!value.is_null()).then_some(value)
        })
        .await
    }

    async fn log_in(&self, user: &str, password: &str) {
        self.browser
            .goto(&format!("{}/login", self.board))
            .await
            .unwrap();
        self.browser
            .find(Locator::Id("user"))
            .await
            .unwrap()
            .send_keys(user)
            .await
            .unwrap();
        self.browser
            .find(Locator::Id("password"))
            .await
            .unwrap()
            .send_keys(password)
            .await
            .unwrap();
        self.browser
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

    /// The class of the board's row of `instance_id`, if it is on the page.
    fn row_class(instance_id: &str) -> String {
        format!(
            "(document.querySelector('[data-address=\"observatory.{instance_id}\"]') || {{}}).className"
        )
    }

    /// A POST from the page with its session, as a forger's script in it would send one.
    async fn post_from_page(&self, path: &str, csrf: bool) -> i64 {
        let header = if csrf {
            "'X-CSRF-Token': OCS.me.csrf,"
        } else {
            ""
        };
        let script = format!(
            "const done = arguments[0];
             fetch('{path}', {{method: 'POST', credentials: 'same-origin',
                headers: {{{header} 'Content-Type': 'application/json'}}, body: '{{\"params\": {{\"delay\": 1}}}}'}})
               .then(reply => done(reply.status), () => done(-1));"
        );
        self.browser
            .execute_async(&script, vec![])
            .await
            .unwrap()
            .as_i64()
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_shows_agents_live_lets_operators_control_and_warns_when_stale() {
    let mut site = site().await;

    // Not logged in: sent to the login page.
    site.browser.goto(&site.board).await.unwrap();
    site.until(
        "a redirect to /login",
        Duration::from_secs(5),
        "location.pathname === '/login'",
    )
    .await;

    site.log_in("alice", OPERATOR_PASSWORD).await;
    site.until(
        "both agents alive on the board",
        Duration::from_secs(15),
        &format!(
            "{} === 'row alive' && {} === 'row alive'",
            Site::row_class("faker1"),
            Site::row_class("faker2")
        ),
    )
    .await;
    let counts = site
        .js("return document.getElementById('count-alive').textContent")
        .await;
    assert!(
        counts.as_str().unwrap().starts_with('3'),
        "registry and both agents alive: {counts}"
    );
    let screenshot = site.browser.screenshot().await.unwrap();
    std::fs::write(artifacts().join("board.png"), screenshot).unwrap();

    // kill -9: the row turns expired without a reload, within the timeout and a second.
    site.js("window.notReloaded = true; return true").await;
    site.agents[1].kill();
    let killed = Instant::now();
    site.until(
        "faker2 expired on the page",
        AGENT_TIMEOUT + Duration::from_secs(1),
        &format!("{} === 'row expired'", Site::row_class("faker2")),
    )
    .await;
    let seen_after = killed.elapsed();
    assert_eq!(
        site.js("return window.notReloaded === true").await,
        json!(true),
        "the page was reloaded"
    );
    eprintln!(
        "faker2's row turned expired {seen_after:?} after kill -9 (timeout {AGENT_TIMEOUT:?})"
    );

    // A request without the CSRF token is refused, even from an operator's page.
    assert_eq!(
        site.post_from_page("/api/agents/faker1/ops/delay_task/start", false)
            .await,
        403
    );

    // The operator starts delay_task with a param and sees its session run and end.
    site.browser
        .goto(&format!("{}/agent/faker1", site.board))
        .await
        .unwrap();
    let delay = site
        .browser
        .wait()
        .for_element(Locator::Css("#op-delay_task input[data-param='delay']"))
        .await
        .unwrap();
    delay.send_keys("1.5").await.unwrap();
    site.browser
        .find(Locator::Css("#op-delay_task .action-start"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    site.until("the start reply", Duration::from_secs(10),
        "document.querySelector('#op-delay_task .reply').textContent.startsWith('OK : Started task')").await;
    site.until(
        "delay_task running",
        Duration::from_secs(10),
        "document.querySelector('#op-delay_task .session').textContent.includes('status=running')",
    )
    .await;
    site.until(
        "delay_task done",
        Duration::from_secs(10),
        "document.querySelector('#op-delay_task .session').textContent.includes('status=done')",
    )
    .await;
    let session = site
        .js("return document.querySelector('#op-delay_task .session').textContent")
        .await;
    assert!(
        session.as_str().unwrap().contains("success=true"),
        "{session}"
    );
    assert!(
        session.as_str().unwrap().contains("\"delay\": 1.5")
            || session.as_str().unwrap().contains("1.5"),
        "{session}"
    );
    std::fs::write(
        artifacts().join("agent.png"),
        site.browser.screenshot().await.unwrap(),
    )
    .unwrap();

    // A viewer sees everything and is offered no control; a forged request is refused.
    site.js("document.getElementById('logout').click(); return true")
        .await;
    site.until(
        "the login page",
        Duration::from_secs(5),
        "location.pathname === '/login'",
    )
    .await;
    site.log_in("bob", VIEWER_PASSWORD).await;
    site.browser
        .goto(&format!("{}/agent/faker1", site.board))
        .await
        .unwrap();
    site.until("the viewer's agent page", Duration::from_secs(10),
        "document.querySelector('#op-delay_task .session') && document.querySelector('#op-delay_task .session').textContent.includes('status=done')").await;
    assert_eq!(
        site.js("return document.querySelectorAll('button[class^=action-]').length")
            .await,
        json!(0)
    );
    assert_eq!(
        site.post_from_page("/api/agents/faker1/ops/delay_task/start", true)
            .await,
        403
    );
    assert_eq!(
        site.post_from_page("/api/agents/faker1/ops/acq/stop", true)
            .await,
        403
    );

    // The registry stops: the banner says the board is stale.
    site.browser.goto(&site.board).await.unwrap();
    site.until(
        "the board",
        Duration::from_secs(10),
        &format!("{} === 'row alive'", Site::row_class("faker1")),
    )
    .await;
    assert_eq!(
        site.js("return document.getElementById('banner').classList.contains('shown')")
            .await,
        json!(false)
    );
    site.registry.kill();
    let banner = site.until("the stale banner", Duration::from_secs(10),
        "document.getElementById('banner').classList.contains('shown') && document.getElementById('banner').textContent").await;
    assert!(
        banner
            .as_str()
            .unwrap()
            .contains("the registry does not answer"),
        "{banner}"
    );
    std::fs::write(
        artifacts().join("stale.png"),
        site.browser.screenshot().await.unwrap(),
    )
    .unwrap();
    site.browser.clone().close().await.unwrap();
}

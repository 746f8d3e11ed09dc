//! The board in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over WebDriver), against a real nats-server,
//! registry and fake-data agents: the list, an agent's death seen without a
//! reload, an operator's start, a viewer who cannot control, forged and
//! CSRF-less requests refused, and the stale banner when the registry stops.

mod common;

use std::time::{Duration, Instant};

use common::{Browser, artifacts};
use fantoccini::Locator;
use ocs_testkit::{NatsServer, Process, TempDir, launch};
use serde_json::json;

const AGENT_TIMEOUT: Duration = Duration::from_secs(3);
const OPERATOR_PASSWORD: &str = "operator's password";
const VIEWER_PASSWORD: &str = "viewer's password";

struct Site {
    _nats: NatsServer,
    _dir: TempDir,
    registry: Process,
    agents: Vec<Process>,
    _web: Process,
    board: String,
    browser: Browser,
}

async fn site() -> Site {
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
    common::users_file(&users, OPERATOR_PASSWORD, VIEWER_PASSWORD);
    let (web, board) = common::web(
        &url,
        &users,
        &["--probe-interval", "1", "--stale-after", "30"],
    );
    let browser = Browser::start().await;
    Site {
        _nats: nats,
        _dir: dir,
        registry,
        agents,
        _web: web,
        board,
        browser,
    }
}

impl Site {
    async fn js(&self, script: &str) -> serde_json::Value {
        self.browser.js(script).await
    }

    async fn until(&self, what: &str, limit: Duration, expression: &str) -> serde_json::Value {
        self.browser.until(what, limit, expression).await
    }

    async fn log_in(&self, user: &str, password: &str) {
        self.browser.log_in(&self.board, user, password).await;
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
            .client
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
    site.browser.client.goto(&site.board).await.unwrap();
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
    let screenshot = site.browser.client.screenshot().await.unwrap();
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
        .client
        .goto(&format!("{}/agent/faker1", site.board))
        .await
        .unwrap();
    let delay = site
        .browser
        .client
        .wait()
        .for_element(Locator::Css("#op-delay_task input[data-param='delay']"))
        .await
        .unwrap();
    delay.send_keys("1.5").await.unwrap();
    site.browser
        .client
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
        site.browser.client.screenshot().await.unwrap(),
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
        .client
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
    site.browser.client.goto(&site.board).await.unwrap();
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
        site.browser.client.screenshot().await.unwrap(),
    )
    .unwrap();
    site.browser.client.clone().close().await.unwrap();
}

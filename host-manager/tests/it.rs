//! The host manager end to end: the real `ocs-host-manager`, real agent
//! processes and scripts as children, a real nats-server and registry.

use std::process::Command;
use std::time::Duration;

use ocs_agent::OcsClient;
use ocs_protocol::{Action, InstanceId, OpName};
use ocs_testkit::query::{record, status};
use ocs_testkit::{NatsServer, Process, TempDir, eventually, workspace_binary};
use serde_json::Value;

const MANAGER: &str = "hm-test";

struct Site {
    dir: TempDir,
    /// The manager's HTTP endpoints.
    http: std::net::SocketAddr,
}

impl Site {
    /// A site file for host `testhost` with `instances` (YAML list items,
    /// indented by 6), and the scripts the tests use as agent classes.
    fn new(instances: &str) -> Site {
        let dir = TempDir::new("ocs-hm");
        let script = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            let mut permissions = std::fs::metadata(&path).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
            std::fs::set_permissions(&path, permissions).unwrap();
        };
        script(
            "crasher.sh",
            "echo \"crasher $2 giving up\" >&2\nsleep 0.2\nexit 3",
        );
        // Ignores SIGINT and SIGTERM (and so do its children): only SIGKILL ends it.
        script(
            "stubborn.sh",
            "trap '' INT TERM\nwhile :; do sleep 0.1; done",
        );
        // An ordinary program: it does not die with its parent as ocs agents do.
        script("sleeper.sh", "while :; do sleep 0.1; done");
        // Daemonises: leaves a copy in the background (holding its stderr) and exits 0.
        script("forker.sh", "sleep 300 &\nexit 0");
        // Writes what a careless program may: a flood of lines, bytes that are
        // not UTF-8, a line of 40 kB without a newline; then fails.
        script(
            "scribbler.sh",
            "i=0\nwhile [ $i -lt 3000 ]; do echo \"chatty line $i\" >&2; i=$((i+1)); done\n\
             printf 'not utf-8: \\377\\376\\n' >&2\n\
             head -c 40000 /dev/zero | tr '\\0' x >&2\necho >&2\n\
             echo \"scribbler $2 giving up\" >&2\nexit 3",
        );
        // A free port for the manager's /metrics (parallel tests each need one).
        let http = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .unwrap();
        let site = Site { dir, http };
        site.write(instances);
        site
    }

    fn file(&self) -> std::path::PathBuf {
        self.dir.path().join("site.yaml")
    }

    fn write(&self, instances: &str) {
        let dir = self.dir.path().display();
        let text = format!(
            "agent-classes:\n  Crasher: {dir}/crasher.sh\n  Stubborn: {dir}/stubborn.sh\n  Sleeper: {dir}/sleeper.sh\n  Forker: {dir}/forker.sh\n  Scribbler: {dir}/scribbler.sh\nhosts:\n  testhost:\n    agent-instances:\n{instances}"
        );
        // Write then rename: the manager never reads half a file.
        let partial = self.dir.path().join("site.yaml.new");
        std::fs::write(&partial, text).unwrap();
        std::fs::rename(partial, self.file()).unwrap();
    }

    fn manager(&self, nats: &NatsServer) -> Process {
        let mut command = Command::new(workspace_binary("ocs-host-manager"));
        command
            .args(["--site-file", self.file().to_str().unwrap()])
            .args(["--site-host", "testhost", "--instance-id", MANAGER])
            .args(["--duplicate-check", "1.2", "--reload-interval", "0.2"])
            .args(["--listen", &self.http.to_string()])
            .env("NATS_URL", nats.url())
            .env_remove("OCS_SITE_FILE")
            .env_remove("INSTANCE_ID");
        Process::spawn("ocs-host-manager", command)
    }
}

async fn client(nats: &NatsServer) -> OcsClient {
    ocs_testkit::query::client(&nats.url()).await
}

/// The manager process's session, when it answers.
async fn manager_session(client: &OcsClient) -> Option<Value> {
    let session = status(client, MANAGER, "manager").await?["session"].clone();
    session["data"]
        .get("child_states")
        .is_some()
        .then_some(session)
}

fn find_child<'v>(session: &'v Value, instance_id: &str) -> Option<&'v Value> {
    session["data"]["child_states"]
        .as_array()?
        .iter()
        .find(|child| child["instance_id"] == instance_id)
}

fn child<'v>(session: &'v Value, instance_id: &str) -> &'v Value {
    find_child(session, instance_id)
        .unwrap_or_else(|| panic!("no child {instance_id} in {session}"))
}

/// Waits until `check` holds for the child `instance_id`; returns the session.
async fn until_child(
    client: &OcsClient,
    instance_id: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    eventually(timeout, what, || async {
        let session = manager_session(client).await?;
        check(find_child(&session, instance_id)?).then_some(session)
    })
    .await
}

/// Waits until the manager reports `instance_id` up; returns its pid.
async fn up_pid(client: &OcsClient, instance_id: &str) -> u64 {
    let session = until_child(
        client,
        instance_id,
        "up",
        Duration::from_secs(10),
        |child| child["state"] == "up",
    )
    .await;
    child(&session, instance_id)["pid"].as_u64().unwrap()
}

fn messages(session: &Value) -> Vec<String> {
    session["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message[1].as_str().unwrap().to_owned())
        .collect()
}

fn alive(pid: u64) -> bool {
    // A zombie is dead for our purposes; its parent reaps it.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// `ocs` addressing this site's manager: `(exit code, stdout and stderr)`.
fn ocs(nats: &NatsServer, args: &[&str]) -> (i32, String) {
    let output = ocs_testkit::launch::run(
        ocs_testkit::launch::ocs_command(&nats.url(), args).args(["--manager", MANAGER]),
    );
    (output.code.unwrap_or(-1), output.stdout + &output.stderr)
}

fn registry(nats: &NatsServer) -> Process {
    ocs_testkit::launch::registry(&nats.url(), 0, &["--agent-timeout", "3"])
}

async fn registry_record(client: &OcsClient, instance_id: &str) -> Option<Value> {
    record(client, &format!("observatory.{instance_id}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_restart_with_growing_delays_and_a_crash_loop_is_reported() {
    let nats = NatsServer::start();
    let _registry = registry(&nats);
    let site = Site::new(
        "      - {agent-class: Crasher, instance-id: crasher, restart: {delay: 0.3, max-delay: 1.2, crash-loop: 3}}
      - {agent-class: FakeDataAgent, instance-id: faker1, arguments: [[--mode, idle]], restart: {delay: 3.5}}
",
    );
    let _manager = site.manager(&nats);
    let client = client(&nats).await;

    let session = until_child(
        &client,
        "crasher",
        "a crash loop",
        Duration::from_secs(30),
        |child| child["state"] == "crash-loop" && child["restarts"].as_u64() >= Some(4),
    )
    .await;
    let crasher = child(&session, "crasher");
    assert_eq!(crasher["crash_loop"], true);
    assert_eq!(crasher["last_exit_code"], 3);
    assert_eq!(crasher["stderr_tail"][0], "crasher crasher giving up");
    assert_eq!(
        session["degraded"], true,
        "a crash loop makes the manager DEGRADED"
    );
    assert_eq!(session["op_code"], 8);
    // Delays double from 0.3 s up to the 1.2 s cap, each shortened by at most a fifth.
    let delays: Vec<f64> = messages(&session)
        .iter()
        .filter_map(|message| message.split("restarting in ").nth(1))
        .map(|rest| rest.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(delays.len() >= 4, "{delays:?}");
    for (delay, base) in delays.iter().zip([0.3, 0.6, 1.2, 1.2]) {
        assert!(
            *delay >= base * 0.8 - 0.05 && *delay <= base + 0.05,
            "{delays:?}"
        );
    }

    // A killed agent comes back as a new incarnation: the registry sees it
    // expire (its restart delay is longer than the timeout), then return.
    let session = until_child(
        &client,
        "faker1",
        "faker1 up",
        Duration::from_secs(10),
        |child| child["state"] == "up",
    )
    .await;
    let first = eventually(Duration::from_secs(10), "faker1 in the registry", || {
        registry_record(&client, "faker1")
    })
    .await;
    let pid = child(&session, "faker1")["pid"].as_u64().unwrap();
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    eventually(
        Duration::from_secs(8),
        "faker1 expired in the registry",
        || async {
            registry_record(&client, "faker1")
                .await
                .filter(|record| record["expired"] == true)
        },
    )
    .await;
    let back = eventually(Duration::from_secs(15), "faker1 back", || async {
        registry_record(&client, "faker1").await.filter(|record| {
            record["expired"] == false && record["incarnation"] != first["incarnation"]
        })
    })
    .await;
    assert_eq!(back["incarnations_seen"], 2);
    let session = manager_session(&client).await.unwrap();
    assert_eq!(child(&session, "faker1")["restarts"], 1);
    assert_eq!(child(&session, "faker1")["last_exit_signal"], 9);
}

/// A child's stderr is read to its end whatever it holds: a reader that gave
/// up at bytes that are not UTF-8 lost everything after them, from the
/// journal and from the crash report, and closed the pipe on the child. The
/// crash report keeps the last lines within its bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatever_a_child_writes_to_stderr_is_read_and_its_tail_is_bounded() {
    let nats = NatsServer::start();
    let site = Site::new(
        "      - {agent-class: Scribbler, instance-id: scribbler, restart: {delay: 60}}\n",
    );
    let _manager = site.manager(&nats);
    let client = client(&nats).await;
    let session = until_child(
        &client,
        "scribbler",
        "its first exit",
        Duration::from_secs(30),
        |child| child["restarts"].as_u64() >= Some(1),
    )
    .await;
    let scribbler = child(&session, "scribbler");
    assert_eq!(scribbler["last_exit_code"], 3, "{scribbler}");
    let tail: Vec<&str> = scribbler["stderr_tail"]
        .as_array()
        .expect("a stderr tail")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        tail[tail.len() - 3..],
        [
            "not utf-8: \u{FFFD}\u{FFFD}",
            "(a line longer than 16384 bytes, not shown)",
            "scribbler scribbler giving up",
        ],
        "{tail:?}"
    );
    assert!(tail[0].starts_with("chatty line "), "{tail:?}");
    let bytes: usize = tail.iter().map(|line| line.len()).sum();
    assert!(
        bytes <= ocs_host_manager::stderr_tail::BYTES,
        "{bytes} bytes kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_down_stops_agents_and_sigkills_one_that_ignores_signals() {
    let nats = NatsServer::start();
    let site = Site::new(
        "      - {agent-class: FakeDataAgent, instance-id: faker1}
      - {agent-class: Stubborn, instance-id: stubborn, restart: {stop-grace: 0.5}}
",
    );
    let _manager = site.manager(&nats);
    let client = client(&nats).await;
    let mut pids = Vec::new();
    for instance_id in ["faker1", "stubborn"] {
        pids.push(up_pid(&client, instance_id).await);
    }

    let (code, output) = ocs(&nats, &["host", "down", "faker1", "stubborn"]);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("Requested: faker1 down, stubborn down."),
        "{output}"
    );
    let session = until_child(
        &client,
        "stubborn",
        "stubborn down",
        Duration::from_secs(10),
        |child| child["state"] == "down",
    )
    .await;
    assert_eq!(child(&session, "faker1")["state"], "down");
    assert_eq!(
        child(&session, "faker1")["last_exit_code"],
        0,
        "SIGINT was enough"
    );
    assert_eq!(child(&session, "stubborn")["last_exit_signal"], 9);
    assert_eq!(
        child(&session, "stubborn")["restarts"],
        0,
        "a stop is no crash"
    );
    let log = messages(&session).join("\n");
    assert!(
        log.contains("stubborn ignored SIGINT; sending SIGTERM"),
        "{log}"
    );
    assert!(
        log.contains("stubborn ignored SIGTERM; sending SIGKILL"),
        "{log}"
    );
    for pid in pids {
        assert!(!alive(pid), "pid {pid} still runs");
    }

    // up brings it back; freeze leaves it alone even when it should go down.
    let (code, _) = ocs(&nats, &["host", "up", "faker1"]);
    assert_eq!(code, 0);
    let pid = up_pid(&client, "faker1").await;
    assert_eq!(ocs(&nats, &["host", "freeze", "faker1"]).0, 0);
    assert_eq!(ocs(&nats, &["host", "down", "faker1"]).0, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let session = manager_session(&client).await.unwrap();
    assert_eq!(child(&session, "faker1")["frozen"], true);
    assert_eq!(child(&session, "faker1")["pid"], pid);
    assert!(alive(pid));
    assert_eq!(ocs(&nats, &["host", "thaw", "faker1"]).0, 0);
    until_child(
        &client,
        "faker1",
        "faker1 down once thawed",
        Duration::from_secs(10),
        |child| child["state"] == "down",
    )
    .await;

    let (code, output) = ocs(&nats, &["host", "up", "nobody"]);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("\"nobody\" is not managed on this host"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_manager_leaves_no_orphans() {
    let nats = NatsServer::start();
    let site = Site::new(
        "      - {agent-class: FakeDataAgent, instance-id: faker1}
      - {agent-class: BarebonesAgent, instance-id: bare1}
      - {agent-class: Sleeper, instance-id: sleeper}
",
    );
    let mut manager = site.manager(&nats);
    let client = client(&nats).await;
    let mut pids = Vec::new();
    for instance_id in ["faker1", "bare1"] {
        pids.push(up_pid(&client, instance_id).await);
    }
    let sleeper = up_pid(&client, "sleeper").await;
    manager.kill();
    // Agents built on ocs-agent die with the manager.
    eventually(Duration::from_secs(10), "the agents gone", || async {
        pids.iter().all(|pid| !alive(*pid)).then_some(())
    })
    .await;
    // Another program outlives a SIGKILLed manager, until the manager is back
    // (systemd restarts it): it stops what its predecessor left, then starts
    // the instance afresh.
    assert!(alive(sleeper), "the sleeper is an orphan for now");
    let _manager = site.manager(&nats);
    eventually(Duration::from_secs(15), "the orphan stopped", || async {
        (!alive(sleeper)).then_some(())
    })
    .await;
    let session = until_child(
        &client,
        "sleeper",
        "a new sleeper",
        Duration::from_secs(10),
        |child| child["state"] == "up" && child["pid"].as_u64() != Some(sleeper),
    )
    .await;
    let log = messages(&session).join("\n");
    assert!(
        log.contains(&format!("stopping pid {sleeper} (/bin/sh "))
            && log.contains("left running by an earlier manager"),
        "{log}"
    );
}

/// `sleep 300` processes a forker of this test's manager left, still running.
fn leftover_sleeps() -> Vec<u64> {
    let manager = format!("OCS_HOST_MANAGER_ADDRESS=observatory.{MANAGER}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline == b"sleep\x00300\x00")
                && std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                    environ
                        .split(|byte| *byte == 0)
                        .any(|variable| variable == manager.as_bytes())
                })
        })
        .filter(|pid| alive(*pid))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_daemonises_is_an_exit_and_what_it_left_is_stopped() {
    let nats = NatsServer::start();
    let site = Site::new("      - {agent-class: Forker, instance-id: forker}\n");
    let _manager = site.manager(&nats);
    let client = client(&nats).await;
    // Each start leaves a copy in the background and exits at once: reported
    // as the exit it is (not "up" with a zombie's pid) and restarted, again
    // and again...
    let session = until_child(
        &client,
        "forker",
        "two restarts",
        Duration::from_secs(15),
        |child| child["restarts"].as_u64().is_some_and(|n| n >= 2),
    )
    .await;
    assert_eq!(child(&session, "forker")["last_exit_code"], 0, "{session}");
    // ...and what each start left behind is stopped, not orphaned.
    eventually(Duration::from_secs(5), "the leftovers stopped", || async {
        leftover_sleeps().is_empty().then_some(())
    })
    .await;
}

/// Every agent class the site file knows runs under a host manager with
/// its arguments from the site file, and is healthy there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listed_class_runs_under_the_host_manager() {
    let nats = NatsServer::start();
    let registry_http = ocs_testkit::free_port();
    let monitor_http = ocs_testkit::free_port();
    let bare_http = ocs_testkit::free_port();
    let site = Site::new(&format!(
        "      - {{agent-class: RegistryAgent, instance-id: registry, arguments: [[--listen, 127.0.0.1:{registry_http}]]}}
      - {{agent-class: OperationMonitor, instance-id: monitor, arguments: [[--listen, 127.0.0.1:{monitor_http}], [--probe-interval, 1]]}}
      - {{agent-class: FakeDataAgent, instance-id: faker1, arguments: [[--mode, idle]]}}
      - {{agent-class: BarebonesAgent, instance-id: bare1, arguments: [[--listen, 127.0.0.1:{bare_http}]]}}
"
    ));
    let _manager = site.manager(&nats);
    let client = client(&nats).await;
    for instance_id in ["registry", "monitor", "faker1", "bare1"] {
        up_pid(&client, instance_id).await;
    }
    for agent in ["faker1", "bare1"] {
        eventually(Duration::from_secs(10), "registered and alive", || async {
            registry_record(&client, agent)
                .await
                .filter(|record| record["expired"] == false)
        })
        .await;
    }
    let services = [
        ("registry", registry_http),
        ("monitor", monitor_http),
        ("bare1", bare_http),
    ];
    for (what, port) in services {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        eventually(Duration::from_secs(15), what, || async {
            (ocs_testkit::http_get(address, "/healthz").await.0 == 200).then_some(())
        })
        .await;
    }
    // An agent's endpoints report its NATS connection.
    let bare = std::net::SocketAddr::from(([127, 0, 0, 1], bare_http));
    let (_, metrics) = ocs_testkit::http_get(bare, "/metrics").await;
    assert!(metrics.contains("ocs_nats_connected 1"), "{metrics}");
    // The monitor follows the managed registry's feed.
    let monitor = std::net::SocketAddr::from(([127, 0, 0, 1], monitor_http));
    eventually(Duration::from_secs(10), "faker1 on the monitor", || async {
        let (_, metrics) = ocs_testkit::http_get(monitor, "/metrics").await;
        metrics
            .contains("agent=\"observatory.faker1\"")
            .then_some(())
    })
    .await;
    // Nobody crashed meanwhile.
    let session = manager_session(&client).await.unwrap();
    for instance_id in ["registry", "monitor", "faker1", "bare1"] {
        let child = child(&session, instance_id);
        assert_eq!(child["state"], "up", "{child}");
        assert_eq!(child["restarts"], 0, "{child}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_is_refused() {
    let nats = NatsServer::start();
    let mut elsewhere = Command::new(workspace_binary("ocs-fake-data-agent"));
    elsewhere
        .args(["--instance-id", "faker1", "--mode", "idle"])
        .env("NATS_URL", nats.url())
        .env_remove("OCS_SITE_FILE");
    let elsewhere = Process::spawn("faker1 elsewhere", elsewhere);
    let client = client(&nats).await;
    eventually(
        Duration::from_secs(10),
        "faker1 running elsewhere",
        || async {
            client
                .api(&InstanceId::new("faker1").unwrap(), Duration::from_secs(1))
                .await
                .ok()
        },
    )
    .await;

    let site = Site::new("      - {agent-class: FakeDataAgent, instance-id: faker1}\n");
    let _manager = site.manager(&nats);
    let session = until_child(
        &client,
        "faker1",
        "a conflict",
        Duration::from_secs(10),
        |child| child["state"] == "conflict",
    )
    .await;
    let faker = child(&session, "faker1");
    assert_eq!(faker["pid"], Value::Null, "not started");
    let reason = faker["conflict"].as_str().unwrap();
    assert!(
        reason.starts_with("observatory.faker1 already heartbeats from incarnation")
            && reason.ends_with(&format!("(pid {})", elsewhere.pid())),
        "{reason}"
    );
    assert_eq!(session["degraded"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_edit_keeps_the_last_good_config_and_a_good_one_is_applied() {
    let nats = NatsServer::start();
    let good = "      - {agent-class: FakeDataAgent, instance-id: faker1}\n";
    let site = Site::new(good);
    let manager = site.manager(&nats);
    let client = client(&nats).await;
    let pid = Value::from(up_pid(&client, "faker1").await);

    site.write(&format!(
        "{good}      - {{agent-class: FakeDataAgent, instance-id: faker1}}\n"
    ));
    let session = eventually(Duration::from_secs(10), "the bad edit reported", || async {
        manager_session(&client)
            .await
            .filter(|session| session["data"]["config"]["ok"] == false)
    })
    .await;
    let error = session["data"]["config"]["error"].as_str().unwrap();
    assert_eq!(
        error,
        format!(
            "{}:11: duplicate instance id \"faker1\" (first at line 10)",
            site.file().display()
        )
    );
    assert!(
        messages(&session)
            .iter()
            .any(|message| message.starts_with("site file rejected, keeping the last good one"))
    );
    assert_eq!(
        child(&session, "faker1")["pid"],
        pid,
        "the running agent is untouched: {session}"
    );
    // A crash while the file is bad: the restart uses the last good config.
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    let restarted = until_child(
        &client,
        "faker1",
        "faker1 restarted",
        Duration::from_secs(15),
        |child| child["state"] == "up" && child["pid"] != pid && child["restarts"] == 1,
    )
    .await;
    let pid = child(&restarted, "faker1")["pid"].clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let session = manager_session(&client).await.unwrap();
    assert_eq!(
        child(&session, "faker1")["pid"],
        pid,
        "it stays up: {session}"
    );

    // A good edit: a new instance starts, the untouched one keeps running, and
    // SIGHUP works as well as the file watch.
    site.write(&format!(
        "{good}      - {{agent-class: BarebonesAgent, instance-id: bare1}}\n"
    ));
    Command::new("kill")
        .args(["-HUP", &manager.pid().to_string()])
        .status()
        .unwrap();
    let session = until_child(
        &client,
        "bare1",
        "bare1 up",
        Duration::from_secs(10),
        |child| child["state"] == "up",
    )
    .await;
    assert_eq!(session["data"]["config"]["ok"], true);
    assert_eq!(child(&session, "faker1")["pid"], pid);

    // Taking an instance out of the file stops it.
    site.write("      - {agent-class: BarebonesAgent, instance-id: bare1}\n");
    eventually(Duration::from_secs(10), "faker1 gone", || async {
        let session = manager_session(&client).await?;
        let children = session["data"]["child_states"].as_array()?.clone();
        children
            .iter()
            .all(|child| child["instance_id"] != "faker1")
            .then_some(())
    })
    .await;
    assert!(!alive(pid.as_u64().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_operations_run_on_time() {
    let nats = NatsServer::start();
    let site = Site::new(
        "      - agent-class: FakeDataAgent
        instance-id: faker1
        arguments: [[--mode, idle]]
        schedule:
          - {operation: count, every: 1, params: {target: 1, interval: 0.01}}
          - {operation: delay_task, cron: '* * * * * *', params: {delay: 0.01}}
",
    );
    let _manager = site.manager(&nats);
    let client = client(&nats).await;
    let runs = |session: &Value, index: usize| {
        session["data"]["schedules"][index]["runs"]
            .as_u64()
            .unwrap_or(0)
    };
    let session = eventually(Duration::from_secs(15), "both schedules ran", || async {
        manager_session(&client)
            .await
            .filter(|session| runs(session, 0) >= 1 && runs(session, 1) >= 1)
    })
    .await;
    let start = tokio::time::Instant::now();
    let (count_runs, cron_runs) = (runs(&session, 0), runs(&session, 1));
    let session = eventually(
        Duration::from_secs(10),
        "three more runs of each",
        || async {
            manager_session(&client).await.filter(|session| {
                runs(session, 0) >= count_runs + 3 && runs(session, 1) >= cron_runs + 3
            })
        },
    )
    .await;
    // Three more once-a-second runs take about three seconds; generous bounds
    // keep a loaded machine from failing this.
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(8),
        "{elapsed:?}"
    );
    assert_eq!(
        session["data"]["schedules"][0]["last_ok"], true,
        "{session}"
    );
    assert_eq!(
        session["data"]["schedules"][0]["last_message"],
        "Started task \"count\"."
    );
    // The agent ran them as ordinary operations.
    let status = status(&client, "faker1", "count").await.unwrap();
    let session_id = status["session"]["session_id"].as_u64().unwrap();
    assert!(
        session_id >= count_runs + 2,
        "one session per run: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cut_short_by_a_crash_is_marked_failed_by_the_next_incarnation() {
    let nats = NatsServer::start();
    let site = Site::new(
        "      - {agent-class: FakeDataAgent, instance-id: faker1, restart: {delay: 0.2}}\n",
    );
    let _manager = site.manager(&nats);
    let client = client(&nats).await;
    let pid = up_pid(&client, "faker1").await;
    let faker = InstanceId::new("faker1").unwrap();
    let call = |op: &'static str, action: Action, params: Value| {
        let client = &client;
        let faker = faker.clone();
        async move {
            let params = ocs_protocol::codec::to_msgpack(&params).unwrap();
            let reply = client
                .operation(
                    &faker,
                    &OpName::new(op).unwrap(),
                    action,
                    params,
                    None,
                    Duration::from_secs(3),
                )
                .await
                .ok()?;
            ocs_protocol::json::reply(&reply).ok()
        }
    };
    // A finished run, then one that is running when the process dies.
    eventually(Duration::from_secs(10), "count started", || {
        call(
            "count",
            Action::Start,
            serde_json::json!({"target": 1, "interval": 0.01}),
        )
    })
    .await;
    eventually(Duration::from_secs(5), "count done", || async {
        call("count", Action::Status, serde_json::json!({}))
            .await
            .filter(|reply| reply["session"]["op_code"] == 5)
    })
    .await;
    let started = call(
        "delay_task",
        Action::Start,
        serde_json::json!({"delay": 60}),
    )
    .await
    .unwrap();
    assert_eq!(started["status"], 0, "{started}");
    eventually(Duration::from_secs(5), "delay_task running", || async {
        call("delay_task", Action::Status, serde_json::json!({}))
            .await
            .filter(|reply| reply["session"]["op_code"] == 3)
    })
    .await;
    // Let the journal store the running state before the crash.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();

    let session = until_child(
        &client,
        "faker1",
        "faker1 restarted",
        Duration::from_secs(15),
        |child| child["state"] == "up" && child["pid"].as_u64() != Some(pid),
    )
    .await;
    // The crash report holds the agent's own log lines, as plain text: an
    // agent writing to a pipe leaves colour codes out.
    let tail = find_child(&session, "faker1").unwrap()["stderr_tail"].clone();
    let lines: Vec<&str> = tail
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        lines.iter().any(|line| line.contains("INFO")),
        "no log line in the crash report: {tail}"
    );
    assert!(
        lines.iter().all(|line| !line.contains('\u{1b}')),
        "escape codes in the crash report: {tail}"
    );
    let reply = eventually(
        Duration::from_secs(10),
        "delay_task marked failed",
        || async {
            call("delay_task", Action::Status, serde_json::json!({}))
                .await
                .filter(|reply| reply["session"]["op_code"] == 6)
        },
    )
    .await;
    let session = &reply["session"];
    assert_eq!(session["status"], "done");
    assert_eq!(session["success"], false);
    let log = messages(session).join("\n");
    assert!(
        log.contains("The agent died while this operation was running (incarnation"),
        "{log}"
    );
    // The finished run is shown as it ended, and new runs get new session ids.
    let count = call("count", Action::Status, serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(count["session"]["op_code"], 5, "{count}");
    let again = call(
        "count",
        Action::Start,
        serde_json::json!({"target": 1, "interval": 0.01}),
    )
    .await
    .unwrap();
    assert!(
        again["session"]["session_id"].as_u64() > session["session_id"].as_u64(),
        "{again}"
    );
}

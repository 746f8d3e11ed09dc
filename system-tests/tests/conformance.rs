//! `ocs conformance` against every agent the project ships: each keeps every
//! rule, and says it is leaving on SIGTERM and SIGINT; an agent that breaks
//! the rules is failed by name.

use std::process::Command;
use std::time::Duration;

use ocs_protocol::codec;
use ocs_testkit::launch::{ocs_command, run};
use ocs_testkit::{NatsServer, Process, TempDir, agent, workspace_binary};
use serde_json::Value;

/// `ocs conformance` on `instance_id` with `extra` arguments, signalling
/// `process` with `signal`.
fn conformance(
    nats: &NatsServer,
    instance_id: &str,
    process: &Process,
    signal: &str,
    extra: &[&str],
) -> (Option<i32>, Value) {
    let pid = process.pid().to_string();
    let mut args = vec![
        "conformance",
        instance_id,
        "--json",
        "--pid",
        &pid,
        "--signal",
        signal,
    ];
    args.extend(extra);
    let output = run(&mut ocs_command(&nats.url(), &args));
    let report = serde_json::from_str(&output.stdout)
        .unwrap_or_else(|err| panic!("{err}: {} {}", output.stdout, output.stderr));
    (output.code, report)
}

fn failures(report: &Value) -> Vec<&Value> {
    report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rule| rule["passed"] == false)
        .collect()
}

#[test]
fn every_shipped_agent_keeps_the_protocol() {
    let nats = NatsServer::start();
    let dir = TempDir::new("ocs-conformance");
    let site = dir.path().join("site.yaml");
    std::fs::write(&site, "hosts:\n  testhost:\n    agent-instances: []\n").unwrap();
    let mut manager = Command::new(workspace_binary("ocs-host-manager"));
    manager
        .args([
            "--nats-url",
            &nats.url(),
            "--site-file",
            site.to_str().unwrap(),
        ])
        .args([
            "--site-host",
            "testhost",
            "--instance-id",
            "hm1",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .env_remove("OCS_SITE_FILE")
        .env_remove("INSTANCE_ID");
    // Each with an operation safe to run through its states, where it has one.
    let agents: [(&str, Process, &str, &[&str]); 4] = [
        (
            "faker1",
            agent(&nats.url(), "ocs-fake-data-agent", "faker1", &[]),
            "TERM",
            &["--exercise", "delay_task", "--param", "delay=0.3"],
        ),
        (
            "bare1",
            agent(&nats.url(), "ocs-barebones-agent", "bare1", &[]),
            "INT",
            &["--exercise", "count", "--param", "interval=0.1"],
        ),
        (
            "hm1",
            Process::spawn("ocs-host-manager", manager),
            "TERM",
            &[],
        ),
        (
            "registry",
            ocs_testkit::launch::registry(&nats.url(), 0, &[]),
            "INT",
            &[],
        ),
    ];
    // Every agent up and beating before it is judged.
    std::thread::sleep(Duration::from_secs(2));
    for (instance_id, process, signal, extra) in &agents {
        let (code, report) = conformance(&nats, instance_id, process, signal, extra);
        assert!(
            failures(&report).is_empty(),
            "{instance_id}: {:#?}",
            failures(&report)
        );
        assert_eq!(code, Some(0), "{instance_id}");
        let rules = report["rules"].as_array().unwrap();
        let exercised = rules
            .iter()
            .any(|rule| rule["rule"].as_str().unwrap().starts_with("wait until"));
        assert_eq!(exercised, !extra.is_empty(), "{instance_id}: {report}");
        assert!(report["passed"].as_u64().unwrap() >= 15, "{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_breaks_the_rules_fails_by_name() {
    let nats = NatsServer::start();
    let bus = async_nats::connect(nats.url()).await.unwrap();
    // Beats without op_type, a seq that skips, and nobody answering requests.
    let liar = tokio::spawn(async move {
        for seq in (1..).step_by(2) {
            let mut beat = ocs_testkit::heartbeat("observatory.liar");
            beat.seq = seq;
            beat.op_codes[0].op_type = String::new();
            let _ = bus
                .publish(
                    "observatory.liar.feeds.heartbeat",
                    codec::encode(&beat).into(),
                )
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let output = tokio::task::spawn_blocking({
        let url = nats.url();
        move || {
            run(&mut ocs_command(
                &url,
                &[
                    "conformance",
                    "liar",
                    "--json",
                    "--listen",
                    "2",
                    "--timeout",
                    "0.5",
                ],
            ))
        }
    })
    .await
    .unwrap();
    liar.abort();
    assert_eq!(output.code, Some(1), "{}", output.stderr);
    let report: Value = serde_json::from_str(&output.stdout).unwrap();
    let failed: Vec<&str> = failures(&report)
        .iter()
        .map(|rule| rule["rule"].as_str().unwrap())
        .collect();
    for rule in [
        "heartbeat: required fields, op codes 1-8 but not 7, op_type, unique names, interval 100-60000 ms",
        "heartbeat: one incarnation, seq +1 per beat",
        "api: answers",
        "ping: answers",
    ] {
        assert!(failed.contains(&rule), "{rule} not among {failed:?}");
    }
}

/// The Python block of `PROTOCOL.md`'s "A minimal agent in Python", as written there.
fn protocol_md_example() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/PROTOCOL.md");
    let text = std::fs::read_to_string(path).unwrap();
    let section = text
        .split("## A minimal agent in Python")
        .nth(1)
        .expect("PROTOCOL.md has its Python example");
    let code = section.split("```python\n").nth(1).unwrap();
    code.split("\n```").next().unwrap().to_owned() + "\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_agent_of_protocol_md_runs_against_the_registry_and_passes() {
    let python = ocs_testkit::tool(
        "python3",
        "deploy/test/all installs it (source deploy/lib/tools.sh; ensure_python_protocol_deps)",
    );
    let imports = Command::new(&python)
        .args(["-c", "import nats, msgpack, google.protobuf, grpc_tools"])
        .output()
        .unwrap();
    assert!(
        imports.status.success(),
        "nats-py, protobuf, msgpack or grpcio-tools missing from {}: run source deploy/lib/tools.sh; ensure_python_protocol_deps\n{}",
        python.display(),
        String::from_utf8_lossy(&imports.stderr)
    );
    let dir = TempDir::new("ocs-python-example");
    let proto = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/proto");
    let generated = Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I", proto.to_str().unwrap()])
        .arg(format!("--python_out={}", dir.path().display()))
        .arg("ocs/v1/ocs.proto")
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let script = dir.path().join("agent.py");
    std::fs::write(&script, protocol_md_example()).unwrap();

    let nats = NatsServer::start();
    let _registry = ocs_testkit::launch::registry(&nats.url(), 0, &[]);
    let mut command = Command::new(&python);
    command
        .arg(&script)
        .env("NATS_URL", nats.url())
        .env("PYTHONPATH", dir.path());
    let agent = Process::spawn("python agent", command);
    let client = ocs_testkit::query::client(&nats.url()).await;
    ocs_testkit::eventually(
        Duration::from_secs(10),
        "the registry sees it alive",
        || async {
            ocs_testkit::query::record(&client, "observatory.pyagent")
                .await
                .filter(|record| record["expired"] == false)
        },
    )
    .await;
    // A task run as any client runs it.
    let url = nats.url();
    let started = tokio::task::spawn_blocking(move || {
        let start = ocs_testkit::ocs(&url, &["pyagent", "hello", "start", "name=ocs"]);
        let status = ocs_testkit::ocs(&url, &["pyagent", "hello", "status", "--json"]);
        (start, status)
    })
    .await
    .unwrap();
    assert_eq!(started.0.code, Some(0), "{}", started.0.stdout);
    let status: Value = serde_json::from_str(&started.1.stdout).unwrap();
    assert_eq!(
        status["session"]["data"]["greeting"], "hello ocs",
        "{status}"
    );
    assert_eq!(status["session"]["success"], true, "{status}");
    // Every rule, and the leaving heartbeat on SIGTERM.
    let (code, report) = tokio::task::spawn_blocking({
        let nats_url = nats.url();
        let pid = agent.pid().to_string();
        move || {
            let output = run(&mut ocs_command(
                &nats_url,
                &[
                    "conformance",
                    "pyagent",
                    "--json",
                    "--pid",
                    &pid,
                    "--exercise",
                    "hello",
                    "--param",
                    "name=again",
                ],
            ));
            (
                output.code,
                serde_json::from_str::<Value>(&output.stdout).unwrap(),
            )
        }
    })
    .await
    .unwrap();
    assert!(failures(&report).is_empty(), "{:#?}", failures(&report));
    assert_eq!(code, Some(0));
    ocs_testkit::eventually(
        Duration::from_secs(5),
        "the registry shows it left",
        || async {
            ocs_testkit::query::record(&client, "observatory.pyagent")
                .await
                .filter(|record| record["state"] == "left")
        },
    )
    .await;
}

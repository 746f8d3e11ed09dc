//! The monitor against a real nats-server, registry and agents; the rules
//! against real promtool; alerts end to end through a real Prometheus.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ocs_agent::OcsClient;
use ocs_protocol::codec::to_msgpack;
use ocs_protocol::{Action, AddressRoot, InstanceId, OpName, proto};
use ocs_service::skeleton::start_within;
use ocs_testkit::{NatsServer, Process, TempDir, eventually, http_get, tool};
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn promtool() -> PathBuf {
    tool("promtool", "apt-get install prometheus")
}

fn run_tool(program: &Path, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{} {args:?} failed:\n{text}",
        program.display()
    );
    text
}

#[test]
fn promtool_checks_the_config_and_rules_and_passes_the_rule_tests() {
    let promtool = promtool();
    run_tool(
        &promtool,
        &["check", "config", "deploy/prometheus/prometheus.yml"],
    );
    run_tool(
        &promtool,
        &[
            "check",
            "rules",
            "--lint=duplicate-rules",
            "--lint-fatal",
            "deploy/prometheus/rules.yml",
        ],
    );
    let output = run_tool(
        &promtool,
        &["test", "rules", "deploy/prometheus/rules_test.yml"],
    );
    assert!(output.contains("SUCCESS"), "{output}");
}

#[test]
fn the_alertmanager_config_is_valid() {
    let amtool = tool("amtool", "apt-get install prometheus-alertmanager");
    run_tool(
        &amtool,
        &["check-config", "deploy/alertmanager/alertmanager.yml"],
    );
}

struct Stack {
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    monitor: SocketAddr,
    registry: SocketAddr,
}

impl Stack {
    async fn start(nats: &NatsServer, agent_timeout: &str) -> Stack {
        let url = nats.url();
        let shutdown = CancellationToken::new();
        let registry_config = ocs_registry::Config::parse_from([
            "ocs-registry",
            "--nats-url",
            &url,
            "--listen",
            "127.0.0.1:0",
            "--agent-timeout",
            agent_timeout,
        ]);
        let started = start_within(&registry_config, shutdown.clone())
            .await
            .unwrap();
        let registry = started.listener.as_ref().unwrap().local_addr().unwrap();
        let metrics = Arc::new(ocs_registry::RegistryMetrics::new());
        let registry_task = tokio::spawn(async move {
            ocs_registry::run(registry_config, started, metrics)
                .await
                .unwrap()
        });
        let monitor_config = ocs_operation_monitor::Config::parse_from([
            "ocs-operation-monitor",
            "--nats-url",
            &url,
            "--listen",
            "127.0.0.1:0",
            "--probe-interval",
            "1",
        ]);
        let started = start_within(&monitor_config, shutdown.clone())
            .await
            .unwrap();
        let monitor = started.listener.as_ref().unwrap().local_addr().unwrap();
        let monitor_task = tokio::spawn(async move {
            ocs_operation_monitor::run(monitor_config, started)
                .await
                .unwrap()
        });
        Stack {
            shutdown,
            tasks: vec![registry_task, monitor_task],
            monitor,
            registry,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .unwrap()
                .unwrap();
        }
    }
}

/// A fake-data agent acquiring from the start.
fn faker(nats: &NatsServer, instance_id: &str) -> Process {
    ocs_testkit::agent(&nats.url(), "ocs-fake-data-agent", instance_id, &[])
}

/// Sample names in a text exposition.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

/// The `ocs_*` metric names a PromQL expression reads (quoted strings skipped).
fn queried_names(expr: &str) -> Vec<String> {
    let mut unquoted = String::new();
    let mut in_quotes = false;
    for c in expr.chars() {
        if c == '"' {
            in_quotes = !in_quotes;
        } else if !in_quotes {
            unquoted.push(c);
        }
    }
    unquoted
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|token| token.starts_with("ocs_"))
        .map(str::to_owned)
        .collect()
}

fn dashboard() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/dashboards/ocs-operations.json"))
            .unwrap(),
    )
    .unwrap()
}

fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| target["expr"].as_str().unwrap().to_owned())
        .collect();
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        exprs.push(variable["query"]["query"].as_str().unwrap().to_owned());
    }
    exprs
}

fn rule_exprs() -> Vec<String> {
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("deploy/prometheus/rules.yml")).unwrap(),
    )
    .unwrap();
    rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_sequence().unwrap().clone())
        .map(|rule| rule["expr"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_dashboard_maps_every_op_code_to_its_colour() {
    let dashboard = dashboard();
    let timeline = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|panel| panel["type"] == "state-timeline")
        .expect("a state timeline");
    let mappings = &timeline["fieldConfig"]["defaults"]["mappings"][0]["options"];
    let expected = [
        ("1", "None", "gray"),
        ("2", "Starting", "yellow"),
        ("3", "Running", "green"),
        ("4", "Stopping", "blue"),
        ("5", "Succeeded", "purple"),
        ("6", "Failed", "red"),
        ("7", "Expired", "#000000"),
        ("8", "Degraded", "orange"),
    ];
    for (code, text, colour) in expected {
        assert_eq!(mappings[code]["text"], text, "op code {code}");
        assert_eq!(mappings[code]["color"], colour, "op code {code}");
    }
    assert_eq!(
        timeline["targets"][0]["expr"]
            .as_str()
            .unwrap()
            .split('{')
            .next(),
        Some("ocs_operation_code")
    );
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["agent_class", "agent"]);
    for file in [
        "deploy/grafana/provisioning/datasources/prometheus.yaml",
        "deploy/grafana/provisioning/dashboards/ocs.yaml",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(
            parsed["apiVersion"],
            serde_yaml_ng::Value::from(1),
            "{file}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_rules_query_only_what_the_monitor_exports() {
    let nats = NatsServer::start();
    let stack = Stack::start(&nats, "5").await;
    let _faker = faker(&nats, "faker");
    let exposition = eventually(Duration::from_secs(10), "the faker on /metrics", || async {
        let (status, body) = http_get(stack.monitor, "/metrics").await;
        (status == 200 && body.contains("agent=\"observatory.faker\"")).then_some(body)
    })
    .await;
    // The live exposition passes promtool's linter.
    let dir = TempDir::new("ocs-metrics");
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, &exposition).unwrap();
    let lint = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "promtool check metrics: {}",
        String::from_utf8_lossy(&lint.stderr)
    );
    let registry_exposition = http_get(stack.registry, "/metrics").await.1;
    std::fs::write(&file, &registry_exposition).unwrap();
    let lint = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "promtool check metrics (registry): {}",
        String::from_utf8_lossy(&lint.stderr)
    );

    // Rules also read the registry's own metrics (Prometheus scrapes both).
    let mut exported = exported_names(&exposition);
    exported.extend(exported_names(&registry_exposition));
    let mut checked = 0;
    for expr in dashboard_exprs(&dashboard())
        .iter()
        .chain(rule_exprs().iter())
    {
        for name in queried_names(expr) {
            assert!(
                exported.contains(&name),
                "{name} (in `{expr}`) is not exported; exported: {exported:?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} metric references found");
    assert!(exposition.contains("ocs_operation_code{agent=\"observatory.faker\",agent_class=\"FakeDataAgent\",operation=\"acq\",op_type=\"process\"} 3"));
    assert_eq!(http_get(stack.monitor, "/healthz").await.0, 200);
    stack.stop().await;
}

/// Past a few thousand agents the registry's `status` (and `api`, which
/// carries the same session data) no longer fits NATS's default 1 MiB
/// payload; the monitor's probe must still find the registry reachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_probe_tests_reachability_not_the_fleet_size() {
    let nats = NatsServer::start();
    let stack = Stack::start(&nats, "5").await;
    let client = OcsClient::new(
        async_nats::connect(nats.url()).await.unwrap(),
        AddressRoot::default(),
    );
    let registry = InstanceId::new("registry").unwrap();
    let main = OpName::new("main").unwrap();
    let status = || async {
        client
            .operation(
                &registry,
                &main,
                Action::Status,
                Vec::new(),
                None,
                Duration::from_secs(2),
            )
            .await
    };
    eventually(
        Duration::from_secs(10),
        "the registry answering",
        || async { status().await.ok() },
    )
    .await;
    let reachable = || async {
        let (_, metrics) = http_get(stack.monitor, "/metrics").await;
        metrics
            .lines()
            .any(|line| line == "ocs_monitor_registry_reachable 1")
    };
    eventually(Duration::from_secs(5), "the first probe", || async {
        reachable().await.then_some(())
    })
    .await;
    for i in 0..4000 {
        let mut beat = ocs_testkit::heartbeat(&format!("observatory.agent{i}"));
        beat.host = "host-with-a-realistic-name.observatory.example".into();
        client
            .nats()
            .publish(
                format!("observatory.agent{i}.feeds.heartbeat"),
                ocs_protocol::codec::encode(&beat).into(),
            )
            .await
            .unwrap();
    }
    client.nats().flush().await.unwrap();
    // The fleet is too large for the status reply to carry its records (it
    // says where the pages are instead)...
    eventually(
        Duration::from_secs(10),
        "status pointing to pages",
        || async {
            let reply = status().await.ok()?;
            ocs_protocol::json::records_in_pages(&reply.session?.data).then_some(())
        },
    )
    .await;
    // ...yet the registry is there, and the monitor says so probe after probe.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        assert!(reachable().await, "registry reported unreachable");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stack.stop().await;
}

fn encode_query(query: &str) -> String {
    query
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

struct Prometheus {
    _process: Process,
    _dir: TempDir,
    address: SocketAddr,
}

impl Prometheus {
    async fn start(monitor: SocketAddr, registry: SocketAddr) -> Prometheus {
        let dir = TempDir::new("ocs-prometheus");
        let rules = repo().join("deploy/prometheus/rules.yml");
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [\"{}\"]\n\
             scrape_configs:\n\
             \x20 - {{job_name: ocs-operation-monitor, static_configs: [{{targets: [\"{monitor}\"]}}]}}\n\
             \x20 - {{job_name: ocs-registry, static_configs: [{{targets: [\"{registry}\"]}}]}}\n",
            rules.display()
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let address = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let mut command = Command::new(tool("prometheus", "apt-get install prometheus"));
        command
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .arg("--log.level=warn")
            .stderr(std::process::Stdio::null());
        let process = Process::spawn("prometheus", command);
        eventually(Duration::from_secs(20), "prometheus ready", || async {
            let connected = tokio::net::TcpStream::connect(address).await.is_ok();
            (connected && http_get(address, "/-/ready").await.0 == 200).then_some(())
        })
        .await;
        Prometheus {
            _process: process,
            _dir: dir,
            address,
        }
    }

    async fn firing(&self) -> Vec<Value> {
        let body = http_get(self.address, "/api/v1/alerts").await.1;
        let reply: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        reply["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|alert| alert["state"] == "firing")
            .collect()
    }

    async fn query(&self, query: &str) -> Vec<Value> {
        let body = http_get(
            self.address,
            &format!("/api/v1/query?query={}", encode_query(query)),
        )
        .await
        .1;
        let reply: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        reply["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

async fn start_delay_task(client: &OcsClient, params: Value) -> proto::OperationReply {
    client
        .operation(
            &InstanceId::new("faker").unwrap(),
            &OpName::new("delay_task").unwrap(),
            Action::Start,
            to_msgpack(&params).unwrap(),
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap()
}

fn is_alert(alert: &Value, name: &str, agent: &str, operation: Option<&str>) -> bool {
    alert["labels"]["alertname"] == name
        && alert["labels"]["agent"] == agent
        && operation.is_none_or(|op| alert["labels"]["operation"] == op)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_fires_and_resolves_agent_and_operation_alerts() {
    const FAKER: &str = "observatory.faker";
    let nats = NatsServer::start();
    let stack = Stack::start(&nats, "3").await;
    let prometheus = Prometheus::start(stack.monitor, stack.registry).await;
    let mut faker_process = faker(&nats, "faker");
    eventually(
        Duration::from_secs(20),
        "acq RUNNING in Prometheus",
        || async {
            let result = prometheus
                .query(r#"ocs_operation_code{agent="observatory.faker",operation="acq"} == 3"#)
                .await;
            (!result.is_empty()).then_some(())
        },
    )
    .await;

    let client = OcsClient::new(
        async_nats::connect(nats.url()).await.unwrap(),
        AddressRoot::default(),
    );
    let reply =
        start_delay_task(&client, serde_json::json!({"delay": 0.1, "succeed": false})).await;
    assert_eq!(reply.status, 0);
    eventually(
        Duration::from_secs(15),
        "OcsOperationFailed firing",
        || async {
            prometheus
                .firing()
                .await
                .iter()
                .any(|a| is_alert(a, "OcsOperationFailed", FAKER, Some("delay_task")))
                .then_some(())
        },
    )
    .await;

    faker_process.kill();
    let killed = Instant::now();
    eventually(
        Duration::from_secs(20),
        "OcsAgentExpired firing",
        || async {
            prometheus
                .firing()
                .await
                .iter()
                .any(|a| is_alert(a, "OcsAgentExpired", FAKER, None))
                .then_some(())
        },
    )
    .await;
    let elapsed = killed.elapsed();
    println!(
        "OcsAgentExpired firing {elapsed:?} after kill -9 (timeout 3 s, scrape 1 s, evaluation 1 s)"
    );
    // Timeout + one scrape + one evaluation, plus slack for a loaded two-core machine.
    assert!(
        elapsed <= Duration::from_secs(3 + 1 + 1 + 3),
        "took {elapsed:?}"
    );
    eventually(
        Duration::from_secs(10),
        "OcsProcessNotRunning firing for acq",
        || async {
            prometheus
                .firing()
                .await
                .iter()
                .any(|a| is_alert(a, "OcsProcessNotRunning", FAKER, Some("acq")))
                .then_some(())
        },
    )
    .await;

    let _restarted = faker(&nats, "faker");
    eventually(Duration::from_secs(20), "agent alerts resolved", || async {
        let firing = prometheus.firing().await;
        let open = firing.iter().any(|a| {
            is_alert(a, "OcsAgentExpired", FAKER, None)
                || is_alert(a, "OcsProcessNotRunning", FAKER, None)
        });
        (!open).then_some(())
    })
    .await;
    // The new incarnation still shows how delay_task last ended (the session
    // journal), so its failure stays an alert until it runs again and succeeds.
    eventually(
        Duration::from_secs(10),
        "OcsOperationFailed firing again after the restart",
        || async {
            prometheus
                .firing()
                .await
                .iter()
                .any(|a| is_alert(a, "OcsOperationFailed", FAKER, Some("delay_task")))
                .then_some(())
        },
    )
    .await;
    let reply = start_delay_task(&client, serde_json::json!({"delay": 0.1})).await;
    assert_eq!(reply.status, 0, "{}", reply.message);
    eventually(
        Duration::from_secs(20),
        "OcsOperationFailed resolved",
        || async {
            let firing = prometheus.firing().await;
            (!firing
                .iter()
                .any(|a| is_alert(a, "OcsOperationFailed", FAKER, None)))
            .then_some(())
        },
    )
    .await;
    stack.stop().await;
}

//! End-to-end tests: a real nats-server, the registry in-process, real agent
//! processes and the real `ocs` binary.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ocs_agent::OcsClient;
use ocs_protocol::codec::{self, to_msgpack};
use ocs_protocol::{Action, InstanceId, OpName, proto};
use ocs_registry::metrics::DropReason;
mod common;

use common::{FeedLog, Registry, feed_record};
use ocs_testkit::launch::{
    as_user, login, nats_with_role_permissions, registry_and_fakers_as_users,
};
use ocs_testkit::query::{record, registry_agents};
use ocs_testkit::refusals::{connect_noting_server_errors, publish_refused, subscription_refused};
use ocs_testkit::{NatsServer, Process, agent, eventually, http_get, idle_faker, workspace_binary};
use serde_json::Value;
use tokio::time::Instant;

async fn client(nats: &NatsServer) -> OcsClient {
    ocs_testkit::query::client(&nats.url()).await
}

async fn record_feed(nats: &NatsServer) -> FeedLog {
    common::record_feed(&nats.url()).await
}

fn op_codes(record: &Value) -> HashMap<String, i64> {
    record["op_codes"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(op, code)| (op.clone(), code.as_i64().unwrap()))
        .collect()
}

const FAKER: &str = "observatory.faker";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_appear_and_operations_change_their_op_codes() {
    let nats = NatsServer::start();
    let registry = Registry::start(&nats, &["--agent-timeout", "3"]).await;
    let feed = record_feed(&nats).await;
    let client = client(&nats).await;
    let _faker = idle_faker(&nats.url(), "faker");
    let started = Instant::now();
    let first = eventually(Duration::from_secs(5), "faker in the registry", || {
        record(&client, FAKER)
    })
    .await;
    println!("faker registered {:?} after spawn", started.elapsed());
    assert_eq!(first["agent_class"], "FakeDataAgent");
    assert_eq!(first["expired"], false);
    assert_eq!(op_codes(&first)["count"], 1);

    let faker_id = InstanceId::new("faker").unwrap();
    let count = OpName::new("count").unwrap();
    let params = to_msgpack(&serde_json::json!({"target": 2, "interval": 0.3})).unwrap();
    let reply = client
        .operation(
            &faker_id,
            &count,
            Action::Start,
            params,
            None,
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 0, "{}", reply.message);
    eventually(
        Duration::from_secs(3),
        "count RUNNING in status",
        || async {
            record(&client, FAKER)
                .await
                .filter(|r| op_codes(r)["count"] == 3)
        },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "count SUCCEEDED in status",
        || async {
            record(&client, FAKER)
                .await
                .filter(|r| op_codes(r)["count"] == 5)
        },
    )
    .await;
    let code_of = |record: &proto::AgentRecord| {
        record
            .op_codes
            .iter()
            .find(|op| op.op_name == "count")
            .map(|op| op.op_code)
    };
    assert!(
        feed_record(&feed, FAKER, |r| code_of(r) == Some(3)).is_some(),
        "feed carried RUNNING"
    );
    assert!(
        feed_record(&feed, FAKER, |r| code_of(r) == Some(5)).is_some(),
        "feed carried SUCCEEDED"
    );
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_expires_at_its_deadline_and_the_feed_says_so_at_once() {
    let nats = NatsServer::start();
    // The timeout is at least three heartbeat intervals (3 s here); ask for exactly that.
    let registry = Registry::start(&nats, &["--agent-timeout", "3"]).await;
    let feed = record_feed(&nats).await;
    let client = client(&nats).await;
    let mut faker = idle_faker(&nats.url(), "faker");
    eventually(Duration::from_secs(5), "faker registered", || {
        record(&client, FAKER)
    })
    .await;
    faker.kill();
    let killed = Instant::now();
    let (arrived, expired) = eventually(Duration::from_secs(8), "EXPIRED on the feed", || async {
        feed_record(&feed, FAKER, |r| r.expired)
    })
    .await;
    let after_kill = arrived - killed;
    // Judged on the registry's own clock: expiry happened at the deadline, not at a later poll.
    let silence_ms = expired.time_expired_unix_ms - expired.last_updated_unix_ms;
    println!("expired {after_kill:?} after kill; {silence_ms} ms after the last heartbeat");
    assert!(
        (3000..=3200).contains(&silence_ms),
        "time_expired - last_updated = {silence_ms} ms"
    );
    assert!(
        after_kill <= Duration::from_millis(4500),
        "feed carried EXPIRED {after_kill:?} after the kill"
    );
    assert!(expired.op_codes.iter().all(|op| op.op_code == 7));
    let status = record(&client, FAKER).await.unwrap();
    assert_eq!(status["expired"], true);
    assert_eq!(status["state"], "expired");
    assert!(op_codes(&status).values().all(|code| *code == 7));
    // time_expired is the moment of expiry and stays so.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = record(&client, FAKER).await.unwrap();
    assert_eq!(later["time_expired"], status["time_expired"]);
    assert_eq!(registry.metrics.dropped_count(DropReason::stale), 0);
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_incarnation_replaces_the_old_operations() {
    let nats = NatsServer::start();
    let registry = Registry::start(&nats, &["--agent-timeout", "5"]).await;
    let client = client(&nats).await;
    let mut faker = idle_faker(&nats.url(), "faker");
    let first = eventually(Duration::from_secs(5), "faker registered", || {
        record(&client, FAKER)
    })
    .await;
    faker.kill();
    // Same address, different agent class and operations: a restart with a new version.
    let _barebones = agent(&nats.url(), "ocs-barebones-agent", "faker", &[]);
    let second = eventually(Duration::from_secs(5), "new incarnation", || async {
        record(&client, FAKER)
            .await
            .filter(|r| r["incarnation"] != first["incarnation"])
    })
    .await;
    assert_eq!(second["expired"], false);
    assert_eq!(second["agent_class"], "BarebonesAgent");
    assert_eq!(second["incarnations_seen"], 2);
    let mut ops: Vec<String> = op_codes(&second).into_keys().collect();
    ops.sort();
    assert_eq!(
        ops,
        ["count", "print"],
        "operations of the old incarnation are gone"
    );
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_leaving_at_once_and_exits_zero() {
    let nats = NatsServer::start();
    let registry = Registry::start(&nats, &["--agent-timeout", "30"]).await;
    let client = client(&nats).await;
    let mut faker = agent(&nats.url(), "ocs-fake-data-agent", "faker", &[]);
    eventually(Duration::from_secs(5), "acq running", || async {
        record(&client, FAKER)
            .await
            .filter(|r| op_codes(r)["acq"] == 3)
    })
    .await;
    faker.signal("TERM");
    let left = eventually(Duration::from_secs(5), "leaving recorded", || async {
        record(&client, FAKER)
            .await
            .filter(|r| r["state"] == "left")
    })
    .await;
    assert_eq!(left["expired"], true);
    assert_eq!(faker.wait_exit(Duration::from_secs(5)), Some(0));
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_shorter_than_the_timeout_expires_nobody() {
    let mut nats = NatsServer::start();
    let registry = Registry::start(&nats, &["--agent-timeout", "4"]).await;
    let feed = record_feed(&nats).await;
    let client = client(&nats).await;
    let _faker = agent(&nats.url(), "ocs-fake-data-agent", "faker", &[]);
    eventually(Duration::from_secs(5), "faker registered", || {
        record(&client, FAKER)
    })
    .await;
    nats.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats.restart();
    // Well past the timeout counted from the outage.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let status = eventually(Duration::from_secs(10), "registry reachable again", || {
        record(&client, FAKER)
    })
    .await;
    assert_eq!(status["expired"], false);
    assert_eq!(op_codes(&status)["acq"], 3, "the operation kept running");
    assert!(
        feed_record(&feed, FAKER, |r| r.expired).is_none(),
        "no EXPIRED on the feed"
    );
    assert_eq!(
        registry
            .metrics
            .encode()
            .lines()
            .find(|l| l.starts_with("ocs_registry_expiries_total")),
        Some("ocs_registry_expiries_total 0")
    );
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_heartbeats_are_counted_and_dropped_and_memory_stays_bounded() {
    let nats = NatsServer::start();
    let registry = Registry::start(
        &nats,
        &["--max-agents", "50", "--max-heartbeat-bytes", "4096"],
    )
    .await;
    let client = client(&nats).await;
    let _faker = idle_faker(&nats.url(), "faker");
    eventually(Duration::from_secs(5), "faker registered", || {
        record(&client, FAKER)
    })
    .await;
    let bus = client.nats();
    let valid = |address: &str, seq: u64| proto::Heartbeat {
        protocol_version: 1,
        agent_address: address.into(),
        agent_class: "Bogus".into(),
        incarnation: uuid::Uuid::new_v4().to_string(),
        seq,
        interval_ms: 1000,
        ..Default::default()
    };
    let subject = |iid: &str| format!("observatory.{iid}.feeds.heartbeat");
    bus.publish(subject("junk"), vec![0xff, 0x01, 0x02].into())
        .await
        .unwrap();
    bus.publish(subject("huge"), vec![0u8; 8000].into())
        .await
        .unwrap();
    bus.publish(subject("spoof"), codec::encode(&valid(FAKER, 1)).into())
        .await
        .unwrap();
    let mut future = valid("observatory.future", 1);
    future.protocol_version = 2;
    bus.publish(subject("future"), codec::encode(&future).into())
        .await
        .unwrap();
    let mut invalid = valid("observatory.invalid", 1);
    invalid.op_codes.push(proto::OperationCode {
        op_name: "x".into(),
        op_code: 42,
        op_type: String::new(),
    });
    bus.publish(subject("invalid"), codec::encode(&invalid).into())
        .await
        .unwrap();
    for i in 0..500 {
        let iid = format!("bogus{i}");
        bus.publish(
            subject(&iid),
            codec::encode(&valid(&format!("observatory.{iid}"), 1)).into(),
        )
        .await
        .unwrap();
    }
    bus.flush().await.unwrap();
    let metrics = &registry.metrics;
    eventually(Duration::from_secs(5), "drops counted", || async {
        (metrics.dropped_count(DropReason::table_full) >= 450).then_some(())
    })
    .await;
    for reason in [
        DropReason::undecodable,
        DropReason::oversized,
        DropReason::address_mismatch,
        DropReason::unsupported_version,
        DropReason::invalid,
    ] {
        assert_eq!(metrics.dropped_count(reason), 1, "{reason:?}");
    }
    // One sender flooding its own subject: cut to the rate limit (a burst of
    // 20, then 10 per second), and still alive.
    for seq in 1..=300 {
        bus.publish(
            subject("bogus0"),
            codec::encode(&valid("observatory.bogus0", 1_000 + seq)).into(),
        )
        .await
        .unwrap();
    }
    bus.flush().await.unwrap();
    eventually(Duration::from_secs(5), "the flood rate-limited", || async {
        (metrics.dropped_count(DropReason::rate_limited) >= 250).then_some(())
    })
    .await;
    let agents = registry_agents(&client).await.unwrap();
    assert_eq!(agents["observatory.bogus0"]["expired"], false);
    assert_eq!(agents.len(), 50, "the table is bounded");
    assert_eq!(
        agents[FAKER]["agent_class"], "FakeDataAgent",
        "the spoof changed nothing"
    );
    let body = http_get(registry.http, "/metrics").await.1;
    assert!(body.contains("ocs_registry_heartbeats_dropped_total{reason=\"table_full\"}"));
    assert_eq!(
        http_get(registry.http, "/healthz").await,
        (200, "ok\n".to_owned())
    );
    registry.stop().await;
}

fn ocs(nats_url: &str, args: &[&str]) -> (i32, String, String) {
    let output = ocs_testkit::ocs(nats_url, args);
    (output.code.unwrap_or(-1), output.stdout, output.stderr)
}

/// A registry and an idle faker it has registered.
async fn registry_with_faker(nats: &NatsServer) -> (Registry, OcsClient, Process) {
    let registry = Registry::start(nats, &[]).await;
    let client = client(nats).await;
    let faker = idle_faker(&nats.url(), "faker");
    eventually(Duration::from_secs(5), "faker registered", || {
        record(&client, FAKER)
    })
    .await;
    (registry, client, faker)
}

/// `ocs` with its standard output redirected to `stdout`; `(code, stderr)`.
fn ocs_to(nats_url: &str, args: &[&str], stdout: std::process::Stdio) -> (i32, String) {
    let output = ocs_testkit::launch::ocs_command(nats_url, args)
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_refuses_bad_subjects_names_bad_params_and_survives_closed_output() {
    let nats = NatsServer::start();
    let (registry, _client, _faker) = registry_with_faker(&nats).await;
    let url = nats.url();

    // An invalid subject is refused at once instead of listening to nothing.
    let (code, _, stderr) = ocs(&url, &["listen", "observatory.>.x", "--duration", "30"]);
    assert_eq!(code, 2);
    assert!(stderr.starts_with("error: invalid subject: "), "{stderr}");
    assert!(stderr.contains("'>'"), "{stderr}");

    // A parameter of the wrong type is named, with the type it needs.
    let (code, stdout, _) = ocs(&url, &["faker", "delay_task", "start", "delay=abc"]);
    assert_eq!(code, 1);
    assert!(
        stdout.starts_with(
            "ERROR : Param error for \"delay_task\": delay: invalid type: string \"abc\", expected f64"
        ),
        "{stdout}"
    );

    // A reader that goes away: quiet, and the exit code still tells the result.
    let mut reader = Command::new("true")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pipe = reader.stdin.take().unwrap();
    reader.wait().unwrap();
    let (code, stderr) = ocs_to(&url, &["registry", "main", "status"], pipe.into());
    assert_eq!((code, stderr.as_str()), (0, ""));
    // Output that cannot be written is an error, not a panic.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let (code, stderr) = ocs_to(&url, &["registry", "main", "status"], full.into());
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(
        stderr.trim(),
        "error: cannot write to standard output: No space left on device (os error 28)"
    );
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_status_and_fails_clearly() {
    let nats = NatsServer::start();
    let (registry, client, _faker) = registry_with_faker(&nats).await;
    let url = nats.url();

    let (code, stdout, _) = ocs(&url, &["registry", "main", "status"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.starts_with("OK : Session active."), "{stdout}");
    let faker_row = stdout
        .lines()
        .find(|l| l.contains(FAKER))
        .expect("a row for the faker");
    assert!(
        faker_row.contains("FakeDataAgent")
            && faker_row.contains("alive")
            && faker_row.contains("count=NONE"),
        "{faker_row}"
    );

    let (code, stdout, _) = ocs(&url, &["registry", "main", "status", "--json"]);
    assert_eq!(code, 0);
    let reply: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(reply["status"], 0);
    assert_eq!(
        reply["session"]["data"][FAKER]["agent_class"],
        "FakeDataAgent"
    );
    let mut keys: Vec<&str> = reply["session"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "data",
            "degraded",
            "end_time",
            "messages",
            "op_code",
            "op_name",
            "session_id",
            "start_time",
            "status",
            "success"
        ]
    );

    let (code, stdout, _) = ocs(&url, &["faker", "nope", "status", "--json"]);
    assert_eq!(code, 1);
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap()["message"],
        "No task or process called \"nope\""
    );

    let (code, _, _) = ocs(&url, &["faker", "delay_task", "start", "delay=5"]);
    assert_eq!(code, 0);
    let (code, stdout, _) = ocs(&url, &["faker", "delay_task", "wait", "--timeout", "0.3"]);
    assert_eq!(code, 3, "{stdout}");
    assert!(
        stdout.starts_with("TIMEOUT : Operation \"delay_task\" still running; wait timed out.")
    );

    let (code, stdout, _) = ocs(&url, &["ping", "faker"]);
    assert_eq!(code, 0);
    let incarnation = record(&client, FAKER).await.unwrap()["incarnation"].clone();
    assert!(
        stdout.starts_with(&format!(
            "observatory.faker: incarnation {}, up ",
            incarnation.as_str().unwrap()
        )),
        "{stdout}"
    );

    let (code, stdout, _) = ocs(&url, &["scan"]);
    assert_eq!(code, 0);
    assert!(
        stdout.starts_with("List of Registered Agents: (2)"),
        "{stdout}"
    );

    let (code, _, stderr) = ocs(&url, &["nobody", "main", "status"]);
    assert_eq!(code, 2);
    assert_eq!(
        stderr.trim(),
        "error: no agent answers at observatory.nobody (is it running?)"
    );

    // An agent that takes requests but never answers.
    let mute = client
        .nats()
        .subscribe("observatory.mute.ops.>")
        .await
        .unwrap();
    client.nats().flush().await.unwrap();
    let (code, _, stderr) = ocs(&url, &["mute", "main", "status", "--timeout", "0.5"]);
    assert_eq!(code, 2);
    assert!(
        stderr
            .trim()
            .starts_with("error: observatory.mute did not answer within"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1);
    drop(mute);

    let (code, _, stderr) = ocs("nats://127.0.0.1:1", &["registry", "main", "status"]);
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with("error: cannot connect to NATS at nats://127.0.0.1:1"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1);
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocs_probe_answers_for_container_healthchecks() {
    let nats = NatsServer::start();
    let registry = Registry::start(&nats, &[]).await;
    let url = nats.url();
    let healthz = format!("http://{}/healthz", registry.http);
    // 503 until the registry is connected and running, then 200: the probe's
    // exit code follows.
    eventually(Duration::from_secs(5), "the registry healthy", || async {
        (http_get(registry.http, "/healthz").await.0 == 200).then_some(())
    })
    .await;
    let (code, stdout, stderr) = ocs(&url, &["probe", &healthz]);
    assert_eq!(
        (code, stdout.trim()),
        (0, format!("{healthz}: 200 OK").as_str()),
        "{stderr}"
    );

    let missing = format!("http://{}/nope", registry.http);
    let (code, stdout, _) = ocs(&url, &["probe", &missing]);
    assert_eq!(
        (code, stdout.trim()),
        (1, format!("{missing}: 404 Not Found").as_str())
    );

    // A port nobody listens on: the probe could not be made at all.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}/healthz", closed.local_addr().unwrap());
    drop(closed);
    let (code, _, stderr) = ocs(&url, &["probe", &closed_url]);
    assert_eq!(code, 2);
    assert!(stderr.starts_with("error: cannot connect to"), "{stderr}");

    let (code, _, stderr) = ocs(&url, &["probe", "https://127.0.0.1/healthz"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("only http:// URLs"), "{stderr}");
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_running_twice_is_a_conflict_on_the_record_the_feed_and_metrics() {
    let nats = NatsServer::start();
    let registry = Registry::start(&nats, &[]).await;
    let client = client(&nats).await;
    let feed = record_feed(&nats).await;
    let first = idle_faker(&nats.url(), "faker");
    let first_incarnation = eventually(Duration::from_secs(5), "faker registered", || async {
        record(&client, FAKER)
            .await
            .map(|record| record["incarnation"].clone())
    })
    .await;
    let second = idle_faker(&nats.url(), "faker");
    let conflicted = eventually(Duration::from_secs(5), "the conflict", || async {
        record(&client, FAKER)
            .await
            .filter(|record| !record["conflict"].is_null())
    })
    .await;
    // The record follows the newer process and names the other one.
    assert_ne!(conflicted["incarnation"], first_incarnation);
    assert_eq!(conflicted["pid"], second.pid());
    assert_eq!(conflicted["conflict"]["incarnation"], first_incarnation);
    assert_eq!(conflicted["conflict"]["pid"], first.pid());
    assert_eq!(conflicted["expired"], false);
    eventually(Duration::from_secs(5), "the conflicts gauge", || async {
        let (_, metrics) = http_get(registry.http, "/metrics").await;
        metrics
            .lines()
            .any(|line| line == "ocs_registry_address_conflicts 1")
            .then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "the conflict on the feed",
        || async {
            feed.lock()
                .unwrap()
                .iter()
                .flat_map(|(_, message)| &message.agents)
                .any(|record| record.agent_address == FAKER && record.conflict.is_some())
                .then_some(())
        },
    )
    .await;

    // The older one stops (a graceful stop says goodbye): the conflict ends at once.
    first.signal("TERM");
    eventually(Duration::from_secs(5), "the conflict over", || async {
        record(&client, FAKER)
            .await
            .filter(|record| record["conflict"].is_null() && record["expired"] == false)
    })
    .await;
    drop(second);
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn most_agents_falling_silent_at_once_is_held_not_expired() {
    let nats = NatsServer::start();
    let registry =
        Registry::start(&nats, &["--agent-timeout", "3", "--hold-min-agents", "4"]).await;
    let client = client(&nats).await;
    let names = ["f1", "f2", "f3", "f4", "f5"];
    let _agents: Vec<Process> = names
        .iter()
        .map(|name| idle_faker(&nats.url(), name))
        .collect();
    for name in names {
        let address = format!("observatory.{name}");
        eventually(Duration::from_secs(10), "registered", || {
            record(&client, &address)
        })
        .await;
    }
    let set_heartbeat = |name: &'static str, on: bool| {
        let client = &client;
        async move {
            let params = to_msgpack(&serde_json::json!({ "heartbeat": on })).unwrap();
            let reply = client
                .operation(
                    &InstanceId::new(name).unwrap(),
                    &OpName::new("set_heartbeat").unwrap(),
                    Action::Start,
                    params,
                    None,
                    Duration::from_secs(3),
                )
                .await
                .unwrap();
            assert_eq!(reply.status, 0, "{}", reply.message);
        }
    };
    // Established agents (self-preservation ignores addresses with fewer
    // than three heartbeats)...
    tokio::time::sleep(Duration::from_secs(3)).await;
    // ...five of six (the registry is one) fall silent together, as in a
    // partition between them and the registry.
    for name in names {
        set_heartbeat(name, false).await;
    }
    eventually(Duration::from_secs(8), "self-preservation", || async {
        let (_, metrics) = http_get(registry.http, "/metrics").await;
        metrics
            .lines()
            .any(|line| line == "ocs_registry_self_preservation 1")
            .then_some(())
    })
    .await;
    // Held well past the timeout: nobody expires, and the registry says why.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for name in names {
        let record = record(&client, &format!("observatory.{name}"))
            .await
            .unwrap();
        assert_eq!(record["expired"], false, "{name} expired during the hold");
    }
    let main = registry_agents(&client).await.unwrap();
    assert_eq!(
        main["observatory.registry"]["op_codes"]["main"], 8,
        "DEGRADED while holding"
    );
    // Four come back; f5 stays silent: the hold ends, and f5 expires one
    // timeout later, alone.
    for name in &names[..4] {
        set_heartbeat(name, true).await;
    }
    eventually(Duration::from_secs(8), "f5 expired", || async {
        record(&client, "observatory.f5")
            .await
            .filter(|record| record["expired"] == true)
    })
    .await;
    for name in &names[..4] {
        let record = record(&client, &format!("observatory.{name}"))
            .await
            .unwrap();
        assert_eq!(record["expired"], false, "{name}");
    }
    let (_, metrics) = http_get(registry.http, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|line| line == "ocs_registry_self_preservation 0"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|line| line == "ocs_registry_expiries_total 1"),
        "{metrics}"
    );
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_agents_and_the_cli_authenticate_to_nats() {
    let nats = NatsServer::start_with(&["--user", "ocs", "--pass", "s3cret"]);
    let url = nats.url();
    let with_password = |command: &mut Command| {
        command
            .env("NATS_USER", "ocs")
            .env("NATS_PASSWORD", "s3cret");
    };
    let mut registry = Command::new(workspace_binary("ocs-registry"));
    registry.args(["--nats-url", &url, "--listen", "127.0.0.1:0"]);
    with_password(&mut registry);
    let _registry = Process::spawn("ocs-registry", registry);
    let mut agent = Command::new(workspace_binary("ocs-fake-data-agent"));
    agent.args([
        "--nats-url",
        &url,
        "--instance-id",
        "faker",
        "--mode",
        "idle",
    ]);
    with_password(&mut agent);
    let _agent = Process::spawn("faker", agent);

    let status = || {
        let mut ocs = Command::new(workspace_binary("ocs"));
        ocs.args(["--nats-url", &url, "registry", "main", "status", "--json"]);
        ocs
    };
    let (code, stdout) = eventually(Duration::from_secs(10), "the faker registered", || async {
        let mut command = status();
        with_password(&mut command);
        let output = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        stdout
            .contains(FAKER)
            .then(|| (output.status.code(), stdout))
    })
    .await;
    assert_eq!(code, Some(0), "{stdout}");

    // Without the password the server refuses the connection: one clear line.
    let output = status().output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with(&format!("error: cannot connect to NATS at {url}")),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// The shipped per-role permissions (deploy/nats/permissions.conf), with test passwords.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_permissions_refuse_a_spoofing_agent_and_a_read_only_operator_s_start() {
    let dir = ocs_testkit::TempDir::new("ocs-perms");
    let nats = nats_with_role_permissions(&dir);
    let url = nats.url();
    let (_registry, _agents) = registry_and_fakers_as_users(&url, &[]);
    let ocs_as = |user: &str, role: &str, args: &[&str]| {
        let output = ocs_testkit::ocs_as(&url, user, role, args);
        (output.code, output.stdout, output.stderr)
    };
    // Each role can do its job: the registry hears both agents, a viewer reads its status.
    eventually(
        Duration::from_secs(15),
        "both agents registered",
        || async {
            let (code, stdout, _) = ocs_as(
                "viewer",
                "VIEWER",
                &["registry", "main", "status", "--json"],
            );
            (code == Some(0)
                && stdout.contains("observatory.faker1")
                && stdout.contains("observatory.faker2"))
            .then_some(())
        },
    )
    .await;
    // ...and its records query.
    let (code, stdout, stderr) = ocs_as(
        "viewer",
        "VIEWER",
        &["registry", "main", "status", "--summary", "--json"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        summary["session"]["data"]["by_state"]["alive"], 3,
        "{summary}"
    );

    // faker1's credentials cannot speak for faker2: the server refuses the publish.
    let (spoofer, violations) = connect_noting_server_errors(&url, login("faker1", "FAKER1")).await;
    let spoof = proto::Heartbeat {
        leaving: true,
        ..ocs_testkit::heartbeat("observatory.faker2")
    };
    spoofer
        .publish(
            "observatory.faker2.feeds.heartbeat",
            codec::encode(&spoof).into(),
        )
        .await
        .unwrap();
    spoofer.flush().await.unwrap();
    publish_refused(&violations, "observatory.faker2.feeds.heartbeat").await;
    // ...nor listen to another agent's operations.
    let mut eavesdrop = spoofer.subscribe("observatory.faker2.ops.>").await.unwrap();
    spoofer.flush().await.unwrap();
    subscription_refused(&violations, "observatory.faker2.ops.>", &mut eavesdrop).await;

    // The read-only operator is refused `start`; the operator may.
    let (code, _, stderr) = ocs_as("viewer", "VIEWER", &["faker1", "acq", "start"]);
    assert_ne!(code, Some(0), "a viewer started an operation: {stderr}");
    // It says so at once, rather than waiting out its timeout for a reply.
    assert!(
        stderr.contains(
            "not permitted: this NATS user may not publish to observatory.faker1.ops.start.acq"
        ),
        "{stderr}"
    );
    let (code, stdout, _) = ocs_as("viewer", "VIEWER", &["faker1", "acq", "status", "--json"]);
    assert_eq!(code, Some(0));
    assert!(!stdout.contains("\"running\""), "{stdout}");
    let (code, stdout, stderr) = ocs_as("operator", "OPERATOR", &["faker1", "acq", "start"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    // The spoofed "leaving" beat never arrived: faker2 is alive.
    let (_, stdout, _) = ocs_as(
        "viewer",
        "VIEWER",
        &["registry", "main", "status", "--json"],
    );
    let agents: Value = serde_json::from_str(&stdout).unwrap();
    let faker2 = agents["session"]["data"]["observatory.faker2"].clone();
    assert_eq!(faker2["expired"], false, "{faker2}");
}

/// Replies go to each user's own inboxes (`_INBOX.<user>.>`, the prefix our
/// clients take from `NATS_USER`): the viewer may subscribe to neither every
/// inbox nor the operator's, so it never reads the operator's replies, while
/// its own requests are still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_cannot_read_the_operator_s_replies() {
    let dir = ocs_testkit::TempDir::new("ocs-inboxes");
    let nats = nats_with_role_permissions(&dir);
    let url = nats.url();
    let mut agent = Command::new(workspace_binary("ocs-fake-data-agent"));
    agent
        .args([
            "--nats-url",
            &url,
            "--instance-id",
            "faker1",
            "--mode",
            "idle",
        ])
        .env("RUST_LOG", "warn");
    as_user(&mut agent, "faker1", "FAKER1");
    let _agent = Process::spawn("faker1", agent);

    let (viewer, violations) = connect_noting_server_errors(&url, login("viewer", "VIEWER")).await;
    let mut every_inbox = viewer.subscribe("_INBOX.>").await.unwrap();
    let mut operators_inbox = viewer.subscribe("_INBOX.operator.>").await.unwrap();
    viewer.flush().await.unwrap();

    // The operator's calls are answered...
    eventually(
        Duration::from_secs(15),
        "the operator's status call",
        || async {
            (ocs_testkit::ocs_as(&url, "operator", "OPERATOR", &["faker1", "acq", "status"]).code
                == Some(0))
            .then_some(())
        },
    )
    .await;
    let started = ocs_testkit::ocs_as(&url, "operator", "OPERATOR", &["faker1", "acq", "start"]);
    assert_eq!(started.code, Some(0), "{}", started.stderr);
    // ...and the viewer saw none of the replies: the server refused both subscriptions.
    subscription_refused(&violations, "_INBOX.>", &mut every_inbox).await;
    subscription_refused(&violations, "_INBOX.operator.>", &mut operators_inbox).await;
    // The viewer's own requests come back to its own inbox.
    let ping = viewer
        .request("observatory.faker1.ping", bytes::Bytes::new())
        .await;
    assert!(ping.is_ok(), "{ping:?}");
}

/// A CA, a server certificate (for 127.0.0.1 among others) and a client
/// certificate, made by the script a site uses (deploy/nats/make-tls-certs).
fn make_certificates(dir: &std::path::Path) {
    ocs_testkit::tool("openssl", "apt-get install openssl");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/make-tls-certs");
    let output = Command::new(script).arg(dir).arg("2").output().unwrap();
    assert!(
        output.status.success(),
        "make-tls-certs: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_agents_and_the_cli_speak_tls_with_client_certificates() {
    let dir = ocs_testkit::TempDir::new("ocs-tls");
    make_certificates(dir.path());
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let nats = NatsServer::start_with(&[
        "--tls",
        "--tlscert",
        &file("server.pem"),
        "--tlskey",
        &file("server.key"),
        "--tlsverify",
        "--tlscacert",
        &file("ca.pem"),
    ]);
    let url = format!("tls://127.0.0.1:{}", nats.port());
    let with_tls = |command: &mut Command| {
        command
            .env("NATS_URL", &url)
            .env("NATS_TLS_CA", file("ca.pem"))
            .env("NATS_TLS_CERT", file("client.pem"))
            .env("NATS_TLS_KEY", file("client.key"))
            .env("RUST_LOG", "warn");
    };
    let mut registry = Command::new(workspace_binary("ocs-registry"));
    registry.args(["--listen", "127.0.0.1:0"]);
    with_tls(&mut registry);
    let _registry = Process::spawn("ocs-registry", registry);
    let mut agent = Command::new(workspace_binary("ocs-fake-data-agent"));
    agent.args(["--instance-id", "faker", "--mode", "idle"]);
    with_tls(&mut agent);
    let _agent = Process::spawn("faker", agent);
    eventually(
        Duration::from_secs(15),
        "the faker registered over TLS",
        || async {
            let mut ocs = Command::new(workspace_binary("ocs"));
            ocs.args(["registry", "main", "status", "--json"]);
            with_tls(&mut ocs);
            let output = ocs.output().unwrap();
            (output.status.success() && String::from_utf8_lossy(&output.stdout).contains(FAKER))
                .then_some(())
        },
    )
    .await;
    // The server verifies clients: without a certificate, no connection.
    let output = Command::new(workspace_binary("ocs"))
        .args(["--nats-url", &url, "--nats-tls-ca", &file("ca.pem")])
        .args(["registry", "main", "status"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot connect to NATS"));
}

/// Beats for `fleet` simulated agents every 500 ms (one in ten of class
/// `Lakeshore372Agent`) until dropped; those at or past `silent_from` stop
/// once it is set.
fn simulate_fleet(
    sender: async_nats::Client,
    fleet: usize,
    silent_from: Arc<std::sync::atomic::AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    let root = ocs_protocol::AddressRoot::default();
    let mut beats: Vec<(String, proto::Heartbeat)> = (0..fleet)
        .map(|index| {
            let address = ocs_protocol::AgentAddress::new(
                &root,
                &InstanceId::new(format!("sim{index:05}")).unwrap(),
            );
            let mut beat = ocs_testkit::heartbeat(address.as_str());
            beat.interval_ms = 500;
            if index % 10 == 0 {
                beat.agent_class = "Lakeshore372Agent".into();
            }
            (ocs_protocol::subject::heartbeat(&address), beat)
        })
        .collect();
    tokio::spawn(async move {
        loop {
            let silent = silent_from.load(std::sync::atomic::Ordering::Relaxed);
            for (subject, beat) in beats.iter_mut().take(silent) {
                beat.seq += 1;
                let _ = sender
                    .publish(subject.clone(), codec::encode(beat).into())
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_status_answers_at_any_fleet_size_filtered_and_summarised() {
    // A default server: 1 MiB max_payload, about 2,000 records in one reply.
    let nats = NatsServer::start();
    let registry = Registry::start(&nats, &["--agent-timeout", "2"]).await;
    let client = client(&nats).await;
    const FLEET: usize = 3_000;
    let silent_from = Arc::new(std::sync::atomic::AtomicUsize::new(FLEET));
    let sender = async_nats::connect(nats.url()).await.unwrap();
    let fleet = simulate_fleet(sender, FLEET, silent_from.clone());
    let sims = |data: &serde_json::Map<String, Value>| {
        data.keys()
            .filter(|address| address.starts_with("observatory.sim"))
            .count()
    };
    eventually(
        Duration::from_secs(20),
        "the whole fleet registered",
        || async {
            registry_agents(&client)
                .await
                .filter(|agents| sims(agents) == FLEET)
        },
    )
    .await;

    // The reply itself stays under the limit and says where the records are.
    let raw = client
        .operation(
            &InstanceId::new("registry").unwrap(),
            &OpName::new("main").unwrap(),
            Action::Status,
            Vec::new(),
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let raw = ocs_protocol::json::reply(&raw).unwrap();
    let data = &raw["session"]["data"];
    assert_eq!(
        data[ocs_protocol::json::RECORDS_IN_PAGES]["subject"],
        "observatory.registry.records",
        "{data}"
    );
    assert_eq!(data["summary"]["by_class"]["Lakeshore372Agent"], 300);

    // The CLI reassembles the pages into OCS's shape.
    let json = |args: &[&str]| {
        let (code, stdout, stderr) = ocs(&nats.url(), args);
        assert_eq!(code, 0, "ocs {args:?}: {stderr}");
        let reply: Value = serde_json::from_str(&stdout).unwrap();
        reply["session"]["data"].as_object().unwrap().clone()
    };
    let everything = json(&["registry", "main", "status", "--json"]);
    assert_eq!(sims(&everything), FLEET);
    assert_eq!(
        everything["observatory.sim00010"]["agent_class"],
        "Lakeshore372Agent"
    );

    // The last hundred fall silent and expire; filters find them.
    silent_from.store(FLEET - 100, std::sync::atomic::Ordering::Relaxed);
    let expired = eventually(Duration::from_secs(10), "100 agents expired", || async {
        let expired = json(&["registry", "main", "status", "--state", "expired", "--json"]);
        (expired.len() == 100).then_some(expired)
    })
    .await;
    assert!(
        expired.iter().all(
            |(address, record)| address.as_str() >= "observatory.sim02900"
                && record["expired"] == true
        ),
        "{expired:?}"
    );
    let summary = json(&["registry", "main", "status", "--summary", "--json"]);
    assert_eq!(
        summary["agents"],
        FLEET + 1,
        "the fleet and the registry: {summary:?}"
    );
    assert_eq!(summary["by_state"]["expired"], 100);
    assert_eq!(summary["by_state"]["alive"], FLEET + 1 - 100);
    assert_eq!(summary["by_class"]["Lakeshore372Agent"], 300);
    let alive_lakeshores = json(&[
        "registry",
        "main",
        "status",
        "--class",
        "Lakeshore372Agent",
        "--state",
        "alive",
        "--json",
    ]);
    assert_eq!(alive_lakeshores.len(), 290);
    let by_pattern = json(&[
        "registry",
        "main",
        "status",
        "--agent",
        "observatory.sim001*",
        "--json",
    ]);
    assert_eq!(by_pattern.len(), 100);
    assert!(
        by_pattern.contains_key("observatory.sim00100")
            && by_pattern.contains_key("observatory.sim00199")
    );

    // Bad filters fail at once and say why.
    let (code, _, stderr) = ocs(
        &nats.url(),
        &["registry", "main", "status", "--state", "dead"],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown state \"dead\""), "{stderr}");
    let (code, _, stderr) = ocs(&nats.url(), &["registry", "main", "start", "--summary"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("main status"), "{stderr}");
    fleet.abort();
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_the_registry_falls_behind_on_are_counted_not_lost_silently() {
    let nats = NatsServer::start();
    // A buffer of 16 messages: a burst overflows it before the main loop takes them.
    let registry = Registry::start(&nats, &["--heartbeat-buffer", "16"]).await;
    let flooder = async_nats::connect(nats.url()).await.unwrap();
    let root = ocs_protocol::AddressRoot::default();
    let burst: Vec<(String, bytes::Bytes)> = (0..5_000)
        .map(|index| {
            let address = ocs_protocol::AgentAddress::new(
                &root,
                &InstanceId::new(format!("burst{index:04}")).unwrap(),
            );
            let beat = ocs_testkit::heartbeat(address.as_str());
            (
                ocs_protocol::subject::heartbeat(&address),
                codec::encode(&beat).into(),
            )
        })
        .collect();
    let dropped = eventually(
        Duration::from_secs(20),
        "slow-consumer drops counted",
        || async {
            for (subject, payload) in &burst {
                flooder
                    .publish(subject.clone(), payload.clone())
                    .await
                    .unwrap();
            }
            flooder.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let body = http_get(registry.http, "/metrics").await.1;
            body.lines()
                .find_map(|line| {
                    line.strip_prefix(
                        "ocs_registry_heartbeats_dropped_total{reason=\"slow_consumer\"} ",
                    )
                })
                .and_then(|count| count.parse::<u64>().ok())
                .filter(|count| *count > 0)
        },
    )
    .await;
    println!("{dropped} heartbeats counted as dropped by the registry's client");
    assert!(registry.metrics.dropped_count(DropReason::slow_consumer) >= dropped);
    // It keeps working: its own record is alive and it answers.
    let client = client(&nats).await;
    assert_eq!(
        record(&client, "observatory.registry").await.unwrap()["expired"],
        false
    );
    assert_eq!(
        http_get(registry.http, "/healthz").await,
        (200, "ok\n".to_owned())
    );
    registry.stop().await;
}

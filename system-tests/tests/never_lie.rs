//! The registry's view stays true under duplicates, forged heartbeats and
//! mass silence: a real nats-server, the registry in-process and real agent
//! processes.

use std::time::Duration;

use ocs_protocol::{codec, proto};
use ocs_registry::metrics::DropReason;
use ocs_testkit::{NatsServer, Process, eventually, http_get};
use serde_json::Value;
use tokio::time::Instant;

mod common;

use common::Registry;
use ocs_testkit::idle_faker;
use ocs_testkit::query::{client, record, registry_agents};

const FAKER: &str = "observatory.faker";

/// Asserts for `period` that `address` stays alive with `incarnation`.
async fn stays_alive(
    client: &ocs_agent::OcsClient,
    address: &str,
    incarnation: &Value,
    period: Duration,
) {
    let until = Instant::now() + period;
    while Instant::now() < until {
        let record = record(client, address).await.expect("record");
        assert_eq!(record["expired"], false, "{address} shown dead: {record}");
        assert_eq!(&record["incarnation"], incarnation, "{record}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn incarnation_of(client: &ocs_agent::OcsClient, address: &str) -> Value {
    eventually(Duration::from_secs(5), "registered", || async {
        record(client, address)
            .await
            .map(|record| record["incarnation"].clone())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_newer_copy_of_a_duplicate_stops_the_feed_never_shows_the_instance_left() {
    let nats = NatsServer::start();
    let registry = Registry::start(&nats, &[]).await;
    let feed = common::record_feed(&nats.url()).await;
    let client = client(&nats.url()).await;
    let older = idle_faker(&nats.url(), "faker");
    let older_incarnation = incarnation_of(&client, FAKER).await;
    let mut newer = idle_faker(&nats.url(), "faker");
    eventually(Duration::from_secs(5), "the conflict", || async {
        record(&client, FAKER)
            .await
            .filter(|record| !record["conflict"].is_null())
    })
    .await;
    // A graceful stop: the newer copy says it is leaving.
    newer.signal("TERM");
    assert_eq!(newer.wait_exit(Duration::from_secs(5)), Some(0));
    eventually(Duration::from_secs(3), "the older copy shown", || async {
        record(&client, FAKER)
            .await
            .filter(|record| record["incarnation"] == older_incarnation)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let left = common::feed_record(&feed, FAKER, |record| {
        record.state == proto::AgentState::Left as i32 || record.expired
    });
    assert!(
        left.is_none(),
        "the feed showed the running instance as gone: {left:?}"
    );
    let record = record(&client, FAKER).await.unwrap();
    assert_eq!(record["expired"], false, "{record}");
    assert!(record["conflict"].is_null(), "{record}");
    assert_eq!(record["pid"], older.pid());
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_that_dies_leaves_the_survivor_alive_and_the_conflict_clears() {
    let nats = NatsServer::start();
    let registry = Registry::start(&nats, &[]).await;
    let client = client(&nats.url()).await;
    let survivor = idle_faker(&nats.url(), "faker");
    let survivor_incarnation = incarnation_of(&client, FAKER).await;
    let mut duplicate = idle_faker(&nats.url(), "faker");
    eventually(Duration::from_secs(5), "the conflict", || async {
        record(&client, FAKER)
            .await
            .filter(|record| !record["conflict"].is_null())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    duplicate.kill();
    // Well past the duplicate's deadline: the survivor is shown, alive.
    eventually(Duration::from_secs(4), "the survivor shown", || async {
        record(&client, FAKER)
            .await
            .filter(|record| record["incarnation"] == survivor_incarnation)
    })
    .await;
    stays_alive(
        &client,
        FAKER,
        &survivor_incarnation,
        Duration::from_secs(7),
    )
    .await;
    let record = record(&client, FAKER).await.unwrap();
    assert!(record["conflict"].is_null(), "{record}");
    assert_eq!(record["pid"], survivor.pid());
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_heartbeats_neither_kill_nor_immortalise_an_agent() {
    let nats = NatsServer::start();
    let registry = Registry::start(&nats, &[]).await;
    let client = client(&nats.url()).await;
    let _faker = idle_faker(&nats.url(), "faker");
    let incarnation = incarnation_of(&client, FAKER).await;
    let bus = client.nats();
    let forged = |incarnation: &str, seq: u64| proto::Heartbeat {
        incarnation: incarnation.into(),
        seq,
        ..ocs_testkit::heartbeat(FAKER)
    };
    let subject = "observatory.faker.feeds.heartbeat";
    let real = incarnation.as_str().unwrap();
    // The real (public) incarnation with the largest seq, then a goodbye
    // with a high one, then one beat of a foreign incarnation.
    let mut goodbye = forged(real, u64::MAX - 1);
    goodbye.leaving = true;
    for beat in [
        forged(real, u64::MAX),
        goodbye,
        forged(&uuid::Uuid::new_v4().to_string(), 1),
    ] {
        bus.publish(subject, codec::encode(&beat).into())
            .await
            .unwrap();
        bus.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A day's interval would keep a one-off address alive for three days.
    let mut lazy = forged(&uuid::Uuid::new_v4().to_string(), 1);
    lazy.agent_address = "observatory.lazy".into();
    lazy.interval_ms = 86_400_000;
    bus.publish(
        "observatory.lazy.feeds.heartbeat",
        codec::encode(&lazy).into(),
    )
    .await
    .unwrap();
    // The foreign beat shows for at most two intervals; the agent is never
    // shown dead, and then stays shown with its own incarnation.
    eventually(
        Duration::from_secs(4),
        "the real incarnation shown",
        || async {
            let record = record(&client, FAKER).await?;
            assert_eq!(record["expired"], false, "{record}");
            (record["incarnation"] == incarnation).then_some(())
        },
    )
    .await;
    stays_alive(&client, FAKER, &incarnation, Duration::from_secs(7)).await;
    assert!(record(&client, "observatory.lazy").await.is_none());
    assert!(registry.metrics.dropped_count(DropReason::seq_jump) >= 2);
    assert!(registry.metrics.dropped_count(DropReason::invalid) >= 1);
    registry.stop().await;
}

async fn metric(registry: &Registry, line: &str) -> Option<()> {
    let (_, metrics) = http_get(registry.http, "/metrics").await;
    metrics.lines().any(|l| l == line).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_off_beats_do_not_hold_expiries_and_a_hold_ends_at_its_maximum() {
    let nats = NatsServer::start();
    let registry = Registry::start(
        &nats,
        &[
            "--agent-timeout",
            "3",
            "--hold-min-agents",
            "4",
            "--max-hold",
            "6",
        ],
    )
    .await;
    let client = client(&nats.url()).await;
    let mut victim = idle_faker(&nats.url(), "faker");
    incarnation_of(&client, FAKER).await;
    // Twenty single heartbeats from new addresses, then silence.
    let bus = client.nats();
    for i in 0..20 {
        let beat = ocs_testkit::heartbeat(&format!("observatory.oneoff{i}"));
        bus.publish(
            format!("observatory.oneoff{i}.feeds.heartbeat"),
            codec::encode(&beat).into(),
        )
        .await
        .unwrap();
    }
    bus.flush().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    victim.kill();
    // The one-offs expire, and so does the killed agent: no hold.
    eventually(
        Duration::from_secs(8),
        "the killed agent expired",
        || async {
            record(&client, FAKER)
                .await
                .filter(|record| record["expired"] == true)
        },
    )
    .await;
    assert!(
        metric(&registry, "ocs_registry_self_preservation 0")
            .await
            .is_some()
    );

    // Five steady agents on a host that dies for good: held, shown as
    // unverified meanwhile, and expired once the hold reaches --max-hold.
    let names = ["h1", "h2", "h3", "h4", "h5"];
    let mut host: Vec<Process> = names
        .iter()
        .map(|name| idle_faker(&nats.url(), name))
        .collect();
    for name in names {
        incarnation_of(&client, &format!("observatory.{name}")).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for agent in &mut host {
        agent.kill();
    }
    eventually(Duration::from_secs(8), "self-preservation", || {
        metric(&registry, "ocs_registry_self_preservation 1")
    })
    .await;
    let held = eventually(Duration::from_secs(3), "unverified records", || async {
        let agents = registry_agents(&client).await?;
        names
            .iter()
            .all(|name| agents[&format!("observatory.{name}")]["unverified"] == true)
            .then_some(agents)
    })
    .await;
    for name in names {
        assert_eq!(held[&format!("observatory.{name}")]["expired"], false);
    }
    eventually(
        Duration::from_secs(10),
        "expired after the hold",
        || async {
            let agents = registry_agents(&client).await?;
            names
                .iter()
                .all(|name| {
                    let record = &agents[&format!("observatory.{name}")];
                    record["expired"] == true && record["unverified"] != true
                })
                .then_some(())
        },
    )
    .await;
    assert!(
        metric(&registry, "ocs_registry_holds_exhausted_total 1")
            .await
            .is_some()
    );
    assert!(
        metric(&registry, "ocs_registry_self_preservation 0")
            .await
            .is_some()
    );
    registry.stop().await;
}

/// The services' stop timeouts (compose's `stop_grace_period`, systemd's
/// `TimeoutStopSec`) must hold even when NATS is gone: no final write,
/// goodbye or flush may wait for a server that will not answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_stop_within_their_grace_period_with_nats_unreachable() {
    let mut nats = NatsServer::start();
    let client = client(&nats.url()).await;
    let mut registry = ocs_testkit::agent(
        &nats.url(),
        "ocs-registry",
        "registry",
        &["--listen", "127.0.0.1:0"],
    );
    let mut agent = idle_faker(&nats.url(), "faker");
    incarnation_of(&client, FAKER).await;
    nats.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    registry.signal("TERM");
    agent.signal("TERM");
    // The agent framework's grace for operations is 3 s by default.
    assert_eq!(
        registry.wait_exit(Duration::from_secs(3)),
        Some(0),
        "registry"
    );
    assert_eq!(agent.wait_exit(Duration::from_secs(3)), Some(0), "agent");
}

/// A process of ours logged in to `nats` as `user` (password of `role`).
fn as_role(nats: &NatsServer, binary: &str, user: &str, role: &str, args: &[&str]) -> Process {
    let mut command = std::process::Command::new(ocs_testkit::workspace_binary(binary));
    command
        .args(["--nats-url", &nats.url()])
        .args(args)
        .env("RUST_LOG", "warn");
    ocs_testkit::launch::as_user(&mut command, user, role);
    Process::spawn(user, command)
}

async fn connect_as(nats: &NatsServer, user: &str, role: &str) -> async_nats::Client {
    ocs_testkit::launch::login(user, role)
        .connect(nats.url())
        .await
        .unwrap()
}

/// `ocs` as `user`; `(exit code, stdout)`.
fn ocs_as(nats: &NatsServer, user: &str, role: &str, args: &[&str]) -> (Option<i32>, String) {
    let output = ocs_testkit::ocs_as(&nats.url(), user, role, args);
    (output.code, output.stdout)
}

/// The registry's record of `address` as the viewer sees it.
fn viewed_record(nats: &NatsServer, address: &str) -> Option<Value> {
    let (code, stdout) = ocs_as(
        nats,
        "viewer",
        "VIEWER",
        &["registry", "main", "status", "--json"],
    );
    let reply: Value = serde_json::from_str(&stdout)
        .ok()
        .filter(|_| code == Some(0))?;
    reply["session"]["data"].get(address).cloned()
}

/// With the shipped permissions, an agent can neither wipe nor read other
/// agents' sessions, and filling its own part of JetStream leaves the
/// registry's records writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_wipe_read_or_starve_the_others_state() {
    let dir = ocs_testkit::TempDir::new("ocs-kv");
    // The store holds every bucket's reservation (about 193 MiB), little more.
    let nats = ocs_testkit::launch::nats_with_role_permissions_and(
        &dir,
        "jetstream { max_file_store: 256MB }\n",
    );
    let http = ocs_testkit::free_port().to_string();
    let listen = format!("127.0.0.1:{http}");
    let registry_args = ["--listen", listen.as_str()];
    let mut registry = as_role(
        &nats,
        "ocs-registry",
        "registry",
        "REGISTRY",
        &registry_args,
    );
    let _faker1 = as_role(
        &nats,
        "ocs-fake-data-agent",
        "faker1",
        "FAKER1",
        &["--instance-id", "faker1", "--mode", "idle"],
    );
    let faker2_args = ["--instance-id", "faker2", "--mode", "idle"];
    let mut faker2 = as_role(
        &nats,
        "ocs-fake-data-agent",
        "faker2",
        "FAKER2",
        &faker2_args,
    );
    eventually(
        Duration::from_secs(15),
        "both agents registered",
        || async {
            (viewed_record(&nats, "observatory.faker1").is_some()
                && viewed_record(&nats, "observatory.faker2").is_some())
            .then_some(())
        },
    )
    .await;
    // faker2 has a session in the journal.
    let (code, _) = ocs_as(
        &nats,
        "operator",
        "OPERATOR",
        &["faker2", "delay_task", "start", "delay=0.1"],
    );
    assert_eq!(code, Some(0));
    let (code, _) = ocs_as(
        &nats,
        "operator",
        "OPERATOR",
        &["faker2", "delay_task", "wait", "--timeout", "5"],
    );
    assert_eq!(code, Some(0));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let faker1 = connect_as(&nats, "faker1", "FAKER1").await;
    let js = async_nats::jetstream::new(faker1.clone());
    // A rollup of everything through faker1's own key is refused by the bucket.
    let mut rollup = async_nats::HeaderMap::new();
    rollup.insert("Nats-Rollup", "all");
    let ack = js
        .publish_with_headers("$KV.ocs_sessions.observatory.faker1.zz", rollup, "x".into())
        .await
        .unwrap()
        .await;
    assert!(ack.is_err(), "a rollup was accepted: {ack:?}");
    // faker1 reads its own keys, not faker2's.
    let sessions = js.get_key_value("ocs_sessions").await.unwrap();
    assert!(sessions.get("observatory.faker1.acq").await.is_ok());
    let theirs = tokio::time::timeout(
        Duration::from_secs(3),
        sessions.get("observatory.faker2.delay_task"),
    )
    .await;
    assert!(
        !matches!(theirs, Ok(Ok(Some(_)))),
        "faker1 read faker2's session"
    );
    // Values are bounded, and so is the bucket: faker1 fills it...
    let too_big = vec![b'x'; 300 * 1024];
    assert!(
        sessions
            .put("observatory.faker1.big", too_big.into())
            .await
            .is_err()
    );
    let chunk = bytes::Bytes::from(vec![b'x'; 200 * 1024]);
    let mut refused = None;
    for i in 0..400 {
        if let Err(err) = sessions
            .put(format!("observatory.faker1.fill{i}"), chunk.clone())
            .await
        {
            refused = Some((i, err.to_string()));
            break;
        }
    }
    let (writes, error) = refused.expect("the bucket took 80 MB");
    assert!(writes > 300, "refused after {writes} writes: {error}");

    // ...and the registry still stores what it learns: faker2 dies, and a
    // restarted registry remembers the expiry exactly.
    faker2.kill();
    let expired = eventually(Duration::from_secs(10), "faker2 expired", || async {
        viewed_record(&nats, "observatory.faker2").filter(|record| record["expired"] == true)
    })
    .await;
    let metrics_address: std::net::SocketAddr = listen.parse().unwrap();
    eventually(Duration::from_secs(5), "the expiry stored", || async {
        let (_, metrics) = http_get(metrics_address, "/metrics").await;
        metrics
            .lines()
            .any(|line| line == "ocs_registry_store_failing 0")
            .then_some(())
    })
    .await;
    assert_eq!(http_get(metrics_address, "/healthz").await.0, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    registry.signal("TERM");
    assert_eq!(registry.wait_exit(Duration::from_secs(5)), Some(0));
    let _registry = as_role(
        &nats,
        "ocs-registry",
        "registry",
        "REGISTRY",
        &registry_args,
    );
    let restored = eventually(Duration::from_secs(15), "faker2 restored", || async {
        viewed_record(&nats, "observatory.faker2")
    })
    .await;
    assert_eq!(restored["expired"], true, "{restored}");
    assert_eq!(restored["time_expired"], expired["time_expired"]);
    // faker2's journal survived the rollup: its next incarnation shows the last run.
    let _faker2 = as_role(
        &nats,
        "ocs-fake-data-agent",
        "faker2",
        "FAKER2",
        &faker2_args,
    );
    let status = eventually(Duration::from_secs(10), "faker2's last session", || async {
        let (code, stdout) = ocs_as(
            &nats,
            "viewer",
            "VIEWER",
            &["faker2", "delay_task", "status", "--json"],
        );
        let reply: Value = serde_json::from_str(&stdout)
            .ok()
            .filter(|_| code == Some(0))?;
        (reply["session"]["status"] == "done").then_some(reply)
    })
    .await;
    assert_eq!(status["session"]["success"], true, "{status}");
}

/// A JetStream store lost under running services (disk replaced, store
/// deleted): they create their buckets again and put back what they hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_rebuild_a_wiped_jetstream_store() {
    let mut nats = NatsServer::start();
    let registry = Registry::start(&nats, &["--agent-timeout", "3"]).await;
    let client = client(&nats.url()).await;
    let _faker = idle_faker(&nats.url(), "faker");
    let mut doomed = idle_faker(&nats.url(), "doomed");
    incarnation_of(&client, FAKER).await;
    incarnation_of(&client, "observatory.doomed").await;
    let (code, _) = {
        let output = std::process::Command::new(ocs_testkit::workspace_binary("ocs"))
            .args([
                "--nats-url",
                &nats.url(),
                "faker",
                "delay_task",
                "start",
                "delay=0.1",
            ])
            .output()
            .unwrap();
        (output.status.code(), ())
    };
    assert_eq!(code, Some(0));
    doomed.kill();
    eventually(Duration::from_secs(8), "doomed expired", || async {
        record(&client, "observatory.doomed")
            .await
            .filter(|record| record["expired"] == true)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    nats.wipe_jetstream();
    // Within a check interval, both buckets are back with what they held.
    let js = async_nats::jetstream::new(client.nats().clone());
    eventually(
        Duration::from_secs(30),
        "the records and sessions rebuilt",
        || async {
            let records = js.get_key_value("ocs_registry").await.ok()?;
            let sessions = js.get_key_value("ocs_sessions").await.ok()?;
            let doomed = records
                .get("observatory.registry.agents.observatory.doomed")
                .await
                .ok()??;
            let session = sessions.get("observatory.faker.delay_task").await.ok()??;
            Some((doomed, session))
        },
    )
    .await;
    // A registry started now still knows the agent that died before the loss.
    registry.stop().await;
    let registry = Registry::start(&nats, &["--agent-timeout", "3"]).await;
    let restored = eventually(Duration::from_secs(10), "doomed restored", || async {
        record(&client, "observatory.doomed").await
    })
    .await;
    assert_eq!(restored["expired"], true, "{restored}");
    registry.stop().await;
}

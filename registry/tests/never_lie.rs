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

use common::{Registry, client, faker, record, registry_agents};

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
async fn a_duplicate_that_dies_leaves_the_survivor_alive_and_the_conflict_clears() {
    let nats = NatsServer::start();
    let registry = Registry::start(&nats, &[]).await;
    let client = client(&nats.url()).await;
    let survivor = faker(&nats, "faker");
    let survivor_incarnation = incarnation_of(&client, FAKER).await;
    let mut duplicate = faker(&nats, "faker");
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
    let _faker = faker(&nats, "faker");
    let incarnation = incarnation_of(&client, FAKER).await;
    let bus = client.nats();
    let forged = |incarnation: &str, seq: u64| proto::Heartbeat {
        protocol_version: 1,
        agent_address: FAKER.into(),
        agent_class: "FakeDataAgent".into(),
        incarnation: incarnation.into(),
        seq,
        interval_ms: 1000,
        ..Default::default()
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
    let mut victim = faker(&nats, "faker");
    incarnation_of(&client, FAKER).await;
    // Twenty single heartbeats from new addresses, then silence.
    let bus = client.nats();
    for i in 0..20 {
        let beat = proto::Heartbeat {
            protocol_version: 1,
            agent_address: format!("observatory.oneoff{i}"),
            agent_class: "Script".into(),
            incarnation: uuid::Uuid::new_v4().to_string(),
            seq: 1,
            interval_ms: 1000,
            ..Default::default()
        };
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
    let mut host: Vec<Process> = names.iter().map(|name| faker(&nats, name)).collect();
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
                    record["expired"] == true && record["unverified"] == false
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
    let mut registry = common::agent(
        &nats,
        "ocs-registry",
        "registry",
        &["--listen", "127.0.0.1:0"],
    );
    let mut agent = faker(&nats, "faker");
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

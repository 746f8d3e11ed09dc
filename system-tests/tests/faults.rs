//! The fault matrix: real nats-servers, real registry and agent processes,
//! one fault each, then a table of the outcomes.
//!
//! Every scenario runs three agents that stay alive through the fault and a
//! "victim" killed (SIGKILL) during it. It passes when no live agent is ever
//! reported expired (on the feed, by any registry incarnation, or in the final
//! status), the victim is reported expired, and every agent known before the
//! fault is still known after it. The agent timeout is 4 s; heartbeats are 1 s.
//!
//! Scenarios run one after another (they kill shared servers), so this is a
//! `harness = false` test: `cargo test -p ocs-system-tests --test faults`.
//! `FAULTS=nats-frozen,...` runs a subset.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::{FeedLog, record_feed};
use futures::FutureExt;
use ocs_agent::OcsClient;
use ocs_protocol::{codec, proto};
use ocs_testkit::query::registry_agents;
use ocs_testkit::{
    NatsCluster, NatsServer, Process, free_port, http_get, idle_faker, workspace_binary,
};
use serde_json::Value;
use tokio::time::{Instant, sleep};

const TIMEOUT: Duration = Duration::from_secs(4);
const LIVE: [&str; 3] = ["steady1", "steady2", "steady3"];
const VICTIM: &str = "victim";

fn address(instance_id: &str) -> String {
    format!("observatory.{instance_id}")
}

/// A registry process on `nats_url`; `extra` are further arguments.
struct RegistryProcess {
    process: Process,
    args: Vec<String>,
    http_port: u16,
}

impl RegistryProcess {
    fn spawn(nats_url: &str, extra: &[&str]) -> Self {
        let http_port = free_port();
        let mut args: Vec<String> = [
            "--nats-url",
            nats_url,
            "--agent-timeout",
            &TIMEOUT.as_secs().to_string(),
            "--listen",
            &format!("127.0.0.1:{http_port}"),
        ]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect();
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let process = Self::start(&args);
        RegistryProcess {
            process,
            args,
            http_port,
        }
    }

    fn start(args: &[String]) -> Process {
        let mut command = Command::new(workspace_binary("ocs-registry"));
        command.args(args).env("RUST_LOG", "error");
        Process::spawn("ocs-registry", command)
    }

    fn restart(&mut self) {
        self.process.kill();
        self.process = Self::start(&self.args);
    }

    /// One metric's value, if the registry answers.
    async fn metric(&self, name: &str) -> Option<f64> {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], self.http_port));
        let (status, body) = std::panic::AssertUnwindSafe(http_get(address, "/metrics"))
            .catch_unwind()
            .await
            .ok()?;
        (status == 200).then_some(())?;
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }
}

/// What one scenario found.
struct Outcome {
    fault: &'static str,
    false_expiries: BTreeSet<String>,
    death_detected: bool,
    lost: BTreeSet<String>,
    note: String,
}

impl Outcome {
    fn passed(&self) -> bool {
        self.false_expiries.is_empty() && self.death_detected && self.lost.is_empty()
    }
}

/// The agents of a scenario and what was known before the fault.
struct Fleet {
    client: OcsClient,
    feed: FeedLog,
    live: Vec<Process>,
    victim: Process,
    known_before: BTreeSet<String>,
}

impl Fleet {
    /// Starts the agents on `agent_url`, watches through `watch_url`, and
    /// waits until the registry lists them all alive.
    async fn start(agent_url: &str, watch_url: &str) -> Fleet {
        let live = LIVE.iter().map(|iid| idle_faker(agent_url, iid)).collect();
        let victim = idle_faker(agent_url, VICTIM);
        let client = ocs_testkit::query::client(watch_url).await;
        let feed = record_feed(watch_url).await;
        let mut fleet = Fleet {
            client,
            feed,
            live,
            victim,
            known_before: BTreeSet::new(),
        };
        fleet.known_before = fleet
            .wait_for(Duration::from_secs(30), |agents| {
                LIVE.iter().chain([&VICTIM]).all(|iid| {
                    agents
                        .get(&address(iid))
                        .is_some_and(|r| r["expired"] == false)
                })
            })
            .await
            .expect("the fleet came up")
            .keys()
            .cloned()
            .collect();
        fleet
    }

    async fn wait_for(
        &self,
        timeout: Duration,
        check: impl Fn(&serde_json::Map<String, Value>) -> bool,
    ) -> Option<serde_json::Map<String, Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(agents) = registry_agents(&self.client).await
                && check(&agents)
            {
                return Some(agents);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for the victim to be reported expired, then judges.
    async fn verdict(self, fault: &'static str, note: String) -> Outcome {
        let final_status = self
            .wait_for(Duration::from_secs(25), |agents| {
                agents
                    .get(&address(VICTIM))
                    .is_some_and(|record| record["expired"] == true)
            })
            .await;
        let final_status = match final_status {
            Some(status) => status,
            None => registry_agents(&self.client).await.unwrap_or_default(),
        };
        let mut false_expiries: BTreeSet<String> = LIVE
            .iter()
            .map(|iid| address(iid))
            .filter(|address| {
                final_status
                    .get(address)
                    .is_none_or(|record| record["expired"] == true)
            })
            .collect();
        for (_, message) in self.feed.lock().unwrap().iter() {
            for record in &message.agents {
                if record.expired && LIVE.iter().any(|iid| address(iid) == record.agent_address) {
                    false_expiries.insert(record.agent_address.clone());
                }
            }
        }
        let death_detected = final_status
            .get(&address(VICTIM))
            .is_some_and(|record| record["expired"] == true);
        let lost = self
            .known_before
            .iter()
            .filter(|address| !final_status.contains_key(*address))
            .cloned()
            .collect();
        drop(self.live);
        Outcome {
            fault,
            false_expiries,
            death_detected,
            lost,
            note,
        }
    }
}

async fn nats_restart(outage: Duration, fault: &'static str) -> Outcome {
    let mut nats = NatsServer::start();
    let _registry = RegistryProcess::spawn(&nats.url(), &[]);
    let mut fleet = Fleet::start(&nats.url(), &nats.url()).await;
    nats.kill();
    sleep(outage / 2).await;
    fleet.victim.kill();
    sleep(outage / 2).await;
    nats.restart();
    let note = format!("server down {outage:?}");
    fleet.verdict(fault, note).await
}

async fn nats_frozen() -> Outcome {
    let nats = NatsServer::start();
    let registry = RegistryProcess::spawn(&nats.url(), &[]);
    let mut fleet = Fleet::start(&nats.url(), &nats.url()).await;
    nats.signal("STOP");
    sleep(Duration::from_secs(2)).await;
    fleet.victim.kill();
    sleep(Duration::from_secs(6)).await;
    let cut_off = registry.metric("ocs_registry_cut_off").await;
    nats.signal("CONT");
    let note = format!("server frozen 8 s; registry cut_off during it: {cut_off:?}");
    fleet
        .verdict("NATS server frozen (SIGSTOP, half-open)", note)
        .await
}

async fn cluster_node_lost() -> Outcome {
    let mut cluster = NatsCluster::start(3);
    // The registry on node 1, the agents on node 2 (node 3 is their fallback).
    let registry_url = cluster.urls(&[0, 2]);
    let agents_url = cluster.urls(&[1, 2]);
    let _registry = RegistryProcess::spawn(&registry_url, &["--kv-replicas", "3"]);
    let mut fleet = Fleet::start(&agents_url, &registry_url).await;
    cluster.nodes[1].kill();
    fleet.victim.kill();
    sleep(TIMEOUT * 2).await;
    cluster.nodes[1].restart();
    fleet
        .verdict(
            "3-node cluster, agents' node killed",
            "agents failed over to node 3".to_owned(),
        )
        .await
}

async fn registry_killed() -> Outcome {
    let nats = NatsServer::start();
    let mut registry = RegistryProcess::spawn(&nats.url(), &[]);
    let mut departed = idle_faker(&nats.url(), "departed");
    let mut fleet = Fleet::start(&nats.url(), &nats.url()).await;
    // Started first, but on a busy machine not necessarily heard first.
    fleet
        .wait_for(Duration::from_secs(15), |agents| {
            agents
                .get(&address("departed"))
                .is_some_and(|record| record["expired"] == false)
        })
        .await
        .expect("departed registered");
    departed.kill();
    let before = fleet
        .wait_for(Duration::from_secs(15), |agents| {
            agents
                .get(&address("departed"))
                .is_some_and(|record| record["expired"] == true)
        })
        .await
        .expect("departed expired");
    let expired_at = before[&address("departed")]["time_expired"].clone();
    fleet.known_before.insert(address("departed"));
    registry.process.kill();
    sleep(Duration::from_secs(1)).await;
    fleet.victim.kill();
    sleep(Duration::from_secs(2)).await;
    registry.restart();
    let after = fleet
        .wait_for(Duration::from_secs(15), |agents| {
            agents.contains_key(&address("departed"))
        })
        .await;
    let kept = after
        .as_ref()
        .map(|agents| agents[&address("departed")]["time_expired"].clone());
    let restored = registry.metric("ocs_registry_restored_agents_total").await;
    let mut outcome = fleet
        .verdict(
            "registry SIGKILL, restarted 3 s later",
            format!(
                "restored {restored:?} records; departed's time_expired kept: {}",
                kept.as_ref() == Some(&expired_at)
            ),
        )
        .await;
    if kept.as_ref() != Some(&expired_at) {
        outcome
            .lost
            .insert(format!("{} (time_expired)", address("departed")));
    }
    outcome
}

async fn registry_frozen() -> Outcome {
    let nats = NatsServer::start();
    let registry = RegistryProcess::spawn(&nats.url(), &[]);
    let mut fleet = Fleet::start(&nats.url(), &nats.url()).await;
    registry.process.signal("STOP");
    sleep(Duration::from_secs(2)).await;
    fleet.victim.kill();
    sleep(Duration::from_secs(4)).await;
    registry.process.signal("CONT");
    sleep(Duration::from_secs(1)).await;
    let stalls = registry.metric("ocs_registry_stalls_total").await;
    fleet
        .verdict(
            "registry frozen 6 s (SIGSTOP), thawed",
            format!("stalls noticed: {stalls:?}"),
        )
        .await
}

async fn flood() -> Outcome {
    let nats = NatsServer::start();
    let registry = RegistryProcess::spawn(&nats.url(), &[]);
    let mut fleet = Fleet::start(&nats.url(), &nats.url()).await;
    let flooder = ocs_service::connect::connect_service(&nats.url(), "flooder")
        .await
        .unwrap();
    let started = Instant::now();
    let mut sent = 0u64;
    let mut killed = false;
    // A broken agent beating as fast as it can, a spoofer claiming a live
    // agent's address on its own subject, and garbage.
    while started.elapsed() < Duration::from_secs(6) {
        for seq in 0..200u64 {
            let beat = proto::Heartbeat {
                protocol_version: 1,
                agent_address: "observatory.flooder".into(),
                agent_class: "Flooder".into(),
                incarnation: "6f7a1c0e-1d2b-4c3a-8e9f-0a1b2c3d4e5f".into(),
                seq: sent + seq + 1,
                interval_ms: 1000,
                ..Default::default()
            };
            let spoof = proto::Heartbeat {
                agent_address: address(LIVE[0]),
                leaving: true,
                ..beat.clone()
            };
            let _ = flooder
                .publish(
                    "observatory.flooder.feeds.heartbeat",
                    codec::encode(&beat).into(),
                )
                .await;
            let _ = flooder
                .publish(
                    "observatory.flooder.feeds.heartbeat",
                    codec::encode(&spoof).into(),
                )
                .await;
            let _ = flooder
                .publish(
                    "observatory.steady2.feeds.heartbeat",
                    vec![0xff; 300].into(),
                )
                .await;
        }
        sent += 200;
        if !killed && started.elapsed() > Duration::from_secs(2) {
            fleet.victim.kill();
            killed = true;
        }
        sleep(Duration::from_millis(5)).await;
    }
    let rate_limited = registry
        .metric("ocs_registry_heartbeats_dropped_total{reason=\"rate_limited\"}")
        .await;
    let mismatched = registry
        .metric("ocs_registry_heartbeats_dropped_total{reason=\"address_mismatch\"}")
        .await;
    fleet
        .verdict(
            "agent flood: fast, spoofed and garbage beats, 6 s",
            format!(
                "{sent} of each kind sent ({:.0}/s); dropped rate_limited {rate_limited:?}, address_mismatch {mismatched:?}",
                sent as f64 / started.elapsed().as_secs_f64()
            ),
        )
        .await
}

async fn ha_leader_killed() -> Outcome {
    let nats = NatsServer::start();
    let first = RegistryProcess::spawn(&nats.url(), &["--ha"]);
    sleep(Duration::from_secs(1)).await;
    let second = RegistryProcess::spawn(&nats.url(), &["--ha"]);
    let mut fleet = Fleet::start(&nats.url(), &nats.url()).await;
    let publishers = |since: Instant| -> BTreeSet<String> {
        fleet
            .feed
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= since)
            .map(|(_, message)| message.registry_incarnation.clone())
            .collect()
    };
    // Steady state sends nothing on the feed: ask for snapshots, which only the leader publishes.
    let asker = ocs_service::connect::connect_service(&nats.url(), "snapshot-asker")
        .await
        .unwrap();
    let ask = || async {
        for _ in 0..3 {
            let _ = asker
                .request("observatory.registry.snapshot", bytes::Bytes::new())
                .await;
            sleep(Duration::from_millis(1100)).await;
        }
    };
    let window = Instant::now();
    ask().await;
    let before = publishers(window).len();
    let (mut leader, standby) = if first.metric("ocs_registry_leader").await == Some(1.0) {
        (first, second)
    } else {
        (second, first)
    };
    let killed_at = Instant::now();
    leader.process.kill();
    fleet.victim.kill();
    let took_over = loop {
        if standby.metric("ocs_registry_leader").await == Some(1.0) {
            break Some(killed_at.elapsed());
        }
        if killed_at.elapsed() > Duration::from_secs(15) {
            break None;
        }
        sleep(Duration::from_millis(50)).await;
    };
    sleep(Duration::from_secs(1)).await;
    let after_window = Instant::now();
    ask().await;
    let after = publishers(after_window).len();
    let mut outcome = fleet
        .verdict(
            "HA: leading registry SIGKILL",
            format!(
                "feed publishers before {before}, after {after}; standby led after {took_over:?}"
            ),
        )
        .await;
    if before != 1 || after != 1 || took_over.is_none() {
        outcome.lost.insert("single feed publisher".to_owned());
    }
    outcome
}

type Scenario = (
    &'static str,
    fn() -> futures::future::BoxFuture<'static, Outcome>,
);

fn scenarios() -> Vec<Scenario> {
    vec![
        ("nats-short", || {
            nats_restart(TIMEOUT / 2, "NATS killed, back in 2 s (< timeout)").boxed()
        }),
        ("nats-long", || {
            nats_restart(TIMEOUT * 2, "NATS killed, back in 8 s (> timeout)").boxed()
        }),
        ("nats-frozen", || nats_frozen().boxed()),
        ("cluster-node", || cluster_node_lost().boxed()),
        ("registry-kill", || registry_killed().boxed()),
        ("registry-stop", || registry_frozen().boxed()),
        ("flood", || flood().boxed()),
        ("ha-failover", || ha_leader_killed().boxed()),
    ]
}

fn main() {
    let only: Option<Vec<String>> = std::env::var("FAULTS")
        .ok()
        .map(|list| list.split(',').map(str::to_owned).collect());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut outcomes = Vec::new();
    for (name, scenario) in scenarios() {
        if only
            .as_ref()
            .is_some_and(|only| !only.iter().any(|o| o == name))
        {
            continue;
        }
        let started = std::time::Instant::now();
        eprintln!("fault {name}: running");
        // Each scenario is bounded: a hang is a failure, not a stuck CI.
        let outcome = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(120), scenario()).await });
        let outcome = outcome.unwrap_or_else(|_| Outcome {
            fault: name,
            false_expiries: BTreeSet::new(),
            death_detected: false,
            lost: BTreeSet::new(),
            note: "did not finish within 120 s".to_owned(),
        });
        eprintln!(
            "fault {name}: {} in {:.1?}",
            if outcome.passed() { "ok" } else { "FAILED" },
            started.elapsed()
        );
        outcomes.push(outcome);
    }
    println!();
    println!(
        "| {:<50} | {:<14} | {:<14} | {:<12} | {:<6} | note",
        "fault", "false expiries", "death detected", "records lost", "result"
    );
    println!("|{}|", "-".repeat(130));
    for outcome in &outcomes {
        let list = |set: &BTreeSet<String>| {
            if set.is_empty() {
                "0".to_owned()
            } else {
                set.iter().cloned().collect::<Vec<_>>().join(" ")
            }
        };
        println!(
            "| {:<50} | {:<14} | {:<14} | {:<12} | {:<6} | {}",
            outcome.fault,
            list(&outcome.false_expiries),
            if outcome.death_detected { "yes" } else { "NO" },
            list(&outcome.lost),
            if outcome.passed() { "ok" } else { "FAILED" },
            outcome.note
        );
    }
    let failed = outcomes.iter().filter(|outcome| !outcome.passed()).count();
    println!("\n{} faults, {failed} failed", outcomes.len());
    if failed > 0 {
        std::process::exit(1);
    }
}

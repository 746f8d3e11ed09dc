//! Helpers shared by the registry's end-to-end tests and its fault matrix.

#![allow(dead_code)]

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use ocs_registry::{Config, RegistryMetrics};
use ocs_service::skeleton::start_within;
use ocs_testkit::{NatsServer, Process, workspace_binary};
use tokio_util::sync::CancellationToken;

use futures::StreamExt;
use ocs_agent::OcsClient;
use ocs_protocol::codec::{self, MAX_MESSAGE_BYTES};
use ocs_protocol::{Action, AddressRoot, InstanceId, OpName, json, proto};
use serde_json::Value;
use tokio::time::Instant;

/// A CLI-like client on `nats_url` (comma-separated URLs allowed).
pub async fn client(nats_url: &str) -> OcsClient {
    let nats_client = ocs_service::connect::connect_service(nats_url, "test-client")
        .await
        .unwrap();
    OcsClient::new(nats_client, AddressRoot::default())
}

/// The registry's `main` session data: address → OCS record.
pub async fn registry_agents(client: &OcsClient) -> Option<serde_json::Map<String, Value>> {
    let reply = client
        .operation(
            &InstanceId::new("registry").unwrap(),
            &OpName::new("main").unwrap(),
            Action::Status,
            Vec::new(),
            None,
            Duration::from_secs(2),
        )
        .await
        .ok()?;
    json::reply(&reply).ok()?["session"]["data"]
        .as_object()
        .cloned()
}

pub async fn record(client: &OcsClient, address: &str) -> Option<Value> {
    registry_agents(client).await?.get(address).cloned()
}

/// Every agent_operations feed message, with its arrival time.
pub type FeedLog = Arc<Mutex<Vec<(Instant, proto::AgentOperations)>>>;

/// Records the registry's feed from now on, through reconnects.
pub async fn record_feed(nats_url: &str) -> FeedLog {
    let client = ocs_service::connect::connect_service(nats_url, "feed-recorder")
        .await
        .unwrap();
    let mut feed = client
        .subscribe("observatory.registry.feeds.agent_operations")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let log: FeedLog = Arc::default();
    let sink = log.clone();
    tokio::spawn(async move {
        let _client = client;
        while let Some(message) = feed.next().await {
            let decoded: proto::AgentOperations =
                codec::decode(&message.payload, MAX_MESSAGE_BYTES).unwrap();
            sink.lock().unwrap().push((Instant::now(), decoded));
        }
    });
    log
}

/// The first feed record of `address` matching `predicate`, with its arrival time.
pub fn feed_record(
    log: &FeedLog,
    address: &str,
    predicate: impl Fn(&proto::AgentRecord) -> bool,
) -> Option<(Instant, proto::AgentRecord)> {
    log.lock().unwrap().iter().find_map(|(at, message)| {
        message
            .agents
            .iter()
            .find(|record| record.agent_address == address && predicate(record))
            .map(|record| (*at, record.clone()))
    })
}

/// The registry in-process, on its own HTTP port.
pub struct Registry {
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
    pub metrics: Arc<RegistryMetrics>,
    pub http: std::net::SocketAddr,
}

impl Registry {
    /// Starts it on `nats` with further command-line arguments.
    pub async fn start(nats: &NatsServer, extra: &[&str]) -> Registry {
        let url = nats.url();
        let mut args = vec![
            "ocs-registry",
            "--nats-url",
            url.as_str(),
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend(extra);
        let config = Config::parse_from(args);
        let shutdown = CancellationToken::new();
        let started = start_within(&config, shutdown.clone()).await.unwrap();
        let http = started.listener.as_ref().unwrap().local_addr().unwrap();
        let metrics = Arc::new(RegistryMetrics::new());
        let task = tokio::spawn({
            let metrics = metrics.clone();
            async move { ocs_registry::run(config, started, metrics).await.unwrap() }
        });
        Registry {
            shutdown,
            task,
            metrics,
            http,
        }
    }

    /// Stops it and waits for a clean end.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

/// An agent binary of the workspace as a process.
pub fn agent(nats: &NatsServer, binary: &str, instance_id: &str, extra: &[&str]) -> Process {
    let mut command = Command::new(workspace_binary(binary));
    command
        .args(["--nats-url", &nats.url(), "--instance-id", instance_id])
        .args(extra)
        .env("RUST_LOG", "warn");
    Process::spawn(instance_id, command)
}

/// An idle fake-data agent.
pub fn faker(nats: &NatsServer, instance_id: &str) -> Process {
    agent(
        nats,
        "ocs-fake-data-agent",
        instance_id,
        &["--mode", "idle"],
    )
}

/// A nats-server with the shipped role permissions, a password per role.
pub fn nats_with_role_permissions(dir: &ocs_testkit::TempDir) -> NatsServer {
    nats_with_role_permissions_and(dir, "")
}

/// [`nats_with_role_permissions`] with further server configuration.
pub fn nats_with_role_permissions_and(dir: &ocs_testkit::TempDir, extra: &str) -> NatsServer {
    let shipped =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/permissions.conf");
    let mut conf = String::new();
    for role in [
        "REGISTRY", "MONITOR", "FAKER1", "FAKER2", "OPERATOR", "VIEWER",
    ] {
        conf.push_str(&format!("OCS_NATS_PASSWORD_{role}: \"pw-{role}\"\n"));
    }
    // Variables do not cross an include, so the shipped text is inlined after them.
    conf.push_str(&std::fs::read_to_string(shipped).unwrap());
    conf.push_str(extra);
    let path = dir.path().join("nats.conf");
    std::fs::write(&path, conf).unwrap();
    NatsServer::start_with(&["-c", path.to_str().unwrap()])
}

/// Logs `command` in as `user` with the password of `role`.
pub fn as_user(command: &mut Command, user: &str, role: &str) {
    command
        .env("NATS_USER", user)
        .env("NATS_PASSWORD", format!("pw-{role}"));
}

/// `ocs` on `nats_url` as `user` (password of `role`): `(exit code, stdout, stderr)`.
pub fn ocs_as(
    nats_url: &str,
    user: &str,
    role: &str,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let mut command = Command::new(workspace_binary("ocs"));
    command.args(["--nats-url", nats_url]).args(args);
    as_user(&mut command, user, role);
    let output = command.output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

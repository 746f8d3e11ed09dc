//! Helpers shared by the registry's end-to-end tests and its fault matrix:
//! the registry in-process and a recorder of its feed. Launchers of the
//! other binaries and queries of the registry are in `ocs_testkit`.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use ocs_registry::{Config, RegistryMetrics};
use ocs_service::skeleton::start_within;
use ocs_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

use futures::StreamExt;
use ocs_protocol::codec::{self, MAX_MESSAGE_BYTES};
use ocs_protocol::proto;
use tokio::time::Instant;

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

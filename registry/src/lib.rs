//! The registry: listens to every agent's heartbeat, decides who is alive on
//! its own monotonic clock, and publishes the aggregated operation states on
//! the `agent_operations` feed.
//!
//! Like OCS's RegistryAgent it is itself an agent: its `main` process does
//! the work, and `ocs registry main status` returns every agent's record.
//!
//! - [`table`]: the sans-I/O [`table::AgentTable`] (observe, expire, forget);
//! - `service`: the `main` process loop that feeds the table and publishes;
//! - `vigil`: whether silence may count as death now (cut off, stalled, holding);
//! - `store`: the agent records kept in JetStream KV across restarts;
//! - [`records`]: records queries, the table in pages and filtered, and the
//!   `registry main status` data that always fits in one message;
//! - [`lease`]: which replica leads when several run (`--ha`);
//! - [`metrics`] and [`http`]: `/metrics` and `/healthz`;
//! - [`config`]: the command line.

pub mod config;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod records;
mod service;
mod store;
pub mod table;
mod vigil;

use std::sync::Arc;

use ocs_agent::{Agent, AgentError, NoParams};
use ocs_service::endpoints;
use ocs_service::skeleton::Started;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use lease::{Lease, SharedLease};

pub use config::Config;
pub use metrics::RegistryMetrics;
pub use service::RECORDS_PER_MESSAGE;

/// Why the registry stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The agent runtime failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// Runs the registry until the started service's shutdown; serves HTTP on
/// its listener.
pub async fn run(
    config: Config,
    started: Started,
    metrics: Arc<RegistryMetrics>,
) -> Result<(), RegistryError> {
    let Started {
        client,
        shutdown,
        address,
        listener,
        bus_events,
    } = started;
    let lease: SharedLease = Arc::new(Mutex::new(if config.ha {
        Lease::contested(config.lease_ttl)
    } else {
        Lease::uncontested()
    }));
    let (leading_tx, leading) = watch::channel(lease::leads(&lease));
    let election_stop = CancellationToken::new();
    let election = config.ha.then(|| {
        tokio::spawn(lease::elect(
            client.clone(),
            address.clone(),
            format!(
                "{}:{}",
                ocs_service::lifecycle::hostname().unwrap_or_default(),
                std::process::id()
            ),
            usize::from(config.kv_replicas),
            lease.clone(),
            leading_tx,
            election_stop.clone(),
        ))
    });
    let settings = Arc::new(service::Settings {
        kv_replicas: usize::from(config.kv_replicas),
        lease: lease.clone(),
        root: config.common.address_root.clone(),
        address: address.clone(),
        table: config.table(),
        wait_time: config.wait_time,
        max_heartbeat_bytes: config.max_heartbeat_bytes,
        heartbeat_buffer: config.heartbeat_buffer,
        bus_events,
    });
    let main_metrics = metrics.clone();
    let agent = Agent::builder("RegistryAgent")
        // `main` is the registry's one operation. A second worker thread only
        // handed its wake-ups back and forth: at 20,000 agents it cost 3.66 µs
        // of CPU per heartbeat against 2.93 µs on one thread (BENCHMARKS.md).
        .operation_threads(1)
        .process(
            "main",
            "Track agents by their heartbeats and publish the agent_operations feed.",
            move |ctx, _: NoParams| {
                service::main_process(ctx, settings.clone(), main_metrics.clone(), leading.clone())
            },
        )
        .startup("main", serde_json::json!({}));
    let agent = if config.ha {
        let gate = lease.clone();
        agent.replicated(Arc::new(move || lease::leads(&gate)))
    } else {
        agent
    }
    .build(address)?;

    let http = listener.map(|listener| {
        let router = http::router(metrics, client.clone());
        tokio::spawn(endpoints::serve(listener, router, shutdown.clone()))
    });
    let result = agent.run(client, shutdown).await;
    // Released only now: the leaving heartbeat above still spoke for the address.
    election_stop.cancel();
    if let Some(mut election) = election {
        // Handing the lease over takes one KV write; unreachable, the lease
        // simply expires after its TTL.
        if tokio::time::timeout(std::time::Duration::from_secs(1), &mut election)
            .await
            .is_err()
        {
            election.abort();
        }
    }
    if let Some(http) = http {
        http.abort();
    }
    result?;
    Ok(())
}

//! The operation monitor: follows the registry's `agent_operations` feed (not
//! every heartbeat, so it scales with the registry, not with the bus) and
//! serves it as Prometheus metrics for dashboards and alerts.
//!
//! - [`fleet`]: the sans-I/O [`fleet::Fleet`], bounded by the fleet's size;
//! - [`metrics`]: metrics encoded from the fleet at scrape time, plus the monitor's own;
//! - `feed`: the loop that moves feed messages into the fleet and probes the registry;
//! - [`http`]: `/metrics` and `/healthz`;
//! - [`config`]: the command line.

pub mod config;
mod feed;
pub mod fleet;
pub mod http;
pub mod metrics;

use std::sync::{Arc, Mutex};

use ocs_protocol::AgentAddress;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::Config;

use crate::fleet::{Fleet, FleetLimits};
use crate::metrics::MonitorMetrics;

/// Why the monitor stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The feed subscription failed.
    #[error("cannot subscribe to the feed: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// The HTTP endpoint failed.
    #[error("http server: {0}")]
    Http(#[from] std::io::Error),
}

/// Runs the monitor until `shutdown`; serves HTTP on `listener`.
pub async fn run(
    config: Config,
    client: async_nats::Client,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), MonitorError> {
    let registry = AgentAddress::new(&config.common.address_root, &config.registry);
    let fleet = Arc::new(Mutex::new(Fleet::new(
        &registry,
        FleetLimits {
            max_agents: config.max_agents,
            max_operations: config.max_operations,
        },
    )));
    let metrics = Arc::new(MonitorMetrics::new(fleet.clone()));
    info!(address = %listener.local_addr()?, "serving /metrics and /healthz");
    let router = http::router(metrics.clone(), fleet.clone(), config.stale_after);
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(ocs_agent::endpoints::serve(listener, router, http_shutdown));
    let settings = feed::FeedSettings {
        registry,
        probe_interval: config.probe_interval,
    };
    let result = feed::follow(settings, client, fleet, metrics, shutdown.clone()).await;
    shutdown.cancel();
    let _ = http.await;
    result?;
    Ok(())
}

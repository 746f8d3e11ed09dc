//! The operation monitor: follows the registry's `agent_operations` feed (not
//! every heartbeat, so it scales with the registry, not with the bus) and
//! serves it as Prometheus metrics for dashboards and alerts.
//!
//! The fleet and the loop that follows the feed are `ocs-fleet`'s (the web
//! board shares them);
//! - [`metrics`]: metrics encoded from the fleet at scrape time, plus the monitor's own;
//! - [`http`]: `/metrics` and `/healthz`;
//! - [`config`]: the command line.

pub mod config;
pub mod http;
pub mod metrics;

use std::sync::Arc;

use ocs_protocol::AgentAddress;
use ocs_service::endpoints;
use ocs_service::skeleton::Started;

pub use config::Config;

use ocs_fleet::{FleetLimits, FollowSettings};

use crate::metrics::MonitorMetrics;

/// Why the monitor stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The feed subscription failed.
    #[error("cannot subscribe to the feed: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
}

/// Runs the monitor until the started service's shutdown; serves HTTP on
/// its listener.
pub async fn run(config: Config, started: Started) -> Result<(), MonitorError> {
    let Started {
        client,
        shutdown,
        listener,
        ..
    } = started;
    let registry = AgentAddress::new(&config.common.address_root, &config.registry);
    let fleet = ocs_fleet::shared_fleet(
        &registry,
        FleetLimits {
            max_agents: config.max_agents,
            max_operations: config.max_operations,
        },
    );
    let metrics = Arc::new(MonitorMetrics::new(fleet.clone(), config.series));
    let http = listener.map(|listener| {
        let router = http::router(metrics.clone(), fleet.clone(), config.stale_after);
        tokio::spawn(endpoints::serve(listener, router, shutdown.clone()))
    });
    let settings = FollowSettings {
        registry,
        probe_interval: config.probe_interval,
    };
    // Nobody here waits for changes: /metrics reads the fleet when scraped.
    let (changes, _) = tokio::sync::watch::channel(0);
    let feed = metrics.feed();
    let result = ocs_fleet::follow(settings, client, fleet, feed, changes, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(http) = http {
        let _ = http.await;
    }
    result?;
    Ok(())
}

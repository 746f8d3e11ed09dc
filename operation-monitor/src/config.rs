//! `ocs-operation-monitor` settings: command line and environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use ocs_protocol::InstanceId;
use ocs_service::{CommonArgs, ServiceArgs, ServiceIdentity};

use crate::metrics::SeriesDetail;

/// The operation monitor: the registry's agent_operations feed as Prometheus metrics.
#[derive(Debug, Clone, Parser)]
#[command(name = "ocs-operation-monitor", version, args_override_self = true)]
pub struct Config {
    /// NATS, address root and logging.
    #[command(flatten)]
    pub common: CommonArgs,
    /// This monitor's instance id: names its NATS connection and finds its
    /// arguments in the site file (the host manager starts every instance with it).
    #[arg(long, env = "INSTANCE_ID", default_value = "operation-monitor")]
    pub instance_id: InstanceId,
    /// Address of the HTTP endpoints (/metrics, /healthz).
    #[arg(long, env = "OCS_MONITOR_LISTEN", default_value = "127.0.0.1:9464")]
    pub listen: SocketAddr,
    /// Instance id of the registry whose feed is followed.
    #[arg(long, env = "OCS_REGISTRY", default_value = "registry")]
    pub registry: InstanceId,
    /// Seconds without any feed message after which /healthz fails (about three
    /// of the registry's snapshot intervals).
    #[arg(long, env = "OCS_MONITOR_STALE_AFTER", default_value = "95", value_parser = ocs_service::seconds::parse)]
    pub stale_after: Duration,
    /// Seconds between probes of the registry.
    #[arg(long, env = "OCS_MONITOR_PROBE_INTERVAL", default_value = "10", value_parser = ocs_service::seconds::parse)]
    pub probe_interval: Duration,
    /// Most agents exported; bounds memory and series.
    #[arg(long, env = "OCS_MONITOR_MAX_AGENTS", default_value_t = 100_000)]
    pub max_agents: usize,
    /// Most operations exported per agent.
    #[arg(long, env = "OCS_MONITOR_MAX_OPERATIONS", default_value_t = 256)]
    pub max_operations: usize,
    /// Which series of the fleet /metrics exports: per-operation (all),
    /// per-agent (no ocs_operation_code) or aggregate (totals only); see
    /// README "Monitoring at scale" for what each costs Prometheus.
    #[arg(long, env = "OCS_MONITOR_SERIES", value_enum, default_value_t = SeriesDetail::PerOperation)]
    pub series: SeriesDetail,
}

impl ServiceArgs for Config {
    fn identity(&self) -> Result<ServiceIdentity<'_>, String> {
        let listen = Some(self.listen);
        Ok(ServiceIdentity::new(
            &self.common,
            &self.instance_id,
            listen,
        ))
    }
}

//! `ocs-registry` settings: command line and environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use ocs_protocol::InstanceId;
use ocs_service::{CommonArgs, ServiceArgs, ServiceIdentity};

use crate::table::TableConfig;

/// The registry: tracks agents by their heartbeats and publishes the `agent_operations` feed.
#[derive(Debug, Clone, Parser)]
#[command(name = "ocs-registry", version, args_override_self = true)]
pub struct Config {
    /// NATS, address root and logging.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The registry's own instance id.
    #[arg(long, env = "INSTANCE_ID", default_value = "registry")]
    pub instance_id: InstanceId,
    /// Seconds without a heartbeat after which an agent is expired (at least
    /// three of the agent's own heartbeat intervals).
    #[arg(long, env = "OCS_REGISTRY_AGENT_TIMEOUT", default_value = "5", value_parser = ocs_service::seconds::parse)]
    pub agent_timeout: Duration,
    /// Seconds between full snapshots on the agent_operations feed.
    #[arg(long, env = "OCS_REGISTRY_WAIT_TIME", default_value = "30", value_parser = ocs_service::seconds::parse)]
    pub wait_time: Duration,
    /// Seconds after which an expired or departed agent is forgotten.
    #[arg(long, env = "OCS_REGISTRY_FORGET_AFTER", default_value = "86400", value_parser = ocs_service::seconds::parse)]
    pub forget_after: Duration,
    /// Most agents tracked; heartbeats from further new addresses are dropped.
    #[arg(long, env = "OCS_REGISTRY_MAX_AGENTS", default_value_t = 100_000)]
    pub max_agents: usize,
    /// Largest heartbeat accepted, in bytes.
    #[arg(long, env = "OCS_REGISTRY_MAX_HEARTBEAT_BYTES", default_value_t = 64 * 1024)]
    pub max_heartbeat_bytes: usize,
    /// Heartbeats (and other messages) the NATS client buffers for the
    /// registry while it is busy; beyond that it drops them, counted in
    /// `ocs_registry_heartbeats_dropped_total{reason="slow_consumer"}`.
    #[arg(long, env = "OCS_REGISTRY_HEARTBEAT_BUFFER", default_value_t = ocs_service::connect::SERVICE_SUBSCRIPTION_CAPACITY, value_parser = clap::value_parser!(usize))]
    pub heartbeat_buffer: usize,
    /// Self-preservation: when more than this share of the alive agents would
    /// expire at once, hold expiries (the registry is likely cut off from
    /// them) until heartbeats return.
    #[arg(long, env = "OCS_REGISTRY_HOLD_FRACTION", default_value_t = 0.5)]
    pub hold_fraction: f64,
    /// Self-preservation applies from this many alive agents on (0: never hold).
    #[arg(long, env = "OCS_REGISTRY_HOLD_MIN_AGENTS", default_value_t = 10)]
    pub hold_min_agents: usize,
    /// Seconds a self-preservation hold lasts at most: then the agents still
    /// silent expire (a host that died for good with most agents on it is
    /// not held alive forever), and no new hold starts for as long again.
    #[arg(long, env = "OCS_REGISTRY_MAX_HOLD", default_value = "60", value_parser = ocs_service::seconds::parse)]
    pub max_hold: Duration,
    /// Heartbeats accepted per second from one address on average (bursts of
    /// twice as many pass); the rest are dropped and counted.
    #[arg(long, env = "OCS_REGISTRY_MAX_HEARTBEAT_RATE", default_value_t = 10.0)]
    pub max_heartbeat_rate: f64,
    /// Run as one of several replicas of this registry: the replica holding a
    /// lease in JetStream KV publishes the feed; the others track every agent
    /// too and take over when it stops renewing.
    #[arg(long, env = "OCS_REGISTRY_HA")]
    pub ha: bool,
    /// Seconds a replica's lease lives without renewal: a dead leader is
    /// replaced within about this long.
    #[arg(long, env = "OCS_REGISTRY_LEASE_TTL", default_value = "2", value_parser = ocs_service::seconds::parse)]
    pub lease_ttl: Duration,
    /// Copies of the stored records and the lease kept by a NATS cluster
    /// (1 on a single server; 3 on a three-node cluster).
    #[arg(long, env = "OCS_REGISTRY_KV_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub kv_replicas: u8,
    /// Address of the HTTP endpoints (/metrics, /healthz).
    #[arg(long, env = "OCS_REGISTRY_LISTEN", default_value = "127.0.0.1:9463")]
    pub listen: SocketAddr,
}

impl ServiceArgs for Config {
    fn identity(&self) -> Result<ServiceIdentity<'_>, String> {
        let listen = Some(self.listen);
        Ok(
            ServiceIdentity::new(&self.common, &self.instance_id, listen)
                .with_subscription_capacity(self.heartbeat_buffer),
        )
    }
}

impl Config {
    /// The table limits from these settings.
    pub fn table(&self) -> TableConfig {
        TableConfig {
            agent_timeout: self.agent_timeout,
            forget_after: self.forget_after,
            max_agents: self.max_agents,
            hold_fraction: self.hold_fraction,
            hold_min_agents: self.hold_min_agents,
            max_hold: self.max_hold,
            max_heartbeat_rate: self.max_heartbeat_rate,
        }
    }
}

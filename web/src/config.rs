//! `ocs-web` settings: command line and environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ocs_protocol::InstanceId;
use ocs_service::{CommonArgs, ServiceArgs, ServiceIdentity};

/// The web board: every agent live in a browser; operators also control operations.
#[derive(Debug, Clone, Parser)]
#[command(name = "ocs-web", version, args_override_self = true)]
pub struct Config {
    /// NATS, address root and logging.
    #[command(flatten)]
    pub common: CommonArgs,
    /// This service's instance id: names its NATS connection.
    #[arg(long, env = "INSTANCE_ID", default_value = "web")]
    pub instance_id: InstanceId,
    /// Address of the board and of /metrics and /healthz.
    #[arg(long, env = "OCS_WEB_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Instance id of the registry whose feed is shown.
    #[arg(long, env = "OCS_REGISTRY", default_value = "registry")]
    pub registry: InstanceId,
    /// The users file: one `name:role:hash` a line (role viewer or
    /// operator; the hash from `ocs-web hash-password`).
    #[arg(long, env = "OCS_WEB_USERS")]
    pub users: PathBuf,
    /// Behind a reverse proxy that authenticates users: the request header
    /// naming the user (who must be in the users file). Only set this when
    /// the board is reachable through that proxy alone.
    #[arg(long, env = "OCS_WEB_TRUSTED_USER_HEADER")]
    pub trusted_user_header: Option<String>,
    /// Send the session cookie over plain HTTP too (without `Secure`), for
    /// a board reached by plain HTTP from other hosts. Browsers treat
    /// 127.0.0.1 and localhost as secure, so a local board needs no such thing.
    #[arg(long, env = "OCS_WEB_INSECURE_COOKIES")]
    pub insecure_cookies: bool,
    /// Seconds a login lasts.
    #[arg(long, env = "OCS_WEB_SESSION_LIFETIME", default_value = "43200", value_parser = ocs_service::seconds::parse)]
    pub session_lifetime: Duration,
    /// Seconds without any feed message after which the board says its
    /// data is stale (about three of the registry's snapshot intervals).
    #[arg(long, env = "OCS_WEB_STALE_AFTER", default_value = "95", value_parser = ocs_service::seconds::parse)]
    pub stale_after: Duration,
    /// Seconds between probes of the registry: how soon the board says the
    /// registry is gone.
    #[arg(long, env = "OCS_WEB_PROBE_INTERVAL", default_value = "2", value_parser = ocs_service::seconds::parse)]
    pub probe_interval: Duration,
    /// Most agents shown; bounds memory.
    #[arg(long, env = "OCS_WEB_MAX_AGENTS", default_value_t = 100_000)]
    pub max_agents: usize,
    /// Most operations shown per agent.
    #[arg(long, env = "OCS_WEB_MAX_OPERATIONS", default_value_t = 256)]
    pub max_operations: usize,
    /// Most browsers following the board at once.
    #[arg(long, env = "OCS_WEB_MAX_VIEWERS", default_value_t = 256)]
    pub max_viewers: usize,
}

impl ServiceArgs for Config {
    fn identity(&self) -> Result<ServiceIdentity<'_>, String> {
        Ok(ServiceIdentity::new(
            &self.common,
            &self.instance_id,
            Some(self.listen),
        ))
    }

    fn check(&self) -> Result<(), String> {
        crate::users::Users::load(&self.users)
            .map(|_| ())
            .map_err(|err| err.to_string())
    }
}

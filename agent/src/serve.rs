//! An agent binary's `main`: the service skeleton with the agent as its body.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;
use ocs_protocol::InstanceId;
use ocs_service::skeleton::{self, ServiceArgs, Started};
use ocs_service::{CommonArgs, ServiceIdentity, endpoints};

use crate::agent::{AgentBuilder, AgentError};

/// The options of every agent binary besides its instance id.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// NATS, address root, logging and the site file.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Address of /metrics and /healthz (none by default: a host runs many
    /// agents, and the registry already watches each one's heartbeat).
    #[arg(long, env = "OCS_AGENT_LISTEN")]
    pub listen: Option<SocketAddr>,
}

impl AgentArgs {
    /// The identity of the agent `instance_id` with these options.
    pub fn identity(&self, instance_id: &InstanceId) -> ServiceIdentity<'_> {
        ServiceIdentity::new(&self.common, instance_id, self.listen)
    }
}

/// Runs the agent that `declare` builds from the command line `A` until
/// SIGINT or SIGTERM, through [`skeleton::run`]. For agent binaries' `main`.
pub fn run_agent<A: ServiceArgs>(declare: impl FnOnce(&A) -> AgentBuilder) -> ExitCode {
    skeleton::run(|args: A, started: Started| async move {
        serve(declare(&args), started, endpoints::connection_router).await
    })
}

/// Serves `builder` as the started service: its endpoints (the router that
/// `router` makes from the client) on the skeleton's listener, if any, and
/// the agent until shutdown.
pub async fn serve(
    builder: AgentBuilder,
    started: Started,
    router: impl FnOnce(async_nats::Client) -> axum::Router,
) -> Result<(), AgentError> {
    let agent = builder.build(started.address)?;
    if let Some(listener) = started.listener {
        let router = router(started.client.clone());
        tokio::spawn(endpoints::serve(listener, router, started.shutdown.clone()));
    }
    agent.run(started.client, started.shutdown).await
}

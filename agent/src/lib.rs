//! Write OCS agents in Rust: tasks and processes with OCS's semantics,
//! heartbeats that never stall, feeds, and a client for calling other agents.
//!
//! ```no_run
//! use ocs_agent::{Agent, NoParams, OpContext, OpResult};
//! use std::time::Duration;
//!
//! async fn acq(ctx: OpContext, _: NoParams) -> OpResult {
//!     while !ctx.sleep_or_stop(Duration::from_secs(1)).await {
//!         ctx.publish("data", &serde_json::json!({"temperature": 4.2})).await?;
//!     }
//!     Ok("Acquisition stopped".into())
//! }
//!
//! # async fn example(client: async_nats::Client, address: ocs_protocol::AgentAddress) -> anyhow::Result<()> {
//! let agent = Agent::builder("ThermometerAgent").feed("data").process("acq", "Read the thermometer", acq).startup("acq", serde_json::json!({})).build(address)?;
//! agent.run(client, tokio_util::sync::CancellationToken::new()).await?;
//! # Ok(()) }
//! ```
//!
//! Key types: [`AgentBuilder`] declares operations ([`AgentBuilder::task`],
//! [`AgentBuilder::process`], [`AgentBuilder::blocking_task`]) with typed
//! [`Params`]; [`Agent::run`] serves them; [`OpContext`] is what an operation
//! sees; [`OcsClient`] calls agents; [`run_agent`] is an agent binary's
//! `main`, through the service skeleton of `ocs_service`.
//!
//! Operations run on a runtime of their own, separate from the one that
//! heartbeats and answers requests: an operation that blocks or spins cannot
//! make its agent look dead.
//!

mod agent;
pub mod client;
mod context;
mod heartbeat;
mod journal;
mod operations;
mod params;
mod serve;
mod session;
mod shared;

pub use agent::{Agent, AgentBuilder, AgentError};
pub use client::{ClientError, OcsClient, RegistryRecords};
pub use context::{OpContext, PublishError, now_unix};
pub use journal::SESSIONS_BUCKET;
pub use operations::{BoxError, OpFuture, OpKind, OpResult, Reply};
pub use params::{NoParams, Params};
pub use serve::{AgentArgs, run_agent, serve};
pub use session::DataSource;
pub use shared::ReplicaGate;

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
//! sees; [`OcsClient`] calls agents. [`process`] holds the plumbing every
//! binary shares (common options, tracing, signals, NATS connection).
//!
//! Operations run on a runtime of their own, separate from the one that
//! heartbeats and answers requests: an operation that blocks or spins cannot
//! make its agent look dead.
//!
//! Environment variables read by every binary built on this crate:
//!
//! | Variable | Purpose | Default |
//! |---|---|---|
//! | `NATS_URL` | NATS server URL(s) | `nats://127.0.0.1:4222` |
//! | `OCS_ADDRESS_ROOT` | first token of addresses | `observatory` |
//! | `INSTANCE_ID` | this agent's instance id | per binary |
//! | `LOG_FORMAT` | `text` or `json` | `text` |
//! | `RUST_LOG` | log filter | `info` |

mod agent;
pub mod client;
mod context;
pub mod endpoints;
pub mod exposition;
mod heartbeat;
mod journal;
pub mod kv_bucket;
mod operations;
mod params;
pub mod process;
pub mod seconds;
mod session;
pub mod site;

pub use agent::{Agent, AgentBuilder, AgentError, ReplicaGate};
pub use client::{ClientError, OcsClient};
pub use context::{OpContext, PublishError};
pub use journal::SESSIONS_BUCKET;
pub use kv_bucket::{BucketSpec, open_kv_bucket, reopen_kv_bucket};
pub use operations::{BoxError, OpFuture, OpKind, OpResult, Reply};
pub use params::{NoParams, Params};
pub use session::DataSource;

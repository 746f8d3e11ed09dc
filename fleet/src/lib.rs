//! The fleet as the registry's `agent_operations` feed shows it, for every
//! service that shows agents to people (the operation monitor's metrics, the
//! web board): the feed carries changes, not every heartbeat, so these
//! services scale with the registry, not with the bus.
//!
//! - [`fleet`]: the sans-I/O [`Fleet`], bounded, with revisions so readers
//!   can ask what changed since they last looked;
//! - [`follow`]: the loop that keeps a shared fleet current (a snapshot at
//!   start and after reconnects, registry probes) and its [`FeedMetrics`].

pub mod fleet;
pub mod follow;

pub use fleet::{
    AgentView, DEPOSED_LEADER_WINDOW, Fleet, FleetChanges, FleetLimits, Operation, Rejection,
};
pub use follow::{FeedMetrics, FollowSettings, RejectReason, SharedFleet, follow, shared_fleet};

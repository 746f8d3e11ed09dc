//! Who the agent is and the state its parts share: the control loop, the
//! heartbeat, the journal writer and every running operation.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use ocs_protocol::AgentAddress;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::operations::OpTable;

/// Whether this replica may speak for a replicated agent's address now
/// (see [`crate::AgentBuilder::replicated`]).
pub type ReplicaGate = Arc<dyn Fn() -> bool + Send + Sync>;

/// Who this agent process is; fixed for the life of the process.
pub(crate) struct Identity {
    pub(crate) address: AgentAddress,
    pub(crate) agent_class: String,
    pub(crate) incarnation: Uuid,
    pub(crate) host: String,
    pub(crate) pid: u32,
    pub(crate) version: String,
    pub(crate) interval: Duration,
    pub(crate) started: Instant,
}

/// State shared by the control loop, the heartbeat and every operation.
/// `L` is what the operation table launches (see `context::Launch`).
pub(crate) struct Shared<L> {
    pub(crate) identity: Identity,
    pub(crate) client: async_nats::Client,
    pub(crate) table: Mutex<OpTable<L>>,
    /// Feed name → (subject, last sequence number).
    pub(crate) feeds: HashMap<String, (String, AtomicU64)>,
    pub(crate) heartbeat_on: AtomicBool,
    /// For a replica: whether it may heartbeat for the address now.
    pub(crate) replica_gate: Option<ReplicaGate>,
    /// Wakes the heartbeat so an op-code change reaches the registry at once.
    pub(crate) op_codes_changed: Notify,
    /// Wakes the journal writer so a session change is stored.
    pub(crate) sessions_changed: Notify,
}

impl<L> Shared<L> {
    /// A session changed status (or degraded): tell the heartbeat and the journal.
    pub(crate) fn changed(&self) {
        self.op_codes_changed.notify_one();
        self.sessions_changed.notify_one();
    }

    pub(crate) fn table(&self) -> MutexGuard<'_, OpTable<L>> {
        // A panic while holding the lock leaves the table consistent (every
        // method completes its change before returning), so the lock does
        // not poison.
        self.table.lock()
    }
}

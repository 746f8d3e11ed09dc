//! The heartbeat: its own task, its own period, never blocked by operations.
//!
//! Operations run on a separate runtime (see `agent.rs`), so a task that
//! blocks or burns CPU cannot delay this loop. A beat is skipped, not queued,
//! while NATS is disconnected: async-nats would otherwise buffer it (and block
//! once its buffer is full) and replay a burst of stale beats on reconnect.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::connection::State;
use ocs_protocol::{codec, proto, subject};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::shared::{Identity, Shared};

/// How often a disconnected agent checks whether it can beat again.
const RECONNECT_POLL: Duration = Duration::from_millis(50);

/// Builds the sequence of heartbeats of one incarnation.
pub(crate) struct HeartbeatSequence {
    seq: u64,
}

impl HeartbeatSequence {
    pub(crate) fn new() -> Self {
        HeartbeatSequence { seq: 0 }
    }

    /// The next heartbeat; `seq` starts at 1 and grows by one per beat.
    pub(crate) fn next(
        &mut self,
        identity: &Identity,
        op_codes: Vec<proto::OperationCode>,
        leaving: bool,
        sent_at_unix_ms: i64,
    ) -> proto::Heartbeat {
        self.seq += 1;
        proto::Heartbeat {
            protocol_version: ocs_protocol::PROTOCOL_VERSION,
            agent_address: identity.address.to_string(),
            agent_class: identity.agent_class.clone(),
            incarnation: identity.incarnation.to_string(),
            seq: self.seq,
            sent_at_unix_ms,
            op_codes,
            host: identity.host.clone(),
            pid: identity.pid,
            agent_version: identity.version.clone(),
            interval_ms: identity.interval.as_millis().try_into().unwrap_or(u32::MAX),
            leaving,
        }
    }
}

/// Beats every interval (and at once when an op code changes) until `stop`,
/// then sends the final "leaving" beat.
pub(crate) async fn run<L>(shared: Arc<Shared<L>>, stop: CancellationToken) {
    let subject = subject::heartbeat(&shared.identity.address);
    let mut sequence = HeartbeatSequence::new();
    let mut ticks = tokio::time::interval(shared.identity.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut skipped_in_a_row = 0u64;
    // The op codes of the last beat sent: only a change of them is worth a
    // beat before its time (a refused stop, a session message or a degraded
    // flag wakes the loop too, and must not flood the registry).
    let mut last_sent: Option<Vec<proto::OperationCode>> = None;
    loop {
        let early = tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => false,
            _ = shared.op_codes_changed.notified() => true,
        };
        if !shared.heartbeat_on.load(Ordering::Relaxed) {
            continue;
        }
        let op_codes = shared.table().op_codes();
        if early && last_sent.as_ref() == Some(&op_codes) {
            continue;
        }
        if send(&shared, &subject, &mut sequence, op_codes.clone(), false).await {
            if skipped_in_a_row > 0 {
                info!(skipped = skipped_in_a_row, "heartbeats resumed");
            }
            skipped_in_a_row = 0;
            last_sent = Some(op_codes);
        } else {
            if skipped_in_a_row == 0 {
                warn!("NATS not connected; skipping heartbeats until it returns");
            }
            skipped_in_a_row += 1;
            // Retry soon, so the first beat after (re)connecting goes out at once.
            ticks.reset_after(RECONNECT_POLL.min(shared.identity.interval));
        }
    }
    let op_codes = shared.table().op_codes();
    if send(&shared, &subject, &mut sequence, op_codes, true).await {
        debug!("sent leaving heartbeat");
    } else {
        warn!("could not send the leaving heartbeat");
    }
}

async fn send<L>(
    shared: &Shared<L>,
    subject: &str,
    sequence: &mut HeartbeatSequence,
    op_codes: Vec<proto::OperationCode>,
    leaving: bool,
) -> bool {
    if shared.client.connection_state() != State::Connected {
        return false;
    }
    // A replica that does not lead stays silent, and so does one that was
    // frozen past its lease: checked at the moment of sending, not cached.
    if shared
        .replica_gate
        .as_ref()
        .is_some_and(|may_speak| !may_speak())
    {
        return true;
    }
    let heartbeat = sequence.next(
        &shared.identity,
        op_codes,
        leaving,
        chrono::Utc::now().timestamp_millis(),
    );
    let publish = shared
        .client
        .publish(subject.to_owned(), codec::encode(&heartbeat).into());
    // The bound keeps a full client buffer from stalling the beat loop.
    let bound = shared.identity.interval.min(Duration::from_secs(1));
    matches!(tokio::time::timeout(bound, publish).await, Ok(Ok(())))
}

//! [`OpContext`]: what a running operation can do to its session and the bus.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ocs_protocol::codec::to_msgpack;
use ocs_protocol::{AgentAddress, SessionStatus, proto};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::operations::OpFuture;
use crate::session::{DataSource, Session, SessionData};
use crate::shared::Shared;

/// Wall-clock time as OCS's float unix seconds; for display and the wire only.
pub fn now_unix() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

/// Why a feed message was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The feed was not declared with `AgentBuilder::feed`.
    #[error("feed {0:?} is not registered")]
    UnknownFeed(String),
    /// The payload could not be encoded as MessagePack.
    #[error(transparent)]
    Encode(#[from] ocs_protocol::CodecError),
    /// NATS is unreachable; the message was dropped rather than queued, so a
    /// long outage cannot block the operation or replay stale data later.
    #[error("not connected to NATS; feed message dropped")]
    Disconnected,
    /// The client refused the publish.
    #[error("publish failed: {0}")]
    Nats(String),
}

/// A started operation, waiting for its context.
pub(crate) type Launch = Box<dyn FnOnce(OpContext) -> OpFuture + Send>;

/// The state an agent's parts share, its table launching operations.
pub(crate) type AgentShared = Shared<Launch>;

/// Handed to every task and process: its session, its stop signal, and the agent's feeds.
#[derive(Clone)]
pub struct OpContext {
    pub(crate) shared: Arc<AgentShared>,
    pub(crate) op_name: Arc<str>,
    pub(crate) session_id: u64,
    pub(crate) stop: CancellationToken,
}

impl OpContext {
    /// The operation's name.
    pub fn op_name(&self) -> &str {
        &self.op_name
    }

    /// The id of this run's session.
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// The agent's address.
    pub fn address(&self) -> &AgentAddress {
        &self.shared.identity.address
    }

    /// This agent process's incarnation id (new at every start).
    pub fn incarnation(&self) -> uuid::Uuid {
        self.shared.identity.incarnation
    }

    /// The NATS client, for operations that talk to other agents.
    pub fn client(&self) -> &async_nats::Client {
        &self.shared.client
    }

    /// True once `stop` (process), `abort` (task) or shutdown was requested.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves when a stop or abort is requested.
    pub async fn stopping(&self) {
        self.stop.cancelled().await
    }

    /// A token cancelled on stop or abort, for blocking code and child tasks.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Sleeps for `duration` unless stopped first; returns true if stopped.
    pub async fn sleep_or_stop(&self, duration: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(duration) => false,
            _ = self.stop.cancelled() => true,
        }
    }

    fn with_session<R>(&self, change: impl FnOnce(&mut Session) -> R) -> Option<R> {
        let mut table = self.shared.table();
        table.with_session(&self.op_name, self.session_id, change)
    }

    /// Appends a message to the session log.
    pub fn log(&self, text: impl Into<String>) {
        let text = text.into();
        self.with_session(|session| session.add_message(now_unix(), text));
    }

    /// Marks the running session degraded (op code 8) or not.
    pub fn set_degraded(&self, degraded: bool) {
        let changed = self
            .with_session(|session| std::mem::replace(&mut session.degraded, degraded) != degraded)
            .unwrap_or(false);
        if changed {
            self.shared.changed();
        }
    }

    /// Replaces the session `data`.
    pub fn set_data(&self, data: Value) {
        self.with_session(|session| session.data = SessionData::Value(data));
    }

    /// Edits the session `data` map in place.
    pub fn update_data(&self, change: impl FnOnce(&mut Map<String, Value>)) {
        self.with_session(|session| {
            if !matches!(&session.data, SessionData::Value(Value::Object(_))) {
                session.data = SessionData::Value(Value::Object(Map::new()));
            }
            if let SessionData::Value(Value::Object(map)) = &mut session.data {
                change(map);
            }
        });
    }

    /// Makes `data` computed on every read; for large state that changes often.
    pub fn set_data_source(&self, source: DataSource) {
        self.with_session(|session| session.data = SessionData::Source(source));
    }

    /// Marks the session running now, for operations that finish their own
    /// setup first. The framework already does this before the operation runs.
    pub(crate) fn mark_running(&self) {
        let changed = self
            .with_session(|session| {
                let before = session.status;
                session.set_status(SessionStatus::Running, now_unix());
                before != session.status
            })
            .unwrap_or(false);
        if changed {
            self.shared.changed();
        }
    }

    /// Turns this agent's heartbeat on or off (a test switch, as OCS's `set_heartbeat`).
    pub fn set_heartbeat(&self, on: bool) {
        self.shared.heartbeat_on.store(on, Ordering::Relaxed);
    }

    /// Publishes `payload` (any serde value, as a MessagePack map) on one of the agent's feeds.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        feed: &str,
        payload: &T,
    ) -> Result<(), PublishError> {
        let (subject, seq) = self
            .shared
            .feeds
            .get(feed)
            .map(|(subject, seq)| (subject.clone(), seq.fetch_add(1, Ordering::Relaxed) + 1))
            .ok_or_else(|| PublishError::UnknownFeed(feed.to_owned()))?;
        let message = proto::FeedMessage {
            protocol_version: ocs_protocol::PROTOCOL_VERSION,
            agent_address: self.shared.identity.address.to_string(),
            feed_name: feed.to_owned(),
            seq,
            sent_at_unix_ms: chrono::Utc::now().timestamp_millis(),
            payload: to_msgpack(payload)?,
        };
        if self.shared.client.connection_state() != async_nats::connection::State::Connected {
            return Err(PublishError::Disconnected);
        }
        self.shared
            .client
            .publish(subject, ocs_protocol::codec::encode(&message).into())
            .await
            .map_err(|err| PublishError::Nats(err.to_string()))
    }
}

//! The session of one run of an operation (OCS `OpSession`).

use std::collections::VecDeque;
use std::sync::Arc;

use ocs_protocol::codec::{CodecError, to_msgpack};
use ocs_protocol::{OpCode, SessionStatus, proto};
use serde_json::Value;

/// Never keep more messages than this per session (OCS `max_messages`).
pub const MAX_MESSAGES: usize = 10_000;
/// Keep at least this many messages, however old (OCS `min_messages`).
pub const MIN_MESSAGES: usize = 5;
/// Messages older than this are dropped while more than [`MIN_MESSAGES`] remain (OCS `min_age_s`).
pub const MESSAGE_MAX_AGE_SECONDS: f64 = 3600.0;

/// Computes session data when it is read, already encoded as MessagePack;
/// lets an operation with a large, fast-changing state (the registry's agent
/// table) publish it without re-rendering on every change, and without
/// building a JSON value of it first.
pub type DataSource = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;

/// Session `data`: a value the operation sets, or a source read on demand.
#[derive(Clone)]
pub(crate) enum SessionData {
    Value(Value),
    Source(DataSource),
}

impl SessionData {
    /// The data as MessagePack.
    fn encoded(&self) -> Result<Vec<u8>, CodecError> {
        match self {
            SessionData::Value(value) => to_msgpack(value),
            SessionData::Source(source) => Ok(source()),
        }
    }
}

/// One run of an operation.
pub(crate) struct Session {
    pub(crate) session_id: u64,
    pub(crate) op_name: String,
    pub(crate) status: SessionStatus,
    pub(crate) degraded: bool,
    pub(crate) success: Option<bool>,
    pub(crate) start_time: f64,
    pub(crate) end_time: Option<f64>,
    pub(crate) data: SessionData,
    pub(crate) messages: VecDeque<(f64, String)>,
}

impl Session {
    /// A new session in `starting`, as OCS creates on an accepted `start`.
    pub(crate) fn new(session_id: u64, op_name: &str, now_unix: f64) -> Self {
        let mut session = Session {
            session_id,
            op_name: op_name.to_owned(),
            status: SessionStatus::Starting,
            degraded: false,
            success: None,
            start_time: now_unix,
            end_time: None,
            data: SessionData::Value(Value::Object(Default::default())),
            messages: VecDeque::new(),
        };
        session.add_message(
            now_unix,
            format!("Status is now \"{}\".", SessionStatus::Starting.as_str()),
        );
        session
    }

    pub(crate) fn op_code(&self) -> OpCode {
        self.status.op_code(self.degraded, self.success)
    }

    pub(crate) fn is_done(&self) -> bool {
        self.status == SessionStatus::Done
    }

    /// Moves the status forward; moving backwards or repeating is a no-op, as in OCS.
    pub(crate) fn set_status(&mut self, status: SessionStatus, now_unix: f64) {
        if status <= self.status {
            return;
        }
        self.status = status;
        if status == SessionStatus::Done {
            self.end_time = Some(now_unix);
        }
        self.add_message(now_unix, format!("Status is now \"{}\".", status.as_str()));
    }

    /// Ends the session with the operation's verdict.
    pub(crate) fn finish(&mut self, success: bool, message: String, now_unix: f64) {
        if self.is_done() {
            return;
        }
        self.add_message(now_unix, message);
        self.success = Some(success);
        self.set_status(SessionStatus::Done, now_unix);
    }

    /// Appends a message, then applies OCS's purge rule so the log stays bounded.
    pub(crate) fn add_message(&mut self, now_unix: f64, text: String) {
        self.messages.push_back((now_unix, text));
        while self.messages.len() > MAX_MESSAGES {
            self.messages.pop_front();
        }
        while self.messages.len() > MIN_MESSAGES
            && self
                .messages
                .front()
                .is_some_and(|(at, _)| now_unix - at > MESSAGE_MAX_AGE_SECONDS)
        {
            self.messages.pop_front();
        }
    }

    /// A session from its wire form (one a previous incarnation stored);
    /// `None` when its status is unknown.
    pub(crate) fn from_proto(session: &proto::Session) -> Option<Session> {
        let data = ocs_protocol::codec::from_msgpack::<Value>(&session.data)
            .unwrap_or_else(|_| Value::Object(Default::default()));
        Some(Session {
            session_id: session.session_id,
            op_name: session.op_name.clone(),
            status: SessionStatus::parse(&session.status)?,
            degraded: session.degraded,
            success: session.success,
            start_time: session.start_time,
            end_time: session.end_time,
            data: SessionData::Value(data),
            messages: session
                .messages
                .iter()
                .map(|message| (message.timestamp, message.text.clone()))
                .collect(),
        })
    }

    /// The wire form. Data that cannot be encoded is replaced by an error note
    /// rather than failing the whole reply.
    pub(crate) fn to_proto(&self) -> proto::Session {
        let data = self.data.encoded().unwrap_or_else(|err| {
            to_msgpack(
                &serde_json::json!({ "error": format!("session data not encodable: {err}") }),
            )
            .unwrap_or_default()
        });
        proto::Session {
            session_id: self.session_id,
            op_name: self.op_name.clone(),
            op_code: self.op_code().value(),
            status: self.status.as_str().to_owned(),
            degraded: self.degraded,
            success: self.success,
            start_time: self.start_time,
            end_time: self.end_time,
            data,
            messages: self
                .messages
                .iter()
                .map(|(timestamp, text)| proto::SessionMessage {
                    timestamp: *timestamp,
                    text: text.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_only_moves_forward_and_logs_transitions() {
        let mut session = Session::new(0, "acq", 10.0);
        session.set_status(SessionStatus::Running, 11.0);
        session.set_status(SessionStatus::Starting, 12.0);
        session.set_status(SessionStatus::Running, 12.0);
        assert_eq!(session.status, SessionStatus::Running);
        assert_eq!(session.messages.len(), 2);
        session.finish(true, "done".into(), 13.0);
        assert_eq!(session.op_code(), OpCode::Succeeded);
        assert_eq!(session.end_time, Some(13.0));
        session.finish(false, "again".into(), 14.0);
        assert_eq!(session.op_code(), OpCode::Succeeded);
    }

    #[test]
    fn messages_are_bounded() {
        let mut session = Session::new(0, "acq", 0.0);
        for i in 0..(MAX_MESSAGES + 10) {
            session.add_message(1.0, format!("{i}"));
        }
        assert_eq!(session.messages.len(), MAX_MESSAGES);
        session.add_message(1.0 + MESSAGE_MAX_AGE_SECONDS + 1.0, "late".into());
        assert_eq!(session.messages.len(), MIN_MESSAGES);
        assert_eq!(session.messages.back().unwrap().1, "late");
    }
}

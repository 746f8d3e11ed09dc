//! The operation table: registered tasks and processes, their sessions, and
//! OCS's exact replies to start/stop/abort/wait/status. No I/O: the async
//! shell in `agent.rs` calls these methods and moves the results.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ocs_protocol::codec::{self, to_msgpack};
use ocs_protocol::{Action, OpCode, ResponseCode, SessionStatus, proto};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::session::Session;

/// An error an operation returns; its text becomes the session's last message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What an operation function returns: `Ok(message)` ends the session with
/// success, `Err(error)` without.
pub type OpResult = Result<String, BoxError>;

/// The future of a running operation.
pub type OpFuture = Pin<Box<dyn Future<Output = OpResult> + Send>>;

/// Decodes params into what a `start` hands back to be launched (`L`: in the
/// agent, the operation waiting for its context), or returns the param
/// error text. The table never runs it, so it is tested without NATS.
pub(crate) type Prepare<L> = Arc<dyn Fn(&[u8]) -> Result<L, String> + Send + Sync>;

/// Task or process, with OCS's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Ends on its own in finite time; can be aborted.
    Task,
    /// Runs until stopped.
    Process,
}

impl OpKind {
    /// `"task"` or `"process"`.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Task => "task",
            OpKind::Process => "process",
        }
    }

    /// The action that ends an operation of this kind early.
    fn stop_action(self) -> Action {
        match self {
            OpKind::Task => Action::Abort,
            OpKind::Process => Action::Stop,
        }
    }
}

/// A registered operation.
pub(crate) struct OpSpec<L> {
    pub(crate) name: String,
    pub(crate) kind: OpKind,
    pub(crate) docstring: String,
    pub(crate) blocking: bool,
    pub(crate) params: Vec<(&'static str, &'static str)>,
    pub(crate) prepare: Prepare<L>,
}

struct Slot<L> {
    spec: OpSpec<L>,
    session: Option<Session>,
    stop: CancellationToken,
    /// Bumped whenever a session of this operation ends, so `wait` can sleep on it.
    finished: watch::Sender<u64>,
}

/// `(status, message, session)`, OCS's reply triple.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Whether the call reached the operation.
    pub status: ResponseCode,
    /// Human-readable text, OCS's wording.
    pub message: String,
    /// The session, where OCS returns one.
    pub session: Option<proto::Session>,
}

impl Reply {
    fn new(
        status: ResponseCode,
        message: impl Into<String>,
        session: Option<proto::Session>,
    ) -> Self {
        Reply {
            status,
            message: message.into(),
            session,
        }
    }

    fn error(message: impl Into<String>) -> Self {
        Reply::new(ResponseCode::Error, message, None)
    }

    /// The wire form.
    pub fn to_proto(&self) -> proto::OperationReply {
        proto::OperationReply {
            protocol_version: ocs_protocol::PROTOCOL_VERSION,
            status: self.status.value(),
            message: self.message.clone(),
            session: self.session.clone(),
        }
    }

    /// The reply encoded in at most `limit` bytes (the server's
    /// `max_payload`): one that does not fit becomes an ERROR that says so,
    /// its session without `data` (or without messages too), so the caller
    /// learns at once instead of waiting out its timeout for a message the
    /// server refused.
    pub fn encode_within(&self, limit: usize) -> Vec<u8> {
        let payload = codec::encode(&self.to_proto());
        if payload.len() <= limit {
            return payload;
        }
        let mut reply = self.to_proto();
        reply.status = ResponseCode::Error.value();
        reply.message = format!(
            "reply of {} bytes exceeds the NATS server's max_payload of {limit} bytes; the session's data was left out (the reply was: {})",
            payload.len(),
            self.message
        );
        if let Some(session) = reply.session.as_mut() {
            session.data = to_msgpack(&serde_json::json!({})).unwrap_or_default();
        }
        let trimmed = codec::encode(&reply);
        if trimmed.len() <= limit {
            return trimmed;
        }
        reply.session = None;
        codec::encode(&reply)
    }
}

/// A `start` the table accepted: the reply, and what the shell must spawn.
pub(crate) struct Started<L> {
    pub(crate) reply: Reply,
    pub(crate) launch: L,
    pub(crate) session_id: u64,
    pub(crate) stop: CancellationToken,
}

/// Where a `wait` stands.
pub(crate) enum WaitState {
    /// Answer now.
    Reply(Reply),
    /// Still running: sleep on the receiver, then ask again.
    Running(watch::Receiver<u64>),
}

/// All operations of one agent and their sessions.
pub(crate) struct OpTable<L> {
    slots: Vec<Slot<L>>,
    index: HashMap<String, usize>,
    next_session_id: u64,
}

impl<L> Default for OpTable<L> {
    fn default() -> Self {
        OpTable {
            slots: Vec::new(),
            index: HashMap::new(),
            next_session_id: 0,
        }
    }
}

impl<L> OpTable<L> {
    /// Registers an operation; names are unique.
    pub(crate) fn register(&mut self, spec: OpSpec<L>) -> Result<(), String> {
        if self.index.contains_key(&spec.name) {
            return Err(format!("operation {:?} registered twice", spec.name));
        }
        self.index.insert(spec.name.clone(), self.slots.len());
        self.slots.push(Slot {
            spec,
            session: None,
            stop: CancellationToken::new(),
            finished: watch::channel(0).0,
        });
        Ok(())
    }

    fn slot(&self, op_name: &str) -> Option<&Slot<L>> {
        self.index.get(op_name).map(|&i| &self.slots[i])
    }

    fn slot_mut(&mut self, op_name: &str) -> Option<&mut Slot<L>> {
        self.index.get(op_name).map(|&i| &mut self.slots[i])
    }

    /// OCS `start`, checks in OCS's order.
    // The refusal is the reply itself and goes straight onto the wire; boxing it buys nothing.
    #[allow(clippy::result_large_err)]
    pub(crate) fn start(
        &mut self,
        op_name: &str,
        params: &[u8],
        now_unix: f64,
    ) -> Result<Started<L>, Reply> {
        let Some(slot) = self.slot(op_name) else {
            return Err(Reply::error(format!(
                "No task or process called \"{op_name}\""
            )));
        };
        if let Some(session) = slot.session.as_ref().filter(|session| !session.is_done()) {
            return Err(Reply::new(
                ResponseCode::Error,
                format!("Operation \"{op_name}\" already in progress."),
                Some(session.to_proto()),
            ));
        }
        let launch = (slot.spec.prepare)(params).map_err(Reply::error)?;
        let session_id = self.next_session_id;
        self.next_session_id += 1;
        let slot = self.slot_mut(op_name).expect("looked up above");
        let session = Session::new(session_id, op_name, now_unix);
        let reply = Reply::new(
            ResponseCode::Ok,
            format!("Started {} \"{op_name}\".", slot.spec.kind.as_str()),
            Some(session.to_proto()),
        );
        slot.session = Some(session);
        slot.stop = CancellationToken::new();
        Ok(Started {
            reply,
            launch,
            session_id,
            stop: slot.stop.clone(),
        })
    }

    /// OCS `stop` (processes) and `abort` (tasks). Unlike OCS, the framework
    /// itself moves the session to `stopping` before signalling the operation.
    pub(crate) fn request_stop(&mut self, op_name: &str, action: Action, now_unix: f64) -> Reply {
        let Some(slot) = self.slot_mut(op_name) else {
            return Reply::error(format!("No operation called \"{op_name}\"."));
        };
        let kind = slot.spec.kind;
        if kind.stop_action() != action {
            return Reply::error(format!(
                "Cannot \"{action}\" \"{op_name}\" because it is a \"{}\".",
                kind.as_str()
            ));
        }
        let Some(session) = slot.session.as_mut() else {
            return Reply::error("No session active.");
        };
        match session.status {
            SessionStatus::Stopping => return Reply::error("The operation is already stopping"),
            SessionStatus::Done => return Reply::error("The operation is already done"),
            SessionStatus::Starting | SessionStatus::Running => {}
        }
        session.set_status(SessionStatus::Stopping, now_unix);
        slot.stop.cancel();
        let verb = if action == Action::Stop {
            "stop"
        } else {
            "abort"
        };
        Reply::new(
            ResponseCode::Ok,
            format!("Requested {verb} on {} \"{op_name}\".", kind.as_str()),
            Some(session.to_proto()),
        )
    }

    /// OCS `status`.
    pub(crate) fn status(&self, op_name: &str) -> Reply {
        match self.slot(op_name) {
            None => Reply::error(format!("No task or process called \"{op_name}\"")),
            Some(Slot { session: None, .. }) => {
                Reply::new(ResponseCode::Ok, "No session active.", None)
            }
            Some(Slot {
                session: Some(session),
                ..
            }) => Reply::new(
                ResponseCode::Ok,
                "Session active.",
                Some(session.to_proto()),
            ),
        }
    }

    /// OCS `wait`, one check; `expired` is true once the caller's timeout has passed.
    pub(crate) fn wait_state(&self, op_name: &str, expired: bool) -> WaitState {
        let Some(slot) = self.slot(op_name) else {
            return WaitState::Reply(Reply::error(format!("Unknown operation \"{op_name}\".")));
        };
        let Some(session) = &slot.session else {
            return WaitState::Reply(Reply::new(ResponseCode::Ok, "Idle.", None));
        };
        if session.is_done() {
            return WaitState::Reply(Reply::new(
                ResponseCode::Ok,
                format!(
                    "Operation \"{op_name}\" is currently not running ({}).",
                    session.op_code().name()
                ),
                Some(session.to_proto()),
            ));
        }
        if expired {
            return WaitState::Reply(Reply::new(
                ResponseCode::Timeout,
                format!("Operation \"{op_name}\" still running; wait timed out."),
                Some(session.to_proto()),
            ));
        }
        WaitState::Running(slot.finished.subscribe())
    }

    /// Runs `change` on the session `session_id` of `op_name`, if it is still the current one.
    pub(crate) fn with_session<R>(
        &mut self,
        op_name: &str,
        session_id: u64,
        change: impl FnOnce(&mut Session) -> R,
    ) -> Option<R> {
        self.slot_mut(op_name)?
            .session
            .as_mut()
            .filter(|session| session.session_id == session_id)
            .map(change)
    }

    /// Ends a session with the operation's verdict and wakes waiters.
    pub(crate) fn finish(
        &mut self,
        op_name: &str,
        session_id: u64,
        success: bool,
        message: String,
        now_unix: f64,
    ) {
        let ended = self
            .with_session(op_name, session_id, |session| {
                session.finish(success, message, now_unix)
            })
            .is_some();
        if ended && let Some(slot) = self.slot(op_name) {
            slot.finished.send_modify(|count| *count += 1);
        }
    }

    /// `(name, op code)` of every operation in registration order; never-run ones are NONE.
    pub(crate) fn op_codes(&self) -> Vec<proto::OperationCode> {
        self.slots
            .iter()
            .map(|slot| proto::OperationCode {
                op_name: slot.spec.name.clone(),
                op_code: slot
                    .session
                    .as_ref()
                    .map_or(OpCode::None, Session::op_code)
                    .value(),
                op_type: slot.spec.kind.as_str().to_owned(),
            })
            .collect()
    }

    /// Every operation's name, in registration order.
    pub(crate) fn op_names(&self) -> Vec<String> {
        self.slots
            .iter()
            .map(|slot| slot.spec.name.clone())
            .collect()
    }

    /// The current session of every operation that has one, in wire form.
    pub(crate) fn sessions(&self) -> Vec<proto::Session> {
        self.slots
            .iter()
            .filter_map(|slot| slot.session.as_ref().map(Session::to_proto))
            .collect()
    }

    /// Shows `session`, a finished run of a previous incarnation, as the
    /// operation's last session; later sessions get higher ids. Only before
    /// this incarnation ran the operation.
    pub(crate) fn restore(&mut self, session: &proto::Session) -> bool {
        let Some(restored) = Session::from_proto(session).filter(Session::is_done) else {
            return false;
        };
        let Some(slot) = self.slot_mut(&session.op_name) else {
            return false;
        };
        if slot.session.is_some() {
            return false;
        }
        slot.session = Some(restored);
        self.next_session_id = self.next_session_id.max(session.session_id + 1);
        true
    }

    /// Asks every running operation to end (shutdown); returns how many were asked.
    pub(crate) fn stop_all(&mut self, now_unix: f64) -> usize {
        let running: Vec<(String, Action)> = self
            .slots
            .iter()
            .filter(|slot| {
                slot.session
                    .as_ref()
                    .is_some_and(|session| !session.is_done())
            })
            .map(|slot| (slot.spec.name.clone(), slot.spec.kind.stop_action()))
            .collect();
        for (op_name, action) in &running {
            self.request_stop(op_name, *action, now_unix);
        }
        running.len()
    }

    /// Whether any session is not yet done.
    pub(crate) fn any_running(&self) -> bool {
        self.slots.iter().any(|slot| {
            slot.session
                .as_ref()
                .is_some_and(|session| !session.is_done())
        })
    }

    /// The `ocs api` description of every operation.
    pub(crate) fn describe(&self) -> Vec<proto::OperationInfo> {
        self.slots
            .iter()
            .map(|slot| proto::OperationInfo {
                op_name: slot.spec.name.clone(),
                op_type: slot.spec.kind.as_str().to_owned(),
                docstring: slot.spec.docstring.clone(),
                blocking: slot.spec.blocking,
                abortable: slot.spec.kind == OpKind::Task,
                session: slot.session.as_ref().map(Session::to_proto),
                params: slot
                    .spec
                    .params
                    .iter()
                    .map(|(name, description)| proto::ParamInfo {
                        name: (*name).to_owned(),
                        description: (*description).to_owned(),
                    })
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_over_the_server_limit_becomes_an_error_that_says_so() {
        let session = proto::Session {
            op_name: "main".into(),
            status: "running".into(),
            data: to_msgpack(&serde_json::json!({"table": "x".repeat(100_000)})).unwrap(),
            ..Default::default()
        };
        let reply = Reply::new(ResponseCode::Ok, "Session active.", Some(session));
        let fits = reply.encode_within(1 << 20);
        assert_eq!(
            codec::decode::<proto::OperationReply>(&fits, 1 << 20).unwrap(),
            reply.to_proto()
        );

        let trimmed = reply.encode_within(4096);
        assert!(trimmed.len() <= 4096);
        let trimmed: proto::OperationReply = codec::decode(&trimmed, 4096).unwrap();
        assert_eq!(trimmed.status, ResponseCode::Error.value());
        assert!(
            trimmed
                .message
                .contains("exceeds the NATS server's max_payload of 4096 bytes")
                && trimmed
                    .message
                    .ends_with("(the reply was: Session active.)"),
            "{}",
            trimmed.message
        );
        let session = trimmed.session.unwrap();
        assert_eq!(
            session.status, "running",
            "the session is kept, without its data"
        );
        assert_eq!(
            ocs_protocol::codec::from_msgpack::<serde_json::Value>(&session.data).unwrap(),
            serde_json::json!({})
        );
    }

    /// What the tests' operations launch: nothing runs in these tests.
    type Launch = &'static str;

    fn spec(name: &str, kind: OpKind) -> OpSpec<Launch> {
        OpSpec {
            name: name.into(),
            kind,
            docstring: String::new(),
            blocking: false,
            params: Vec::new(),
            prepare: Arc::new(|params: &[u8]| {
                if params == b"bad" {
                    return Err("Param error: bad".to_owned());
                }
                Ok("launch")
            }),
        }
    }

    fn table() -> OpTable<Launch> {
        let mut table = OpTable::default();
        table.register(spec("count", OpKind::Task)).unwrap();
        table.register(spec("acq", OpKind::Process)).unwrap();
        table
    }

    fn check(reply: &Reply, status: ResponseCode, message: &str, has_session: bool) {
        assert_eq!(reply.status, status, "{reply:?}");
        assert_eq!(reply.message, message);
        assert_eq!(reply.session.is_some(), has_session, "{reply:?}");
    }

    #[test]
    fn start_replies() {
        let mut table = table();
        check(
            &table.start("nope", b"", 0.0).err().unwrap(),
            ResponseCode::Error,
            "No task or process called \"nope\"",
            false,
        );
        check(
            &table.start("count", b"bad", 0.0).err().unwrap(),
            ResponseCode::Error,
            "Param error: bad",
            false,
        );
        let started = table.start("count", b"", 0.0).ok().unwrap();
        check(
            &started.reply,
            ResponseCode::Ok,
            "Started task \"count\".",
            true,
        );
        assert_eq!(started.session_id, 0);
        check(
            &table.start("count", b"", 0.0).err().unwrap(),
            ResponseCode::Error,
            "Operation \"count\" already in progress.",
            true,
        );
        let started = table.start("acq", b"", 0.0).ok().unwrap();
        check(
            &started.reply,
            ResponseCode::Ok,
            "Started process \"acq\".",
            true,
        );
        assert_eq!(started.session_id, 1, "session ids are agent-wide");
        table.finish("count", 0, true, "ok".into(), 1.0);
        let restarted = table.start("count", b"", 2.0).ok().unwrap();
        assert_eq!(restarted.session_id, 2);
    }

    #[test]
    fn stop_and_abort_replies() {
        let mut table = table();
        check(
            &table.request_stop("nope", Action::Stop, 0.0),
            ResponseCode::Error,
            "No operation called \"nope\".",
            false,
        );
        check(
            &table.request_stop("count", Action::Stop, 0.0),
            ResponseCode::Error,
            "Cannot \"stop\" \"count\" because it is a \"task\".",
            false,
        );
        check(
            &table.request_stop("acq", Action::Abort, 0.0),
            ResponseCode::Error,
            "Cannot \"abort\" \"acq\" because it is a \"process\".",
            false,
        );
        check(
            &table.request_stop("acq", Action::Stop, 0.0),
            ResponseCode::Error,
            "No session active.",
            false,
        );
        let started = table.start("acq", b"", 0.0).ok().unwrap();
        let reply = table.request_stop("acq", Action::Stop, 1.0);
        check(
            &reply,
            ResponseCode::Ok,
            "Requested stop on process \"acq\".",
            true,
        );
        assert_eq!(reply.session.unwrap().status, "stopping");
        assert!(started.stop.is_cancelled());
        check(
            &table.request_stop("acq", Action::Stop, 1.0),
            ResponseCode::Error,
            "The operation is already stopping",
            false,
        );
        table.finish("acq", started.session_id, true, "stopped".into(), 2.0);
        check(
            &table.request_stop("acq", Action::Stop, 1.0),
            ResponseCode::Error,
            "The operation is already done",
            false,
        );
        table.start("count", b"", 0.0).ok().unwrap();
        check(
            &table.request_stop("count", Action::Abort, 0.0),
            ResponseCode::Ok,
            "Requested abort on task \"count\".",
            true,
        );
    }

    #[test]
    fn status_and_wait_replies() {
        let mut table = table();
        check(
            &table.status("nope"),
            ResponseCode::Error,
            "No task or process called \"nope\"",
            false,
        );
        check(
            &table.status("count"),
            ResponseCode::Ok,
            "No session active.",
            false,
        );
        let reply = |state: WaitState| match state {
            WaitState::Reply(reply) => reply,
            WaitState::Running(_) => panic!("expected a reply"),
        };
        check(
            &reply(table.wait_state("nope", false)),
            ResponseCode::Error,
            "Unknown operation \"nope\".",
            false,
        );
        check(
            &reply(table.wait_state("count", false)),
            ResponseCode::Ok,
            "Idle.",
            false,
        );
        let started = table.start("count", b"", 0.0).ok().unwrap();
        let WaitState::Running(mut finished) = table.wait_state("count", false) else {
            panic!("expected running");
        };
        check(
            &reply(table.wait_state("count", true)),
            ResponseCode::Timeout,
            "Operation \"count\" still running; wait timed out.",
            true,
        );
        table.finish("count", started.session_id, false, "boom".into(), 1.0);
        assert!(finished.has_changed().unwrap());
        finished.mark_unchanged();
        check(
            &reply(table.wait_state("count", true)),
            ResponseCode::Ok,
            "Operation \"count\" is currently not running (FAILED).",
            true,
        );
        check(
            &table.status("count"),
            ResponseCode::Ok,
            "Session active.",
            true,
        );
        let codes = table.op_codes();
        assert_eq!((codes[0].op_name.as_str(), codes[0].op_code), ("count", 6));
        assert_eq!((codes[1].op_name.as_str(), codes[1].op_code), ("acq", 1));
    }

    #[test]
    fn a_finish_for_an_old_session_changes_nothing() {
        let mut table = table();
        let first = table.start("count", b"", 0.0).ok().unwrap();
        table.finish("count", first.session_id, true, "ok".into(), 1.0);
        let second = table.start("count", b"", 2.0).ok().unwrap();
        table.finish("count", first.session_id, false, "late".into(), 3.0);
        assert_eq!(table.op_codes()[0].op_code, OpCode::Starting.value());
        assert_ne!(first.session_id, second.session_id);
    }
}

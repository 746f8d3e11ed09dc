//! OCS's enumerations: [`OpCode`], [`ResponseCode`], [`SessionStatus`] and the operation [`Action`]s.

use std::fmt;

use crate::proto;

/// The state of an operation, with OCS's numeric values (`ocs/base.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(i32)]
pub enum OpCode {
    /// Never run since the agent started.
    None = 1,
    /// Accepted, not yet running.
    Starting = 2,
    /// Running.
    Running = 3,
    /// A stop or abort was requested.
    Stopping = 4,
    /// Finished with success.
    Succeeded = 5,
    /// Finished without success, crashed or had bad params.
    Failed = 6,
    /// Set by the registry when the agent stops heartbeating.
    Expired = 7,
    /// Running, but the operation reports itself degraded.
    Degraded = 8,
}

impl OpCode {
    /// All codes, in numeric order.
    pub const ALL: [OpCode; 8] = [
        OpCode::None,
        OpCode::Starting,
        OpCode::Running,
        OpCode::Stopping,
        OpCode::Succeeded,
        OpCode::Failed,
        OpCode::Expired,
        OpCode::Degraded,
    ];

    /// The OCS name, upper case (`RUNNING`).
    pub fn name(self) -> &'static str {
        match self {
            OpCode::None => "NONE",
            OpCode::Starting => "STARTING",
            OpCode::Running => "RUNNING",
            OpCode::Stopping => "STOPPING",
            OpCode::Succeeded => "SUCCEEDED",
            OpCode::Failed => "FAILED",
            OpCode::Expired => "EXPIRED",
            OpCode::Degraded => "DEGRADED",
        }
    }

    /// The numeric value.
    pub fn value(self) -> i32 {
        self as i32
    }

    /// The code for a numeric value, if it is one of 1–8.
    pub fn from_value(value: i32) -> Option<OpCode> {
        OpCode::ALL.into_iter().find(|code| code.value() == value)
    }
}

impl fmt::Display for OpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<OpCode> for proto::OpCode {
    fn from(code: OpCode) -> Self {
        // The proto enum mirrors OCS's values one to one.
        proto::OpCode::try_from(code.value()).unwrap_or(proto::OpCode::Unspecified)
    }
}

/// The status of an API call, OCS's `ResponseCode`: whether the call reached
/// the operation, not whether the operation succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ResponseCode {
    /// The call was carried out.
    Ok = 0,
    /// The call was refused.
    Error = -1,
    /// A `wait` ended before the operation did.
    Timeout = 1,
}

impl ResponseCode {
    /// The numeric value.
    pub fn value(self) -> i32 {
        self as i32
    }

    /// The code for a numeric value.
    pub fn from_value(value: i32) -> Option<ResponseCode> {
        match value {
            0 => Some(ResponseCode::Ok),
            -1 => Some(ResponseCode::Error),
            1 => Some(ResponseCode::Timeout),
            _ => None,
        }
    }

    /// `OK`, `ERROR` or `TIMEOUT`.
    pub fn name(self) -> &'static str {
        match self {
            ResponseCode::Ok => "OK",
            ResponseCode::Error => "ERROR",
            ResponseCode::Timeout => "TIMEOUT",
        }
    }
}

/// OCS session status; transitions only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SessionStatus {
    /// Accepted, not yet running.
    Starting,
    /// The operation function is running.
    Running,
    /// A stop or abort was requested.
    Stopping,
    /// Finished.
    Done,
}

impl SessionStatus {
    /// The OCS text (`"running"`).
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Starting => "starting",
            SessionStatus::Running => "running",
            SessionStatus::Stopping => "stopping",
            SessionStatus::Done => "done",
        }
    }

    /// Parses the OCS text.
    pub fn parse(text: &str) -> Option<SessionStatus> {
        match text {
            "starting" => Some(SessionStatus::Starting),
            "running" => Some(SessionStatus::Running),
            "stopping" => Some(SessionStatus::Stopping),
            "done" => Some(SessionStatus::Done),
            _ => None,
        }
    }

    /// OCS's derivation of the op code (`ocs-semantics.md` §3.1).
    pub fn op_code(self, degraded: bool, success: Option<bool>) -> OpCode {
        match self {
            SessionStatus::Starting => OpCode::Starting,
            SessionStatus::Running if degraded => OpCode::Degraded,
            SessionStatus::Running => OpCode::Running,
            SessionStatus::Stopping => OpCode::Stopping,
            SessionStatus::Done if success == Some(true) => OpCode::Succeeded,
            SessionStatus::Done => OpCode::Failed,
        }
    }
}

/// What a client asks of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Start a task or process.
    Start,
    /// Stop a process.
    Stop,
    /// Abort a task.
    Abort,
    /// Wait for the operation to end, with an optional timeout.
    Wait,
    /// Return the current or last session.
    Status,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 5] = [
        Action::Start,
        Action::Stop,
        Action::Abort,
        Action::Wait,
        Action::Status,
    ];

    /// The subject token (`start`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Abort => "abort",
            Action::Wait => "wait",
            Action::Status => "status",
        }
    }

    /// Parses a subject token.
    pub fn parse(text: &str) -> Option<Action> {
        Action::ALL
            .into_iter()
            .find(|action| action.as_str() == text)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_ocs_values() {
        let expected = [1, 2, 3, 4, 5, 6, 7, 8];
        for (code, value) in OpCode::ALL.into_iter().zip(expected) {
            assert_eq!(code.value(), value);
            assert_eq!(OpCode::from_value(value), Some(code));
            assert_eq!(proto::OpCode::from(code) as i32, value);
        }
        assert_eq!(OpCode::from_value(0), None);
        assert_eq!(OpCode::from_value(9), None);
        assert_eq!(ResponseCode::Ok.value(), 0);
        assert_eq!(ResponseCode::Error.value(), -1);
        assert_eq!(ResponseCode::Timeout.value(), 1);
    }

    #[test]
    fn op_code_derivation_follows_ocs() {
        use SessionStatus::*;
        let cases = [
            (Starting, false, None, OpCode::Starting),
            (Running, false, None, OpCode::Running),
            (Running, true, None, OpCode::Degraded),
            (Stopping, true, None, OpCode::Stopping),
            (Done, false, Some(true), OpCode::Succeeded),
            (Done, false, Some(false), OpCode::Failed),
            (Done, false, None, OpCode::Failed),
        ];
        for (status, degraded, success, expected) in cases {
            assert_eq!(status.op_code(degraded, success), expected);
        }
    }

    #[test]
    fn actions_round_trip() {
        for action in Action::ALL {
            assert_eq!(Action::parse(action.as_str()), Some(action));
        }
        assert_eq!(Action::parse("launch"), None);
    }
}

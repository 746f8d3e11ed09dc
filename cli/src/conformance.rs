//! The protocol's rules (`protocol/PROTOCOL.md`) held against what a live
//! agent did: pure checks of the heartbeats, replies and sessions that
//! `ocs conformance` gathered, and their report.
//!
//! Only calls that change nothing are made: unknown operations, refused
//! actions, `status`, `api` and `ping`. Starting an operation could move
//! hardware, so the start path is left to the agent's own tests.

use std::time::Duration;

use ocs_protocol::heartbeat::{self, HeartbeatRef};
use ocs_protocol::{AgentAddress, OpCode, SessionStatus, codec, proto};
use serde_json::json;

/// One rule and whether the agent kept it.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// What the rule says, short.
    pub rule: String,
    /// Whether the agent kept it.
    pub passed: bool,
    /// What was seen.
    pub detail: String,
}

impl Check {
    /// A rule checked: `passed` with what was seen.
    pub fn new(rule: impl Into<String>, passed: bool, detail: impl Into<String>) -> Self {
        Check {
            rule: rule.into(),
            passed,
            detail: detail.into(),
        }
    }
}

/// A heartbeat as it arrived, `at` after listening began.
#[derive(Debug, Clone)]
pub struct Beat {
    /// When it arrived, since listening began.
    pub at: Duration,
    /// What it said (decoded, not yet validated).
    pub heartbeat: proto::Heartbeat,
}

/// The heartbeat rules over the beats heard from `address` while listening.
pub fn heartbeats(address: &AgentAddress, beats: &[Beat]) -> Vec<Check> {
    let mut checks = vec![Check::new(
        "heartbeat: beats arrive",
        beats.len() >= 2,
        format!("{} heard", beats.len()),
    )];
    if beats.is_empty() {
        return checks;
    }
    let invalid: Vec<String> = beats
        .iter()
        .filter_map(|beat| heartbeat::validate(&HeartbeatRef::of(&beat.heartbeat)).err())
        .map(|err| err.to_string())
        .collect();
    checks.push(Check::new(
        "heartbeat: required fields, op codes 1-8 but not 7, op_type, unique names, interval 100-60000 ms",
        invalid.is_empty(),
        invalid.first().cloned().unwrap_or_else(|| "all valid".into()),
    ));
    let foreign = beats
        .iter()
        .find(|beat| beat.heartbeat.agent_address != address.as_str());
    checks.push(Check::new(
        "heartbeat: agent_address is the subject's",
        foreign.is_none(),
        foreign.map_or_else(
            || address.to_string(),
            |beat| beat.heartbeat.agent_address.clone(),
        ),
    ));
    let first = &beats[0].heartbeat;
    let one_incarnation = beats
        .iter()
        .all(|beat| beat.heartbeat.incarnation == first.incarnation);
    let gaps = beats
        .windows(2)
        .find(|pair| pair[1].heartbeat.seq != pair[0].heartbeat.seq + 1);
    checks.push(Check::new(
        "heartbeat: one incarnation, seq +1 per beat",
        one_incarnation && gaps.is_none(),
        match (one_incarnation, gaps) {
            (false, _) => "the incarnation changed while listening".to_owned(),
            (true, Some(pair)) => format!(
                "seq {} followed by {}",
                pair[0].heartbeat.seq, pair[1].heartbeat.seq
            ),
            (true, None) => format!(
                "seq {}..={}",
                first.seq,
                beats[beats.len() - 1].heartbeat.seq
            ),
        },
    ));
    if beats.len() >= 3 {
        let mut intervals: Vec<Duration> = beats
            .windows(2)
            .map(|pair| pair[1].at.saturating_sub(pair[0].at))
            .collect();
        intervals.sort();
        let median = intervals[intervals.len() / 2];
        let stated = Duration::from_millis(u64::from(first.interval_ms));
        checks.push(Check::new(
            "heartbeat: one beat per interval_ms (median within 50 %)",
            median.as_secs_f64() >= stated.as_secs_f64() * 0.5
                && median.as_secs_f64() <= stated.as_secs_f64() * 1.5,
            format!(
                "median {:.0} ms, interval_ms {}",
                median.as_secs_f64() * 1000.0,
                first.interval_ms
            ),
        ));
    }
    checks.push(Check::new(
        "heartbeat: not leaving while it runs",
        beats.iter().all(|beat| !beat.heartbeat.leaving),
        "",
    ));
    checks
}

/// The `api` reply against the agent's heartbeat.
pub fn api(api: &proto::ApiReply, heartbeat: &proto::Heartbeat) -> Vec<Check> {
    let mut checks = vec![Check::new(
        "api: the heartbeat's address, class and incarnation",
        api.agent_address == heartbeat.agent_address
            && api.agent_class == heartbeat.agent_class
            && api.incarnation == heartbeat.incarnation,
        format!(
            "{} {} {}",
            api.agent_address, api.agent_class, api.incarnation
        ),
    )];
    let listed: Vec<(&str, &str)> = api
        .operations
        .iter()
        .map(|op| (op.op_name.as_str(), op.op_type.as_str()))
        .collect();
    let beaten: Vec<(&str, &str)> = heartbeat
        .op_codes
        .iter()
        .map(|op| (op.op_name.as_str(), op.op_type.as_str()))
        .collect();
    checks.push(Check::new(
        "api: the heartbeat's operations, in order, of the same op_type",
        listed == beaten,
        format!("api {listed:?}, heartbeat {beaten:?}"),
    ));
    for op in &api.operations {
        if let Some(session) = &op.session {
            checks.push(session_shape(
                &format!("api: {}", op.op_name),
                &op.op_name,
                session,
            ));
        }
    }
    checks
}

/// The `ping` reply against the agent's heartbeat.
pub fn ping(ping: &proto::PingReply, heartbeat: &proto::Heartbeat) -> Check {
    Check::new(
        "ping: the heartbeat's address and incarnation",
        ping.agent_address == heartbeat.agent_address && ping.incarnation == heartbeat.incarnation,
        format!("{} {}", ping.agent_address, ping.incarnation),
    )
}

/// A request's answer, which must satisfy `holds`; no answer (`Err`) fails.
pub fn answered(
    rule: String,
    answer: Result<proto::OperationReply, String>,
    holds: impl FnOnce(&proto::OperationReply) -> bool,
) -> Check {
    match answer {
        Ok(reply) => Check::new(
            rule,
            holds(&reply),
            format!("{} {:?}", reply.status, reply.message),
        ),
        Err(err) => Check::new(rule, false, err),
    }
}

/// `check`, failed also when the reply's session is missing or malformed.
pub fn with_session(
    check: Check,
    op: &str,
    answer: Result<proto::OperationReply, String>,
) -> Check {
    if !check.passed {
        return check;
    }
    match answer.ok().and_then(|reply| reply.session) {
        Some(session) => {
            let shape = session_shape(&check.rule, op, &session);
            Check::new(
                check.rule,
                shape.passed,
                format!("{}; session {}", check.detail, shape.detail),
            )
        }
        None => Check::new(check.rule, false, "no session in the reply"),
    }
}

/// A `status` reply: OK, with a well-formed session or "No session active.".
pub fn status(op_name: &str, reply: &proto::OperationReply) -> Check {
    let rule = format!("status {op_name}: OK, and a well-formed session if any");
    match &reply.session {
        Some(session) if reply.status == 0 && reply.message == "Session active." => {
            session_shape(&rule, op_name, session)
        }
        None if reply.status == 0 && reply.message == "No session active." => {
            Check::new(rule, true, "no session")
        }
        _ => Check::new(rule, false, format!("{} {:?}", reply.status, reply.message)),
    }
}

/// A session's fields agree with each other (`PROTOCOL.md`, "Codes").
pub fn session_shape(rule: &str, op_name: &str, session: &proto::Session) -> Check {
    let problem = if session.op_name != op_name {
        Some(format!("op_name {:?}", session.op_name))
    } else if let Some(status) = SessionStatus::parse(&session.status) {
        let done = status == SessionStatus::Done;
        let expected = status.op_code(session.degraded, session.success);
        if session.op_code != expected.value() {
            Some(format!(
                "op_code {} for status {} (expected {})",
                session.op_code,
                session.status,
                expected.value()
            ))
        } else if session.success.is_some() != done || session.end_time.is_some() != done {
            Some("success and end_time must be set exactly when done".to_owned())
        } else if codec::from_msgpack::<serde_json::Map<String, serde_json::Value>>(&session.data)
            .is_err()
        {
            Some("data is not a MessagePack map".to_owned())
        } else {
            None
        }
    } else {
        Some(format!("status {:?}", session.status))
    };
    Check::new(
        rule,
        problem.is_none(),
        problem.unwrap_or_else(|| {
            format!(
                "{} ({})",
                session.status,
                OpCode::from_value(session.op_code).map_or("?", OpCode::name)
            )
        }),
    )
}

/// After the signal: a beat saying it is leaving.
pub fn leaving(signal: &str, beats: &[Beat]) -> Check {
    let left = beats.iter().find(|beat| beat.heartbeat.leaving);
    Check::new(
        format!("SIG{signal}: a last heartbeat with leaving = true"),
        left.is_some(),
        left.map_or_else(
            || format!("{} beats, none leaving", beats.len()),
            |beat| format!("after {:.0} ms", beat.at.as_secs_f64() * 1000.0),
        ),
    )
}

/// The report: a line per rule, or one JSON object.
pub fn render(agent: &str, checks: &[Check], as_json: bool) -> String {
    let failed = checks.iter().filter(|check| !check.passed).count();
    if as_json {
        let rules: Vec<_> = checks
            .iter()
            .map(
                |check| json!({"rule": check.rule, "passed": check.passed, "detail": check.detail}),
            )
            .collect();
        return format!(
            "{}\n",
            json!({"agent": agent, "passed": checks.len() - failed, "failed": failed, "rules": rules})
        );
    }
    let mut out = String::new();
    for check in checks {
        let verdict = if check.passed { "ok  " } else { "FAIL" };
        out.push_str(&format!("{verdict} {}", check.rule));
        if !check.detail.is_empty() {
            out.push_str(&format!(" ({})", check.detail));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "{agent}: {} passed, {failed} failed\n",
        checks.len() - failed
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(at_ms: u64, seq: u64) -> Beat {
        Beat {
            at: Duration::from_millis(at_ms),
            heartbeat: proto::Heartbeat {
                protocol_version: 1,
                agent_address: "observatory.faker1".into(),
                agent_class: "FakeDataAgent".into(),
                incarnation: "2f1e8f36-8b0e-4d4f-9a57-3c2a0b7b1c11".into(),
                seq,
                op_codes: vec![proto::OperationCode {
                    op_name: "acq".into(),
                    op_code: OpCode::Running.value(),
                    op_type: "process".into(),
                }],
                interval_ms: 1000,
                ..Default::default()
            },
        }
    }

    fn address() -> AgentAddress {
        AgentAddress::parse("observatory.faker1").unwrap()
    }

    #[test]
    fn a_steady_agent_keeps_every_heartbeat_rule() {
        let beats = [beat(0, 7), beat(1000, 8), beat(2010, 9), beat(2990, 10)];
        let checks = heartbeats(&address(), &beats);
        assert!(checks.iter().all(|check| check.passed), "{checks:#?}");
    }

    #[test]
    fn each_broken_heartbeat_rule_is_named() {
        let mut beats = vec![beat(0, 1), beat(300, 3), beat(600, 4)];
        beats[1].heartbeat.op_codes[0].op_type = String::new();
        beats[2].heartbeat.agent_address = "observatory.other".into();
        let failed: Vec<String> = heartbeats(&address(), &beats)
            .into_iter()
            .filter(|check| !check.passed)
            .map(|check| check.rule)
            .collect();
        assert_eq!(
            failed,
            [
                "heartbeat: required fields, op codes 1-8 but not 7, op_type, unique names, interval 100-60000 ms",
                "heartbeat: agent_address is the subject's",
                "heartbeat: one incarnation, seq +1 per beat",
                "heartbeat: one beat per interval_ms (median within 50 %)",
            ]
        );
    }

    #[test]
    fn a_session_whose_op_code_contradicts_its_status_fails() {
        let mut session = proto::Session {
            op_name: "acq".into(),
            op_code: OpCode::Running.value(),
            status: "running".into(),
            ..Default::default()
        };
        assert!(session_shape("s", "acq", &session).passed);
        session.status = "done".into();
        session.success = Some(true);
        session.end_time = Some(1.0);
        let check = session_shape("s", "acq", &session);
        assert!(!check.passed);
        assert_eq!(check.detail, "op_code 3 for status done (expected 5)");
    }

    #[test]
    fn the_report_counts_and_names_failures() {
        let checks = [
            Check::new("one", true, ""),
            Check::new("two", false, "seen"),
        ];
        assert_eq!(
            render("faker1", &checks, false),
            "ok   one\nFAIL two (seen)\nfaker1: 1 passed, 1 failed\n"
        );
        let value: serde_json::Value =
            serde_json::from_str(&render("faker1", &checks, true)).unwrap();
        assert_eq!(value["failed"], 1);
        assert_eq!(value["rules"][1]["rule"], "two");
    }

    #[test]
    fn an_answer_is_held_to_its_condition_and_no_answer_fails() {
        let reply = proto::OperationReply {
            status: -1,
            message: "No session active.".into(),
            ..Default::default()
        };
        let check = answered("r".into(), Ok(reply.clone()), |reply| reply.status == -1);
        assert_eq!(check, Check::new("r", true, "-1 \"No session active.\""));
        assert!(!answered("r".into(), Ok(reply), |reply| reply.status == 0).passed);
        let silent = answered("r".into(), Err("no answer in time".into()), |_| true);
        assert_eq!(silent, Check::new("r", false, "no answer in time"));
    }
}

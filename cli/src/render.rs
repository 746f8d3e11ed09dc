//! What `ocs` prints, as pure functions of what it received (and of `now`,
//! where an age is shown), so every shape of output is unit-tested.

use std::collections::BTreeMap;
use std::time::Duration;

use ocs_protocol::{CodecError, ResponseCode, json, proto};
use serde_json::{Map, Value};

/// Appends one line to `out`.
macro_rules! push {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        // Writing to a String cannot fail.
        let _ = writeln!($out, $($arg)*);
    }};
}

/// OCS's name of a response code (`OK`, `ERROR`, `TIMEOUT`).
pub fn status_name(status: i64) -> &'static str {
    i32::try_from(status)
        .ok()
        .and_then(ResponseCode::from_value)
        .map_or("?", ResponseCode::name)
}

/// A reply as OCS's client prints it: status and message, the session
/// (with the registry's agents as a table), the last ten messages. `now`
/// (unix seconds) ages a session still running and the heartbeats.
pub fn reply(reply: &Value, now: f64) -> String {
    let mut out = String::new();
    push!(
        out,
        "{} : {}",
        status_name(reply["status"].as_i64().unwrap_or(-1)),
        reply["message"].as_str().unwrap_or("")
    );
    let session = &reply["session"];
    if session.as_object().is_none_or(Map::is_empty) {
        return out;
    }
    let start = session["start_time"].as_f64().unwrap_or(0.0);
    let end = session["end_time"].as_f64().unwrap_or(now);
    push!(
        out,
        "  {}[session={}]; status={} for {:.1} s; op_code={}; success={}",
        session["op_name"].as_str().unwrap_or("?"),
        session["session_id"],
        session["status"].as_str().unwrap_or("?"),
        end - start,
        json::op_code_name(session["op_code"].as_i64().unwrap_or(0)),
        session["success"],
    );
    if let Some(agents) = registry_data(&session["data"]) {
        out.push_str(&agent_table(&agents, now));
    } else if session["data"]
        .as_object()
        .is_some_and(|data| !data.is_empty())
    {
        push!(out, "  data: {}", session["data"]);
    }
    if let Some(messages) = session["messages"].as_array() {
        push!(out, "  messages:");
        for message in messages.iter().rev().take(10).rev() {
            let at = message[0].as_f64().unwrap_or(0.0);
            let at = chrono::DateTime::from_timestamp_micros((at * 1e6) as i64)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                .unwrap_or_default();
            push!(out, "    {at} {}", message[1].as_str().unwrap_or(""));
        }
    }
    out
}

/// The registry's `main` session data: a map of address → record.
pub fn registry_data(data: &Value) -> Option<BTreeMap<String, Value>> {
    let map = data.as_object()?;
    let is_registry = !map.is_empty()
        && map.values().all(|record| {
            record.get("agent_address").is_some() && record.get("op_codes").is_some()
        });
    is_registry.then(|| map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// The registry's agents, one row each: address, class, state, heartbeat
/// age at `now`, op codes.
pub fn agent_table(agents: &BTreeMap<String, Value>, now: f64) -> String {
    let mut out = String::new();
    let width = agents.keys().map(String::len).max().unwrap_or(7).max(7);
    push!(
        out,
        "  {:<width$}  {:<20}  {:<7}  {:>8}  OPERATIONS",
        "ADDRESS",
        "CLASS",
        "STATE",
        "HB AGE"
    );
    for (address, record) in agents {
        let age = record["last_updated"]
            .as_f64()
            .map_or("-".to_owned(), |t| format!("{:.1}s", (now - t).max(0.0)));
        let ops: Vec<String> = record["op_codes"]
            .as_object()
            .map(|ops| {
                ops.iter()
                    .map(|(op, code)| {
                        format!("{op}={}", json::op_code_name(code.as_i64().unwrap_or(0)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        push!(
            out,
            "  {address:<width$}  {:<20}  {:<7}  {age:>8}  {}",
            record["agent_class"].as_str().unwrap_or("?"),
            record["state"]
                .as_str()
                .unwrap_or(if record["expired"] == Value::Bool(true) {
                    "expired"
                } else {
                    "alive"
                }),
            ops.join(" ")
        );
    }
    out
}

/// `ocs scan`: the agents found, by instance id, with their op codes if
/// `details`; `listened` when heard directly rather than from the registry.
pub fn scan(agents: &BTreeMap<String, Value>, listened: bool, details: bool) -> String {
    let mut out = String::new();
    let heading = if listened { "Detected" } else { "Registered" };
    push!(out, "List of {heading} Agents: ({})", agents.len());
    for (address, record) in agents {
        let instance_id = address
            .split_once('.')
            .map_or(address.as_str(), |(_, iid)| iid);
        push!(out, "  {instance_id}");
        if details && let Some(ops) = record["op_codes"].as_object() {
            for (op, code) in ops {
                push!(
                    out,
                    "    {op:<20} {}",
                    json::op_code_name(code.as_i64().unwrap_or(0))
                );
            }
        }
    }
    out
}

/// `ocs ping`: who answered, since when, and the round trip.
pub fn ping(ping: &proto::PingReply, round_trip: Duration, as_json: bool) -> String {
    let uptime = ping.uptime_ms as f64 / 1000.0;
    let round_trip_ms = round_trip.as_secs_f64() * 1000.0;
    if as_json {
        let value = serde_json::json!({
            "agent_address": ping.agent_address,
            "incarnation": ping.incarnation,
            "uptime": uptime,
            "version": ping.agent_version,
            "round_trip_ms": round_trip_ms,
        });
        format!("{value}\n")
    } else {
        format!(
            "{}: incarnation {}, up {uptime:.1} s, version {}, {round_trip_ms:.1} ms\n",
            ping.agent_address, ping.incarnation, ping.agent_version
        )
    }
}

/// `ocs api`: the agent's identity and operations, as OCS's `get_api`
/// (JSON) or as text.
pub fn api(api: &proto::ApiReply, as_json: bool) -> Result<String, CodecError> {
    let mut out = String::new();
    if as_json {
        push!(out, "{}", json::api(api)?);
        return Ok(out);
    }
    push!(
        out,
        "{} ({}) on {} pid {}, version {}, up {:.0} s",
        api.agent_address,
        api.agent_class,
        api.host,
        api.pid,
        api.agent_version,
        api.uptime_ms as f64 / 1000.0
    );
    push!(out, "incarnation {}", api.incarnation);
    if !api.feeds.is_empty() {
        push!(out, "feeds: {}", api.feeds.join(", "));
    }
    for op in &api.operations {
        let code = op.session.as_ref().map_or(1, |session| session.op_code);
        push!(
            out,
            "{} {} [{}]: {}",
            op.op_type,
            op.op_name,
            json::op_code_name(code.into()),
            op.docstring
        );
        for param in &op.params {
            push!(out, "    {}: {}", param.name, param.description);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: f64 = 1_796_000_010.0;

    fn registry_reply() -> Value {
        json!({
            "status": 0,
            "message": "Session active.",
            "session": {
                "session_id": 0, "op_name": "main", "op_code": 3, "status": "running",
                "success": null, "start_time": NOW - 100.0, "end_time": null,
                "data": {
                    "observatory.faker1": {
                        "agent_address": "observatory.faker1", "agent_class": "FakeDataAgent",
                        "state": "alive", "expired": false, "last_updated": NOW - 0.4,
                        "op_codes": {"acq": 3, "count": 1},
                    },
                    "observatory.faker2": {
                        "agent_address": "observatory.faker2", "agent_class": "FakeDataAgent",
                        "state": "expired", "expired": true, "last_updated": NOW - 12.0,
                        "op_codes": {"acq": 7},
                    },
                },
                "messages": [[NOW - 100.0, "Status is now \"running\"."]],
            },
        })
    }

    #[test]
    fn a_registry_status_is_a_table_of_agents() {
        assert_eq!(
            reply(&registry_reply(), NOW),
            "OK : Session active.\n\
             \x20 main[session=0]; status=running for 100.0 s; op_code=RUNNING; success=null\n\
             \x20 ADDRESS             CLASS                 STATE      HB AGE  OPERATIONS\n\
             \x20 observatory.faker1  FakeDataAgent         alive        0.4s  acq=RUNNING count=NONE\n\
             \x20 observatory.faker2  FakeDataAgent         expired     12.0s  acq=EXPIRED\n\
             \x20 messages:\n\
             \x20   2026-11-30T00:51:50.000Z Status is now \"running\".\n"
        );
    }

    #[test]
    fn an_error_without_a_session_is_one_line() {
        let error =
            json!({"status": -1, "message": "No task or process called \"nope\"", "session": {}});
        assert_eq!(
            reply(&error, NOW),
            "ERROR : No task or process called \"nope\"\n"
        );
        assert_eq!(status_name(1), "TIMEOUT");
        assert_eq!(status_name(42), "?");
    }

    #[test]
    fn other_session_data_is_shown_as_json() {
        let mut done = registry_reply();
        done["session"]["data"] = json!({"count": 2});
        done["session"]["end_time"] = json!(NOW - 90.0);
        done["session"]["messages"] = json!([]);
        assert!(reply(&done, NOW).ends_with(
            "for 10.0 s; op_code=RUNNING; success=null\n  data: {\"count\":2}\n  messages:\n"
        ));
    }

    #[test]
    fn scan_lists_instance_ids_and_op_codes_on_request() {
        let agents: BTreeMap<String, Value> = registry_reply()["session"]["data"]
            .as_object()
            .unwrap()
            .clone()
            .into_iter()
            .collect();
        assert_eq!(
            scan(&agents, false, false),
            "List of Registered Agents: (2)\n  faker1\n  faker2\n"
        );
        assert_eq!(
            scan(&agents, true, true),
            "List of Detected Agents: (2)\n  faker1\n    acq                  RUNNING\n    count                NONE\n  faker2\n    acq                  EXPIRED\n"
        );
    }

    #[test]
    fn api_text_names_operations_their_codes_and_params() {
        let api_reply = proto::ApiReply {
            protocol_version: 1,
            agent_address: "observatory.faker1".into(),
            agent_class: "FakeDataAgent".into(),
            host: "daq1".into(),
            pid: 42,
            agent_version: "0.1.0".into(),
            incarnation: "2f1e8f36-8b0e-4d4f-9a57-3c2a0b7b1c11".into(),
            operations: vec![proto::OperationInfo {
                op_name: "delay_task".into(),
                op_type: "task".into(),
                docstring: "Wait, then succeed.".into(),
                params: vec![proto::ParamInfo {
                    name: "delay".into(),
                    description: "seconds".into(),
                }],
                ..Default::default()
            }],
            feeds: vec!["data".into()],
            uptime_ms: 61_000,
        };
        assert_eq!(
            api(&api_reply, false).unwrap(),
            "observatory.faker1 (FakeDataAgent) on daq1 pid 42, version 0.1.0, up 61 s\n\
             incarnation 2f1e8f36-8b0e-4d4f-9a57-3c2a0b7b1c11\n\
             feeds: data\n\
             task delay_task [NONE]: Wait, then succeed.\n\
             \x20   delay: seconds\n"
        );
        let json: Value = serde_json::from_str(&api(&api_reply, true).unwrap()).unwrap();
        assert_eq!(json["instance_pid"], 42);
        assert_eq!(json["operations"][0]["params"][0]["name"], "delay");
    }

    #[test]
    fn ping_says_who_answered_and_the_round_trip() {
        let ping = proto::PingReply {
            agent_address: "observatory.faker1".into(),
            incarnation: "2f1e8f36-8b0e-4d4f-9a57-3c2a0b7b1c11".into(),
            uptime_ms: 61_250,
            agent_version: "0.1.0".into(),
            ..Default::default()
        };
        let round_trip = Duration::from_micros(1_450);
        assert_eq!(
            super::ping(&ping, round_trip, false),
            "observatory.faker1: incarnation 2f1e8f36-8b0e-4d4f-9a57-3c2a0b7b1c11, up 61.2 s, version 0.1.0, 1.4 ms\n"
        );
        let value: Value = serde_json::from_str(&super::ping(&ping, round_trip, true)).unwrap();
        assert_eq!(
            value,
            json!({
                "agent_address": "observatory.faker1",
                "incarnation": "2f1e8f36-8b0e-4d4f-9a57-3c2a0b7b1c11",
                "uptime": 61.25,
                "version": "0.1.0",
                "round_trip_ms": 1.45,
            })
        );
    }
}

//! JSON views of wire messages in OCS's shapes, for `ocs --json`, the registry's
//! `main` session data and anyone who wants OCS-compatible dictionaries.

use serde_json::{Map, Value, json};

use crate::codec::{CodecError, from_msgpack};
use crate::opcode::OpCode;
use crate::proto;

/// Unix milliseconds as OCS's float seconds; 0 (unset) becomes `null`.
pub fn unix_ms_to_seconds(unix_ms: i64) -> Value {
    if unix_ms == 0 {
        Value::Null
    } else {
        json!(unix_ms as f64 / 1000.0)
    }
}

/// `OpSession.encoded()`: exactly OCS's keys, with `data` decoded from MessagePack.
pub fn session(session: &proto::Session) -> Result<Value, CodecError> {
    let data: Value = from_msgpack(&session.data)?;
    let messages: Vec<Value> = session
        .messages
        .iter()
        .map(|message| json!([message.timestamp, message.text]))
        .collect();
    Ok(json!({
        "session_id": session.session_id,
        "op_name": session.op_name,
        "op_code": session.op_code,
        "status": session.status,
        "degraded": session.degraded,
        "success": session.success,
        "start_time": session.start_time,
        "end_time": session.end_time,
        "data": data,
        "messages": messages,
    }))
}

/// The OCS reply object `{"status", "message", "session"}`; `session` is `{}` when absent.
pub fn reply(reply: &proto::OperationReply) -> Result<Value, CodecError> {
    let session = match &reply.session {
        Some(session_message) => session(session_message)?,
        None => json!({}),
    };
    Ok(json!({
        "status": reply.status,
        "message": reply.message,
        "session": session,
    }))
}

/// Op codes as OCS's `{op_name: code}` map, in the order given.
pub fn op_codes(op_codes: &[proto::OperationCode]) -> Value {
    let map: Map<String, Value> = op_codes
        .iter()
        .map(|op| (op.op_name.clone(), json!(op.op_code)))
        .collect();
    Value::Object(map)
}

/// One registry record in OCS's `RegisteredAgent` shape, plus our additions.
pub fn agent_record(record: &proto::AgentRecord) -> Value {
    let state = match proto::AgentState::try_from(record.state) {
        Ok(proto::AgentState::Alive) => "alive",
        Ok(proto::AgentState::Expired) => "expired",
        Ok(proto::AgentState::Left) => "left",
        _ => "unknown",
    };
    let mut object = json!({
        "expired": record.expired,
        "time_expired": unix_ms_to_seconds(record.time_expired_unix_ms),
        "last_updated": unix_ms_to_seconds(record.last_updated_unix_ms),
        "op_codes": op_codes(&record.op_codes),
        "agent_class": record.agent_class,
        "agent_address": record.agent_address,
        "state": state,
        "incarnation": record.incarnation,
        "host": record.host,
        "pid": record.pid,
    });
    // The rest only when it says something: at a few thousand agents every
    // byte of a record counts against the one message `status` answers with.
    let map = object.as_object_mut().expect("built as an object");
    if !record.agent_version.is_empty() {
        map.insert("version".into(), json!(record.agent_version));
    }
    if record.interval_ms != DEFAULT_INTERVAL_MS {
        map.insert(
            "heartbeat_interval".into(),
            json!(record.interval_ms as f64 / 1000.0),
        );
    }
    if record.incarnations_seen > 1 {
        map.insert("incarnations_seen".into(), json!(record.incarnations_seen));
    }
    if record.flapping {
        map.insert("flapping".into(), json!(true));
    }
    if record.unverified {
        map.insert("unverified".into(), json!(true));
    }
    if let Some(other) = &record.conflict {
        map.insert(
            "conflict".into(),
            json!({"incarnation": other.incarnation, "host": other.host, "pid": other.pid}),
        );
    }
    object
}

/// The heartbeat interval a record leaves unsaid (OCS's one second).
const DEFAULT_INTERVAL_MS: u32 = 1000;

/// The key of the registry's `main` session `data` that says the records
/// come in pages on `{registry}.records` (the fleet is too large for one
/// message); the data then holds only that and a `summary`. Agent addresses
/// always hold a dot, so no agent's record can be mistaken for it.
pub const RECORDS_IN_PAGES: &str = "records_in_pages";

/// Whether the registry's `main` session `data` (MessagePack) says its
/// records come in pages ([`RECORDS_IN_PAGES`]); reads the map without
/// building it.
pub fn records_in_pages(data: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Marker {
        records_in_pages: Option<serde::de::IgnoredAny>,
    }
    from_msgpack::<Marker>(data).is_ok_and(|marker| marker.records_in_pages.is_some())
}

/// A registry records summary: `{"agents", "by_state", "by_class"}`, keys sorted.
pub fn records_summary(summary: &proto::RecordsSummary) -> Value {
    let sorted = |counts: &std::collections::HashMap<String, u64>| {
        let mut pairs: Vec<_> = counts.iter().collect();
        pairs.sort();
        Value::Object(
            pairs
                .into_iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect(),
        )
    };
    json!({
        "agents": summary.agents,
        "by_state": sorted(&summary.by_state),
        "by_class": sorted(&summary.by_class),
    })
}

/// A heartbeat as a JSON object, for `ocs listen`.
pub fn heartbeat(heartbeat: &proto::Heartbeat) -> Value {
    json!({
        "agent_address": heartbeat.agent_address,
        "agent_class": heartbeat.agent_class,
        "incarnation": heartbeat.incarnation,
        "seq": heartbeat.seq,
        "sent_at": unix_ms_to_seconds(heartbeat.sent_at_unix_ms),
        "op_codes": op_codes(&heartbeat.op_codes),
        "host": heartbeat.host,
        "pid": heartbeat.pid,
        "version": heartbeat.agent_version,
        "heartbeat_interval": heartbeat.interval_ms as f64 / 1000.0,
        "leaving": heartbeat.leaving,
    })
}

/// A registry feed message as a JSON object, for `ocs listen`.
pub fn agent_operations(message: &proto::AgentOperations) -> Value {
    let agents: Map<String, Value> = message
        .agents
        .iter()
        .map(|record| (record.agent_address.clone(), agent_record(record)))
        .collect();
    json!({
        "registry_address": message.registry_address,
        "registry_incarnation": message.registry_incarnation,
        "snapshot": message.snapshot,
        "seq": message.seq,
        "sent_at": unix_ms_to_seconds(message.sent_at_unix_ms),
        "agents": agents,
        "forgotten": message.forgotten,
    })
}

/// An agent feed message as a JSON object, payload decoded from MessagePack.
pub fn feed_message(message: &proto::FeedMessage) -> Result<Value, CodecError> {
    let payload: Value = from_msgpack(&message.payload)?;
    Ok(json!({
        "agent_address": message.agent_address,
        "feed_name": message.feed_name,
        "seq": message.seq,
        "sent_at": unix_ms_to_seconds(message.sent_at_unix_ms),
        "payload": payload,
    }))
}

/// The OCS name of a numeric op code, or the number itself if out of range.
pub fn op_code_name(value: i64) -> String {
    i32::try_from(value)
        .ok()
        .and_then(OpCode::from_value)
        .map(|code| code.name().to_owned())
        .unwrap_or_else(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_record_has_the_documented_keys_and_units() {
        let mut record = proto::AgentRecord {
            agent_address: "observatory.faker1".into(),
            agent_class: "FakeDataAgent".into(),
            state: proto::AgentState::Alive as i32,
            last_updated_unix_ms: 1_795_000_000_250,
            first_seen_unix_ms: 1_795_000_000_000,
            interval_ms: 1500,
            ..Default::default()
        };
        let alive = agent_record(&record);
        assert_eq!(alive["time_expired"], serde_json::Value::Null);
        assert_eq!(alive["last_updated"], json!(1_795_000_000.25));
        assert_eq!(alive["heartbeat_interval"], json!(1.5));
        assert_eq!(alive["state"], "alive");
        let paged = to_msgpack(&json!({RECORDS_IN_PAGES: {"agents": 3}, "summary": {}})).unwrap();
        assert!(records_in_pages(&paged));
        let inline = to_msgpack(&json!({"observatory.a": {"expired": false}})).unwrap();
        assert!(!records_in_pages(&inline));
        for unsaid in [
            "conflict",
            "flapping",
            "unverified",
            "incarnations_seen",
            "version",
        ] {
            assert!(
                alive.get(unsaid).is_none(),
                "{unsaid} at its default is left out"
            );
        }
        record.expired = true;
        record.state = proto::AgentState::Expired as i32;
        record.time_expired_unix_ms = 1_795_000_005_000;
        let expired = agent_record(&record);
        assert_eq!(expired["time_expired"], json!(1_795_000_005.0));
        assert_eq!(expired["state"], "expired");
        record.flapping = true;
        record.incarnations_seen = 3;
        record.interval_ms = 1000;
        let flapping = agent_record(&record);
        assert_eq!(flapping["flapping"], true);
        assert_eq!(flapping["incarnations_seen"], 3);
        assert!(flapping.get("heartbeat_interval").is_none());
    }
    use crate::codec::to_msgpack;

    #[test]
    fn session_has_exactly_ocs_keys() {
        let message = proto::Session {
            session_id: 7,
            op_name: "acq".into(),
            op_code: 3,
            status: "running".into(),
            start_time: 1669925000.5,
            data: to_msgpack(&json!({"count": 3})).unwrap(),
            messages: vec![proto::SessionMessage {
                timestamp: 1669925000.5,
                text: "Status is now \"running\".".into(),
            }],
            ..Default::default()
        };
        let value = session(&message).unwrap();
        let mut keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "data",
                "degraded",
                "end_time",
                "messages",
                "op_code",
                "op_name",
                "session_id",
                "start_time",
                "status",
                "success"
            ]
        );
        assert_eq!(value["data"], json!({"count": 3}));
        assert_eq!(value["success"], Value::Null);
        assert_eq!(value["messages"][0][1], "Status is now \"running\".");
    }
}

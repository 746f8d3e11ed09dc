//! JSON views of wire messages in OCS's shapes, for `ocs --json`, the registry's
//! `main` session data and anyone who wants OCS-compatible dictionaries.

use std::collections::BTreeMap;

use serde::ser::{Serialize, SerializeMap, Serializer};
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

/// An agent's `api` reply as OCS's `get_api` shows it (and `ocs api --json`):
/// identity, feeds and each operation with its docs, params and last session.
pub fn api(api: &proto::ApiReply) -> Result<Value, CodecError> {
    let operations = api
        .operations
        .iter()
        .map(|op| -> Result<Value, CodecError> {
            Ok(json!({
                "op_name": op.op_name,
                "op_type": op.op_type,
                "docstring": op.docstring,
                "blocking": op.blocking,
                "abortable": op.abortable,
                "params": op.params.iter().map(|p| json!({"name": p.name, "description": p.description})).collect::<Vec<_>>(),
                "session": op.session.as_ref().map(session).transpose()?,
            }))
        })
        .collect::<Result<Vec<_>, CodecError>>()?;
    Ok(json!({
        "agent_address": api.agent_address,
        "agent_class": api.agent_class,
        "instance_hostname": api.host,
        "instance_pid": api.pid,
        "version": api.agent_version,
        "incarnation": api.incarnation,
        "uptime": api.uptime_ms as f64 / 1000.0,
        "feeds": api.feeds,
        "operations": operations,
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
    serde_json::to_value(RecordView(record)).expect("a record always converts to JSON")
}

/// Records keyed by address, `{address: record}`: the registry's `main`
/// session data and the feed's `agents`.
pub fn agent_records(records: &[proto::AgentRecord]) -> Value {
    serde_json::to_value(AgentRecords(records)).expect("records always convert to JSON")
}

/// Records keyed by address as [`agent_records`] shapes them, serialised
/// straight to MessagePack (or any serde format) without building a JSON
/// value first: the registry's status at a thousand agents spent most of its
/// time building one. Addresses in order; of two records with one address,
/// the last.
pub struct AgentRecords<'a>(pub &'a [proto::AgentRecord]);

impl Serialize for AgentRecords<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let by_address: BTreeMap<&str, &proto::AgentRecord> = self
            .0
            .iter()
            .map(|record| (record.agent_address.as_str(), record))
            .collect();
        let mut map = serializer.serialize_map(Some(by_address.len()))?;
        for (address, record) in by_address {
            map.serialize_entry(address, &RecordView(record))?;
        }
        map.end()
    }
}

/// The other incarnation of a conflict; fields in sorted order, as a JSON
/// object holds its keys.
#[derive(serde::Serialize)]
struct ConflictView<'a> {
    host: &'a str,
    incarnation: &'a str,
    pid: u32,
}

/// One record in the shape [`agent_record`] documents. Keys in sorted order,
/// as a JSON object holds them, so both forms encode to the same bytes; keys
/// at their default are left out: at a few thousand agents every byte of a
/// record counts against the one message `status` answers with.
struct RecordView<'a>(&'a proto::AgentRecord);

impl Serialize for RecordView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let record = self.0;
        let state = match proto::AgentState::try_from(record.state) {
            Ok(proto::AgentState::Alive) => "alive",
            Ok(proto::AgentState::Expired) => "expired",
            Ok(proto::AgentState::Left) => "left",
            _ => "unknown",
        };
        let seconds = |unix_ms: i64| (unix_ms != 0).then(|| unix_ms as f64 / 1000.0);
        let interval = (record.interval_ms != DEFAULT_INTERVAL_MS)
            .then(|| f64::from(record.interval_ms) / 1000.0);
        let version = (!record.agent_version.is_empty()).then_some(&record.agent_version);
        let incarnations_seen = (record.incarnations_seen > 1).then_some(record.incarnations_seen);
        let optional = [
            record.conflict.is_some(),
            record.flapping,
            interval.is_some(),
            incarnations_seen.is_some(),
            record.unverified,
            version.is_some(),
        ];
        let len = 10 + optional.iter().filter(|said| **said).count();
        let mut map = serializer.serialize_map(Some(len))?;
        map.serialize_entry("agent_address", &record.agent_address)?;
        map.serialize_entry("agent_class", &record.agent_class)?;
        if let Some(other) = &record.conflict {
            let other = ConflictView {
                host: &other.host,
                incarnation: &other.incarnation,
                pid: other.pid,
            };
            map.serialize_entry("conflict", &other)?;
        }
        map.serialize_entry("expired", &record.expired)?;
        if record.flapping {
            map.serialize_entry("flapping", &true)?;
        }
        if let Some(interval) = interval {
            map.serialize_entry("heartbeat_interval", &interval)?;
        }
        map.serialize_entry("host", &record.host)?;
        map.serialize_entry("incarnation", &record.incarnation)?;
        if let Some(seen) = incarnations_seen {
            map.serialize_entry("incarnations_seen", &seen)?;
        }
        map.serialize_entry("last_updated", &seconds(record.last_updated_unix_ms))?;
        let op_codes: BTreeMap<&str, i32> = record
            .op_codes
            .iter()
            .map(|op| (op.op_name.as_str(), op.op_code))
            .collect();
        map.serialize_entry("op_codes", &op_codes)?;
        map.serialize_entry("pid", &record.pid)?;
        map.serialize_entry("state", state)?;
        map.serialize_entry("time_expired", &seconds(record.time_expired_unix_ms))?;
        if record.unverified {
            map.serialize_entry("unverified", &true)?;
        }
        if let Some(version) = version {
            map.serialize_entry("version", version)?;
        }
        map.end()
    }
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
    let agents = agent_records(&message.agents);
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
    fn records_encode_straight_to_the_bytes_of_their_json_form() {
        let full = proto::AgentRecord {
            agent_address: "observatory.b".into(),
            agent_class: "FakeDataAgent".into(),
            state: proto::AgentState::Expired as i32,
            expired: true,
            time_expired_unix_ms: 1_795_000_005_000,
            last_updated_unix_ms: 1_795_000_000_250,
            op_codes: vec![
                proto::OperationCode {
                    op_name: "count".into(),
                    op_code: 7,
                    op_type: "task".into(),
                },
                proto::OperationCode {
                    op_name: "acq".into(),
                    op_code: 7,
                    op_type: "process".into(),
                },
            ],
            incarnation: "i-2".into(),
            host: "daq1".into(),
            pid: 4242,
            agent_version: "0.3.0".into(),
            interval_ms: 2000,
            incarnations_seen: 2,
            flapping: true,
            unverified: true,
            conflict: Some(proto::Conflict {
                incarnation: "i-1".into(),
                host: "daq2".into(),
                pid: 17,
            }),
            ..Default::default()
        };
        let plain = proto::AgentRecord {
            agent_address: "observatory.a".into(),
            state: proto::AgentState::Alive as i32,
            interval_ms: 1000,
            ..Default::default()
        };
        let records = [full.clone(), plain];
        let value = agent_records(&records);
        assert_eq!(
            value["observatory.b"],
            json!({
                "agent_address": "observatory.b",
                "agent_class": "FakeDataAgent",
                "conflict": {"host": "daq2", "incarnation": "i-1", "pid": 17},
                "expired": true,
                "flapping": true,
                "heartbeat_interval": 2.0,
                "host": "daq1",
                "incarnation": "i-2",
                "incarnations_seen": 2,
                "last_updated": 1_795_000_000.25,
                "op_codes": {"acq": 7, "count": 7},
                "pid": 4242,
                "state": "expired",
                "time_expired": 1_795_000_005.0,
                "unverified": true,
                "version": "0.3.0",
            })
        );
        assert_eq!(value["observatory.a"]["time_expired"], Value::Null);
        assert_eq!(
            to_msgpack(&AgentRecords(&records)).unwrap(),
            to_msgpack(&value).unwrap(),
            "the direct encoding and the JSON value's are the same bytes"
        );
    }

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

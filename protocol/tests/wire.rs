//! Golden vectors pin the wire format: `protocol/conformance/vectors.json`
//! holds every envelope as bytes and as its fields, and this build must
//! write exactly those bytes and read them back as those fields, so a change
//! that alters an existing encoding fails here, on purpose. Other
//! implementations load the same file. Also checks that payloads written by
//! older or newer peers still decode.
//!
//! After an intended change of the wire (a new field, a new vector):
//! `UPDATE_VECTORS=1 cargo test -p ocs-protocol --test wire`, and review the diff.

use ocs_protocol::codec::{self, MAX_MESSAGE_BYTES, from_msgpack, to_msgpack};
use ocs_protocol::{heartbeat, proto};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{Value, json};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn heartbeat() -> proto::Heartbeat {
    proto::Heartbeat {
        protocol_version: 1,
        agent_address: "observatory.faker".into(),
        agent_class: "FakeDataAgent".into(),
        incarnation: "2f1e8f36-8b0e-4d4f-9a57-3c2a0b7b1c11".into(),
        seq: 42,
        sent_at_unix_ms: 1_795_000_000_000,
        op_codes: vec![
            proto::OperationCode {
                op_name: "acq".into(),
                op_code: 3,
                op_type: "process".into(),
            },
            proto::OperationCode {
                op_name: "count".into(),
                op_code: 1,
                op_type: "task".into(),
            },
        ],
        host: "daq1".into(),
        pid: 4242,
        agent_version: "0.1.0".into(),
        interval_ms: 1000,
        leaving: false,
    }
}

/// A heartbeat with only the required fields decodes, the others at their
/// defaults; without its interval it is refused, naming the field.
#[test]
fn a_heartbeat_with_only_the_required_fields_decodes() {
    let minimal = proto::Heartbeat {
        protocol_version: 1,
        agent_address: "observatory.faker".into(),
        agent_class: "FakeDataAgent".into(),
        incarnation: "2f1e8f36-8b0e-4d4f-9a57-3c2a0b7b1c11".into(),
        seq: 1,
        interval_ms: 1000,
        ..Default::default()
    };
    let decoded = heartbeat::decode(&minimal.encode_to_vec(), MAX_MESSAGE_BYTES).unwrap();
    assert!(decoded.op_codes.is_empty());
    assert!(!decoded.leaving);
    let without_interval = proto::Heartbeat {
        interval_ms: 0,
        ..minimal
    };
    let err = heartbeat::decode(&without_interval.encode_to_vec(), MAX_MESSAGE_BYTES)
        .unwrap_err()
        .to_string();
    assert!(err.contains("interval_ms"), "{err}");
}

/// A newer peer may add fields this build does not know; they are skipped.
#[test]
fn unknown_fields_from_newer_peers_are_ignored() {
    let mut bytes = codec::encode(&heartbeat());
    // Field 99, varint 1: a field a future version might add.
    bytes.extend_from_slice(&[0x98, 0x06, 0x01]);
    assert_eq!(
        heartbeat::decode(&bytes, MAX_MESSAGE_BYTES).unwrap(),
        heartbeat()
    );
}

/// MessagePack params are maps with named fields: readers that gain a field
/// still read what older writers sent.
#[test]
fn msgpack_params_evolve_by_name() {
    #[derive(serde::Deserialize)]
    struct NewerParams {
        delay: f64,
        #[serde(default)]
        busy: bool,
    }
    let old = to_msgpack(&serde_json::json!({"delay": 2.5})).unwrap();
    let newer: NewerParams = from_msgpack(&old).unwrap();
    assert_eq!((newer.delay, newer.busy), (2.5, false));
}

fn session() -> proto::Session {
    proto::Session {
        session_id: 3,
        op_name: "acq".into(),
        op_code: 3,
        status: "running".into(),
        degraded: false,
        success: None,
        start_time: 1_795_000_000.5,
        end_time: None,
        data: to_msgpack(&json!({"n": 1})).unwrap(),
        messages: vec![proto::SessionMessage {
            timestamp: 1_795_000_000.5,
            text: "Status is now \"running\".".into(),
        }],
    }
}

fn record() -> proto::AgentRecord {
    proto::AgentRecord {
        agent_address: "observatory.faker".into(),
        agent_class: "FakeDataAgent".into(),
        expired: true,
        state: proto::AgentState::Expired as i32,
        time_expired_unix_ms: 1_795_000_005_000,
        last_updated_unix_ms: 1_795_000_000_000,
        first_seen_unix_ms: 1_794_999_000_000,
        op_codes: vec![proto::OperationCode {
            op_name: "acq".into(),
            op_code: 7,
            op_type: "process".into(),
        }],
        incarnation: "2f1e8f36-8b0e-4d4f-9a57-3c2a0b7b1c11".into(),
        host: "daq1".into(),
        pid: 4242,
        agent_version: "0.1.0".into(),
        interval_ms: 1000,
        incarnations_seen: 1,
        conflict: None,
        flapping: false,
        unverified: false,
    }
}

/// Every envelope of the protocol, as this build writes it: `(name, full
/// message name, what it shows, bytes)`.
fn vectors() -> Vec<(&'static str, &'static str, &'static str, Vec<u8>)> {
    vec![
        (
            "heartbeat",
            "ocs.v1.Heartbeat",
            "a heartbeat with every field set: one process running, one task never run",
            codec::encode(&heartbeat()),
        ),
        (
            "operation_request",
            "ocs.v1.OperationRequest",
            "a request with MessagePack params {\"delay\": 2.5} and a wait timeout of 10 s",
            codec::encode(&proto::OperationRequest {
                protocol_version: 1,
                params: to_msgpack(&json!({"delay": 2.5})).unwrap(),
                timeout: Some(10.0),
            }),
        ),
        (
            "operation_reply",
            "ocs.v1.OperationReply",
            "an ERROR reply carrying a running session with data {\"n\": 1} and one message",
            codec::encode(&proto::OperationReply {
                protocol_version: 1,
                status: -1,
                message: "No task or process called \"x\"".into(),
                session: Some(session()),
            }),
        ),
        (
            "api_reply",
            "ocs.v1.ApiReply",
            "the api of an agent with one process, its param and its running session",
            codec::encode(&proto::ApiReply {
                protocol_version: 1,
                agent_address: "observatory.faker".into(),
                agent_class: "FakeDataAgent".into(),
                host: "daq1".into(),
                pid: 4242,
                agent_version: "0.1.0".into(),
                incarnation: "2f1e8f36-8b0e-4d4f-9a57-3c2a0b7b1c11".into(),
                operations: vec![proto::OperationInfo {
                    op_name: "acq".into(),
                    op_type: "process".into(),
                    docstring: "Acquire.".into(),
                    blocking: false,
                    abortable: false,
                    session: Some(session()),
                    params: vec![proto::ParamInfo {
                        name: "rate".into(),
                        description: "samples per second".into(),
                    }],
                }],
                feeds: vec!["false_temperatures".into()],
                uptime_ms: 61_000,
            }),
        ),
        (
            "ping_reply",
            "ocs.v1.PingReply",
            "who answered a ping, and for how long it has run",
            codec::encode(&proto::PingReply {
                protocol_version: 1,
                agent_address: "observatory.faker1".into(),
                incarnation: "9f8c0d3e-7f4c-4f0e-9a57-2d1b8f6e4c11".into(),
                uptime_ms: 12_345,
                agent_version: "0.1.0".into(),
            }),
        ),
        (
            "feed_message",
            "ocs.v1.FeedMessage",
            "the 12th message of a feed, MessagePack payload {\"t\": 4.2}",
            codec::encode(&proto::FeedMessage {
                protocol_version: 1,
                agent_address: "observatory.faker".into(),
                feed_name: "false_temperatures".into(),
                seq: 12,
                sent_at_unix_ms: 1_795_000_000_000,
                payload: to_msgpack(&json!({"t": 4.2})).unwrap(),
            }),
        ),
        (
            "agent_operations",
            "ocs.v1.AgentOperations",
            "a one-part snapshot of the registry's feed under lease term 41: one expired agent, one forgotten",
            codec::encode(&proto::AgentOperations {
                protocol_version: 1,
                registry_address: "observatory.registry".into(),
                snapshot: true,
                agents: vec![record()],
                forgotten: vec!["observatory.old".into()],
                seq: 7,
                sent_at_unix_ms: 1_795_000_005_001,
                registry_incarnation: "6f7a1c0e-1d2b-4c3a-8e9f-0a1b2c3d4e5f".into(),
                snapshot_id: 7,
                snapshot_part: 0,
                snapshot_parts: 1,
                lease_term: 41,
            }),
        ),
        (
            "stored_session",
            "ocs.v1.StoredSession",
            "a session as the journal keeps it in ocs_sessions",
            codec::encode(&proto::StoredSession {
                protocol_version: 1,
                incarnation: "2f1e8f36-8b0e-4d4f-9a57-3c2a0b7b1c11".into(),
                session: Some(session()),
            }),
        ),
        (
            "stored_agent",
            "ocs.v1.StoredAgent",
            "an expired agent as the registry keeps it in ocs_registry, to be forgotten a day later",
            codec::encode(&proto::StoredAgent {
                protocol_version: 1,
                record: Some(record()),
                forget_at_unix_ms: 1_795_086_405_000,
            }),
        ),
        (
            "records_query",
            "ocs.v1.RecordsQuery",
            "the second page of the expired Lakeshore agents, at most 512 KiB",
            codec::encode(&proto::RecordsQuery {
                protocol_version: 1,
                summary_only: false,
                states: vec!["expired".into()],
                classes: vec!["Lakeshore372Agent".into()],
                agent_pattern: "observatory.lakeshore*".into(),
                after: "observatory.lakeshore07".into(),
                max_bytes: 512 * 1024,
            }),
        ),
        (
            "records_page",
            "ocs.v1.RecordsPage",
            "a first page: one record, more to come, and the summary of what matched",
            codec::encode(&proto::RecordsPage {
                protocol_version: 1,
                records: vec![record()],
                next_after: record().agent_address,
                summary: Some(proto::RecordsSummary {
                    agents: 2,
                    by_state: [("expired".to_owned(), 2)].into(),
                    by_class: [("FakeDataAgent".to_owned(), 2)].into(),
                }),
                error: String::new(),
            }),
        ),
    ]
}

/// The vector file as this build makes it: the bytes, and the fields in
/// protobuf's canonical JSON (proto field names, defaults omitted).
fn vector_file() -> Value {
    let descriptors = protox::compile(["proto/ocs/v1/ocs.proto"], ["proto"]).unwrap();
    let pool = DescriptorPool::from_file_descriptor_set(descriptors).unwrap();
    let options = SerializeOptions::new().use_proto_field_name(true);
    let vectors: Vec<Value> = vectors()
        .into_iter()
        .map(|(name, message, description, bytes)| {
            let descriptor = pool.get_message_by_name(message).unwrap();
            let dynamic = DynamicMessage::decode(descriptor, bytes.as_slice()).unwrap();
            let fields = dynamic
                .serialize_with_options(serde_json::value::Serializer, &options)
                .unwrap();
            json!({
                "name": name,
                "message": message,
                "description": description,
                "hex": hex(&bytes),
                "fields": fields,
            })
        })
        .collect();
    json!({
        "about": "Golden vectors of the ocs-nats wire protocol, version 1. Each envelope's bytes (hex) and its fields in protobuf's canonical JSON mapping with proto field names and default values omitted (Python: json_format.MessageToDict(message, preserving_proto_field_name=True)). An implementation must decode `hex` to `fields`, and encode `fields` back to `hex`. Regenerated by `UPDATE_VECTORS=1 cargo test -p ocs-protocol --test wire`.",
        "vectors": vectors,
    })
}

#[test]
fn this_build_writes_and_reads_the_golden_vectors() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/vectors.json");
    let made = vector_file();
    if std::env::var_os("UPDATE_VECTORS").is_some() {
        std::fs::write(&path, serde_json::to_string_pretty(&made).unwrap() + "\n").unwrap();
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(
        stored == made,
        "{} differs from what this build writes: an encoding changed (if on purpose, run with UPDATE_VECTORS=1 and review the diff)",
        path.display()
    );
    // What the codec reads, it reads back to the same message.
    let heartbeat_bytes = &vectors()[0].3;
    assert_eq!(
        heartbeat::decode(heartbeat_bytes, MAX_MESSAGE_BYTES).unwrap(),
        heartbeat()
    );
    for vector in stored["vectors"].as_array().unwrap() {
        assert!(vector["fields"]["protocol_version"] == 1, "{vector}");
    }
}

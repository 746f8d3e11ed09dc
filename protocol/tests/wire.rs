//! Golden bytes pin the wire format: a change that alters the encoding of an
//! existing message fails here, on purpose. Also checks that payloads written
//! by older or newer peers still decode.

use ocs_protocol::codec::{self, MAX_MESSAGE_BYTES, from_msgpack, to_msgpack};
use ocs_protocol::proto;
use prost::Message;

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

const HEARTBEAT_GOLDEN: &str = "080112116f627365727661746f72792e66616b65721a0d46616b65446174614167656e74222432663165386633362d386230652d346434662d396135372d336332613062376231633131282a3080bcd9f29e343a100a0361637110031a0770726f636573733a0f0a05636f756e7410011a047461736b4204646171314892215205302e312e3058e807";
const REQUEST_GOLDEN: &str = "0801121081a564656c6179cb4004000000000000190000000000002440";
const REPLY_GOLDEN: &str = "080110011a1d4e6f207461736b206f722070726f636573732063616c6c6564202278222246080312036163711803220772756e6e696e6739000020b061bfda414a0481a16e01522309000020b061bfda411218537461747573206973206e6f77202272756e6e696e67222e";
const FEED_GOLDEN: &str = "080112146f627365727661746f72792e726567697374727918012288010a116f627365727661746f72792e66616b6572120d46616b65446174614167656e74180120022888e3d9f29e343080bcd9f29e3438c0b79cf29e3442100a0361637110071a0770726f636573734a2432663165386633362d386230652d346434662d396135372d3363326130623762316331315204646171315892216205302e312e3068e80770012a0f6f627365727661746f72792e6f6c6430073889e3d9f29e34422436663761316330652d316432622d346333612d386539662d30613162326333643465356648075801";

#[test]
fn heartbeat_golden_bytes() {
    let bytes = codec::encode(&heartbeat());
    assert_eq!(hex(&bytes), HEARTBEAT_GOLDEN);
    assert_eq!(
        codec::decode_heartbeat(&bytes, MAX_MESSAGE_BYTES).unwrap(),
        heartbeat()
    );
}

#[test]
fn operation_request_and_reply_golden_bytes() {
    let request = proto::OperationRequest {
        protocol_version: 1,
        params: to_msgpack(&serde_json::json!({"delay": 2.5})).unwrap(),
        timeout: Some(10.0),
    };
    assert_eq!(hex(&codec::encode(&request)), REQUEST_GOLDEN);
    let reply = proto::OperationReply {
        protocol_version: 1,
        status: -1,
        message: "No task or process called \"x\"".into(),
        session: Some(proto::Session {
            session_id: 3,
            op_name: "acq".into(),
            op_code: 3,
            status: "running".into(),
            degraded: false,
            success: None,
            start_time: 1_795_000_000.5,
            end_time: None,
            data: to_msgpack(&serde_json::json!({"n": 1})).unwrap(),
            messages: vec![proto::SessionMessage {
                timestamp: 1_795_000_000.5,
                text: "Status is now \"running\".".into(),
            }],
        }),
    };
    assert_eq!(hex(&codec::encode(&reply)), REPLY_GOLDEN);
}

#[test]
fn agent_operations_golden_bytes() {
    let message = proto::AgentOperations {
        protocol_version: 1,
        registry_address: "observatory.registry".into(),
        snapshot: true,
        agents: vec![proto::AgentRecord {
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
        }],
        forgotten: vec!["observatory.old".into()],
        seq: 7,
        sent_at_unix_ms: 1_795_000_005_001,
        registry_incarnation: "6f7a1c0e-1d2b-4c3a-8e9f-0a1b2c3d4e5f".into(),
        snapshot_id: 7,
        snapshot_part: 0,
        snapshot_parts: 1,
    };
    assert_eq!(hex(&codec::encode(&message)), FEED_GOLDEN);
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
    let decoded = codec::decode_heartbeat(&minimal.encode_to_vec(), MAX_MESSAGE_BYTES).unwrap();
    assert!(decoded.op_codes.is_empty());
    assert!(!decoded.leaving);
    let without_interval = proto::Heartbeat {
        interval_ms: 0,
        ..minimal
    };
    let err = codec::decode_heartbeat(&without_interval.encode_to_vec(), MAX_MESSAGE_BYTES)
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
        codec::decode_heartbeat(&bytes, MAX_MESSAGE_BYTES).unwrap(),
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

#[test]
fn ping_reply_golden_bytes() {
    let ping = proto::PingReply {
        protocol_version: 1,
        agent_address: "observatory.faker1".into(),
        incarnation: "9f8c0d3e-7f4c-4f0e-9a57-2d1b8f6e4c11".into(),
        uptime_ms: 12_345,
        agent_version: "0.1.0".into(),
    };
    let bytes = codec::encode(&ping);
    assert_eq!(
        hex(&bytes),
        "08011212\
         6f627365727661746f72792e66616b657231\
         1a24\
         39663863306433652d376634632d346630652d396135372d326431623866366534633131\
         20b960\
         2a05302e312e30"
    );
    let decoded: proto::PingReply = codec::decode(&bytes, 1024).unwrap();
    assert_eq!(decoded, ping);
}

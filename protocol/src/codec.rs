//! Encoding and decoding of every wire message, with version and size checks.
//!
//! Fixed-schema envelopes are protobuf ([`crate::proto`]); free-form values
//! inside them are MessagePack maps with named fields.

use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::address::{AgentAddress, NameError, validate_token};
use crate::opcode::OpCode;
use crate::proto;

/// The protocol version this build writes, and the highest it reads.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest message any decoder accepts (the NATS server's default `max_payload`).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The payload exceeds the size limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Payload size.
        size: usize,
        /// Applicable limit.
        limit: usize,
    },
    /// The payload is not valid protobuf for the expected message.
    #[error("malformed protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The message carries no version or one newer than this build reads.
    #[error("unsupported protocol version {found} (this build reads 1..={PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The version in the message; 0 means the field was missing.
        found: u32,
    },
    /// A MessagePack value could not be encoded or decoded.
    #[error("malformed MessagePack: {0}")]
    MsgPack(String),
    /// A field holds a value outside its domain.
    #[error("invalid field {field}: {reason}")]
    InvalidField {
        /// The field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A name in the message is not a valid token.
    #[error(transparent)]
    Name(#[from] NameError),
}

/// A protobuf envelope carrying `protocol_version`.
pub trait Envelope: Message + Default {
    /// The message's `protocol_version` field.
    fn protocol_version(&self) -> u32;
}

macro_rules! envelope {
    ($($message:ty),*) => {
        $(impl Envelope for $message {
            fn protocol_version(&self) -> u32 {
                self.protocol_version
            }
        })*
    };
}

envelope!(
    proto::Heartbeat,
    proto::OperationRequest,
    proto::OperationReply,
    proto::ApiReply,
    proto::PingReply,
    proto::StoredSession,
    proto::FeedMessage,
    proto::AgentOperations,
    proto::StoredAgent,
    proto::RecordsQuery,
    proto::RecordsPage
);

/// Encodes an envelope.
pub fn encode<M: Envelope>(message: &M) -> Vec<u8> {
    message.encode_to_vec()
}

/// Decodes an envelope, refusing payloads over `limit` bytes and unknown versions.
pub fn decode<M: Envelope>(payload: &[u8], limit: usize) -> Result<M, CodecError> {
    if payload.len() > limit {
        return Err(CodecError::TooLarge {
            size: payload.len(),
            limit,
        });
    }
    let message = M::decode(payload)?;
    match message.protocol_version() {
        1..=PROTOCOL_VERSION => Ok(message),
        found => Err(CodecError::UnsupportedVersion { found }),
    }
}

/// The longest heartbeat interval a heartbeat may state. The registry waits
/// three intervals before it expires an agent, so a longer one would let a
/// single beat keep an address alive for longer than any operator expects
/// (a day's interval, three days). 0 means "not stated": the registry's own
/// timeout applies.
pub const MAX_HEARTBEAT_INTERVAL_MS: u32 = 60_000;

/// The shortest heartbeat interval a heartbeat may state: a faster agent
/// only loads the registry, and a missing interval (0) is refused rather
/// than guessed.
pub const MIN_HEARTBEAT_INTERVAL_MS: u32 = 100;

/// The `op_type` of an operation in a heartbeat: OCS's two kinds.
pub const OP_TYPES: [&str; 2] = ["task", "process"];

/// Decodes a heartbeat and checks every field a receiver relies on.
pub fn decode_heartbeat(payload: &[u8], limit: usize) -> Result<proto::Heartbeat, CodecError> {
    let heartbeat: proto::Heartbeat = decode(payload, limit)?;
    validate_heartbeat(&heartbeat)?;
    Ok(heartbeat)
}

/// Checks the fields of a decoded heartbeat.
pub fn validate_heartbeat(heartbeat: &proto::Heartbeat) -> Result<(), CodecError> {
    AgentAddress::parse(&heartbeat.agent_address)?;
    uuid::Uuid::parse_str(&heartbeat.incarnation).map_err(|err| CodecError::InvalidField {
        field: "incarnation",
        reason: err.to_string(),
    })?;
    if heartbeat.seq == 0 {
        return Err(CodecError::InvalidField {
            field: "seq",
            reason: "must start at 1".into(),
        });
    }
    if !(MIN_HEARTBEAT_INTERVAL_MS..=MAX_HEARTBEAT_INTERVAL_MS).contains(&heartbeat.interval_ms) {
        return Err(CodecError::InvalidField {
            field: "interval_ms",
            reason: format!(
                "{} ms is outside {MIN_HEARTBEAT_INTERVAL_MS}..={MAX_HEARTBEAT_INTERVAL_MS} ms",
                heartbeat.interval_ms
            ),
        });
    }
    if heartbeat.agent_class.is_empty() || heartbeat.agent_class.len() > 256 {
        return Err(CodecError::InvalidField {
            field: "agent_class",
            reason: "must be 1 to 256 characters".into(),
        });
    }
    let invalid = |reason: String| CodecError::InvalidField {
        field: "op_codes",
        reason,
    };
    for op in &heartbeat.op_codes {
        validate_token("operation name", &op.op_name)?;
        match OpCode::from_value(op.op_code) {
            None => {
                return Err(invalid(format!(
                    "{} has op code {}, not 1..=8",
                    op.op_name, op.op_code
                )));
            }
            Some(OpCode::Expired) => {
                return Err(invalid(format!(
                    "{} has op code 7 (EXPIRED), which only the registry sets",
                    op.op_name
                )));
            }
            Some(_) => {}
        }
        if !OP_TYPES.contains(&op.op_type.as_str()) {
            return Err(invalid(format!(
                "{} has op_type {:?}, not \"task\" or \"process\"",
                op.op_name, op.op_type
            )));
        }
    }
    if let Some(name) = listed_twice(&heartbeat.op_codes) {
        return Err(invalid(format!("{name} is listed twice")));
    }
    Ok(())
}

/// The first operation name listed twice. Every heartbeat the registry
/// receives is checked, so an agent's usual handful of operations is
/// compared pair by pair without allocating; only a long list (a broken or
/// hostile sender) pays for a set.
fn listed_twice(ops: &[proto::OperationCode]) -> Option<&str> {
    const PAIRWISE_UP_TO: usize = 16;
    if ops.len() <= PAIRWISE_UP_TO {
        return ops
            .iter()
            .enumerate()
            .find(|(i, op)| ops[..*i].iter().any(|seen| seen.op_name == op.op_name))
            .map(|(_, op)| op.op_name.as_str());
    }
    let mut names = std::collections::HashSet::with_capacity(ops.len());
    ops.iter()
        .map(|op| op.op_name.as_str())
        .find(|name| !names.insert(*name))
}

/// Encodes a value as a MessagePack map with named fields.
pub fn to_msgpack<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    rmp_serde::to_vec_named(value).map_err(|err| CodecError::MsgPack(err.to_string()))
}

/// Decodes a MessagePack value; empty bytes decode as an empty map, as the
/// protobuf envelopes use them for "no params" and "no data".
pub fn from_msgpack<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    const EMPTY_MAP: &[u8] = &[0x80];
    let bytes = if bytes.is_empty() { EMPTY_MAP } else { bytes };
    rmp_serde::from_slice(bytes).map_err(|err| CodecError::MsgPack(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat() -> proto::Heartbeat {
        proto::Heartbeat {
            protocol_version: 1,
            agent_address: "observatory.faker".into(),
            agent_class: "FakeDataAgent".into(),
            incarnation: "2f1e8f36-8b0e-4d4f-9a57-3c2a0b7b1c11".into(),
            seq: 1,
            op_codes: vec![proto::OperationCode {
                op_name: "acq".into(),
                op_code: 3,
                op_type: "process".into(),
            }],
            interval_ms: 1000,
            ..Default::default()
        }
    }

    #[test]
    fn rejects_missing_and_future_versions() {
        for (version, ok) in [(0, false), (1, true), (2, false)] {
            let mut message = heartbeat();
            message.protocol_version = version;
            let result = decode_heartbeat(&encode(&message), 1000);
            assert_eq!(result.is_ok(), ok, "version {version}");
        }
    }

    #[test]
    fn rejects_oversized_and_garbage() {
        let bytes = encode(&heartbeat());
        assert!(matches!(
            decode_heartbeat(&bytes, bytes.len() - 1),
            Err(CodecError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_heartbeat(&[0xff, 0xff, 0xff], 1000),
            Err(CodecError::Protobuf(_))
        ));
    }

    #[test]
    fn accepts_intervals_from_the_shortest_to_the_longest() {
        for interval_ms in [MIN_HEARTBEAT_INTERVAL_MS, MAX_HEARTBEAT_INTERVAL_MS] {
            let mut message = heartbeat();
            message.interval_ms = interval_ms;
            assert!(decode_heartbeat(&encode(&message), 1000).is_ok());
        }
    }

    #[test]
    fn rejects_invalid_fields() {
        let mut bad_code = heartbeat();
        bad_code.op_codes[0].op_code = 9;
        let mut bad_address = heartbeat();
        bad_address.agent_address = "observatory.a.b".into();
        let mut bad_incarnation = heartbeat();
        bad_incarnation.incarnation = "1669925000.123456".into();
        let mut zero_seq = heartbeat();
        zero_seq.seq = 0;
        let mut bad_op = heartbeat();
        bad_op.op_codes[0].op_name = "a b".into();
        // A day, or u32::MAX ms, would keep one beat alive for days.
        let mut day_interval = heartbeat();
        day_interval.interval_ms = 86_400_000;
        let mut max_interval = heartbeat();
        max_interval.interval_ms = u32::MAX;
        // Unstated, or faster than any agent needs.
        let mut no_interval = heartbeat();
        no_interval.interval_ms = 0;
        let mut fast_interval = heartbeat();
        fast_interval.interval_ms = MIN_HEARTBEAT_INTERVAL_MS - 1;
        // Only the registry expires operations.
        let mut expired = heartbeat();
        expired.op_codes[0].op_code = OpCode::Expired.value();
        let mut unspecified = heartbeat();
        unspecified.op_codes[0].op_code = 0;
        let mut no_type = heartbeat();
        no_type.op_codes[0].op_type = String::new();
        let mut twice = heartbeat();
        twice.op_codes.push(twice.op_codes[0].clone());
        for message in [
            no_interval,
            fast_interval,
            expired,
            unspecified,
            no_type,
            twice,
            bad_code,
            bad_address,
            bad_incarnation,
            zero_seq,
            bad_op,
            day_interval,
            max_interval,
        ] {
            assert!(
                decode_heartbeat(&encode(&message), 1000).is_err(),
                "{message:?}"
            );
        }
    }

    #[test]
    fn a_name_listed_twice_is_found_in_short_and_long_lists() {
        let ops = |names: &[String]| -> Vec<proto::OperationCode> {
            names
                .iter()
                .map(|name| proto::OperationCode {
                    op_name: name.clone(),
                    op_code: 1,
                    op_type: "task".into(),
                })
                .collect()
        };
        let mut names: Vec<String> = (0..40).map(|i| format!("op{i}")).collect();
        assert_eq!(listed_twice(&ops(&names[..5])), None);
        assert_eq!(listed_twice(&ops(&names)), None);
        names[4] = "op2".into();
        assert_eq!(listed_twice(&ops(&names[..5])), Some("op2"));
        assert_eq!(listed_twice(&ops(&names)), Some("op2"));
        names[4] = "op4".into();
        names[39] = "op30".into();
        assert_eq!(listed_twice(&ops(&names)), Some("op30"));
    }

    #[test]
    fn msgpack_is_named_and_empty_means_empty_map() {
        #[derive(Serialize)]
        struct Params {
            target: u32,
        }
        let bytes = to_msgpack(&Params { target: 3 }).unwrap();
        // fixmap(1), fixstr "target", 3: fields are named, not positional.
        assert_eq!(
            bytes,
            [0x81, 0xa6, b't', b'a', b'r', b'g', b'e', b't', 0x03]
        );
        let empty: serde_json::Value = from_msgpack(&[]).unwrap();
        assert_eq!(empty, serde_json::json!({}));
    }
}

//! Encoding and decoding of every wire message, with version and size checks.
//!
//! Fixed-schema envelopes are protobuf ([`crate::proto`]); free-form values
//! inside them are MessagePack maps with named fields.

use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::address::NameError;
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
    /// The payload is not valid protobuf for the expected message, as found
    /// by a reader that decodes in place ([`crate::heartbeat::read`]).
    #[error("malformed protobuf: {0}")]
    Malformed(&'static str),
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

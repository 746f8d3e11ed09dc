//! Every message a process decodes from the bus or from JetStream KV: none
//! may panic, whatever the bytes; a decoded heartbeat must also pass (or
//! cleanly fail) validation, and re-encode to something that decodes again;
//! the in-place heartbeat reader must agree with prost.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocs_protocol::codec::{self, MAX_MESSAGE_BYTES};
use ocs_protocol::heartbeat::{self, HeartbeatRef};
use ocs_protocol::proto;

fuzz_target!(|data: &[u8]| {
    if let Ok(heartbeat) = heartbeat::decode(data, MAX_MESSAGE_BYTES) {
        let again = heartbeat::decode(&codec::encode(&heartbeat), MAX_MESSAGE_BYTES)
            .expect("a valid heartbeat re-encodes to a valid heartbeat");
        assert_eq!(again, heartbeat);
    }
    // The registry reads heartbeats in place: it must agree with prost on
    // every input, valid or not.
    let in_place = heartbeat::read(data, MAX_MESSAGE_BYTES).map(|read| read.to_proto());
    assert_eq!(
        in_place.ok(),
        heartbeat::decode(data, MAX_MESSAGE_BYTES).ok()
    );
    let parsed = HeartbeatRef::parse(data).map(|parsed| parsed.to_proto());
    assert_eq!(parsed.ok(), <proto::Heartbeat as prost::Message>::decode(data).ok());
    let _ = codec::decode::<proto::OperationRequest>(data, MAX_MESSAGE_BYTES);
    let _ = codec::decode::<proto::OperationReply>(data, MAX_MESSAGE_BYTES);
    let _ = codec::decode::<proto::ApiReply>(data, MAX_MESSAGE_BYTES);
    let _ = codec::decode::<proto::PingReply>(data, MAX_MESSAGE_BYTES);
    let _ = codec::decode::<proto::StoredSession>(data, MAX_MESSAGE_BYTES);
    let _ = codec::decode::<proto::StoredAgent>(data, MAX_MESSAGE_BYTES);
    let _ = codec::decode::<proto::FeedMessage>(data, MAX_MESSAGE_BYTES);
    let _ = codec::decode::<proto::AgentOperations>(data, MAX_MESSAGE_BYTES);
    // Operation parameters and feed payloads are MessagePack.
    let _ = codec::from_msgpack::<serde_json::Value>(data);
});

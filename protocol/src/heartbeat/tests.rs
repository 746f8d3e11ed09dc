use proptest::prelude::*;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};

use super::*;
use crate::codec::encode;

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

/// Both ways of taking a heartbeat: owned, and in place.
fn both(bytes: &[u8], limit: usize) -> [Result<proto::Heartbeat, CodecError>; 2] {
    [
        decode(bytes, limit),
        read(bytes, limit).map(|heartbeat| heartbeat.to_proto()),
    ]
}

#[test]
fn rejects_missing_and_future_versions() {
    for (version, ok) in [(0, false), (1, true), (2, false)] {
        let mut message = heartbeat();
        message.protocol_version = version;
        for result in both(&encode(&message), 1000) {
            assert_eq!(result.is_ok(), ok, "version {version}");
        }
    }
}

#[test]
fn rejects_oversized_and_garbage() {
    let bytes = encode(&heartbeat());
    for result in both(&bytes, bytes.len() - 1) {
        assert!(matches!(result, Err(CodecError::TooLarge { .. })));
    }
    for result in both(&[0xff, 0xff, 0xff], 1000) {
        assert!(matches!(
            result,
            Err(CodecError::Protobuf(_) | CodecError::Malformed(_))
        ));
    }
}

#[test]
fn accepts_intervals_from_the_shortest_to_the_longest() {
    for interval_ms in [MIN_HEARTBEAT_INTERVAL_MS, MAX_HEARTBEAT_INTERVAL_MS] {
        let mut message = heartbeat();
        message.interval_ms = interval_ms;
        for result in both(&encode(&message), 1000) {
            assert_eq!(result.unwrap(), message);
        }
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
        for result in both(&encode(&message), 1000) {
            assert!(result.is_err(), "{message:?}");
        }
    }
}

#[test]
fn a_name_listed_twice_is_found_in_short_and_long_lists() {
    fn ops(names: &[String]) -> Vec<OperationRef<'_>> {
        names
            .iter()
            .map(|name| OperationRef {
                op_name: name,
                op_code: 1,
                op_type: "task",
            })
            .collect()
    }
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
fn more_operations_than_fit_inline_are_all_read() {
    let mut message = heartbeat();
    message.op_codes = (0..3 * INLINE_OPERATIONS)
        .map(|i| proto::OperationCode {
            op_name: format!("op{i}"),
            op_code: 1 + (i % 6) as i32,
            op_type: OP_TYPES[i % 2].into(),
        })
        .collect();
    for result in both(&encode(&message), MAX_MESSAGE_BYTES) {
        assert_eq!(result.unwrap(), message);
    }
}

use crate::codec::MAX_MESSAGE_BYTES;

/// One field as it may appear on the wire, known to `Heartbeat` or not, in
/// any order and any number of times, with the right wire type or a wrong one.
#[derive(Debug, Clone)]
enum Field {
    Varint(u32, u64),
    Bytes(u32, Vec<u8>),
    Fixed32(u32, u32),
    Operation(Vec<Field>),
}

fn encode_fields(fields: &[Field], buf: &mut Vec<u8>) {
    for field in fields {
        match field {
            Field::Varint(tag, value) => {
                encode_key(*tag, WireType::Varint, buf);
                encode_varint(*value, buf);
            }
            Field::Bytes(tag, bytes) => {
                encode_key(*tag, WireType::LengthDelimited, buf);
                encode_varint(bytes.len() as u64, buf);
                buf.extend_from_slice(bytes);
            }
            Field::Fixed32(tag, value) => {
                encode_key(*tag, WireType::ThirtyTwoBit, buf);
                buf.extend_from_slice(&value.to_le_bytes());
            }
            Field::Operation(inner) => {
                let mut nested = Vec::new();
                encode_fields(inner, &mut nested);
                encode_key(7, WireType::LengthDelimited, buf);
                encode_varint(nested.len() as u64, buf);
                buf.extend_from_slice(&nested);
            }
        }
    }
}

fn text() -> impl Strategy<Value = Vec<u8>> + Clone {
    prop_oneof![
        9 => "[a-z_]{0,6}".prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 0..6),
    ]
}

fn small_varint() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![0u64..10, any::<u64>()]
}

/// A field with tag `tag`, of the wire type the message gives it (`Some`)
/// nine times in ten, else of any type.
fn field(tag: u32, varint: bool, inner: Option<BoxedStrategy<Vec<Field>>>) -> BoxedStrategy<Field> {
    let right = match (varint, inner.clone()) {
        (true, _) => small_varint()
            .prop_map(move |value| Field::Varint(tag, value))
            .boxed(),
        (false, Some(inner)) => inner.prop_map(Field::Operation).boxed(),
        (false, None) => text()
            .prop_map(move |bytes| Field::Bytes(tag, bytes))
            .boxed(),
    };
    let any_type = prop_oneof![
        small_varint().prop_map(move |value| Field::Varint(tag, value)),
        text().prop_map(move |bytes| Field::Bytes(tag, bytes)),
        any::<u32>().prop_map(move |value| Field::Fixed32(tag, value)),
    ];
    prop_oneof![9 => right, 1 => any_type].boxed()
}

/// `OperationCode`'s fields (op_name, op_code, op_type) and an unknown one.
fn operation_fields() -> BoxedStrategy<Vec<Field>> {
    let fields: Vec<_> = [(1, false), (2, true), (3, false), (4, true)]
        .into_iter()
        .map(|(tag, varint)| field(tag, varint, None))
        .collect();
    proptest::collection::vec(proptest::strategy::Union::new(fields), 0..5).boxed()
}

/// `Heartbeat`'s fields and two unknown ones.
fn heartbeat_fields() -> impl Strategy<Value = Vec<Field>> {
    let fields: Vec<_> = (1..=14)
        .map(|tag| match tag {
            2 | 3 | 4 | 8 | 10 => field(tag, false, None),
            7 => field(tag, false, Some(operation_fields())),
            _ => field(tag, true, None),
        })
        .collect();
    proptest::collection::vec(proptest::strategy::Union::new(fields), 0..20)
}

proptest! {
    /// The in-place reader decodes exactly what prost decodes, and refuses
    /// exactly what prost refuses, whatever order, repetition, unknown
    /// fields or wrong wire types the bytes hold.
    #[test]
    fn reads_in_place_what_prost_decodes(fields in heartbeat_fields()) {
        let mut bytes = Vec::new();
        encode_fields(&fields, &mut bytes);
        let decoded = proto::Heartbeat::decode(bytes.as_slice()).ok();
        let parsed = HeartbeatRef::parse(&bytes).ok().map(|heartbeat| heartbeat.to_proto());
        prop_assert_eq!(parsed, decoded);
    }

    /// The same, for a valid heartbeat cut short or with one byte changed.
    #[test]
    fn a_damaged_heartbeat_reads_as_prost_decodes_it(
        ops in proptest::collection::vec(("[a-z]{1,8}", 1i32..=8), 0..12),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        value in any::<u8>(),
    ) {
        let mut message = heartbeat();
        message.op_codes = ops
            .into_iter()
            .map(|(op_name, op_code)| proto::OperationCode { op_name, op_code, op_type: "task".into() })
            .collect();
        let mut bytes = encode(&message);
        let flipped = flip.index(bytes.len());
        bytes[flipped] = value;
        bytes.truncate(cut.index(bytes.len() + 1));
        let decoded = proto::Heartbeat::decode(bytes.as_slice()).ok();
        let parsed = HeartbeatRef::parse(&bytes).ok().map(|heartbeat| heartbeat.to_proto());
        prop_assert_eq!(&parsed, &decoded);
        let owned = decode(&bytes, MAX_MESSAGE_BYTES).ok();
        let in_place = read(&bytes, MAX_MESSAGE_BYTES).ok().map(|heartbeat| heartbeat.to_proto());
        prop_assert_eq!(in_place, owned);
    }
}

//! Heartbeats: the checks every receiver applies, and a reader that takes a
//! heartbeat in place from its bytes.
//!
//! The registry receives every agent's heartbeat every second, and nearly
//! all of them say what the last one said. Decoding into
//! [`proto::Heartbeat`] copies each string and each operation into its own
//! allocation only for the registry to compare them with what it holds and
//! throw them away; [`read`] borrows them from the payload instead, so an
//! unchanged agent's heartbeat costs no allocation at all.

use prost::encoding::{
    DecodeContext, WireType, check_wire_type, decode_key, decode_varint, skip_field,
};
use smallvec::SmallVec;

use crate::address::{AgentAddress, validate_token};
use crate::codec::{self, CodecError, PROTOCOL_VERSION};
use crate::opcode::OpCode;
use crate::proto;

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

/// Operations a [`HeartbeatRef`] holds without allocating; an agent with
/// more still works, its list merely lives on the heap.
const INLINE_OPERATIONS: usize = 8;

/// One operation as a heartbeat lists it, its strings borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperationRef<'a> {
    /// The operation's name.
    pub op_name: &'a str,
    /// Its op code's wire value.
    pub op_code: i32,
    /// "task" or "process".
    pub op_type: &'a str,
}

impl<'a> From<&'a proto::OperationCode> for OperationRef<'a> {
    fn from(op: &'a proto::OperationCode) -> Self {
        Self {
            op_name: &op.op_name,
            op_code: op.op_code,
            op_type: &op.op_type,
        }
    }
}

/// The operations of a heartbeat, in the order it lists them.
pub type OperationRefs<'a> = SmallVec<[OperationRef<'a>; INLINE_OPERATIONS]>;

/// A heartbeat whose strings borrow from where it was read: the fields of
/// [`proto::Heartbeat`], the same values prost would decode.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // The fields are proto::Heartbeat's, documented in the .proto.
pub struct HeartbeatRef<'a> {
    pub protocol_version: u32,
    pub agent_address: &'a str,
    pub agent_class: &'a str,
    pub incarnation: &'a str,
    pub seq: u64,
    pub sent_at_unix_ms: i64,
    pub op_codes: OperationRefs<'a>,
    pub host: &'a str,
    pub pid: u32,
    pub agent_version: &'a str,
    pub interval_ms: u32,
    pub leaving: bool,
}

impl<'a> HeartbeatRef<'a> {
    /// Borrows the fields of a decoded heartbeat.
    pub fn of(heartbeat: &'a proto::Heartbeat) -> Self {
        Self {
            protocol_version: heartbeat.protocol_version,
            agent_address: &heartbeat.agent_address,
            agent_class: &heartbeat.agent_class,
            incarnation: &heartbeat.incarnation,
            seq: heartbeat.seq,
            sent_at_unix_ms: heartbeat.sent_at_unix_ms,
            op_codes: heartbeat.op_codes.iter().map(OperationRef::from).collect(),
            host: &heartbeat.host,
            pid: heartbeat.pid,
            agent_version: &heartbeat.agent_version,
            interval_ms: heartbeat.interval_ms,
            leaving: heartbeat.leaving,
        }
    }

    /// Reads an encoded `Heartbeat` in place, following protobuf's rules as
    /// prost applies them: fields in any order, the last value of a scalar
    /// wins, unknown fields are skipped, a known field with the wrong wire
    /// type is an error. One difference: prost refuses unknown groups
    /// nested about a hundred deep inside an operation, this reader a level
    /// deeper; either way they are skipped.
    pub fn parse(mut bytes: &'a [u8]) -> Result<Self, CodecError> {
        let mut heartbeat = Self {
            protocol_version: 0,
            agent_address: "",
            agent_class: "",
            incarnation: "",
            seq: 0,
            sent_at_unix_ms: 0,
            op_codes: OperationRefs::new(),
            host: "",
            pid: 0,
            agent_version: "",
            interval_ms: 0,
            leaving: false,
        };
        let buf = &mut bytes;
        while !buf.is_empty() {
            let (tag, wire_type) = decode_key(buf)?;
            match tag {
                1 => heartbeat.protocol_version = varint(wire_type, buf)? as u32,
                2 => heartbeat.agent_address = string(wire_type, buf)?,
                3 => heartbeat.agent_class = string(wire_type, buf)?,
                4 => heartbeat.incarnation = string(wire_type, buf)?,
                5 => heartbeat.seq = varint(wire_type, buf)?,
                6 => heartbeat.sent_at_unix_ms = varint(wire_type, buf)? as i64,
                7 => heartbeat
                    .op_codes
                    .push(operation(length_delimited(wire_type, buf)?)?),
                8 => heartbeat.host = string(wire_type, buf)?,
                9 => heartbeat.pid = varint(wire_type, buf)? as u32,
                10 => heartbeat.agent_version = string(wire_type, buf)?,
                11 => heartbeat.interval_ms = varint(wire_type, buf)? as u32,
                12 => heartbeat.leaving = varint(wire_type, buf)? != 0,
                _ => skip_field(wire_type, tag, buf, DecodeContext::default())?,
            }
        }
        Ok(heartbeat)
    }

    /// An owned copy.
    pub fn to_proto(&self) -> proto::Heartbeat {
        proto::Heartbeat {
            protocol_version: self.protocol_version,
            agent_address: self.agent_address.to_owned(),
            agent_class: self.agent_class.to_owned(),
            incarnation: self.incarnation.to_owned(),
            seq: self.seq,
            sent_at_unix_ms: self.sent_at_unix_ms,
            op_codes: self
                .op_codes
                .iter()
                .map(|op| proto::OperationCode {
                    op_name: op.op_name.to_owned(),
                    op_code: op.op_code,
                    op_type: op.op_type.to_owned(),
                })
                .collect(),
            host: self.host.to_owned(),
            pid: self.pid,
            agent_version: self.agent_version.to_owned(),
            interval_ms: self.interval_ms,
            leaving: self.leaving,
        }
    }
}

/// One `OperationCode` message, read in place.
fn operation(mut bytes: &[u8]) -> Result<OperationRef<'_>, CodecError> {
    let mut op = OperationRef {
        op_name: "",
        op_code: 0,
        op_type: "",
    };
    let buf = &mut bytes;
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(buf)?;
        match tag {
            1 => op.op_name = string(wire_type, buf)?,
            2 => op.op_code = varint(wire_type, buf)? as i32,
            3 => op.op_type = string(wire_type, buf)?,
            _ => skip_field(wire_type, tag, buf, DecodeContext::default())?,
        }
    }
    Ok(op)
}

fn varint(wire_type: WireType, buf: &mut &[u8]) -> Result<u64, CodecError> {
    check_wire_type(WireType::Varint, wire_type)?;
    Ok(decode_varint(buf)?)
}

fn length_delimited<'a>(wire_type: WireType, buf: &mut &'a [u8]) -> Result<&'a [u8], CodecError> {
    check_wire_type(WireType::LengthDelimited, wire_type)?;
    let len = decode_varint(buf)?;
    let rest: &'a [u8] = buf;
    if len > rest.len() as u64 {
        return Err(CodecError::Malformed("a length runs past the end"));
    }
    let (field, after) = rest.split_at(len as usize);
    *buf = after;
    Ok(field)
}

fn string<'a>(wire_type: WireType, buf: &mut &'a [u8]) -> Result<&'a str, CodecError> {
    std::str::from_utf8(length_delimited(wire_type, buf)?)
        .map_err(|_| CodecError::Malformed("a string is not UTF-8"))
}

/// Reads a heartbeat in place and checks it: size, version and every field
/// a receiver relies on. The registry's path for every heartbeat.
pub fn read(payload: &[u8], limit: usize) -> Result<HeartbeatRef<'_>, CodecError> {
    if payload.len() > limit {
        return Err(CodecError::TooLarge {
            size: payload.len(),
            limit,
        });
    }
    let heartbeat = HeartbeatRef::parse(payload)?;
    if !(1..=PROTOCOL_VERSION).contains(&heartbeat.protocol_version) {
        return Err(CodecError::UnsupportedVersion {
            found: heartbeat.protocol_version,
        });
    }
    validate(&heartbeat)?;
    Ok(heartbeat)
}

/// Decodes a heartbeat into an owned message and checks every field a
/// receiver relies on.
pub fn decode(payload: &[u8], limit: usize) -> Result<proto::Heartbeat, CodecError> {
    let heartbeat: proto::Heartbeat = codec::decode(payload, limit)?;
    validate(&HeartbeatRef::of(&heartbeat))?;
    Ok(heartbeat)
}

/// Checks the fields of a heartbeat.
pub fn validate(heartbeat: &HeartbeatRef<'_>) -> Result<(), CodecError> {
    AgentAddress::check(heartbeat.agent_address)?;
    uuid::Uuid::parse_str(heartbeat.incarnation).map_err(|err| CodecError::InvalidField {
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
        validate_token("operation name", op.op_name)?;
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
        if !OP_TYPES.contains(&op.op_type) {
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
fn listed_twice<'a>(ops: &[OperationRef<'a>]) -> Option<&'a str> {
    const PAIRWISE_UP_TO: usize = 16;
    if ops.len() <= PAIRWISE_UP_TO {
        return ops
            .iter()
            .enumerate()
            .find(|(i, op)| ops[..*i].iter().any(|seen| seen.op_name == op.op_name))
            .map(|(_, op)| op.op_name);
    }
    let mut names = std::collections::HashSet::with_capacity(ops.len());
    ops.iter()
        .map(|op| op.op_name)
        .find(|name| !names.insert(*name))
}

#[cfg(test)]
mod tests;

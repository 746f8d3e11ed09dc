"""The ocs-nats wire in Python: subjects, codes, sessions and encodings.

Mirrors the Rust crate ``ocs-protocol``; ``protocol/PROTOCOL.md`` is the
contract both follow.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack

from . import OpCode
from . import ocs_pb2 as pb

PROTOCOL_VERSION = 1
ACTIONS = ("start", "stop", "abort", "wait", "status")
STATUSES = ("starting", "running", "stopping", "done")
OP_TYPES = ("task", "process")
SESSIONS_BUCKET = "ocs_sessions"
HEARTBEAT_FEED = "heartbeat"
#: The largest message a NATS server accepts by default.
MAX_MESSAGE_BYTES = 1024 * 1024
#: An agent keeps at most this many session messages, dropping the oldest.
MAX_MESSAGES = 10_000
#: Messages older than this are dropped once more than MIN_MESSAGES are kept.
MESSAGE_MAX_AGE_SECONDS = 3600.0
MIN_MESSAGES = 5


class RequestError(Exception):
    """A request body the agent cannot act on; the text is the reply's message."""


def check_name(name: str) -> None:
    """Operation and feed names are single NATS tokens of ``[A-Za-z0-9_-]``,
    1 to 128 characters."""
    if not 1 <= len(name) <= 128 or not all(
        c.isascii() and (c.isalnum() or c in "-_") for c in name
    ):
        raise ValueError(f"{name!r} is not a valid name: 1 to 128 of A-Z, a-z, 0-9, - and _")


def heartbeat_subject(address: str) -> str:
    return f"{address}.feeds.{HEARTBEAT_FEED}"


def feed_subject(address: str, feed: str) -> str:
    return f"{address}.feeds.{feed}"


def ops_subject(address: str, action: str, op_name: str) -> str:
    return f"{address}.ops.{action}.{op_name}"


def api_subject(address: str) -> str:
    return f"{address}.api"


def ping_subject(address: str) -> str:
    return f"{address}.ping"


def session_key(address: str, op_name: str) -> str:
    return f"{address}.{op_name}"


def inbox_prefix(user: str | None) -> str | None:
    """``_INBOX.{user}``: a client's replies come to inboxes of its own user,
    which the server's permissions keep from every other user; ``None`` (the
    default ``_INBOX``) for no user or a name that is not a subject token."""
    if not user or any(c.isspace() or c in ".*>" for c in user):
        return None
    return f"_INBOX.{user}"


def registry_records_subject(registry_address: str) -> str:
    return f"{registry_address}.records"


#: The key of the registry's ``main`` session data that says the records
#: come in pages on ``{registry}.records`` (the fleet is too large for one
#: message).
RECORDS_IN_PAGES = "records_in_pages"
#: The heartbeat interval a record leaves unsaid.
_DEFAULT_INTERVAL_MS = 1000


def agent_record(record: pb.AgentRecord) -> dict:
    """A registry record as ``registry main status`` shows it in ``data``
    (PROTOCOL.md's table: OCS's keys, and the optional ones when set)."""
    state = {
        pb.AGENT_STATE_ALIVE: "alive",
        pb.AGENT_STATE_EXPIRED: "expired",
        pb.AGENT_STATE_LEFT: "left",
    }.get(record.state, "unknown")

    def seconds(unix_ms: int):
        return unix_ms / 1000.0 if unix_ms else None

    shown = {
        "agent_address": record.agent_address,
        "agent_class": record.agent_class,
        "expired": record.expired,
        "host": record.host,
        "incarnation": record.incarnation,
        "last_updated": seconds(record.last_updated_unix_ms),
        "op_codes": {op.op_name: op.op_code for op in record.op_codes},
        "pid": record.pid,
        "state": state,
        "time_expired": seconds(record.time_expired_unix_ms),
    }
    if record.HasField("conflict"):
        other = record.conflict
        shown["conflict"] = {"host": other.host, "incarnation": other.incarnation, "pid": other.pid}
    if record.flapping:
        shown["flapping"] = True
    if record.interval_ms != _DEFAULT_INTERVAL_MS:
        shown["heartbeat_interval"] = record.interval_ms / 1000.0
    if record.incarnations_seen > 1:
        shown["incarnations_seen"] = record.incarnations_seen
    if record.unverified:
        shown["unverified"] = True
    if record.agent_version:
        shown["version"] = record.agent_version
    return shown


def op_code(status: str, degraded: bool, success: bool | None) -> OpCode:
    """OCS's rule: the op code follows from the session's status."""
    if status == "starting":
        return OpCode.STARTING
    if status == "running":
        return OpCode.DEGRADED if degraded else OpCode.RUNNING
    if status == "stopping":
        return OpCode.STOPPING
    return OpCode.SUCCEEDED if success else OpCode.FAILED


def pack(value: Any) -> bytes:
    """A MessagePack map (or any value) with named keys."""
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes) -> Any:
    """Empty bytes stand for an empty map."""
    if not data:
        return {}
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def decode_request(body: bytes) -> tuple[dict, float | None]:
    """The params and wait timeout of an ``OperationRequest`` body."""
    if not body:
        return {}, None
    try:
        request = pb.OperationRequest.FromString(body)
    except Exception as err:
        raise RequestError(f"malformed request: {err}") from err
    if not 1 <= request.protocol_version <= PROTOCOL_VERSION:
        raise RequestError(
            "malformed request: unsupported protocol version "
            f"{request.protocol_version} (this build reads 1..={PROTOCOL_VERSION})"
        )
    timeout = request.timeout if request.HasField("timeout") else None
    if timeout is not None and not math.isfinite(timeout):
        raise RequestError(
            "malformed request: wait timeout must be a finite number of seconds, "
            f"got {_rust_float(timeout)}"
        )
    try:
        params = unpack(request.params)
    except Exception as err:
        raise RequestError(f"malformed request: params: {err}") from err
    if not isinstance(params, dict):
        raise RequestError("malformed request: params must be a map")
    return params, timeout


def _rust_float(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "inf" if value > 0 else "-inf"


def encode_request(params: dict | None = None, timeout: float | None = None) -> bytes:
    request = pb.OperationRequest(protocol_version=PROTOCOL_VERSION)
    if params:
        request.params = pack(params)
    if timeout is not None:
        request.timeout = timeout
    return request.SerializeToString()


def session_to_pb(session: dict) -> pb.Session:
    """OCS's encoded session (a dict) as the wire's ``Session``."""
    message = pb.Session(
        session_id=session["session_id"],
        op_name=session["op_name"],
        op_code=int(session["op_code"]),
        status=session["status"],
        degraded=bool(session.get("degraded", False)),
        start_time=float(session["start_time"]),
        data=pack(session.get("data") or {}),
        messages=[
            pb.SessionMessage(timestamp=float(t), text=str(text))
            for t, text in session.get("messages", [])
        ],
    )
    if session.get("success") is not None:
        message.success = bool(session["success"])
    if session.get("end_time") is not None:
        message.end_time = float(session["end_time"])
    return message


def session_from_pb(message: pb.Session) -> dict:
    """The wire's ``Session`` as OCS's encoded session."""
    try:
        data = unpack(message.data)
    except Exception:
        data = {}
    return {
        "session_id": message.session_id,
        "op_name": message.op_name,
        "op_code": message.op_code,
        "status": message.status,
        "degraded": message.degraded,
        "success": message.success if message.HasField("success") else None,
        "start_time": message.start_time,
        "end_time": message.end_time if message.HasField("end_time") else None,
        "data": data,
        "messages": [[m.timestamp, m.text] for m in message.messages],
    }

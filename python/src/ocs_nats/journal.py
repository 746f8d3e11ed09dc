"""Sessions kept in JetStream KV (bucket ``ocs_sessions``), so that a session
outlives its process, as the Rust agents keep them.

The agent puts each session's changes under ``{root}.{iid}.{op}``; its next
incarnation reads them back. A finished session is shown again by
``status``; one a dead incarnation left running is marked FAILED with that
reason, so nobody sees a dead run as running. Without JetStream the agent
runs without the journal: logged once, never fatal.
"""

from __future__ import annotations

import asyncio
import time

from nats.js import api
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from . import ocs_pb2 as pb
from .wire import PROTOCOL_VERSION, SESSIONS_BUCKET, op_code, session_key

#: Every KV call is bounded: the journal must never hold up control work.
TIMEOUT = 2.0

# The bucket as the Rust agents create it: several writers share it, so it
# refuses rollups and purges, and its size is bounded.
_STREAM = api.StreamConfig(
    name=f"KV_{SESSIONS_BUCKET}",
    description="Last sessions of every operation of every agent",
    subjects=[f"$KV.{SESSIONS_BUCKET}.>"],
    max_msgs_per_subject=5,
    max_bytes=64 * 1024 * 1024,
    max_age=90 * 24 * 3600,
    max_msg_size=256 * 1024,
    storage=api.StorageType.FILE,
    num_replicas=1,
    allow_rollup_hdrs=False,
    deny_delete=True,
    deny_purge=True,
    allow_direct=True,
    discard=api.DiscardPolicy.NEW,
)


class Journal:
    def __init__(self, kv, address: str, incarnation: str):
        self._kv, self._address, self._incarnation = kv, address, incarnation

    @classmethod
    async def open(cls, nc, address: str, incarnation: str) -> Journal:
        js = nc.jetstream(timeout=TIMEOUT)
        try:
            kv = await js.key_value(SESSIONS_BUCKET)
        except (BucketNotFoundError, NotFoundError):
            await js.add_stream(config=_STREAM)
            kv = await js.key_value(SESSIONS_BUCKET)
        return cls(kv, address, incarnation)

    async def last(self, op_name: str) -> pb.StoredSession | None:
        try:
            entry = await asyncio.wait_for(
                self._kv.get(session_key(self._address, op_name)), TIMEOUT
            )
        except KeyNotFoundError:
            return None
        stored = pb.StoredSession.FromString(entry.value or b"")
        if not 1 <= stored.protocol_version <= PROTOCOL_VERSION:
            return None
        return stored

    async def record(self, session: pb.Session) -> None:
        await self.put(
            pb.StoredSession(
                protocol_version=PROTOCOL_VERSION, incarnation=self._incarnation, session=session
            )
        )

    async def put(self, stored: pb.StoredSession) -> None:
        key = session_key(self._address, stored.session.op_name)
        await asyncio.wait_for(self._kv.put(key, stored.SerializeToString()), TIMEOUT)


def recover(
    stored: pb.StoredSession, incarnation: str, now: float | None = None
) -> tuple[pb.StoredSession, bool]:
    """What this incarnation makes of a stored session: one another
    incarnation left unfinished is marked FAILED, because that process is
    gone. Returns the session to show and whether it changed."""
    session = stored.session
    if session.status == "done" or stored.incarnation == incarnation:
        return stored, False
    now = time.time() if now is None else now
    session.messages.append(
        pb.SessionMessage(
            timestamp=now,
            text=(
                f"The agent died while this operation was {session.status} "
                f"(incarnation {stored.incarnation}); marked failed by incarnation {incarnation}."
            ),
        )
    )
    session.messages.append(pb.SessionMessage(timestamp=now, text='Status is now "done".'))
    session.status = "done"
    session.success = False
    session.end_time = now
    session.op_code = int(op_code("done", session.degraded, False))
    return stored, True

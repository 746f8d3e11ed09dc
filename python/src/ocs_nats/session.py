"""OCS's ``OpSession``: one run of an operation, shared by the operation's
code (often in a worker thread) and the agent's event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from . import OpCode
from .wire import MAX_MESSAGES, MESSAGE_MAX_AGE_SECONDS, MIN_MESSAGES, STATUSES, op_code


class OpSession:
    """A session of an operation, as OCS's.

    The operation reads ``status`` (``'stopping'`` asks it to end), calls
    ``set_status('running')`` once it runs, ``add_message`` to log, and sets
    ``data`` and ``degraded``. Every change is reported to the agent, which
    heartbeats at once when the op code changes and journals the session.
    """

    def __init__(
        self,
        session_id: int,
        op_name: str,
        on_change: Callable[[OpSession, bool], None] = lambda _session, _code: None,
        start_time: float | None = None,
        app=None,
    ):
        self._lock = threading.RLock()
        #: OCS's ``session.app``: the agent (``session.app.publish_to_feed``).
        self.app = app
        #: OCS's credential level of the caller; 1 as under OCS's "none" policy,
        #: as NATS permissions, not the agent, decide who may call.
        self.cred_level = 1
        self._on_change = on_change
        #: Set on the agent's loop once the session is done: what `wait` awaits.
        self.finished = asyncio.Event()
        self.session_id = session_id
        self.op_name = op_name
        self.status = "starting"
        self.start_time = time.time() if start_time is None else start_time
        self.end_time: float | None = None
        self.success: bool | None = None
        self.messages: list[list] = []
        self._data: dict = {}
        self._degraded = False
        self._add(f'Status is now "{self.status}".', self.start_time)

    @property
    def op_code(self) -> OpCode:
        return op_code(self.status, self._degraded, self.success)

    @property
    def data(self) -> dict:
        return self._data

    @data.setter
    def data(self, value: dict) -> None:
        with self._lock:
            self._data = value
        self._on_change(self, False)

    @property
    def degraded(self) -> bool:
        return self._degraded

    @degraded.setter
    def degraded(self, value: bool) -> None:
        with self._lock:
            before = self.op_code
            self._degraded = bool(value)
            changed = self.op_code != before
        self._on_change(self, changed)

    def set_status(self, status: str, timestamp: float | None = None) -> None:
        """Moves the session forward to ``status``; never back."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
        with self._lock:
            if STATUSES.index(status) <= STATUSES.index(self.status):
                return
            before = self.op_code
            now = time.time() if timestamp is None else timestamp
            self.status = status
            if status == "done":
                self.end_time = now
            self._add(f'Status is now "{status}".', now)
            changed = self.op_code != before
        self._on_change(self, changed)

    def add_message(self, message: str, timestamp: float | None = None) -> None:
        with self._lock:
            self._add(str(message), time.time() if timestamp is None else timestamp)
        self._on_change(self, False)

    def finish(self, success: bool, message: str) -> None:
        """Ends the session (the framework's call, once the operation returned)."""
        with self._lock:
            if self.status == "done":
                return
            now = time.time()
            self._add(message, now)
            self.success = bool(success)
        self.set_status("done", now)

    @property
    def done(self) -> bool:
        return self.status == "done"

    def _add(self, text: str, now: float) -> None:
        self.messages.append([now, text])
        if len(self.messages) > MAX_MESSAGES:
            del self.messages[: len(self.messages) - MAX_MESSAGES]
        while len(self.messages) > MIN_MESSAGES and now - self.messages[0][0] > (
            MESSAGE_MAX_AGE_SECONDS
        ):
            del self.messages[0]

    def encoded(self) -> dict:
        """OCS's session dict."""
        with self._lock:
            return {
                "session_id": self.session_id,
                "op_name": self.op_name,
                "op_code": int(self.op_code),
                "status": self.status,
                "degraded": self._degraded,
                "success": self.success,
                "start_time": self.start_time,
                "end_time": self.end_time,
                # A copy: the operation's thread may change the map while the
                # loop encodes it.
                "data": dict(self._data),
                "messages": [list(m) for m in self.messages],
            }

    @classmethod
    def restored(cls, encoded: dict, on_change) -> OpSession:
        """A session read back from the journal."""
        session = cls(encoded["session_id"], encoded["op_name"], on_change, encoded["start_time"])
        session.status = encoded["status"]
        session.end_time = encoded.get("end_time")
        session.success = encoded.get("success")
        session.messages = [list(m) for m in encoded.get("messages", [])]
        session._data = encoded.get("data") or {}
        session._degraded = bool(encoded.get("degraded"))
        return session

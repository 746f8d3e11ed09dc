"""OCS's ``ocs.ocs_client`` on ocs-nats: scripts port by changing the import.

``OCSClient('faker1')`` reads the agent's ``api`` and makes each operation an
attribute: ``client.acq.start()``, ``.wait(timeout=)``, ``.status()``,
``.stop()`` (processes), ``.abort()`` (tasks), and ``client.count(n=3)`` runs a
task to its end. Replies are OCS's ``OCSReply(status, msg, session)``. It
talks to Rust and Python agents alike, and to the registry
(``OCSClient('registry').main.status()``).

The client is synchronous, as OCS's: a private event loop in a daemon thread
carries its NATS connection.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import re
import threading
import time

from . import ResponseCode, wire
from . import ocs_pb2 as pb
from .connection import args_from_env, connect

#: Bounds every request but ``wait``, which waits as long as asked.
REQUEST_TIMEOUT = 10.0
#: A ``wait`` without a timeout waits this long per request, then asks again.
WAIT_SLICE = 3600.0


class OCSReply(collections.namedtuple("_OCSReply", ["status", "msg", "session"])):
    """``(status, msg, session)``, shown as OCS shows it."""

    def __repr__(self) -> str:
        try:
            ok = ResponseCode(self.status).name
        except ValueError:
            ok = "???"
        text = f"OCSReply: {ok} : {self.msg}\n"
        session = self.session
        if not session:
            return text + "  (no session -- op has never run)"
        try:
            run = f"status={session['status']}"
            if session["status"] in ("starting", "running"):
                run += f" for {_humanized(time.time() - session['start_time'])}"
            elif session["status"] == "done":
                run += " without error" if session["success"] else " with ERROR"
                run += (
                    f" {_humanized(time.time() - session['end_time'])} ago, "
                    f"took {_humanized(session['end_time'] - session['start_time'])}"
                )
            text += f"  {session['op_name']}[session={session['session_id']}]; {run}\n"
            messages = session.get("messages", [])
            if messages:
                shown = messages[-5:]
                text += f"  messages ({len(shown)} of {len(messages)}):\n"
                for timestamp, message in shown:
                    text += f"    {timestamp:.3f} {message}\n"
            shown_keys = {
                "op_name",
                "session_id",
                "status",
                "start_time",
                "end_time",
                "messages",
                "success",
            }
            other = [key for key in session if key not in shown_keys]
            if other:
                text += "  other keys in .session: " + ", ".join(other)
        except Exception as err:
            text += (
                f"\n  [session decode failed with exception: {err.args}\n"
                f"  Here is everything in .session:\n {session}\n]"
            )
        return text


def _humanized(seconds: float) -> str:
    if abs(seconds) < 1:
        return f"{seconds:.6f} s"
    if abs(seconds) < 120:
        return f"{seconds:.1f} s"
    if abs(seconds) < 120 * 60:
        return f"{seconds / 60:.1f} mins"
    if abs(seconds) < 48 * 3600:
        return f"{seconds / 3600:.1f} hrs"
    return f"{seconds / 86400:.1f} days"


log = logging.getLogger("ocs_nats.ocs_client")


class NotPermitted(Exception):
    """The server's permissions refused a request or its reply, at once:
    this NATS user may not make the call (a viewer starting an operation)."""


#: The server's error names what it refused (nats-server's wording).
_REFUSAL = re.compile(
    r'permissions violation for (publish|subscription) to "([^"]+)"', re.IGNORECASE
)


def refusal(error: str) -> tuple[str, str] | None:
    """``("publish" | "subscription", subject)`` from a server's permissions
    violation, ``None`` for any other error."""
    match = _REFUSAL.search(error)
    return (match.group(1).lower(), match.group(2)) if match else None


class _Connection:
    """A NATS connection on a private event loop, for synchronous callers.

    The server refuses a forbidden publish or subscription only with an
    asynchronous error; waiting requests learn of it here and fail at once,
    as the Rust client does, instead of waiting out their timeout."""

    def __init__(self, args: argparse.Namespace, name: str):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()
        # (subject, future) of every request in flight; touched on the loop only.
        self._waiting: set[tuple[str, asyncio.Future]] = set()
        try:
            self._nc = self.call(
                connect(args, name=name, error_cb=self._on_error), timeout=REQUEST_TIMEOUT
            )
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise

    def call(self, coroutine, timeout: float):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _on_error(self, error: Exception) -> None:
        refused = refusal(str(error))
        if refused is None:
            log.warning("NATS error: %s", error)
            return
        kind, subject = refused
        for asked, future in self._waiting:
            if future.done():
                continue
            if kind == "publish" and subject == asked:
                future.set_exception(
                    NotPermitted(f"not permitted: this NATS user may not publish to {subject}")
                )
            elif kind == "subscription" and subject.startswith("_INBOX"):
                future.set_exception(
                    NotPermitted(
                        f"not permitted: this NATS user may not subscribe to {subject}, its replies"
                    )
                )

    def request(self, subject: str, body: bytes, timeout: float) -> bytes:
        async def ask():
            refused = self._loop.create_future()
            waiting = (subject, refused)
            self._waiting.add(waiting)
            reply = asyncio.ensure_future(self._nc.request(subject, body, timeout=timeout))
            try:
                await asyncio.wait({reply, refused}, return_when=asyncio.FIRST_COMPLETED)
                if reply.done():
                    return reply.result().data
                return refused.result()
            finally:
                self._waiting.discard(waiting)
                reply.cancel()
                refused.cancel()

        return self.call(ask(), timeout + 1.0)

    def close(self) -> None:
        try:
            self.call(self._nc.close(), timeout=2.0)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)


class ControlClient:
    """Requests to one agent: ``request(action, op_name, ...)`` returns
    OCS's ``(status, message, session)``."""

    def __init__(self, instance_id: str, args: argparse.Namespace | None = None):
        args = args if args is not None else args_from_env()
        self.address = f"{args.address_root}.{instance_id}"
        self._connection = _Connection(args, f"ocs-client {self.address}")

    def request(self, action, op_name, params=None, timeout=None):
        subject = wire.ops_subject(self.address, action, op_name)
        if action == "wait" and timeout is None:
            # Without a limit: ask in long slices, as OCS waits forever.
            body = wire.encode_request(None, WAIT_SLICE)
            while True:
                reply = self._decode(
                    self._connection.request(subject, body, WAIT_SLICE + REQUEST_TIMEOUT)
                )
                if reply[0] != ResponseCode.TIMEOUT:
                    return reply
        waited = REQUEST_TIMEOUT + (max(timeout, 0) if action == "wait" else 0)
        body = wire.encode_request(params, timeout)
        return self._decode(self._connection.request(subject, body, waited))

    def records(
        self,
        states=(),
        classes=(),
        agent_pattern: str = "",
        summary_only: bool = False,
    ) -> tuple[dict, dict]:
        """For a registry: every record the filters select, read page after
        page from ``{registry}.records`` (each under the server's limit), as
        ``{address: record}``, and the summary of the first page."""
        query = pb.RecordsQuery(
            protocol_version=wire.PROTOCOL_VERSION,
            summary_only=summary_only,
            states=list(states),
            classes=list(classes),
            agent_pattern=agent_pattern,
        )
        subject = wire.registry_records_subject(self.address)
        records, summary = {}, {}
        while True:
            page = pb.RecordsPage.FromString(
                self._connection.request(subject, query.SerializeToString(), REQUEST_TIMEOUT)
            )
            if page.error:
                raise RuntimeError(f"{self.address} refused the records query: {page.error}")
            if page.HasField("summary") and not query.after:
                summary = {
                    "agents": page.summary.agents,
                    "by_state": dict(page.summary.by_state),
                    "by_class": dict(page.summary.by_class),
                }
            for record in page.records:
                records[record.agent_address] = wire.agent_record(record)
            if not page.next_after:
                return records, summary
            query.after = page.next_after

    def get_api(self) -> pb.ApiReply:
        data = self._connection.request(wire.api_subject(self.address), b"", REQUEST_TIMEOUT)
        return pb.ApiReply.FromString(data)

    @staticmethod
    def _decode(data: bytes):
        reply = pb.OperationReply.FromString(data)
        session = wire.session_from_pb(reply.session) if reply.HasField("session") else {}
        return ResponseCode(reply.status), reply.message, session

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *_) -> None:
        self.close()


class _Operation:
    def __init__(self, client: ControlClient, name: str, docstring: str):
        self._client, self._name = client, name
        self.__doc__ = docstring

    def start(self, **params) -> OCSReply:
        return OCSReply(*self._client.request("start", self._name, params=params))

    def wait(self, timeout: float | None = None) -> OCSReply:
        return OCSReply(*self._client.request("wait", self._name, timeout=timeout))

    def status(self) -> OCSReply:
        status, message, session = self._client.request("status", self._name)
        data = session.get("data") if session else None
        if isinstance(data, dict) and wire.RECORDS_IN_PAGES in data:
            # The registry's fleet is too large for one message: its records
            # come in pages, and the reply shows them as a small fleet's would.
            session["data"], _ = self._client.records()
        return OCSReply(status, message, session)


class _Task(_Operation):
    def abort(self) -> OCSReply:
        return OCSReply(*self._client.request("abort", self._name))

    def __call__(self, **params) -> OCSReply:
        """Starts the task and, if that succeeds, waits for its end."""
        reply = self.start(**params)
        if reply.status != ResponseCode.OK:
            return reply
        return self.wait()


class _Process(_Operation):
    def stop(self) -> OCSReply:
        return OCSReply(*self._client.request("stop", self._name))

    def __call__(self) -> OCSReply:
        """The process's status."""
        return self.status()


class OCSClient:
    """OCS's simple client: the agent's operations as attributes."""

    def __init__(self, instance_id: str, args: argparse.Namespace | None = None, **_):
        self.instance_id = instance_id
        self._client = ControlClient(instance_id, args)
        try:
            self._api = self._client.get_api()
        except BaseException:
            # No agent answers (yet): a script may retry, and must not leak
            # a connection per attempt.
            self._client.close()
            raise
        self.agent_class = self._api.agent_class
        for info in self._api.operations:
            kind = _Task if info.op_type == "task" else _Process
            setattr(
                self,
                info.op_name.replace("-", "_"),
                kind(self._client, info.op_name, info.docstring),
            )

    def __repr__(self) -> str:
        return f"OCSClient('{self.instance_id}')"

    def close(self) -> None:
        """Closes the connection (``with OCSClient(...) as client:`` does it)."""
        self._client.close()

    def __enter__(self) -> OCSClient:
        return self

    def __exit__(self, *_) -> None:
        self.close()

"""OCS's ``ocs.ocs_agent`` on ocs-nats: an agent ports by changing its imports.

One asyncio event loop carries NATS: the heartbeat, every request and the
session journal, and Twisted's reactor when Twisted is installed (see
``event_loop``). Blocking operations (OCS's default) run in worker threads;
non-blocking ones run on the loop: ``async def`` coroutines, or OCS-style
Twisted ``inlineCallbacks`` functions returning Deferreds. A session's
changes reach the loop through ``call_soon_threadsafe``, so an op-code change
is heartbeated at once whichever thread made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import OpCode, ResponseCode, __version__, event_loop, wire
from . import ocs_pb2 as pb
from .agent_log import AgentLog
from .connection import connect
from .journal import Journal, recover
from .lifecycle import stop_with_parent
from .ocs_feed import Feed
from .params import ParamError, check_params, param, specs_of
from .session import OpSession

__all__ = ["OCSAgent", "OpSession", "ParamError", "init_site_agent", "param"]

log = logging.getLogger("ocs_nats.agent")

# Twisted's reactor must be on the agent's loop before an agent module
# imports `twisted.internet.reactor`: OCS agents import ocs_agent first.
event_loop.agent_loop()

#: The heartbeat's period.
HEARTBEAT_INTERVAL = 1.0
#: On SIGINT or SIGTERM, how long running operations get to end.
STOP_GRACE = 5.0
#: How often an agent without its journal tries to open it again.
JOURNAL_RETRY = 5.0


def init_site_agent(args, address: str | None = None):
    """The agent and its runner, as OCS's ``ocs_agent.init_site_agent``."""
    agent = OCSAgent(args, address=address)
    return agent, AgentRunner()


class AgentRunner:
    """Runs an agent until SIGINT or SIGTERM (OCS's ``ApplicationRunner``)."""

    def run(self, agent: OCSAgent, auto_reconnect: bool = True) -> None:
        if not logging.getLogger().handlers:
            # The real stderr: txaio.start_logging (OCS agents call it) points
            # sys.stderr into Twisted's log, which would stamp every line twice.
            handler = logging.StreamHandler(sys.__stderr__)
            if getattr(agent.site_args, "log_format", "text") == "json":
                handler.setFormatter(_JsonFormatter())
            else:
                handler.setFormatter(
                    logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
                )
            logging.basicConfig(
                level=os.environ.get("LOG_LEVEL", "INFO").upper(), handlers=[handler]
            )
        stop_with_parent()
        loop = event_loop.agent_loop()
        try:
            loop.run_until_complete(agent._run(auto_reconnect))
        finally:
            event_loop.stop_twisted()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, with the fields the Rust services log."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "timestamp": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "target": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


@dataclass
class _Operation:
    name: str
    kind: str  # "task" or "process"
    func: Callable
    stopper: Callable | None  # a process's stop function, a task's aborter
    blocking: bool
    stopper_blocking: bool
    session: OpSession | None = None

    @property
    def stop_action(self) -> str:
        return "stop" if self.kind == "process" else "abort"


Reply = tuple[int, str, dict | None]


class OCSAgent:
    """An agent: register tasks and processes, then ``runner.run(agent)``."""

    def __init__(self, site_args, address: str | None = None):
        self.site_args = site_args
        self.agent_address = address or f"{site_args.address_root}.{site_args.instance_id}"
        self.agent_class = getattr(site_args, "agent_class", None) or "PythonAgent"
        self.agent_version = __version__
        self.incarnation = str(uuid.uuid4())
        self._log = logging.getLogger(f"ocs_nats.agent.{self.agent_address}")
        #: OCS's ``agent.log`` (txaio-style: ``log.info("{x}", x=...)``).
        self.log = AgentLog(self._log)
        self.ops: dict[str, _Operation] = {}
        self.feeds: dict[str, Feed] = {}
        #: OCS's switch: while False the agent sends no heartbeat, so the
        #: registry expires it (OCS's fake-data agent tests liveness so).
        self._heartbeat_on = True
        self.startup_ops: list[tuple[str, dict]] = []
        self._next_session_id = 0
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nc = None
        self._seq = 0
        self._started = time.monotonic()
        self._beat_now: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._journal: Journal | None = None
        self._unjournaled: set[str] = set()
        self._journal_wake: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()

    # -- registration, as OCS -------------------------------------------------

    # ``min_privs`` is accepted and not enforced here: a request carries no
    # caller identity on NATS, so who may start what is the server's
    # per-user permissions (deploy/nats/permissions.conf), down to one
    # operation's start subject if a site needs it.
    def register_task(
        self,
        name,
        func,
        aborter=None,
        blocking=True,
        aborter_blocking=None,
        startup=False,
        min_privs=0,
    ):
        """Registers a task: ``func(session, params)`` returns ``(ok, message)``."""
        self._register(name, "task", func, aborter, blocking, aborter_blocking, startup)

    def register_process(
        self,
        name,
        start_func,
        stop_func,
        blocking=True,
        stopper_blocking=None,
        startup=False,
        min_privs=0,
    ):
        """Registers a process: it runs until ``stop_func(session, params)`` asks it to end."""
        self._register(name, "process", start_func, stop_func, blocking, stopper_blocking, startup)

    def _register(self, name, kind, func, stopper, blocking, stopper_blocking, startup):
        wire.check_name(name)
        if name in self.ops:
            raise ValueError(f"operation {name!r} is registered twice")
        for what, callable_ in (("function", func), ("stopper", stopper)):
            if callable_ is not None and inspect.isgeneratorfunction(callable_):
                raise TypeError(
                    f"{name}: the {what} is a bare generator: decorate it with Twisted's "
                    "inlineCallbacks (as OCS agents do), or make it `async def`"
                )
        self.ops[name] = _Operation(
            name,
            kind,
            func,
            stopper,
            bool(blocking),
            bool(blocking if stopper_blocking is None else stopper_blocking),
        )
        if startup is not False:
            self.startup_ops.append((name, startup if isinstance(startup, dict) else {}))

    def register_feed(self, feed_name, record=False, agg_params=None, buffer_time=None, **_):
        """Declares a feed; ``publish_to_feed`` sends on it."""
        if feed_name not in self.feeds:
            self.feeds[feed_name] = Feed(feed_name, record, agg_params, buffer_time)
        return self.feeds[feed_name]

    def publish_to_feed(self, feed_name, message, from_reactor=None):
        """Publishes ``message`` (a map) on the feed, from any thread."""
        feed = self.feeds.get(feed_name)
        if feed is None:
            raise ValueError(f"feed {feed_name!r} is not registered")
        seq = feed.next_seq()
        body = pb.FeedMessage(
            protocol_version=wire.PROTOCOL_VERSION,
            agent_address=self.agent_address,
            feed_name=feed_name,
            seq=seq,
            sent_at_unix_ms=int(time.time() * 1000),
            payload=wire.pack(message),
        ).SerializeToString()
        subject = wire.feed_subject(self.agent_address, feed_name)
        self._in_loop(lambda: self._spawn(self._nc.publish(subject, body)))

    # -- actions, usable from operations too ---------------------------------

    def start(self, op_name: str, params: dict | None = None) -> Reply:
        """OCS ``start``: launches the operation; returns ``(status, msg, session)``."""
        op = self.ops.get(op_name)
        if op is None:
            return ResponseCode.ERROR, f'No task or process called "{op_name}"', None
        with self._lock:
            if op.session is not None and not op.session.done:
                return (
                    ResponseCode.ERROR,
                    f'Operation "{op_name}" already in progress.',
                    op.session.encoded(),
                )
            try:
                params = check_params(op.func, params)
            except ParamError as err:
                return ResponseCode.ERROR, f'Param error for "{op_name}": {err}', None
            session = OpSession(self._next_session_id, op_name, self._session_changed, app=self)
            self._next_session_id += 1
            op.session = session
        self._session_changed(session, True)
        self._launch(op.func, op.blocking, session, params, finishes=True)
        return ResponseCode.OK, f'Started {op.kind} "{op_name}".', session.encoded()

    def stop(self, op_name: str, params: dict | None = None) -> Reply:
        """OCS ``stop``, for processes."""
        return self._request_stop(op_name, "stop", params)

    def abort(self, op_name: str, params: dict | None = None) -> Reply:
        """OCS ``abort``, for tasks."""
        return self._request_stop(op_name, "abort", params)

    def status(self, op_name: str) -> Reply:
        op = self.ops.get(op_name)
        if op is None:
            return ResponseCode.ERROR, f'No task or process called "{op_name}"', None
        if op.session is None:
            return ResponseCode.OK, "No session active.", None
        return ResponseCode.OK, "Session active.", op.session.encoded()

    def _request_stop(self, op_name: str, action: str, params: dict | None) -> Reply:
        op = self.ops.get(op_name)
        if op is None:
            return ResponseCode.ERROR, f'No operation called "{op_name}".', None
        if op.stop_action != action:
            return (
                ResponseCode.ERROR,
                f'Cannot "{action}" "{op_name}" because it is a "{op.kind}".',
                None,
            )
        session = op.session
        if session is None:
            return ResponseCode.ERROR, "No session active.", None
        with self._lock:
            if session.status == "stopping":
                return ResponseCode.ERROR, "The operation is already stopping", None
            if session.done:
                return ResponseCode.ERROR, "The operation is already done", None
            # As the Rust agents (not OCS): the framework moves the session to
            # "stopping" itself, so a loop that watches the status ends.
            session.set_status("stopping")
        if op.stopper is not None:
            self._launch(op.stopper, op.stopper_blocking, session, params or {}, finishes=False)
        return (
            ResponseCode.OK,
            f'Requested {action} on {op.kind} "{op_name}".',
            session.encoded(),
        )

    async def _wait(self, op_name: str, timeout: float | None) -> Reply:
        op = self.ops.get(op_name)
        if op is None:
            return ResponseCode.ERROR, f'Unknown operation "{op_name}".', None
        session = op.session
        if session is None:
            return ResponseCode.OK, "Idle.", None
        if not session.done and (timeout is None or timeout > 0):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(session.finished.wait(), timeout)
        if session.done:
            code = OpCode(session.op_code).name
            return (
                ResponseCode.OK,
                f'Operation "{op_name}" is currently not running ({code}).',
                session.encoded(),
            )
        return (
            ResponseCode.TIMEOUT,
            f'Operation "{op_name}" still running; wait timed out.',
            session.encoded(),
        )

    # -- running operations ---------------------------------------------------

    def _launch(self, func, blocking, session, params, finishes):
        if blocking:
            thread = threading.Thread(
                target=self._run_blocking,
                args=(func, session, params, finishes),
                name=f"{session.op_name}-{session.session_id}",
                daemon=True,
            )
            thread.start()
        else:
            self._in_loop(lambda: self._spawn(self._run_async(func, session, params, finishes)))

    # A start function's session is "running" once it is called, as in OCS
    # 0.12 (agents that set it themselves change nothing: status never goes
    # back); a stopper runs in a session that is already stopping.
    def _run_blocking(self, func, session, params, finishes):
        try:
            if finishes:
                session.set_status("running")
            outcome = _outcome(func(session, params))
        except Exception as err:
            self._log.error("%s crashed:\n%s", session.op_name, traceback.format_exc())
            outcome = False, f"Crash in thread: {err!r}"
        self._end(session, outcome, finishes)

    async def _run_async(self, func, session, params, finishes):
        try:
            if finishes:
                session.set_status("running")
            outcome = _outcome(await event_loop.settle(func(session, params)))
        except Exception as err:
            self._log.error("%s crashed:\n%s", session.op_name, traceback.format_exc())
            outcome = False, f"Crash in operation: {err!r}"
        self._end(session, outcome, finishes)

    def _end(self, session: OpSession, outcome: tuple[bool, str], finishes: bool):
        if finishes:
            session.finish(*outcome)
        elif not outcome[0]:
            session.add_message(f"Stop failed: {outcome[1]}")

    def _session_changed(self, session: OpSession, code_changed: bool) -> None:
        """From any thread: journal the session, heartbeat at once on an op-code change."""

        def on_loop():
            self._unjournaled.add(session.op_name)
            if self._journal_wake is not None:
                self._journal_wake.set()
            if code_changed and self._beat_now is not None:
                self._beat_now.set()
            if session.done:
                session.finished.set()

        self._in_loop(on_loop)

    def _spawn(self, coroutine) -> None:
        """Runs ``coroutine`` on the loop, holding the task until it ends (the
        loop keeps only weak references to tasks)."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _in_loop(self, callback) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: the process is ending
            loop.call_soon_threadsafe(callback)

    # -- the event loop -------------------------------------------------------

    async def _run(self, auto_reconnect: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._beat_now = asyncio.Event()
        self._stop = asyncio.Event()
        self._journal_wake = asyncio.Event()
        event_loop.start_twisted()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._loop.add_signal_handler(sig, self._stop.set)

        async def disconnected():
            if self._stop.is_set():
                return  # our own drain at the end
            self._log.warning("NATS disconnected; heartbeats are skipped until it returns")
            if not auto_reconnect:
                self._stop.set()

        last_error = [""]

        async def reconnected():
            last_error[0] = ""
            self._log.info("NATS reconnected")

        async def error(err):
            # Once per kind of trouble, not once per reconnect attempt.
            if str(err) != last_error[0]:
                last_error[0] = str(err)
                self._log.warning("NATS: %s", err)

        self._nc = await connect(
            self.site_args,
            name=self.agent_address,
            retry_initial=True,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )
        self._log.info(
            "agent %s (%s) running, incarnation %s",
            self.agent_address,
            self.agent_class,
            self.incarnation,
        )
        await self._nc.subscribe(f"{self.agent_address}.ops.>", cb=self._on_operation)
        await self._nc.subscribe(wire.api_subject(self.agent_address), cb=self._on_api)
        await self._nc.subscribe(wire.ping_subject(self.agent_address), cb=self._on_ping)
        heartbeat = asyncio.ensure_future(self._heartbeat())
        journal = asyncio.ensure_future(self._keep_journal())
        for name, params in self.startup_ops:
            _, message, _ = self.start(name, params)
            self._log.info("startup operation %s: %s", name, message)
        await self._stop.wait()
        await self._shutdown(heartbeat, journal)

    async def _shutdown(self, heartbeat, journal) -> None:
        self._log.info("stopping: asking running operations to end")
        running = [op for op in self.ops.values() if op.session is not None and not op.session.done]
        for op in running:
            self._request_stop(op.name, op.stop_action, {})
        if running:
            waits = [asyncio.ensure_future(op.session.finished.wait()) for op in running]
            _, pending = await asyncio.wait(waits, timeout=STOP_GRACE)
            for waiting in pending:
                waiting.cancel()
        journal.cancel()
        await self._flush_journal()
        heartbeat.cancel()
        await self._beat(leaving=True)
        try:
            await asyncio.wait_for(self._nc.drain(), 1.0)
        except Exception:
            await self._nc.close()
        self._log.info("stopped")

    async def _heartbeat(self) -> None:
        next_beat = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_beat:
                await self._beat()
                next_beat = max(next_beat + HEARTBEAT_INTERVAL, now)
            try:
                await asyncio.wait_for(self._beat_now.wait(), next_beat - time.monotonic())
            except asyncio.TimeoutError:
                continue
            self._beat_now.clear()
            await self._beat()

    def _op_codes(self) -> list[pb.OperationCode]:
        return [
            pb.OperationCode(
                op_name=op.name,
                op_code=int(op.session.op_code if op.session else OpCode.NONE),
                op_type=op.kind,
            )
            for op in self.ops.values()
        ]

    async def _beat(self, leaving: bool = False) -> None:
        if self._nc is None or not self._nc.is_connected:
            return  # skip, never queue, while disconnected
        if not (self._heartbeat_on or leaving):
            return
        self._seq += 1
        beat = pb.Heartbeat(
            protocol_version=wire.PROTOCOL_VERSION,
            agent_address=self.agent_address,
            agent_class=self.agent_class,
            incarnation=self.incarnation,
            seq=self._seq,
            sent_at_unix_ms=int(time.time() * 1000),
            op_codes=self._op_codes(),
            host=socket.gethostname(),
            pid=os.getpid(),
            agent_version=self.agent_version,
            interval_ms=int(HEARTBEAT_INTERVAL * 1000),
            leaving=leaving,
        )
        try:
            await self._nc.publish(
                wire.heartbeat_subject(self.agent_address), beat.SerializeToString()
            )
        except Exception as err:
            self._log.debug("heartbeat not sent: %s", err)

    # -- requests -------------------------------------------------------------

    async def _on_operation(self, msg) -> None:
        # Each request gets its own task: a `wait` must not hold up the rest.
        self._spawn(self._answer_operation(msg))

    async def _answer_operation(self, msg) -> None:
        tokens = msg.subject[len(self.agent_address) + len(".ops.") :].split(".")
        if len(tokens) != 2:
            status, message, session = (
                ResponseCode.ERROR,
                f'No implementation for "{".".join(tokens)}"',
                None,
            )
        else:
            status, message, session = await self._act(*tokens, msg.data)
        await self._respond(msg, _reply(status, message, session))

    async def _act(self, action: str, op_name: str, body: bytes) -> Reply:
        try:
            params, timeout = wire.decode_request(body)
        except wire.RequestError as err:
            return ResponseCode.ERROR, str(err), None
        if action == "start":
            return self.start(op_name, params)
        if action in ("stop", "abort"):
            return self._request_stop(op_name, action, params)
        if action == "wait":
            return await self._wait(op_name, timeout)
        if action == "status":
            return self.status(op_name)
        return ResponseCode.ERROR, f'No implementation for "{op_name}"', None

    async def _respond(self, msg, reply: pb.OperationReply) -> None:
        body = reply.SerializeToString()
        limit = self._nc.max_payload or wire.MAX_MESSAGE_BYTES
        if len(body) > limit:
            # A reply the server would refuse leaves the caller to its timeout:
            # say why instead, without the data.
            size = len(body)
            reply.status = ResponseCode.ERROR
            reply.message = (
                f"The reply is {size} bytes, over the server's limit of {limit} bytes: "
                "the session's data is left out."
            )
            if reply.HasField("session"):
                reply.session.data = b""
            body = reply.SerializeToString()
        if msg.reply:
            await msg.respond(body)

    async def _on_api(self, msg) -> None:
        operations = []
        for op in self.ops.values():
            info = pb.OperationInfo(
                op_name=op.name,
                op_type=op.kind,
                docstring=inspect.getdoc(op.func) or "",
                blocking=op.blocking,
                abortable=op.kind == "task" and op.stopper is not None,
                params=[
                    pb.ParamInfo(name=spec.key, description=spec.description())
                    for spec in specs_of(op.func) or []
                ],
            )
            if op.session is not None:
                info.session.CopyFrom(wire.session_to_pb(op.session.encoded()))
            operations.append(info)
        reply = pb.ApiReply(
            protocol_version=wire.PROTOCOL_VERSION,
            agent_address=self.agent_address,
            agent_class=self.agent_class,
            host=socket.gethostname(),
            pid=os.getpid(),
            agent_version=self.agent_version,
            incarnation=self.incarnation,
            operations=operations,
            feeds=list(self.feeds),
            uptime_ms=self._uptime_ms(),
        )
        await msg.respond(reply.SerializeToString())

    async def _on_ping(self, msg) -> None:
        reply = pb.PingReply(
            protocol_version=wire.PROTOCOL_VERSION,
            agent_address=self.agent_address,
            incarnation=self.incarnation,
            uptime_ms=self._uptime_ms(),
            agent_version=self.agent_version,
        )
        await msg.respond(reply.SerializeToString())

    def _uptime_ms(self) -> int:
        return int((time.monotonic() - self._started) * 1000)

    # -- the session journal --------------------------------------------------

    async def _keep_journal(self) -> None:
        while self._journal is None:
            try:
                self._journal = await Journal.open(self._nc, self.agent_address, self.incarnation)
            except Exception as err:
                self._log.warning(
                    "no session journal (JetStream: %s); retrying every %.0f s",
                    err or type(err).__name__,
                    JOURNAL_RETRY,
                )
                await asyncio.sleep(JOURNAL_RETRY)
        await self._restore_sessions()
        while True:
            await self._journal_wake.wait()
            self._journal_wake.clear()
            await self._flush_journal()

    async def _restore_sessions(self) -> None:
        for op in self.ops.values():
            if op.session is not None:
                continue  # this incarnation ran it already: its own is newer
            try:
                stored = await self._journal.last(op.name)
            except Exception as err:
                self._log.warning("cannot read the last session of %s: %s", op.name, err)
                continue
            if stored is None:
                continue
            stored, changed = recover(stored, self.incarnation)
            if changed:
                self._log.warning(
                    "the last run of %s was cut short by the agent's death: marked FAILED "
                    "(incarnation %s)",
                    op.name,
                    stored.incarnation,
                )
                try:
                    await self._journal.put(stored)
                except Exception as err:
                    self._log.warning("cannot store the failed session of %s: %s", op.name, err)
            with self._lock:
                if op.session is None:
                    encoded = wire.session_from_pb(stored.session)
                    op.session = OpSession.restored(encoded, self._session_changed)
                    op.session.finished.set()
                    self._next_session_id = max(self._next_session_id, op.session.session_id + 1)
        self._beat_now.set()

    async def _flush_journal(self) -> None:
        if self._journal is None:
            return
        while self._unjournaled:
            op_name = self._unjournaled.pop()
            op = self.ops.get(op_name)
            if op is None or op.session is None:
                continue
            try:
                await self._journal.record(wire.session_to_pb(op.session.encoded()))
            except Exception as err:
                self._log.warning("cannot journal the session of %s: %s", op_name, err)


def _outcome(result: Any) -> tuple[bool, str]:
    """An operation's ``(ok, message)``."""
    if isinstance(result, tuple) and len(result) == 2:
        return bool(result[0]), str(result[1])
    return False, f"The operation returned {result!r}, not (ok, message)."


def _reply(status: int, message: str, session: dict | None) -> pb.OperationReply:
    reply = pb.OperationReply(
        protocol_version=wire.PROTOCOL_VERSION, status=int(status), message=message
    )
    if session is not None:
        reply.session.CopyFrom(wire.session_to_pb(session))
    return reply

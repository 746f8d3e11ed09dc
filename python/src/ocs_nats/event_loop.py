"""The one event loop an agent runs on: asyncio, with Twisted's reactor put
on it when Twisted is installed.

OCS agents write non-blocking operations with Twisted (``inlineCallbacks``,
``autobahn.twisted.util.sleep``, ``deferToThread``). Running Twisted's
asyncio reactor on the agent's own loop lets those run beside NATS, instead
of in a second loop that races the first. The reactor must be installed
before anything imports ``twisted.internet.reactor``, so importing
``ocs_nats.ocs_agent`` does it (as importing OCS's ``ocs_agent`` sets Twisted
up).
"""

from __future__ import annotations

import asyncio
import sys

try:
    from twisted.internet import asyncioreactor as _asyncioreactor
    from twisted.internet.defer import Deferred
except ImportError:  # Twisted is optional: agents without it use async def.
    _asyncioreactor = None
    Deferred = None

_loop: asyncio.AbstractEventLoop | None = None


def agent_loop() -> asyncio.AbstractEventLoop:
    """The agent's loop, with Twisted's reactor on it if Twisted is installed."""
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = _reactor_loop() or asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
    return _loop


def _reactor_loop() -> asyncio.AbstractEventLoop | None:
    if _asyncioreactor is None:
        return None
    if "twisted.internet.reactor" not in sys.modules:
        loop = asyncio.new_event_loop()
        _asyncioreactor.install(eventloop=loop)
        return loop
    from twisted.internet import reactor

    if isinstance(reactor, _asyncioreactor.AsyncioSelectorReactor):
        return reactor._asyncioEventloop
    raise RuntimeError(
        f"Twisted's {type(reactor).__name__} was installed before ocs_nats.ocs_agent was "
        "imported: import ocs_nats.ocs_agent first, so that Twisted runs on the agent's "
        "asyncio loop"
    )


def start_twisted() -> None:
    """Lets Twisted run its startup triggers (its thread pool) on the loop."""
    if _asyncioreactor is None or "twisted.internet.reactor" not in sys.modules:
        return
    from twisted.internet import reactor

    if not reactor.running:
        reactor.startRunning(installSignalHandlers=False)


def stop_twisted() -> None:
    """Stops Twisted's thread pool, whose threads would keep the process alive."""
    if "twisted.internet.reactor" not in sys.modules:
        return
    from twisted.internet import reactor

    if reactor.threadpool is not None:
        reactor.threadpool.stop()


async def settle(result):
    """The value of an operation's result: awaited if it is awaitable or a
    Twisted ``Deferred``."""
    if Deferred is not None and isinstance(result, Deferred):
        return await result.asFuture(asyncio.get_running_loop())
    if asyncio.iscoroutine(result) or asyncio.isfuture(result):
        return await result
    return result

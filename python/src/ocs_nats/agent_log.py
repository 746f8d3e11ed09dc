"""``agent.log``: the logger OCS gives an agent (txaio's), on Python's
``logging``, so an agent's lines go where the package's own go (text or
JSON, see ``ocs_agent.AgentRunner``).

txaio formats with ``str.format`` and keyword arguments
(``log.info("read {value} K", value=t)``); OCS agents also pass text they
formatted themselves, braces and all. Both are logged as written.
"""

from __future__ import annotations

import logging


class AgentLog:
    """txaio's logger methods (``critical`` … ``trace``, ``warn``, ``failure``)."""

    def __init__(self, logger: logging.Logger):
        self._logger = logger

    def _emit(self, level: int, text, kwargs: dict) -> None:
        if not self._logger.isEnabledFor(level):
            return
        message = str(text)
        if kwargs:
            try:
                message = message.format(**kwargs)
            except (KeyError, IndexError, ValueError, AttributeError):
                message = f"{message} {kwargs}"
        # stacklevel: the agent's line, not this module's, in the record.
        self._logger.log(level, "%s", message, stacklevel=3)

    def critical(self, text, **kwargs) -> None:
        self._emit(logging.CRITICAL, text, kwargs)

    def error(self, text, **kwargs) -> None:
        self._emit(logging.ERROR, text, kwargs)

    def warn(self, text, **kwargs) -> None:
        self._emit(logging.WARNING, text, kwargs)

    warning = warn

    def info(self, text, **kwargs) -> None:
        self._emit(logging.INFO, text, kwargs)

    def debug(self, text, **kwargs) -> None:
        self._emit(logging.DEBUG, text, kwargs)

    def trace(self, text, **kwargs) -> None:
        self._emit(logging.DEBUG - 5, text, kwargs)

    def failure(self, text="{log_failure}", failure=None, **kwargs) -> None:
        """Logs a Twisted failure (txaio's ``log.failure``) with its traceback."""
        if failure is not None:
            kwargs.setdefault("log_failure", failure.getTraceback())
        self._emit(logging.CRITICAL, text, kwargs)

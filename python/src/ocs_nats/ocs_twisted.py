"""OCS's ``ocs.ocs_twisted.TimeoutLock``: a lock that says who holds it.

Agents guard their hardware connection with it: an operation acquires it
with a timeout and a job name, and one that cannot get it can say which job
has it.
"""

from __future__ import annotations

import collections
import threading
import time
from contextlib import contextmanager


class TimeoutLock:
    """A lock acquired with a timeout and a job name.

    ``acquire(timeout=0)`` does not wait; ``timeout=-1`` waits as long as it
    takes. ``job`` names the holder while the lock is held. Waiters get the
    lock in the order they asked for it, so ``release_and_acquire`` lets
    every waiting caller have its turn before it takes the lock back.
    """

    def __init__(self, default_timeout: float = 0):
        self.job: str | None = None
        self._default_timeout = default_timeout
        self._changed = threading.Condition()
        self._held = False
        self._waiting: collections.deque = collections.deque()

    def acquire(self, timeout: float | None = None, job: str | None = None) -> bool:
        if timeout is None:
            timeout = self._default_timeout
        with self._changed:
            if not self._held and not self._waiting:
                self._take(job)
                return True
            if timeout == 0:
                return False
            ticket = object()
            self._waiting.append(ticket)
            deadline = None if timeout < 0 else time.monotonic() + timeout
            try:
                while self._held or self._waiting[0] is not ticket:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._changed.wait(remaining)
                self._take(job)
                return True
            finally:
                self._waiting.remove(ticket)
                self._changed.notify_all()

    def _take(self, job: str | None) -> None:
        self._held = True
        self.job = job

    def release(self) -> None:
        with self._changed:
            if not self._held:
                raise RuntimeError("release of an unheld TimeoutLock")
            self._held = False
            self.job = None
            self._changed.notify_all()

    def release_and_acquire(self, timeout: float = -1) -> bool:
        """Lets every waiting caller take the lock in turn, then takes it
        back (within ``timeout``); returns whether it holds it again."""
        job = self.job
        self.release()
        return self.acquire(timeout=timeout, job=job)

    @contextmanager
    def acquire_timeout(self, timeout: float | None = None, job: str = "unnamed"):
        """``with lock.acquire_timeout(5, job='acq') as acquired:`` holds the
        lock inside the block when ``acquired`` is true."""
        acquired = self.acquire(timeout=timeout, job=job)
        try:
            yield acquired
        finally:
            if acquired:
                self.release()

"""What a Python agent does when a host manager started it: it dies with the
manager, as the Rust agents do (``ocs_service::lifecycle::stop_with_parent``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys

#: Set by the host manager for its children: the manager's pid.
PARENT_PID_ENV = "OCS_PARENT_PID"
_PR_SET_PDEATHSIG = 1

log = logging.getLogger("ocs_nats.lifecycle")


def stop_with_parent() -> None:
    """For a process the host manager started: asks the kernel for SIGTERM
    when the manager dies (even by SIGKILL), so no agent outlives it; exits
    at once when the manager is already gone. Does nothing otherwise."""
    try:
        parent = int(os.environ.get(PARENT_PID_ENV, ""))
    except ValueError:
        return
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as err:
        log.warning("cannot ask to be stopped with the host manager: %s", err)
    # The manager may have died before the request took effect.
    if os.getppid() != parent:
        log.warning("the host manager that started this agent (pid %d) is gone; exiting", parent)
        sys.exit(1)

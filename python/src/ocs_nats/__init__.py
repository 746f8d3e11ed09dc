"""OCS-style agents and clients on ocs-nats.

An OCS agent or script ports by changing its imports::

    from ocs_nats import ocs_agent, site_config      # was: from ocs import ...
    from ocs_nats.ocs_client import OCSClient        # was: from ocs.ocs_client import ...

The wire is described in the repository's ``protocol/PROTOCOL.md``.
"""

from enum import IntEnum

__version__ = "0.1.0"


class ResponseCode(IntEnum):
    """Whether a call reached the operation (OCS's ``ocs.ResponseCode``)."""

    OK = 0
    ERROR = -1
    TIMEOUT = 1


class OpCode(IntEnum):
    """An operation's state as the registry shows it (OCS's ``ocs.OpCode``)."""

    NONE = 1
    STARTING = 2
    RUNNING = 3
    STOPPING = 4
    SUCCEEDED = 5
    FAILED = 6
    EXPIRED = 7
    DEGRADED = 8


OK = ResponseCode.OK
ERROR = ResponseCode.ERROR
TIMEOUT = ResponseCode.TIMEOUT

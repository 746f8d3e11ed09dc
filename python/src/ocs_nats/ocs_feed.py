"""OCS's ``ocs.ocs_feed`` on ocs-nats: ``Block`` (a co-sampled data block, as
OCS agents build them) and ``Feed`` (what ``agent.feeds[name]`` holds).

OCS buffers a recorded feed's messages and ships them on a timer; ocs-nats
publishes each message on the feed's NATS subject at once, so nothing waits
in a buffer and ``Feed.flush_buffer`` has nothing left to send.
"""

from __future__ import annotations

import threading
from typing import Any

from . import wire

__all__ = ["Block", "Feed"]


class Block:
    """Samples of several fields taken at the same timestamps."""

    def __init__(self, name: str, keys):
        self.name = name
        self.timestamps: list = []
        self.tags = None
        self.data: dict[str, list] = {key: [] for key in keys}

    def empty(self) -> bool:
        return self.timestamps == []

    def clear(self) -> None:
        self.timestamps = []
        for key in self.data:
            self.data[key] = []

    def append(self, point: dict) -> None:
        """Adds one sample: ``{'timestamp': t, 'data': {field: value}}``."""
        self._check_fields(point["data"])
        self.timestamps.append(point["timestamp"])
        if point.get("influxdb_tags") is not None:
            self.tags = point["influxdb_tags"]
        for key in self.data:
            self.data[key].append(point["data"][key])

    def extend(self, block: dict) -> None:
        """Adds an encoded block's samples."""
        self._check_fields(block["data"])
        self.timestamps.extend(block["timestamps"])
        if block.get("influxdb_tags") is not None:
            self.tags = block["influxdb_tags"]
        for key in self.data:
            self.data[key].extend(block["data"][key])

    def encoded(self) -> dict[str, Any]:
        if any(len(values) != len(self.timestamps) for values in self.data.values()):
            raise ValueError(f"block {self.name!r}: every field needs one value per timestamp")
        return {
            "block_name": self.name,
            "data": {key: self.data[key] for key in self.data},
            "influxdb_tags": self.tags,
            "timestamps": self.timestamps,
        }

    def _check_fields(self, data: dict) -> None:
        if data.keys() != self.data.keys():
            raise ValueError(
                f"block {self.name!r} has fields {sorted(self.data)}, not {sorted(data)}"
            )


class Feed:
    """One of an agent's feeds: its name, OCS's recording settings (kept for
    the agent's description) and the sequence number of its messages."""

    def __init__(self, feed_name: str, record=False, agg_params=None, buffer_time=None):
        wire.check_name(feed_name)
        self.feed_name = feed_name
        self.record = bool(record)
        self.agg_params = dict(agg_params or {})
        self.buffer_time = buffer_time
        self._seq = 0
        self._lock = threading.Lock()

    def next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def flush_buffer(self) -> None:
        """Nothing is buffered: every message was published when it was given."""

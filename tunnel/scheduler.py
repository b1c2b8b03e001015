"""Which channel's DATA goes next: strict priority classes, round robin inside one.

Priorities are local scheduling only; they are not sent on the wire. Control
frames (OPEN, CREDIT, PING...) are not scheduled here: the connection writes them
before any DATA.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum
from typing import Final

from .channel import ChannelState


class Priority(IntEnum):
    """Lower value = sent first. A class starves the ones below it while it has data."""

    CONTROL = 0
    INPUT = 1
    DESKTOP = 2
    TELEMETRY = 3
    BULK = 4


INTERACTIVE: Final = frozenset({Priority.INPUT, Priority.DESKTOP})
"""Classes someone is waiting on: while a channel of one is live on a connection, BULK
channels there keep little data in flight, so these frames do not queue behind it in
socket buffers (:attr:`tunnel.settings.Settings.bulk_shared_in_flight`)."""

DEFAULT_PRIORITIES: Final[dict[str, Priority]] = {
    "control": Priority.CONTROL,
    "rpc": Priority.CONTROL,
    "input": Priority.INPUT,
    "desktop": Priority.DESKTOP,
    "telemetry": Priority.TELEMETRY,
}


def priority_for_kind(kind: str) -> Priority:
    """The priority a channel of ``kind`` gets unless the application says otherwise."""
    return DEFAULT_PRIORITIES.get(kind, Priority.BULK)


class Scheduler:
    """Ready channels per priority class.

    A channel is queued at most once (``ChannelState.scheduled``); the connection
    takes one chunk from it and requeues it at the back if it still has something
    to send, which gives round robin by chunk within a class. Channels that died
    while queued are skipped by the caller (lazy removal keeps reset O(1)).
    Deques exist only while non-empty: an idle connection pays for none.
    """

    __slots__ = ("_queues", "_ready")

    def __init__(self) -> None:
        self._queues: list[deque[ChannelState] | None] = [None] * len(Priority)
        self._ready = 0  # channels queued, all classes: an empty pop() costs one test

    def push(self, channel: ChannelState) -> None:
        if channel.scheduled:
            return
        channel.scheduled = True
        queue = self._queues[channel.priority]
        if queue is None:
            queue = self._queues[channel.priority] = deque()
        queue.append(channel)
        self._ready += 1

    def pop(self) -> ChannelState | None:
        if not self._ready:
            return None
        self._ready -= 1
        queues = self._queues
        for priority, queue in enumerate(queues):
            if queue:
                channel = queue.popleft()
                if not queue:
                    queues[priority] = None
                channel.scheduled = False
                return channel
        return None

    def __bool__(self) -> bool:
        return self._ready > 0

    def clear(self) -> None:
        self._queues = [None] * len(Priority)
        self._ready = 0

"""One channel: its lifecycle as an explicit transition table, and its buffers.

``TRANSITIONS`` maps ``(state, input) -> next state``. Anything missing is a
protocol error: from the peer it resets the channel with PROTOCOL_ERROR; from the
local application it raises :class:`~tunnel.errors.LocalProtocolError`.

In CLOSED every frame from the peer except OPEN is accepted and dropped (CREDIT
still counts while our last data drains): those are frames the peer sent before
it learnt that the channel ended. :func:`mermaid` renders the table as the state
diagram that ``docs/tunnel-protocol.md`` embeds; a test keeps the two equal.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum
from typing import TYPE_CHECKING, Final

from .flow import ReceiveWindow, SendCredit

if TYPE_CHECKING:
    from .stats import KindStats


class State(IntEnum):
    IDLE = 0
    OPENING = 1  # we sent OPEN, waiting for ACCEPT/REFUSE
    REQUESTED = 2  # peer sent OPEN, our application has not answered
    OPEN = 3
    HALF_CLOSED_LOCAL = 4  # we sent CLOSE; the peer may still send
    HALF_CLOSED_REMOTE = 5  # peer sent CLOSE; we may still send
    CLOSED = 6


class Input(IntEnum):
    SEND_OPEN = 0
    RECV_OPEN = 1
    SEND_ACCEPT = 2
    RECV_ACCEPT = 3
    SEND_REFUSE = 4
    RECV_REFUSE = 5
    SEND_DATA = 6
    RECV_DATA = 7
    RECV_CREDIT = 8
    SEND_CLOSE = 9
    RECV_CLOSE = 10
    SEND_RESET = 11
    RECV_RESET = 12
    TIMEOUT = 13


TRANSITIONS: Final[dict[tuple[State, Input], State]] = {
    (State.IDLE, Input.SEND_OPEN): State.OPENING,
    (State.IDLE, Input.RECV_OPEN): State.REQUESTED,
    (State.OPENING, Input.RECV_ACCEPT): State.OPEN,
    (State.OPENING, Input.RECV_REFUSE): State.CLOSED,
    (State.OPENING, Input.SEND_RESET): State.CLOSED,  # cancelled by the application
    (State.OPENING, Input.TIMEOUT): State.CLOSED,  # no answer within open_timeout; we send RESET
    (State.REQUESTED, Input.SEND_ACCEPT): State.OPEN,
    (State.REQUESTED, Input.SEND_REFUSE): State.CLOSED,
    (State.REQUESTED, Input.RECV_RESET): State.CLOSED,  # the opener gave up
    (State.REQUESTED, Input.TIMEOUT): State.CLOSED,  # not answered within accept_timeout; we REFUSE
    (State.OPEN, Input.SEND_DATA): State.OPEN,
    (State.OPEN, Input.RECV_DATA): State.OPEN,
    (State.OPEN, Input.RECV_CREDIT): State.OPEN,
    (State.OPEN, Input.SEND_CLOSE): State.HALF_CLOSED_LOCAL,
    (State.OPEN, Input.RECV_CLOSE): State.HALF_CLOSED_REMOTE,
    (State.OPEN, Input.SEND_RESET): State.CLOSED,
    (State.OPEN, Input.RECV_RESET): State.CLOSED,
    (State.HALF_CLOSED_LOCAL, Input.RECV_DATA): State.HALF_CLOSED_LOCAL,
    (State.HALF_CLOSED_LOCAL, Input.RECV_CREDIT): State.HALF_CLOSED_LOCAL,
    (State.HALF_CLOSED_LOCAL, Input.RECV_CLOSE): State.CLOSED,
    (State.HALF_CLOSED_LOCAL, Input.SEND_RESET): State.CLOSED,
    (State.HALF_CLOSED_LOCAL, Input.RECV_RESET): State.CLOSED,
    (State.HALF_CLOSED_REMOTE, Input.SEND_DATA): State.HALF_CLOSED_REMOTE,
    (State.HALF_CLOSED_REMOTE, Input.RECV_CREDIT): State.HALF_CLOSED_REMOTE,
    (State.HALF_CLOSED_REMOTE, Input.SEND_CLOSE): State.CLOSED,
    (State.HALF_CLOSED_REMOTE, Input.SEND_RESET): State.CLOSED,
    (State.HALF_CLOSED_REMOTE, Input.RECV_RESET): State.CLOSED,
    # Late frames: sent by the peer before it saw our RESET/REFUSE/CLOSE. Dropped,
    # except CREDIT, which still counts while our queued data and CLOSE drain.
    (State.CLOSED, Input.RECV_ACCEPT): State.CLOSED,
    (State.CLOSED, Input.RECV_REFUSE): State.CLOSED,
    (State.CLOSED, Input.RECV_DATA): State.CLOSED,
    (State.CLOSED, Input.RECV_CREDIT): State.CLOSED,
    (State.CLOSED, Input.RECV_CLOSE): State.CLOSED,
    (State.CLOSED, Input.RECV_RESET): State.CLOSED,
    (State.CLOSED, Input.SEND_RESET): State.CLOSED,  # abort a channel whose last data still drains
}

# The same table as nested tuples indexed by [state][input]: one C-level lookup per frame.
NEXT: Final[tuple[tuple[State | None, ...], ...]] = tuple(
    tuple(TRANSITIONS.get((state, event)) for event in Input) for state in State
)


def mermaid() -> str:
    """The state diagram, generated from :data:`TRANSITIONS` (Mermaid syntax)."""
    lines = ["stateDiagram-v2", "    [*] --> IDLE"]
    for (state, event), target in TRANSITIONS.items():
        if state is not State.CLOSED or target is not State.CLOSED:
            lines.append(f"    {state.name} --> {target.name}: {event.name}")
    lines.append("    CLOSED --> [*]")
    return "\n".join(lines)


class ChannelState:
    """Everything the connection keeps for one live channel.

    Plain attributes, written only by :class:`~tunnel.connection.Connection`.
    The send side is a queue of ``(data, more)`` entries -- whole messages, or chunks
    of one forwarded with ``send_chunk`` (``more``: the message continues) -- plus the
    offset already framed from the head entry. The receive side is the parts of one
    partial message, or in chunk mode (``chunked``) only the size of the message in
    flight, counted against ``max_message``.
    """

    __slots__ = (
        "chunked",
        "close_pending",
        "credit_queued",
        "credit_to_send",
        "id",
        "kind",
        "local_closed",
        "max_message",
        "open_deadline",
        "peer_max_message",
        "priority",
        "remote_closed",
        "rx",
        "rx_parts",
        "rx_size",
        "scheduled",
        "state",
        "stats",
        "tx",
        "tx_message",
        "tx_offset",
        "tx_queue",
        "tx_queued",
    )

    def __init__(
        self,
        channel_id: int,
        kind: str,
        state: State,
        stats: KindStats,
        *,
        window: int,
        max_message: int,
    ) -> None:
        self.id = channel_id
        self.kind = kind
        self.state = state
        self.stats = stats
        self.priority = 0
        self.rx = ReceiveWindow(window)
        self.max_message = max_message
        self.rx_parts: list[memoryview] = []
        self.rx_size = 0
        # The peer's window arrives with its OPEN/ACCEPT; until then nothing may be sent.
        self.tx = SendCredit(0)
        self.peer_max_message = 0
        self.chunked = False
        # Entries are (data, more); created on demand, dropped when empty.
        self.tx_queue: deque[tuple[bytes | memoryview, bool]] | None = None
        self.tx_offset = 0
        self.tx_queued = 0
        self.tx_message = 0  # bytes queued by send_chunk of a message not finished yet
        self.close_pending = False
        self.local_closed = False
        self.remote_closed = False
        self.scheduled = False
        self.credit_queued = False
        self.credit_to_send = 0
        self.open_deadline: float | None = None

    def __repr__(self) -> str:
        return f"<ChannelState {self.id} {self.kind} {self.state.name}>"

    @property
    def sendable(self) -> bool:
        """Whether the scheduler may take a frame from this channel now."""
        if self.tx_queue:
            return self.tx.usable > 0
        return self.close_pending

"""Wire error codes and the exceptions of the tunnel core.

Two kinds of failure exist and never mix:

* :class:`FrameError` -- the *peer* sent something invalid. The core turns it into a
  wire error code (a channel RESET or a connection failure); it never escapes
  :meth:`tunnel.connection.Connection.receive_message`. Its text is for local logs only.
* :class:`LocalProtocolError` -- *our* application called the core at the wrong time
  (send after close, open after GOAWAY, message above the peer's limit...). It is raised
  to the caller and nothing is sent to the peer.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """u16 codes carried by REFUSE, RESET and GOAWAY (and shown in close reasons)."""

    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    FRAME_TOO_LARGE = 4
    MESSAGE_TOO_LARGE = 5
    REFUSED = 6
    TOO_MANY_CHANNELS = 7
    TIMEOUT = 8
    CANCELLED = 9
    FORBIDDEN = 10
    GOING_AWAY = 11
    UNAVAILABLE = 12
    REPLACED = 13
    REVOKED = 14
    BAD_REQUEST = 15

    @classmethod
    def from_wire(cls, value: int) -> ErrorCode:
        """Map a received u16 to a code; unknown codes (a newer peer) mean INTERNAL_ERROR."""
        try:
            return cls(value)
        except ValueError:
            return cls.INTERNAL_ERROR


class TunnelError(Exception):
    """Base class of every exception raised by ``tunnel`` and ``tunnel.aio``."""


class FrameError(TunnelError):
    """The peer sent an invalid frame or a frame that breaks the connection's rules.

    ``code`` is what goes on the wire; ``str(exc)`` is a local diagnostic only.
    """

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class LocalProtocolError(TunnelError):
    """The local application misused the core; ``code`` says why in wire terms.

    For example ``TOO_MANY_CHANNELS`` or ``GOING_AWAY`` from ``open()``, or
    ``MESSAGE_TOO_LARGE`` from ``send_message()``.
    """

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code

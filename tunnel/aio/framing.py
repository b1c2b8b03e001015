"""WebSocket binary frames built here rather than by ``websockets``, so that a tunnel
chunk reaches TLS without being copied.

``websockets`` serialises a frame into a ``BytesIO`` (one copy of the payload, and a
second when the buffer is read out), after the core would have joined header and chunk
(a third). Per byte that was the sender's and the relay's largest cost after TLS. Here
the WebSocket header and the tunnel header go out as one small buffer and the chunk as
another, uncopied; small frames are packed together so a batch of them stays one TLS
write. A client must mask what it sends (RFC 6455, section 5.3): that one copy is left.

Only for connections without extensions: :func:`~tunnel.aio.websocket_options` turns
compression off, and :class:`FrameWriter` refuses a connection that negotiated any.
"""

from __future__ import annotations

import secrets
import struct
from typing import Final

from websockets.asyncio.connection import Connection as WebSocket
from websockets.frames import Opcode
from websockets.protocol import Side

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets without its C extension
    from websockets.utils import apply_mask

SEPARATE_BODY: Final = 4096
"""Bodies at least this big are handed to the transport as their own buffer; smaller
ones are copied next to their header: a copy of a few KiB costs less than the TLS record
a separate buffer becomes."""

_FIN_BINARY: Final = 0x80 | Opcode.BINARY
_MASK_BIT: Final = 0x80
_SHORT: Final = struct.Struct("!BB")
_MEDIUM: Final = struct.Struct("!BBH")
_LONG: Final = struct.Struct("!BBQ")


class FrameWriter:
    """Collects binary messages, each given as ``(head, body)``, into the buffers for one
    ``transport.writelines`` call. Write only while nothing else writes to the
    connection (inside ``ws.send_context()``) so frames never interleave."""

    __slots__ = ("_buffers", "_mask", "_small", "_ws")

    def __init__(self, ws: WebSocket) -> None:
        if ws.protocol.extensions:
            raise ValueError("a tunnel's WebSocket must not negotiate extensions")
        self._ws = ws
        self._mask = ws.protocol.side is Side.CLIENT
        self._buffers: list[bytes | bytearray | memoryview] = []
        self._small = bytearray()

    def add(self, head: bytes, body: bytes | memoryview) -> None:
        """Queue one binary message ``head + body``."""
        length = len(head) + len(body)
        mask_bit = _MASK_BIT if self._mask else 0
        if length < 126:
            prefix = _SHORT.pack(_FIN_BINARY, mask_bit | length)
        elif length < 65536:
            prefix = _MEDIUM.pack(_FIN_BINARY, mask_bit | 126, length)
        else:
            prefix = _LONG.pack(_FIN_BINARY, mask_bit | 127, length)
        small = self._small
        small += prefix
        if self._mask:
            key = secrets.token_bytes(4)
            small += key
            small += apply_mask(head, key)
            if body:
                shift = len(head) % 4  # the key runs on over the whole payload
                body = apply_mask(body, key[shift:] + key[:shift])
        else:
            small += head
        if len(body) >= SEPARATE_BODY:
            self._buffers.append(small)
            self._buffers.append(body)
            self._small = bytearray()
        elif body:
            small += body

    def flush(self) -> None:
        """Hand everything queued to the transport."""
        buffers = self._buffers
        if self._small:
            buffers.append(self._small)
            self._small = bytearray()
        if buffers:
            self._ws.transport.writelines(buffers)
            self._buffers = []

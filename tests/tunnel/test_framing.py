"""The tunnel's own WebSocket framing, read back by websockets' parser (the peer's)."""

from __future__ import annotations

from typing import Any

import pytest
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame
from websockets.protocol import OPEN, Protocol, Side

from tunnel.aio.framing import SEPARATE_BODY, FrameWriter
from tunnel.frames import encode_data_header

# Lengths around each WebSocket length encoding (7 bit, 16 bit, 64 bit) and the
# threshold where a body becomes its own buffer.
SIZES = (0, 1, 119, 120, 125, 126, 4089, SEPARATE_BODY, 65529, 65530, 65536, 200_000)


class Recorder:
    """Stands in for the transport: keeps what writelines got, buffer by buffer."""

    def __init__(self) -> None:
        self.buffers: list[bytes] = []

    def writelines(self, buffers: list[Any]) -> None:
        self.buffers.extend(bytes(b) for b in buffers)


class Endpoint:
    """What FrameWriter reads off a websockets connection: its protocol and transport."""

    def __init__(self, side: Side) -> None:
        self.protocol = Protocol(side)
        self.protocol.state = OPEN
        self.transport = Recorder()


def parsed(data: bytes, sender: Side) -> list[Frame]:
    peer = Protocol(Side.SERVER if sender is Side.CLIENT else Side.CLIENT, max_size=None)
    peer.state = OPEN
    peer.receive_data(data)
    assert peer.parser_exc is None
    return [event for event in peer.events_received() if isinstance(event, Frame)]


@pytest.mark.parametrize("side", [Side.CLIENT, Side.SERVER])
def test_frames_read_back_as_written(side: Side) -> None:
    endpoint = Endpoint(side)
    writer = FrameWriter(endpoint)  # type: ignore[arg-type]
    messages = []
    for n, size in enumerate(SIZES):
        head = encode_data_header(n, 0)
        body = bytes(i % 251 for i in range(size))
        messages.append(head + body)
        writer.add(head, memoryview(body) if n % 2 else body)
    writer.flush()
    frames = parsed(b"".join(endpoint.transport.buffers), side)
    assert [frame.data for frame in frames] == messages
    assert all(frame.fin for frame in frames)


def test_a_server_hands_big_chunks_over_uncopied_and_packs_small_frames() -> None:
    endpoint = Endpoint(Side.SERVER)
    writer = FrameWriter(endpoint)  # type: ignore[arg-type]
    for _ in range(3):
        writer.add(encode_data_header(1, 0), b"x" * 100)
    writer.add(encode_data_header(1, 0), b"y" * SEPARATE_BODY)
    writer.flush()
    small, big = endpoint.transport.buffers
    assert len(small) == 3 * (2 + 6 + 100) + (4 + 6)  # headers and small bodies, packed
    assert big == b"y" * SEPARATE_BODY


def test_a_websocket_with_extensions_is_refused() -> None:
    endpoint = Endpoint(Side.CLIENT)
    endpoint.protocol.extensions = [PerMessageDeflate(False, False, 15, 15)]
    with pytest.raises(ValueError, match="extensions"):
        FrameWriter(endpoint)  # type: ignore[arg-type]

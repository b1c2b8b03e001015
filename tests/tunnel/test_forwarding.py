"""Chunk mode in the core: a relay forwards DATA chunks as they arrive, without
reassembling, and returns credit upstream only as the downstream frames them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tunnel.helpers import ConnectionPair
from tunnel import (
    ChannelReset,
    ChunkReceived,
    ErrorCode,
    LocalProtocolError,
    MessageReceived,
    Settings,
)
from tunnel.frames import DataFrame


class RelayChain:
    """sender -> relay (in, chunk mode) => relay (out) -> receiver, all in memory.

    The relay part does what ``tunnel.aio.Forward`` does: each ``ChunkReceived`` of
    the inbound channel is ``send_chunk``-ed on the outbound one, and inbound credit is
    given back (``message_consumed``) only for bytes the outbound side has framed.
    """

    def __init__(self, relay: Settings, receiver: Settings, *, consume: bool = True) -> None:
        self.up = ConnectionPair(server_settings=relay)  # sender = client, relay = server
        self.down = ConnectionPair(client_settings=relay, server_settings=receiver)
        self.up_id = self.up.open("files")
        self.down_id = self.down.open("files")
        assert self.up.server.receive_in_chunks(self.up_id) == []
        self.pending = 0  # forwarded, not yet framed downstream
        self.max_pending = 0
        self.consume = consume
        self.received: list[bytes] = []
        self.resets: list[ChannelReset] = []

    def step(self) -> bool:
        """Move one frame on each link and dispatch; False once nothing moved."""
        moved = False
        for frame_from, pair in ((self.up.client, self.up), (self.down.client, self.down)):
            for conn in (frame_from, pair.peer(frame_from)):
                frame = conn.next_frame()
                if frame is None:
                    continue
                moved = True
                for event in pair.deliver(pair.peer(conn), frame):
                    self.dispatch(pair.peer(conn), event)
                if conn is self.down.client:
                    self.credit_framed()
        return moved

    def dispatch(self, conn: object, event: object) -> None:
        if isinstance(event, ChannelReset):
            self.resets.append(event)
        elif isinstance(event, ChunkReceived):
            assert conn is self.up.server
            self.down.client.send_chunk(self.down_id, event.data, event.more)
            self.pending += len(event.data)
            self.max_pending = max(self.max_pending, self.pending)
        elif isinstance(event, MessageReceived):
            assert conn is self.down.server
            self.received.append(event.data)
            if self.consume:
                self.down.server.message_consumed(self.down_id, len(event.data))

    def credit_framed(self) -> None:
        queued = self.down.client.channel_queued(self.down_id)
        framed = self.pending - queued
        if framed > 0:
            self.pending = queued
            self.up.server.message_consumed(self.up_id, framed)

    def run(self, limit: int = 100_000) -> None:
        for _ in range(limit):
            if not self.step():
                return
        raise AssertionError("did not settle")


WINDOWS = st.sampled_from([4096, 65536, 100_000, 262144])


@settings(max_examples=40, deadline=None)
@given(
    relay_window=WINDOWS,
    receiver_window=WINDOWS,
    sizes=st.lists(st.integers(1, 300_000), min_size=1, max_size=8),
    seed=st.integers(0, 255),
)
def test_forwarded_messages_arrive_identical_and_the_relay_holds_one_window(
    relay_window: int, receiver_window: int, sizes: list[int], seed: int
) -> None:
    limit = min(relay_window, receiver_window)
    sizes = [min(size, limit) for size in sizes]
    chain = RelayChain(Settings(bulk_window=relay_window), Settings(bulk_window=receiver_window))
    messages = [bytes((seed + i + j) % 256 for j in range(size)) for i, size in enumerate(sizes)]
    for message in messages:
        chain.up.client.send_message(chain.up_id, message)
    chain.run()
    assert chain.received == messages
    assert chain.resets == []
    assert chain.max_pending <= relay_window


def test_slow_receiver_stops_the_sender_through_the_relay() -> None:
    """Nobody reads behind the relay: the relay holds at most its window, the sender
    keeps the rest (where the adapter makes its send() wait)."""
    window = 65536
    chain = RelayChain(Settings(bulk_window=window), Settings(bulk_window=window), consume=False)
    total = 20 * window
    for _ in range(20):
        chain.up.client.send_message(chain.up_id, b"m" * window)
    chain.run()
    assert chain.max_pending <= window
    assert chain.pending <= window
    # receiver's window + relay's window left the sender, nothing more
    assert chain.up.client.channel_queued(chain.up_id) == total - 2 * window
    assert sum(map(len, chain.received)) == window
    # The receiver reads: everything flows, still one window at most in the relay.
    chain.consume = True
    for message in chain.received:
        chain.down.server.message_consumed(chain.down_id, len(message))
    chain.run()
    assert sum(map(len, chain.received)) == total
    assert chain.max_pending <= window


def test_the_relay_enforces_the_receivers_max_message() -> None:
    chain = RelayChain(Settings(bulk_window=262144), Settings(bulk_window=65536))
    chain.up.client.send_message(chain.up_id, b"x" * 100_000)  # fine for the relay
    with pytest.raises(LocalProtocolError) as info:
        chain.run()
    assert info.value.code is ErrorCode.MESSAGE_TOO_LARGE
    assert chain.received == []  # nothing of the partial message was delivered


def test_send_chunk_counts_the_message_in_flight() -> None:
    pair = ConnectionPair(server_settings=Settings(bulk_window=1000))
    channel_id = pair.open("files")
    pair.client.send_chunk(channel_id, b"a" * 600, True)
    with pytest.raises(LocalProtocolError) as info:
        pair.client.send_chunk(channel_id, b"a" * 401, False)
    assert info.value.code is ErrorCode.MESSAGE_TOO_LARGE
    with pytest.raises(LocalProtocolError):
        pair.client.send_message(channel_id, b"whole")  # inside a chunked message
    pair.client.send_chunk(channel_id, b"a" * 400, False)
    pair.client.send_message(channel_id, b"whole")  # a new message may start
    pair.pump()
    pair.server.message_consumed(channel_id, 1000)  # credit for "whole"
    pair.pump()
    received = [e for e in pair.take(pair.server) if isinstance(e, MessageReceived)]
    assert [e.data for e in received] == [b"a" * 1000, b"whole"]


def test_chunk_mode_still_enforces_our_max_message() -> None:
    pair = ConnectionPair(server_settings=Settings(bulk_window=8192, max_message=4096))
    channel_id = pair.open("files")
    pair.server.receive_in_chunks(channel_id)
    pair.deliver(pair.server, DataFrame(channel_id, b"a" * 3000, True).encode())
    events = pair.deliver(pair.server, DataFrame(channel_id, b"a" * 1200, False).encode())
    assert [type(e) for e in events] == [ChannelReset]
    assert events[0].code is ErrorCode.MESSAGE_TOO_LARGE  # type: ignore[attr-defined]


def test_switching_to_chunks_hands_over_the_partial_message() -> None:
    pair = ConnectionPair()
    channel_id = pair.open("files")
    pair.deliver(pair.server, DataFrame(channel_id, b"one", True).encode())
    pair.deliver(pair.server, DataFrame(channel_id, b"two", True).encode())
    assert pair.server.receive_in_chunks(channel_id) == [b"one", b"two"]
    (event,) = pair.deliver(pair.server, DataFrame(channel_id, b"end", False).encode())
    assert isinstance(event, ChunkReceived)
    assert (bytes(event.data), event.more) == (b"end", False)
    # CLOSE inside a forwarded message is still a protocol error.
    pair.deliver(pair.server, DataFrame(channel_id, b"half", True).encode())
    pair.client.close(channel_id)
    pair.pump()
    resets = [e for e in pair.take(pair.server) if isinstance(e, ChannelReset)]
    assert [r.code for r in resets] == [ErrorCode.PROTOCOL_ERROR]

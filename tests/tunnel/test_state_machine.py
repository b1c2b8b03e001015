"""Random sequences of valid and invalid inputs never crash the core; invariants hold."""

from __future__ import annotations

import contextlib
import dataclasses

from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.tunnel.helpers import ConnectionPair
from tests.tunnel.test_frames import frames
from tunnel import (
    ChannelReset,
    Connection,
    ConnectionFailed,
    ErrorCode,
    LocalProtocolError,
    MessageReceived,
    Settings,
)
from tunnel.channel import NEXT, TRANSITIONS, Input, State
from tunnel.frames import Frame

SMALL = Settings(window=40_000, max_message=30_000, max_channels=6, max_pending_opens=3)
ids = st.integers(1, 16)
sides = st.sampled_from(["client", "server"])


class TunnelMachine(RuleBasedStateMachine):
    """Drives a linked pair with API calls, pumping, time, and injected peer frames."""

    @initialize()
    def setup(self) -> None:
        self.pair = ConnectionPair(SMALL, SMALL)
        self.unread: dict[Connection, list[tuple[int, int]]] = {
            self.pair.client: [],
            self.pair.server: [],
        }

    def side(self, name: str) -> Connection:
        return self.pair.client if name == "client" else self.pair.server

    def collect(self) -> None:
        for conn in (self.pair.client, self.pair.server):
            for event in self.pair.take(conn):
                if isinstance(event, ConnectionFailed):
                    assert event.code is not ErrorCode.INTERNAL_ERROR, event
                if isinstance(event, ChannelReset) and not event.remote:
                    assert event.code is not ErrorCode.INTERNAL_ERROR, event
                if isinstance(event, MessageReceived):
                    assert 0 < len(event.data) <= SMALL.max_message
                    self.unread[conn].append((event.channel_id, len(event.data)))

    def call(self, fn: object, *args: object, **kwargs: object) -> None:
        with contextlib.suppress(LocalProtocolError, ValueError):  # misuse is allowed to raise
            fn(*args, **kwargs)  # type: ignore[operator]

    @rule(side=sides, kind=st.sampled_from(["control", "desktop", "files"]))
    def open(self, side: str, kind: str) -> None:
        self.call(self.side(side).open, kind, now=self.pair.now)

    @rule(side=sides, cid=ids, accept=st.booleans())
    def answer(self, side: str, cid: int, accept: bool) -> None:
        conn = self.side(side)
        self.call(conn.accept if accept else conn.refuse, cid)

    @rule(side=sides, cid=ids, size=st.integers(0, 70_000))
    def send(self, side: str, cid: int, size: int) -> None:
        self.call(self.side(side).send_message, cid, b"m" * size)

    @rule(side=sides, cid=ids)
    def close(self, side: str, cid: int) -> None:
        self.call(self.side(side).close, cid)

    @rule(side=sides, cid=ids)
    def reset(self, side: str, cid: int) -> None:
        self.call(self.side(side).reset, cid, ErrorCode.CANCELLED)

    @rule(side=sides, n=st.integers(1, 4))
    def consume(self, side: str, n: int) -> None:
        conn = self.side(side)
        for cid, size in self.unread[conn][:n]:
            conn.message_consumed(cid, size)
        del self.unread[conn][:n]

    @rule(limit=st.integers(1, 50))
    def pump(self, limit: int) -> None:
        self.pair.pump(limit)
        self.collect()

    @rule(seconds=st.floats(0.1, 12))
    def advance(self, seconds: float) -> None:
        self.pair.advance(seconds)
        self.collect()

    @rule(side=sides, frame=frames())
    def inject_frame(self, side: str, frame: Frame) -> None:
        self.pair.deliver(self.side(side), _small_channel(frame).encode())
        self.collect()

    @rule(side=sides, data=st.binary(max_size=64))
    def inject_bytes(self, side: str, data: bytes) -> None:
        self.pair.deliver(self.side(side), data)
        self.collect()

    @rule(side=sides, code=st.sampled_from(ErrorCode))
    def go_away(self, side: str, code: ErrorCode) -> None:
        self.side(side).go_away(code, 10)

    @invariant()
    def books_balance(self) -> None:
        for conn in (self.pair.client, self.pair.server):
            channels = conn._channels
            assert len(channels) <= SMALL.max_channels
            assert conn.queued_bytes == sum(c.tx_queued for c in channels.values())
            assert conn._n_requested == sum(c.state is State.REQUESTED for c in channels.values())
            assert conn._n_requested <= SMALL.max_pending_opens
            assert conn._control_bytes == sum(len(f) for f, _ in conn._control or ())
            queued = [q for q in conn._scheduler._queues if q is not None]
            assert all(queued)  # empty classes hold no deque
            assert conn._scheduler._ready == sum(map(len, queued))
            for channel in channels.values():
                rx = channel.rx
                assert rx.available + rx.held + rx.unreturned == rx.window
                assert min(rx.available, rx.held, rx.unreturned) >= 0
                assert channel.rx_size <= channel.max_message
                assert 0 <= channel.tx.credit <= channel.tx.window
                assert channel.state is not State.IDLE
                assert (
                    channel.tx_queued == sum(map(len, channel.tx_queue or ())) - channel.tx_offset
                )


def _small_channel(frame: Frame) -> Frame:
    """Aim injected frames at the few channel ids actually in use."""
    if hasattr(frame, "channel_id"):
        return dataclasses.replace(frame, channel_id=frame.channel_id % 16 + 1)  # type: ignore[arg-type]
    return frame


TunnelMachine.TestCase.settings = hyp_settings(
    max_examples=150, stateful_step_count=60, deadline=None
)
test_tunnel_state_machine = TunnelMachine.TestCase


def test_table_has_no_exit_from_closed_and_no_send_in_closed() -> None:
    for (state, event), target in TRANSITIONS.items():
        if state is State.CLOSED:
            assert target is State.CLOSED
            assert event.name.startswith("RECV_") or event is Input.SEND_RESET
    assert NEXT[State.CLOSED][Input.RECV_OPEN] is None
    assert NEXT[State.OPENING][Input.SEND_DATA] is None

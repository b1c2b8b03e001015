"""Two sans-I/O Connections linked in memory: every behaviour, from both sides."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tests.tunnel.helpers import ConnectionPair
from tunnel import (
    ChannelAccepted,
    ChannelEnded,
    ChannelRefused,
    ChannelRequested,
    ChannelReset,
    Connection,
    ConnectionFailed,
    ErrorCode,
    GoAwayReceived,
    LocalProtocolError,
    MessageReceived,
    Priority,
    Role,
    Settings,
)
from tunnel.frames import (
    CloseFrame,
    CreditFrame,
    DataFrame,
    GoAwayFrame,
    OpenFrame,
    PingFrame,
    PongFrame,
    ResetFrame,
    decode_frame,
)
from tunnel.limits import MAX_CHANNELS, MAX_CHUNK, MAX_CONTROL_BACKLOG
from tunnel.stats import CONNECTION_KIND

SIDES = ["client", "server"]


def sides(pair: ConnectionPair, opener: str) -> tuple[Connection, Connection]:
    a = pair.client if opener == "client" else pair.server
    return a, pair.peer(a)


def open_from(pair: ConnectionPair, opener: str, kind: str = "telemetry", **kw: object) -> int:
    a, b = sides(pair, opener)
    cid = a.open(kind, now=pair.now, **kw)  # type: ignore[arg-type]
    pair.pump()
    b.accept(cid)
    pair.pump()
    pair.take(a)
    pair.take(b)
    return cid


def messages(events: Sequence[object]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, MessageReceived)]


# -- opening ----------------------------------------------------------------------------


@pytest.mark.parametrize("opener", SIDES)
def test_open_accept(opener: str) -> None:
    pair = ConnectionPair()
    a, b = sides(pair, opener)
    cid = a.open("desktop", {"w": 800}, now=0)
    assert cid % 2 == (1 if opener == "client" else 0)
    pair.pump()
    assert pair.take(b) == [ChannelRequested(cid, "desktop", {"w": 800})]
    b.accept(cid, {"ok": 1})
    pair.pump()
    assert pair.take(a) == [ChannelAccepted(cid, {"ok": 1})]
    a.send_message(cid, b"ping")
    b.send_message(cid, b"pong")
    pair.pump()
    assert messages(pair.take(b)) == [b"ping"]
    assert messages(pair.take(a)) == [b"pong"]


@pytest.mark.parametrize("opener", SIDES)
def test_open_refuse(opener: str) -> None:
    pair = ConnectionPair()
    a, b = sides(pair, opener)
    cid = a.open("desktop", now=0)
    pair.pump()
    b.refuse(cid, ErrorCode.FORBIDDEN, "no consent")
    pair.pump()
    assert pair.take(a) == [ChannelRefused(cid, ErrorCode.FORBIDDEN, "no consent")]
    assert a.open_channels == b.open_channels == 0
    with pytest.raises(LocalProtocolError):
        a.send_message(cid, b"x")


def test_ids_increase_and_never_repeat() -> None:
    pair = ConnectionPair()
    ids = [pair.client.open("telemetry", now=0) for _ in range(3)]
    assert ids == [1, 3, 5]
    assert [pair.server.open("telemetry", now=0) for _ in range(2)] == [2, 4]


def test_open_rejects_bad_arguments() -> None:
    conn = Connection(Role.CLIENT, now=0)
    for kind in ("", "Desktop", "x" * 33, "a b", "_connection"):
        with pytest.raises(ValueError):
            conn.open(kind, now=0)
    with pytest.raises(ValueError):
        conn.open("telemetry", {"kind": "x"}, now=0)
    with pytest.raises(ValueError):
        conn.open("telemetry", {"blob": "x" * 5000}, now=0)
    with pytest.raises(ValueError):
        conn.open("telemetry", now=0, window=10, max_message=11)
    assert conn.open_channels == 0
    assert conn.open("telemetry", now=0) == 1  # failed attempts consumed no id


def test_bad_kind_from_peer_is_refused() -> None:
    pair = ConnectionPair()
    for cid, meta in ((1, {}), (3, {"kind": 5}), (5, {"kind": "UPPER"})):
        pair.deliver(pair.server, OpenFrame(cid, 100, 100, meta).encode())
        assert pair.take(pair.server) == []
        refuse = decode_frame(pair.server.next_frame() or b"")
        assert refuse.code is ErrorCode.BAD_REQUEST  # type: ignore[union-attr]


# -- data, chunking, flow control ---------------------------------------------------------


@pytest.mark.parametrize("opener", SIDES)
@pytest.mark.parametrize("size", [1, MAX_CHUNK - 1, MAX_CHUNK, MAX_CHUNK + 1, 300_000])
def test_chunking_and_reassembly(opener: str, size: int) -> None:
    pair = ConnectionPair()
    cid = open_from(pair, opener)
    a, b = sides(pair, opener)
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    a.send_message(cid, payload)
    frames = pair.frames(a)
    decoded = [decode_frame(f) for f in frames]
    assert all(isinstance(f, DataFrame) for f in decoded)
    assert all(len(f) <= 6 + MAX_CHUNK for f in frames)
    assert [f.more for f in decoded] == [True] * (len(frames) - 1) + [False]  # type: ignore[union-attr]
    assert len(frames) == -(-size // MAX_CHUNK)
    for frame in frames:
        pair.deliver(b, frame)
    assert messages(pair.take(b)) == [payload]


def test_credit_runs_out_and_returns_on_consumption() -> None:
    small = Settings(window=64 * 1024, max_message=64 * 1024)
    pair = ConnectionPair(server_settings=small)
    cid = open_from(pair, "client")
    for _ in range(3):
        pair.client.send_message(cid, b"x" * 32 * 1024)
    pair.pump()
    got = messages(pair.take(pair.server))
    assert len(got) == 2  # the window is full: the third waits in the sender
    assert pair.client.queued_bytes == 32 * 1024
    pair.advance(60)  # time alone returns nothing
    assert messages(pair.take(pair.server)) == []
    pair.server.message_consumed(cid, 32 * 1024)  # the application read one
    pair.pump()
    assert len(messages(pair.take(pair.server))) == 1
    assert pair.client.queued_bytes == 0


def test_credit_is_batched_not_per_message() -> None:
    pair = ConnectionPair()
    cid = open_from(pair, "client")
    for _ in range(100):
        pair.client.send_message(cid, b"x" * 1000)
    pair.pump()
    for data in messages(pair.take(pair.server)):
        pair.server.message_consumed(cid, len(data))
    credits = [decode_frame(f) for f in pair.frames(pair.server)]
    assert credits == []  # 100 KB consumed < a quarter of the 1 MiB window


def test_partial_message_gets_credit_to_finish() -> None:
    """A message as large as the window behind a small one must not deadlock."""
    settings = Settings(window=100_000, max_message=100_000)
    pair = ConnectionPair(server_settings=settings)
    cid = open_from(pair, "client")
    pair.client.send_message(cid, b"a" * 10)
    pair.client.send_message(cid, b"b" * 100_000)
    for _ in range(5):
        pair.pump()
        for data in messages(pair.take(pair.server)):
            pair.server.message_consumed(cid, len(data))
    assert pair.client.queued_bytes == 0


@pytest.mark.parametrize("opener", SIDES)
def test_data_beyond_window_is_flow_control_error(opener: str) -> None:
    settings = Settings(window=20_000, max_message=20_000)
    pair = ConnectionPair(settings, settings)
    cid = open_from(pair, opener)
    _a, b = sides(pair, opener)
    pair.deliver(b, DataFrame(cid, b"x" * 15_000, True).encode())
    pair.deliver(b, DataFrame(cid, b"x" * 6_000, False).encode())  # 21 000 > 20 000
    (event,) = pair.take(b)
    assert event == ChannelReset(cid, ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond credit", False)
    reset = decode_frame(pair.frames(b)[-1])
    assert isinstance(reset, ResetFrame) and reset.code is ErrorCode.FLOW_CONTROL_ERROR
    assert b.open_channels == 0 and not b.terminated  # the channel failed, not the tunnel


def test_credit_beyond_window_is_flow_control_error() -> None:
    pair = ConnectionPair()
    cid = open_from(pair, "client")
    pair.deliver(pair.client, CreditFrame(cid, 1).encode())  # nothing was sent yet
    (event,) = pair.take(pair.client)
    assert isinstance(event, ChannelReset) and event.code is ErrorCode.FLOW_CONTROL_ERROR


@pytest.mark.parametrize("opener", SIDES)
def test_oversize_message_is_message_too_large(opener: str) -> None:
    settings = Settings(window=100_000, max_message=20_000)
    pair = ConnectionPair(settings, settings)
    cid = open_from(pair, opener)
    a, b = sides(pair, opener)
    with pytest.raises(LocalProtocolError) as info:
        a.send_message(cid, b"x" * 20_001)
    assert info.value.code is ErrorCode.MESSAGE_TOO_LARGE
    for _ in range(2):  # a peer that ignores the limit, within its credit
        pair.deliver(b, DataFrame(cid, b"x" * 15_000, True).encode())
    (event,) = pair.take(b)
    assert isinstance(event, ChannelReset) and event.code is ErrorCode.MESSAGE_TOO_LARGE
    assert not b.terminated


def test_empty_message_is_rejected_locally() -> None:
    pair = ConnectionPair()
    cid = open_from(pair, "client")
    with pytest.raises(ValueError):
        pair.client.send_message(cid, b"")


# -- bad channel ids, late frames ---------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        DataFrame(7, b"x", False),
        CreditFrame(9, 5),
        CloseFrame(4),  # the server's parity, never opened by the server
        ResetFrame(11, ErrorCode.CANCELLED, ""),
    ],
)
def test_frame_for_never_opened_channel_is_protocol_error(frame: object) -> None:
    pair = ConnectionPair()
    open_from(pair, "client")
    (event,) = pair.deliver(pair.server, frame.encode())  # type: ignore[attr-defined]
    assert isinstance(event, ConnectionFailed) and event.code is ErrorCode.PROTOCOL_ERROR
    goaway = decode_frame(pair.frames(pair.server)[-1])
    assert isinstance(goaway, GoAwayFrame) and goaway.code is ErrorCode.PROTOCOL_ERROR
    assert goaway.reason == "protocol error"  # never the local diagnostic text
    assert pair.deliver(pair.server, PingFrame(1).encode()) == []  # dead from now on


@pytest.mark.parametrize(("role", "cid"), [(Role.SERVER, 2), (Role.CLIENT, 1)])
def test_open_with_own_parity_is_protocol_error(role: Role, cid: int) -> None:
    conn = Connection(role, now=0)
    (event,) = conn.receive_message(OpenFrame(cid, 10, 10, {"kind": "x"}).encode(), 0)
    assert isinstance(event, ConnectionFailed) and event.code is ErrorCode.PROTOCOL_ERROR


def test_reused_or_decreasing_open_id_is_protocol_error() -> None:
    conn = Connection(Role.SERVER, now=0)
    assert conn.receive_message(OpenFrame(5, 10, 10, {"kind": "x"}).encode(), 0)
    (event,) = conn.receive_message(OpenFrame(3, 10, 10, {"kind": "x"}).encode(), 0)
    assert isinstance(event, ConnectionFailed)


@pytest.mark.parametrize("opener", SIDES)
def test_late_frames_for_closed_channels_are_dropped(opener: str) -> None:
    pair = ConnectionPair()
    cid = open_from(pair, opener)
    a, b = sides(pair, opener)
    b.send_message(cid, b"in flight")
    in_flight = pair.frames(b)  # b wrote these before it saw a's RESET
    a.reset(cid, ErrorCode.CANCELLED, "bye")
    pair.pump()
    assert pair.take(b) == [ChannelReset(cid, ErrorCode.CANCELLED, "bye", True)]
    late = [
        *in_flight,
        CreditFrame(cid, 10).encode(),
        CloseFrame(cid).encode(),
        ResetFrame(cid, ErrorCode.CANCELLED, "").encode(),
    ]
    for frame in late:
        assert pair.deliver(a, frame) == []
    assert not a.terminated
    assert a.stats[CONNECTION_KIND].frames_in >= len(late)


def test_late_accept_after_cancelled_open_is_dropped() -> None:
    pair = ConnectionPair()
    cid = pair.client.open("telemetry", now=0)
    pair.pump()
    pair.client.reset(cid)  # cancel
    pair.server.accept(cid)  # crosses the RESET on the wire
    pair.pump()
    assert pair.take(pair.client) == []
    assert pair.take(pair.server)[-1] == ChannelReset(cid, ErrorCode.CANCELLED, "", True)
    assert pair.client.open_channels == pair.server.open_channels == 0


# -- closing ------------------------------------------------------------------------------


@pytest.mark.parametrize("opener", SIDES)
def test_half_close_both_ways(opener: str) -> None:
    pair = ConnectionPair()
    cid = open_from(pair, opener)
    a, b = sides(pair, opener)
    a.send_message(cid, b"last")
    a.close(cid)
    a.close(cid)  # idempotent
    with pytest.raises(LocalProtocolError):
        a.send_message(cid, b"too late")
    pair.pump()
    assert pair.take(b) == [MessageReceived(cid, b"last"), ChannelEnded(cid)]
    b.send_message(cid, b"reply after EOF")
    b.close(cid)
    pair.pump()
    assert pair.take(a) == [MessageReceived(cid, b"reply after EOF"), ChannelEnded(cid)]
    assert a.open_channels == b.open_channels == 0


def test_close_waits_behind_queued_data_and_credit() -> None:
    settings = Settings(window=20_000, max_message=20_000)
    pair = ConnectionPair(server_settings=settings)
    cid = open_from(pair, "client")
    pair.server.close(cid)
    pair.pump()
    pair.client.send_message(cid, b"x" * 20_000)
    pair.client.send_message(cid, b"y" * 100)  # waits for credit
    pair.client.close(cid)  # CLOSED locally, but the tail must still drain
    pair.pump()
    assert pair.client.open_channels == 1
    events = pair.take(pair.server)
    assert messages(events) == [b"x" * 20_000]
    pair.server.message_consumed(cid, 20_000)
    pair.pump()
    assert pair.take(pair.server) == [MessageReceived(cid, b"y" * 100), ChannelEnded(cid)]
    assert pair.client.open_channels == pair.server.open_channels == 0


def test_data_after_peer_close_resets_the_channel() -> None:
    pair = ConnectionPair()
    cid = open_from(pair, "client")
    pair.client.close(cid)
    pair.pump()
    pair.take(pair.server)
    (event,) = pair.deliver(pair.server, DataFrame(cid, b"x", False).encode())
    assert event == ChannelReset(cid, ErrorCode.PROTOCOL_ERROR, "unexpected DATA", False)


def test_close_inside_a_message_resets_the_channel() -> None:
    pair = ConnectionPair()
    cid = open_from(pair, "client")
    pair.deliver(pair.server, DataFrame(cid, b"x", True).encode())
    (event,) = pair.deliver(pair.server, CloseFrame(cid).encode())
    assert isinstance(event, ChannelReset) and event.code is ErrorCode.PROTOCOL_ERROR


def test_local_misuse_raises() -> None:
    pair = ConnectionPair()
    cid = pair.client.open("telemetry", now=0)
    with pytest.raises(LocalProtocolError):
        pair.client.send_message(cid, b"before accept")
    with pytest.raises(LocalProtocolError):
        pair.client.close(cid)
    pair.pump()
    with pytest.raises(LocalProtocolError):
        pair.server.reset(cid)  # an incoming open is refused, not reset
    with pytest.raises(LocalProtocolError):
        pair.server.accept(cid + 2)
    pair.server.accept(cid)
    with pytest.raises(LocalProtocolError):
        pair.server.accept(cid)
    pair.server.reset(cid + 100)  # unknown: no-op
    pair.server.message_consumed(cid + 100, 5)  # unknown: no-op
    with pytest.raises(ValueError):
        pair.server.message_consumed(cid, 1)  # nothing was delivered


# -- limits -------------------------------------------------------------------------------


def test_too_many_channels_locally() -> None:
    pair = ConnectionPair()
    for _ in range(MAX_CHANNELS):
        pair.client.open("telemetry", now=0)
    with pytest.raises(LocalProtocolError) as info:
        pair.client.open("telemetry", now=0)
    assert info.value.code is ErrorCode.TOO_MANY_CHANNELS


def test_too_many_channels_from_peer() -> None:
    pair = ConnectionPair(server_settings=Settings(max_channels=2))
    ids = [pair.client.open("telemetry", now=0) for _ in range(3)]
    pair.pump()
    for cid in ids[:2]:
        pair.server.accept(cid)
    pair.pump()
    refused = [e for e in pair.take(pair.client) if isinstance(e, ChannelRefused)]
    assert refused == [ChannelRefused(ids[2], ErrorCode.TOO_MANY_CHANNELS, "too many channels")]


def test_pending_open_limit() -> None:
    pair = ConnectionPair(server_settings=Settings(max_pending_opens=2))
    ids = [pair.client.open("telemetry", now=0) for _ in range(3)]
    pair.pump()
    assert len(pair.take(pair.server)) == 2
    (event,) = pair.take(pair.client)
    assert event == ChannelRefused(ids[2], ErrorCode.TOO_MANY_CHANNELS, "too many pending opens")
    pair.server.accept(ids[0])  # answering frees a pending slot
    cid = pair.client.open("telemetry", now=0)
    pair.pump()
    assert pair.take(pair.server) == [ChannelRequested(cid, "telemetry", {})]


def test_unanswered_open_is_refused_after_accept_timeout() -> None:
    pair = ConnectionPair()
    cid = pair.client.open("desktop", now=0)
    pair.pump()
    pair.advance(pair.server.settings.accept_timeout - 0.5)
    assert pair.take(pair.client) == []
    pair.advance(1)
    assert pair.take(pair.server)[-1] == ChannelReset(
        cid, ErrorCode.TIMEOUT, "not answered in time", False
    )
    assert pair.take(pair.client) == [
        ChannelRefused(cid, ErrorCode.TIMEOUT, "not answered in time")
    ]
    with pytest.raises(LocalProtocolError):
        pair.server.accept(cid)  # too late


def test_open_times_out_when_no_answer_arrives() -> None:
    pair = ConnectionPair()
    pair.link_up = False
    cid = pair.client.open("desktop", now=0)
    pair.advance(pair.client.settings.open_timeout - 0.5)
    assert pair.take(pair.client) == []
    pair.advance(1)
    assert pair.take(pair.client) == [ChannelRefused(cid, ErrorCode.TIMEOUT, "open timed out")]
    assert pair.client.open_channels == 0


def test_open_deadlines_stay_bounded_under_churn() -> None:
    conn = Connection(Role.CLIENT, now=0)
    for _ in range(10_000):
        conn.reset(conn.open("telemetry", now=0))
    assert len(conn._opening) <= 2 * MAX_CHANNELS + 1
    assert conn.next_deadline() == conn.settings.client_ping_idle


def test_control_flood_fails_the_connection() -> None:
    conn = Connection(Role.SERVER, now=0)
    ping = PingFrame(1).encode()
    events: list[object] = []
    for _ in range(MAX_CONTROL_BACKLOG // 14 + 2):  # PONGs we must write, never read
        events += conn.receive_message(ping, 0)
    assert events == [ConnectionFailed(ErrorCode.PROTOCOL_ERROR, "control backlog exceeded")]


# -- keepalive ----------------------------------------------------------------------------


def test_idle_link_stays_up_and_measures_rtt() -> None:
    pair = ConnectionPair()
    for _ in range(600):
        pair.advance(1)
    assert pair.take(pair.client) == pair.take(pair.server) == []
    assert pair.client.rtt == 0.0  # the in-memory link is instant
    # Only the client probes; its PINGs keep the server from needing its own.
    assert pair.client.stats[CONNECTION_KIND].frames_out == 600 // 25
    assert pair.server.stats[CONNECTION_KIND].frames_out == 600 // 25


@pytest.mark.parametrize("last_sender", ["client", "server", "both"])
def test_silent_drop_detected_by_both_ends_within_40_seconds(last_sender: str) -> None:
    pair = ConnectionPair()
    cid = open_from(pair, "client")
    pair.advance(7.3)  # somewhere between keepalives
    if last_sender in ("client", "both"):
        pair.client.send_message(cid, b"x")
    if last_sender in ("server", "both"):
        pair.server.send_message(cid, b"y")
    pair.pump()
    dropped_at = pair.now
    pair.link_up = False
    failed_at: dict[str, float] = {}
    while len(failed_at) < 2 and pair.now < dropped_at + 120:
        pair.advance(0.25)
        for name, conn in (("client", pair.client), ("server", pair.server)):
            if any(isinstance(e, ConnectionFailed) for e in pair.take(conn)):
                assert conn.error is ErrorCode.TIMEOUT
                failed_at[name] = pair.now - dropped_at
    assert set(failed_at) == {"client", "server"}
    assert max(failed_at.values()) <= 40, failed_at


def test_deadline_tracks_keepalive() -> None:
    conn = Connection(Role.CLIENT, now=100)
    assert conn.next_deadline() == 125
    conn.receive_message(PingFrame(7).encode(), 110)
    assert conn.next_deadline() == 135
    assert conn.tick(135) == []
    assert conn.next_deadline() == 147  # PING sent at 135, dead at 147
    frames = [decode_frame(conn.next_frame() or b"") for _ in range(2)]
    assert frames == [PongFrame(7), PingFrame(1)]


# -- priorities ---------------------------------------------------------------------------


def test_control_message_overtakes_bulk_backlog() -> None:
    pair = ConnectionPair()
    bulk = open_from(pair, "client", "files")
    control = open_from(pair, "client", "control")
    for _ in range(32):
        pair.client.send_message(bulk, b"b" * 256 * 1024)  # 8 MiB backlog
    first = decode_frame(pair.client.next_frame() or b"")  # one bulk chunk goes out
    pair.client.send_message(control, b"urgent")
    nxt = decode_frame(pair.client.next_frame() or b"")
    assert isinstance(first, DataFrame) and first.channel_id == bulk
    assert nxt == DataFrame(control, b"urgent", False)


def test_input_beats_desktop_beats_telemetry_beats_bulk() -> None:
    pair = ConnectionPair()
    kinds = ["files", "telemetry", "desktop", "input"]
    ids = {kind: open_from(pair, "client", kind) for kind in kinds}
    for kind in kinds:
        pair.client.send_message(ids[kind], kind.encode())
    order = [decode_frame(f).channel_id for f in pair.frames(pair.client)]  # type: ignore[union-attr]
    assert order == [ids["input"], ids["desktop"], ids["telemetry"], ids["files"]]


def test_round_robin_within_a_class_by_chunk() -> None:
    pair = ConnectionPair()
    a = open_from(pair, "client", "files")
    b = open_from(pair, "client", "updates", priority=Priority.BULK)
    pair.client.send_message(a, b"a" * 3 * MAX_CHUNK)
    pair.client.send_message(b, b"b" * 3 * MAX_CHUNK)
    order = [decode_frame(f).channel_id for f in pair.frames(pair.client)]  # type: ignore[union-attr]
    assert order == [a, b, a, b, a, b]


def test_control_frames_go_before_data() -> None:
    pair = ConnectionPair()
    cid = open_from(pair, "client", "files")
    pair.client.send_message(cid, b"x" * 100_000)
    pair.client.open("telemetry", now=0)
    assert isinstance(decode_frame(pair.client.next_frame() or b""), OpenFrame)


# -- GOAWAY and failure -------------------------------------------------------------------


def test_goaway() -> None:
    pair = ConnectionPair()
    cid = open_from(pair, "client")
    in_flight = pair.client.open("telemetry", now=0)  # crosses the GOAWAY
    pair.server.go_away(ErrorCode.GOING_AWAY, 1500, "restart")
    pair.pump()
    events = pair.take(pair.client)
    assert GoAwayReceived(ErrorCode.GOING_AWAY, 1500, "restart") in events
    assert ChannelRefused(in_flight, ErrorCode.GOING_AWAY, "going away") in events
    with pytest.raises(LocalProtocolError) as info:
        pair.client.open("telemetry", now=0)
    assert info.value.code is ErrorCode.GOING_AWAY
    with pytest.raises(LocalProtocolError):
        pair.server.open("telemetry", now=0)
    pair.client.send_message(cid, b"existing channels keep working")
    pair.pump()
    assert messages(pair.take(pair.server)) == [b"existing channels keep working"]


def test_terminate_flushes_one_goaway_then_nothing() -> None:
    pair = ConnectionPair()
    cid = open_from(pair, "client")
    pair.client.send_message(cid, b"x" * 100_000)
    pair.client.terminate(ErrorCode.REPLACED, "newer connection")
    frames = pair.frames(pair.client)
    assert [decode_frame(f) for f in frames] == [
        GoAwayFrame(ErrorCode.REPLACED, 0, "newer connection")
    ]
    assert pair.client.next_deadline() is None and pair.client.tick(1e9) == []
    with pytest.raises(LocalProtocolError):
        pair.client.open("telemetry", now=0)
    pair.client.close(cid)  # no-ops once gone
    pair.client.reset(cid)


def test_a_bug_while_receiving_becomes_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = Connection(Role.CLIENT, now=0)

    def broken(*args: object) -> None:
        raise KeyError("secret detail")

    monkeypatch.setitem(__import__("tunnel.connection").connection._HANDLERS, PingFrame, broken)
    (event,) = conn.receive_message(PingFrame(1).encode(), 0)
    assert event == ConnectionFailed(ErrorCode.INTERNAL_ERROR, "internal error")
    goaway = decode_frame(conn.next_frame() or b"")
    assert isinstance(goaway, GoAwayFrame) and "secret" not in goaway.reason


def test_stats_count_frames_and_bytes_per_kind() -> None:
    pair = ConnectionPair()
    cid = open_from(pair, "client", "desktop")
    pair.client.send_message(cid, b"x" * 100)
    pair.pump()
    sent = pair.client.stats["desktop"]
    received = pair.server.stats["desktop"]
    assert (sent.frames_out, received.frames_in) == (2, 2)  # OPEN + DATA
    assert sent.bytes_out == received.bytes_in
    assert received.frames_out == 1  # ACCEPT


# -- BULK keeps little in flight while an interactive channel is live ---------------------

KIB = 1024
CAPPED = Settings(bulk_window=1024 * KIB, bulk_shared_in_flight=256 * KIB, max_message=64 * KIB)


def received_bytes(pair: ConnectionPair, conn: Connection) -> int:
    return sum(len(data) for data in messages(pair.take(conn)))


def queue_bulk(pair: ConnectionPair, cid: int, total: int) -> None:
    for _ in range(total // (64 * KIB)):
        pair.client.send_message(cid, b"x" * 64 * KIB)
    pair.pump()


@pytest.mark.parametrize("kind", ["input", "desktop"])
@pytest.mark.parametrize("opener", SIDES)
def test_bulk_in_flight_is_capped_while_an_interactive_channel_is_live(
    kind: str, opener: str
) -> None:
    pair = ConnectionPair(client_settings=CAPPED, server_settings=CAPPED)
    bulk = open_from(pair, "client", "files")
    interactive = open_from(pair, opener, kind)
    queue_bulk(pair, bulk, 2048 * KIB)
    # The receiver reads nothing: what arrived is what the sender put in flight.
    assert received_bytes(pair, pair.server) == 256 * KIB  # the cap, not the 1 MiB window
    pair.server.reset(interactive)  # the interactive channel goes: the whole window
    pair.pump()
    assert received_bytes(pair, pair.server) == 1024 * KIB - 256 * KIB


def test_cap_engaged_with_more_in_flight_waits_until_below_it() -> None:
    pair = ConnectionPair(client_settings=CAPPED, server_settings=CAPPED)
    bulk = open_from(pair, "client", "files")
    queue_bulk(pair, bulk, 2048 * KIB)
    assert received_bytes(pair, pair.server) == 1024 * KIB  # nothing interactive: window
    open_from(pair, "server", "input")
    pair.server.message_consumed(bulk, 512 * KIB)  # credit back, 512 KiB still in flight
    pair.pump()
    assert received_bytes(pair, pair.server) == 0
    pair.server.message_consumed(bulk, 512 * KIB)  # in flight 0: up to the cap again
    pair.pump()
    assert received_bytes(pair, pair.server) == 256 * KIB


def test_non_bulk_and_refused_channels_leave_bulk_uncapped() -> None:
    pair = ConnectionPair(client_settings=CAPPED, server_settings=CAPPED)
    bulk = open_from(pair, "client", "files")
    open_from(pair, "client", "telemetry")
    refused = pair.server.open("input", now=pair.now)  # never becomes live
    pair.pump()
    pair.client.refuse(refused)
    pair.pump()
    queue_bulk(pair, bulk, 2048 * KIB)
    assert received_bytes(pair, pair.server) == 1024 * KIB


def test_capped_sender_still_gets_credit_from_a_big_window() -> None:
    """The receiver batches credit by at most MAX_CREDIT_BATCH: a sender capped below a
    quarter of an 8 MiB window is not left waiting for credit that never comes."""
    settings = Settings()  # production defaults: 8 MiB window, 512 KiB cap
    pair = ConnectionPair(client_settings=settings, server_settings=settings)
    bulk = open_from(pair, "client", "files")
    open_from(pair, "client", "input")
    total = 0
    for _ in range(64):  # 4 MiB through a 512 KiB cap
        pair.client.send_message(bulk, b"y" * 64 * KIB)
    for _ in range(100):
        pair.pump()
        for data in messages(pair.take(pair.server)):
            total += len(data)
            pair.server.message_consumed(bulk, len(data))
        if total == 64 * 64 * KIB:
            break
    assert total == 64 * 64 * KIB

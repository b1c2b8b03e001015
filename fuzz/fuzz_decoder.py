"""Fuzz the tunnel frame decoder and ``Connection.receive_message`` with atheris.

CI runs it for a bounded time from the repository root::

    python fuzz/fuzz_decoder.py -max_total_time=30

Any other libFuzzer flag works too (``-runs=100000``, a corpus directory as the last
argument to keep interesting inputs between runs). A crash prints the input and
writes it to ``crash-<sha1>``; replay it with ``python fuzz/fuzz_decoder.py crash-...``.

Each input is used twice:

1. as one WebSocket message for :func:`tunnel.frames.decode_frame`, which may only
   raise :class:`~tunnel.errors.FrameError` (PROTOCOL_ERROR or FRAME_TOO_LARGE), and
   whose result must survive re-encoding;
2. as a script of messages for a :class:`~tunnel.Connection` (server or client role):
   raw fuzz bytes, or well-formed frames with fuzzed fields so deep channel states are
   reached. The connection answers opens, consumes messages, ticks the clock and
   drains its output. ``receive_message`` must never raise, must return only
   :class:`~tunnel.Event` objects, never an INTERNAL_ERROR (that would be a bug caught
   by the safety net), and flow-control books must balance after every step.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris
from harness import run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports():
    from tunnel import (
        ChannelRequested,
        ChannelReset,
        Connection,
        ConnectionFailed,
        ErrorCode,
        Event,
        LocalProtocolError,
        MessageReceived,
        Role,
        Settings,
    )
    from tunnel.errors import FrameError
    from tunnel.frames import (
        AcceptFrame,
        CloseFrame,
        CreditFrame,
        DataFrame,
        GoAwayFrame,
        OpenFrame,
        PingFrame,
        PongFrame,
        RefuseFrame,
        ResetFrame,
        decode_frame,
    )
    from tunnel.limits import MAX_CHUNK

SETTINGS = Settings(window=64 * 1024, max_message=48 * 1024, max_channels=8, max_pending_opens=4)
CODES = list(ErrorCode)


def check_decoder(data: bytes) -> None:
    try:
        frame = decode_frame(data)
    except FrameError as exc:
        assert exc.code in (ErrorCode.PROTOCOL_ERROR, ErrorCode.FRAME_TOO_LARGE), exc.code
        return
    assert decode_frame(frame.encode()) == frame


def structured_frame(fdp: atheris.FuzzedDataProvider) -> bytes:
    """A well-formed frame with fuzzed fields, aimed at a few channel ids."""
    kind = fdp.ConsumeIntInRange(0, 9)
    cid = fdp.ConsumeIntInRange(1, 12)
    window = fdp.ConsumeIntInRange(1, 80_000)
    max_message = fdp.ConsumeIntInRange(1, window)
    code = CODES[fdp.ConsumeIntInRange(0, len(CODES) - 1)]
    text = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 20))
    frame: object
    if kind == 0:
        meta = {"kind": fdp.PickValueInList(["control", "files", "desktop", "X"])}
        frame = OpenFrame(cid, window, max_message, meta)
    elif kind == 1:
        frame = AcceptFrame(cid, window, max_message, {"t": text})
    elif kind == 2:
        frame = RefuseFrame(cid, code, text)
    elif kind == 3:
        size = fdp.ConsumeIntInRange(1, MAX_CHUNK)
        frame = DataFrame(cid, b"d" * size, fdp.ConsumeBool())
    elif kind == 4:
        frame = CreditFrame(cid, fdp.ConsumeIntInRange(1, 100_000))
    elif kind == 5:
        frame = CloseFrame(cid)
    elif kind == 6:
        frame = ResetFrame(cid, code, text)
    elif kind == 7:
        frame = PingFrame(fdp.ConsumeIntInRange(0, 2**64 - 1))
    elif kind == 8:
        frame = PongFrame(fdp.ConsumeIntInRange(0, 2**64 - 1))
    else:
        frame = GoAwayFrame(code, fdp.ConsumeIntInRange(0, 2**32 - 1), text)
    return frame.encode()  # type: ignore[attr-defined, no-any-return]


def check_books(conn: Connection) -> None:
    assert conn.queued_bytes >= 0
    for channel in conn._channels.values():
        rx = channel.rx
        assert rx.available + rx.held + rx.unreturned == rx.window
        assert 0 <= channel.tx.credit <= channel.tx.window


def handle(conn: Connection, events: list[Event], fdp: atheris.FuzzedDataProvider) -> None:
    for event in events:
        assert isinstance(event, Event), event
        # INTERNAL_ERROR generated here means the safety net caught a bug (a peer may
        # send that code in its own RESET, which is fine).
        if isinstance(event, ConnectionFailed) or (
            isinstance(event, ChannelReset) and not event.remote
        ):
            assert event.code is not ErrorCode.INTERNAL_ERROR, event
        try:
            if isinstance(event, ChannelRequested):
                if fdp.ConsumeBool():
                    conn.accept(event.channel_id)
                    conn.send_message(event.channel_id, b"r" * fdp.ConsumeIntInRange(1, 40_000))
                else:
                    conn.refuse(event.channel_id)
            elif isinstance(event, MessageReceived) and fdp.ConsumeBool():
                conn.message_consumed(event.channel_id, len(event.data))
        except LocalProtocolError:
            pass  # e.g. the peer's max_message is smaller than our reply


def check_connection(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    role = Role.SERVER if fdp.ConsumeBool() else Role.CLIENT
    now = 0.0
    conn = Connection(role, SETTINGS, now=now, name="fuzz")
    if fdp.ConsumeBool():
        conn.open("files", now=now)
    while fdp.remaining_bytes():
        if fdp.ConsumeBool():
            message = structured_frame(fdp)
        else:
            message = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
        handle(conn, conn.receive_message(message, now), fdp)
        check_books(conn)
        for _ in range(fdp.ConsumeIntInRange(0, 4)):
            if conn.next_frame() is None:
                break
        if fdp.ConsumeIntInRange(0, 7) == 0:
            now += fdp.ConsumeIntInRange(0, 40)
            handle(conn, conn.tick(now), fdp)
            check_books(conn)
    while conn.next_frame() is not None:
        pass


def test_one_input(data: bytes) -> None:
    check_decoder(data)
    check_connection(data)


if __name__ == "__main__":
    run(test_one_input)

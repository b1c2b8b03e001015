"""The relay's /view endpoint with the real relay, real TLS and the real agent service.

Each security test fails if its property broke: replay, expiry, alteration, a foreign
ticket, a foreign Origin, no ticket, a disabled account, a removed right, an attempted
upgrade of a view-only ticket.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import pytest
from sqlalchemy import Engine, update
from websockets.exceptions import ConnectionClosed, InvalidStatus

from desktop import wire
from protocol.desktop import EndReason, Mode
from relay_server.desktop.events import DesktopEvents
from relay_server.desktop.viewer import CHANNEL_WINDOW
from store import desktop
from store.db import session_scope
from store.desktop import ViewerTicket
from tests.conftest import UNIT
from tests.desktop_session.conftest import (
    HEIGHT,
    WIDTH,
    FixedScreen,
    Stage,
    audit_kinds,
    device_clipboard_is,
    first_frame,
)
from tests.desktop_session.world import disable_user, revoke_permission
from tests.relay.conftest import wait_for

if TYPE_CHECKING:
    from relay_server.agent_link import AgentLink


async def pasted(display: str, expected: bytes) -> bool:
    """Whether a paste on the device's X server gives ``expected`` within 10 s."""
    return await asyncio.to_thread(device_clipboard_is, display, expected, 10 * UNIT)


async def refused(stage: Stage, ticket: str | None, status: int = 403, **kwargs: object) -> None:
    with pytest.raises(InvalidStatus) as caught:
        await stage.viewer(ticket, **kwargs)  # type: ignore[arg-type]
    assert caught.value.response.status_code == status


async def closed_code(ws: object, timeout: float) -> int:
    """Read until the relay closes the viewer; its close code."""
    async with asyncio.timeout(timeout):
        try:
            while True:
                await ws.recv()  # type: ignore[attr-defined]
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            return exc.rcvd.code


async def test_viewer_gets_the_screen_and_drives_the_device(stage: Stage) -> None:
    sid = await stage.accepted()
    ws = await stage.viewer(stage.ticket(sid))
    hello = await ws.recv()
    assert '"op":"hello"' in hello and '"mode":"control"' in hello
    frame = await first_frame(ws)
    assert (frame.width, frame.height) == (WIDTH, HEIGHT)
    await ws.send(wire.KeyEvent(0x61, True).encode())
    await ws.send(wire.KeyEvent(0x61, False).encode())
    async with asyncio.timeout(5 * UNIT):
        while ("key", 0x61, False) not in stage.sink.events:
            await asyncio.sleep(0.01)
    assert stage.channel_metas[-1] == {
        "session_id": sid,
        "mode": "control",
        "viewer": "eng",
        "clipboard": True,
    }
    await stage.wait_state(sid, "started")
    await ws.close()
    await stage.fleet.relay.audit.flush()
    assert {"desktop.accepted", "desktop.joined", "desktop.started"} <= set(
        audit_kinds(stage.engine)
    )


async def test_replayed_ticket_is_refused(stage: Stage) -> None:
    sid = await stage.accepted()
    ticket = stage.ticket(sid)
    ws = await stage.viewer(ticket)
    await first_frame(ws)
    await refused(stage, ticket)  # same ticket again, even while the first viewer lives
    await ws.close()
    await refused(stage, ticket)


async def test_expired_ticket_is_refused(stage: Stage) -> None:
    sid = await stage.accepted()
    issued = datetime.now(UTC) - desktop.TICKET_TTL - timedelta(seconds=1)
    await refused(stage, stage.ticket(sid, now=issued))
    ws = await stage.viewer(stage.ticket(sid))  # a fresh one works
    await first_frame(ws)


async def test_altered_ticket_is_refused(stage: Stage) -> None:
    sid = await stage.accepted()
    ticket = stage.ticket(sid)
    flipped = ticket[:10] + ("B" if ticket[10] == "A" else "A") + ticket[11:]
    for bad in (flipped, ticket[:-1], ticket + "x", "%2e" * 20):
        await refused(stage, bad)
    assert not stage.channel_metas  # nothing reached the device
    ws = await stage.viewer(ticket)  # the real one was not spent by the attempts
    await first_frame(ws)


async def test_ticket_of_another_user_or_session_is_refused(stage: Stage) -> None:
    mine = await stage.accepted("eng")
    # A ticket bound to another user for my session (a forged row) is refused...
    ticket = stage.ticket(mine)
    with session_scope(stage.engine) as session:
        session.execute(update(ViewerTicket).values(user_id=stage.world.users["eng2"]))
    await refused(stage, ticket)
    # ... and so is my valid ticket for a session that is not accepted (another session).
    pending = stage.request("eng")
    await refused(stage, stage.ticket(pending))
    # A ticket whose mode differs from its session's (forged upgrade) is refused too.
    ticket = stage.ticket(mine)
    with session_scope(stage.engine) as session:
        session.execute(update(ViewerTicket).values(mode="view"))
    await refused(stage, ticket)
    assert not stage.channel_metas
    await stage.fleet.relay.audit.flush()
    assert audit_kinds(stage.engine).count("desktop.join_refused") == 3


async def test_foreign_origin_and_missing_ticket_are_refused(stage: Stage) -> None:
    sid = await stage.accepted()
    ticket = stage.ticket(sid)
    await refused(stage, ticket, origin="https://evil.example")
    await refused(stage, ticket, origin="https://portal.test.evil.example")
    await refused(stage, ticket, origin=None)
    await refused(stage, None)
    await refused(stage, "")
    assert not stage.channel_metas
    ws = await stage.viewer(ticket)  # the Origin refusals did not spend it
    await first_frame(ws)


async def test_disabling_the_account_ends_the_live_viewer_within_10_s(stage: Stage) -> None:
    sid = await stage.accepted()
    ws = await stage.viewer(stage.ticket(sid))
    await first_frame(ws)
    disable_user(stage.engine, stage.world.users["eng"])
    # The relay re-checks rights every 5 s: closed within 10 s (scaled on slow machines).
    assert await closed_code(ws, 10 * UNIT) == 4403
    await stage.wait_state(sid, "ended")
    assert stage.state(sid).end_reason == EndReason.ACCESS_WITHDRAWN
    # The agent ends it too, when the channel reset reaches it (after the relay's record).
    await wait_for(lambda: not stage.desktop.book.live)


async def test_removing_the_desktop_permission_ends_the_live_viewer(stage: Stage) -> None:
    sid = await stage.accepted(mode=Mode.CONTROL)
    ws = await stage.viewer(stage.ticket(sid))
    await first_frame(ws)
    revoke_permission(stage.engine, "service_engineer", "desktop.control")
    assert await closed_code(ws, 10 * UNIT) == 4403  # within 10 s, scaled
    await stage.wait_state(sid, "ended")


async def test_view_only_ticket_cannot_be_upgraded(stage: Stage) -> None:
    sid = await stage.accepted(mode=Mode.VIEW)
    ws = await stage.viewer(stage.ticket(sid), query="&mode=control&clipboard=1")
    assert '"mode":"view"' in await ws.recv()
    await first_frame(ws)
    assert stage.channel_metas[-1]["mode"] == "view"
    for message in (
        wire.KeyEvent(0x61, True),
        wire.PointerEvent(5, 5, 1),
        wire.WheelEvent(0, 1),
        wire.Clipboard("rm -rf /"),
    ):
        await ws.send(message.encode())
    await ws.send(wire.RefreshRequest().encode())  # not input: passes
    frame = await first_frame(ws)  # the refresh's answer: everything before it was handled
    assert frame.full
    assert stage.sink.events == []
    assert stage.fleet.desktop.viewers.live[sid].inputs_dropped == 4  # the relay dropped them
    session = stage.desktop.book.get(sid)
    assert session is not None and session.joined_mode is not None
    assert str(session.joined_mode) == "view"


async def test_clipboard_needs_its_own_right_checked_live(stage: Stage) -> None:
    sid = await stage.accepted()
    ws = await stage.viewer(stage.ticket(sid))
    assert '"clipboard":true' in await ws.recv()
    await first_frame(ws)
    live = stage.fleet.desktop.viewers.live[sid]
    paste = wire.Clipboard("serial 1234").encode()
    await ws.send(paste)
    assert await pasted(stage.display, b"serial 1234")  # the device's real clipboard
    revoke_permission(stage.engine, "service_engineer", "desktop.clipboard")
    async with asyncio.timeout(10 * UNIT):  # the next re-check tells the viewer
        while '"op":"rights"' not in (message := await ws.recv()):
            pass
    assert '"clipboard":false' in message
    # ... and the device, which gives its clipboard up at once.
    assert await pasted(stage.display, b"")
    passed, dropped = live.bytes_from_viewer, live.inputs_dropped
    await ws.send(paste)
    await ws.send(wire.RefreshRequest().encode())
    await first_frame(ws)  # the refresh went through: the clipboard before it did not
    assert live.bytes_from_viewer == passed + 1
    assert live.inputs_dropped == dropped + 1


async def test_a_viewer_cannot_send_the_relays_rights_message(stage: Stage) -> None:
    sid = await stage.accepted()
    ws = await stage.viewer(stage.ticket(sid))
    await first_frame(ws)
    await ws.send(wire.Rights(clipboard=True).encode())
    assert await closed_code(ws, 5 * UNIT) == 4400


async def test_a_viewer_that_drops_can_come_back_with_a_new_ticket(stage: Stage) -> None:
    sid = await stage.accepted()
    ws = await stage.viewer(stage.ticket(sid))
    await first_frame(ws)
    await ws.close()
    again = await stage.viewer(stage.ticket(sid))  # state: started; same channel
    frame = await first_frame(again)
    assert frame.full
    assert len(stage.channel_metas) == 1
    assert stage.state(sid).state == "started"


async def test_a_second_viewer_replaces_the_first(stage: Stage) -> None:
    sid = await stage.accepted()
    first = await stage.viewer(stage.ticket(sid))
    await first_frame(first)
    second = await stage.viewer(stage.ticket(sid))
    assert await closed_code(first, 5 * UNIT) == 4409
    await first_frame(second)


async def test_session_ended_on_the_device_closes_the_viewer(stage: Stage) -> None:
    sid = await stage.accepted()
    ws = await stage.viewer(stage.ticket(sid))
    await first_frame(ws)
    stage.desktop._end(sid, "ended-by-customer")  # what the indicator's End button does
    assert await closed_code(ws, 5 * UNIT) == 4410
    await stage.wait_state(sid, "ended")
    assert stage.state(sid).end_reason == "ended-by-customer"


async def test_session_ended_by_the_portal_closes_the_viewer(stage: Stage) -> None:
    """The portal records the end itself when the device cannot be told; the relay's
    re-check notices and ends the stream."""
    sid = await stage.accepted()
    ws = await stage.viewer(stage.ticket(sid))
    await first_frame(ws)
    with session_scope(stage.engine) as session:
        desktop.record_ended(
            session,
            sid,
            reason=EndReason.BY_ENGINEER,
            now=datetime.now(UTC),
            actor=desktop.Actor("portal"),
        )
    assert await closed_code(ws, 10 * UNIT) == 4410
    async with asyncio.timeout(5 * UNIT):
        while stage.desktop.book.live:  # the device stopped streaming too
            await asyncio.sleep(0.02)
    assert stage.state(sid).end_reason == EndReason.BY_ENGINEER


async def test_a_slow_viewer_does_not_grow_relay_memory(
    stage: Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The viewer stops reading while the device's screen changes all the time: the
    relay holds at most one channel window plus one message for it, credit stops, and
    the device stops sending (it would otherwise stream tens of MB in these seconds)."""
    monkeypatch.setattr(FixedScreen, "noise", (800, 600))
    sid = await stage.accepted()
    ws = await stage.viewer(stage.ticket(sid), max_queue=1)
    await first_frame(ws)  # then never read again
    session = stage.desktop.book.get(sid)
    assert session is not None

    async def settled() -> int:
        last = -1
        async with asyncio.timeout(15 * UNIT):
            while session.bytes_to_viewer != last:
                last = session.bytes_to_viewer
                await asyncio.sleep(0.5 * UNIT)
        return last

    sent = await settled()
    live = stage.fleet.desktop.viewers.live[sid]
    assert live.viewer is not None
    transport = live.viewer.ws.transport
    assert live.channel.buffered_bytes <= CHANNEL_WINDOW
    assert transport.get_write_buffer_size() <= CHANNEL_WINDOW + 64 * 1024
    assert sent < 24 * 1024 * 1024  # window + socket buffers, not a stream of frames
    assert session.bytes_to_viewer - sent < 1024 * 1024  # still stopped


async def test_agent_events_are_checked_and_bound_to_the_device(stage: Stage) -> None:
    sid = stage.request()
    link = stage.fleet.relay.registry.agents[stage.world.device_a]
    events = stage.fleet.desktop.events
    before = (events.invalid, events.applied)
    events.record(link, {"session_id": "nope", "state": "accepted", "by": "device"})
    events.record(link, {"session_id": sid, "state": "prompting", "by": "device"})
    events.record(link, {"session_id": sid, "state": "accepted", "by": 7})
    assert events.invalid == before[0] + 3
    other = stage.fleet.relay.registry.agents[stage.world.device_a]
    other_device = stage.world.device_b
    with session_scope(stage.engine) as session:  # a session of another device
        foreign = desktop.create_session(
            session,
            device_id=other_device,
            user_id=stage.world.users["root"],
            username="root",
            mode=Mode.VIEW,
            reason="",
            consent_timeout_s=30,
            now=datetime.now(UTC),
        ).id
    events.record(other, {"session_id": foreign, "state": "accepted", "by": "device"})
    await events.flush()
    assert stage.state(foreign).state == "requested"
    assert events.applied == before[1]


async def test_undecided_requests_time_out_on_the_server(stage: Stage) -> None:
    with session_scope(stage.engine) as session:
        sid = desktop.create_session(
            session,
            device_id=stage.world.device_a,
            user_id=stage.world.users["eng"],
            username="eng",
            mode=Mode.VIEW,
            reason="",
            consent_timeout_s=1,
            now=datetime.now(UTC) - timedelta(seconds=10),
        ).id
    await stage.wait_state(sid, "timeout", timeout=5 * UNIT)
    assert stage.state(sid).decided_by == desktop.BY_SERVER_TIMEOUT


async def test_the_device_reports_its_consent_setting_on_connecting(stage: Stage) -> None:
    async with asyncio.timeout(10 * UNIT):
        while True:
            await stage.fleet.desktop.events.flush()
            with session_scope(stage.engine) as session:
                policy = desktop.last_reported_policy(session, stage.world.device_a)
            if policy is not None:
                break
            await asyncio.sleep(0.02)
    # The stage's device asks for no consent; the agent's default timeout is 30 s.
    assert (policy.consent_required, policy.consent_timeout_s, policy.remote_consent_allowed) == (
        False,
        30,
        False,
    )
    assert "desktop.policy_reported" in audit_kinds(stage.engine)


def test_malformed_reports_are_counted_and_dropped(db_engine: Engine) -> None:
    """What `protocol.desktop` refuses never reaches the database; an upper-case session
    id is not the one the portal sent, so it is refused like any other malformed id."""
    events = DesktopEvents(db_engine, "test")
    link = cast("AgentLink", SimpleNamespace(device_id="device"))
    events.record_policy(
        link, {"consent_required": 1, "consent_timeout_s": 30, "remote_consent_allowed": False}
    )
    events.record(
        link,
        {
            "session_id": "6F1C2B0E-8D7A-4C55-9E0B-1A2B3C4D5E6F",
            "state": "accepted",
            "by": "device",
            "reason": "",
        },
    )
    assert events.invalid == 2 and events.applied == 0

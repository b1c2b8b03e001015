"""Desktop sessions end to end, as the people involved would do it: the engineer's
request and viewer (played by the relay stub), the customer at the device (real
clicks with xdotool on the real prompt and indicator, or the local command), and the
real X server and Tk program the session shows and drives."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from PIL import ImageChops

from agent.desktop import indicator_app, prompt_app
from desktop import wire
from tests.conftest import UNIT
from tests.desktop.conftest import App
from tests.desktop.test_streamer import Viewer, screen
from tunnel import ErrorCode
from tunnel.aio import Channel, ChannelRefusedError, ChannelResetError

from .conftest import (
    Device,
    StartDevice,
    T,
    click,
    find_window,
    is_shown,
    kill_client,
    press_key,
    window_gone,
)

PROMPT = "remote access request"
INDICATOR = "remote session$"


async def answer_prompt(device: Device, button: tuple[int, int]) -> None:
    window = await asyncio.to_thread(find_window, device.display, PROMPT)
    await asyncio.to_thread(click, device.display, window, button)


async def shows_the_screen(channel: Channel, display: str) -> Viewer:
    """Read the stream until the viewer's picture is exactly the screen."""
    viewer = Viewer()
    async with asyncio.timeout(T):
        while True:
            viewer.take(await channel.recv())
            if viewer.canvas is not None and viewer.updates:
                shot = await asyncio.to_thread(screen, display)
                if ImageChops.difference(viewer.canvas, shot).getbbox() is None:
                    return viewer


async def test_accepted_on_the_prompt_the_viewer_sees_the_screen(
    start_device: StartDevice,
) -> None:
    device = await start_device()
    session_id, reply = await device.request(mode="view")
    assert reply.ok, reply.body
    assert reply.body["result"] == {
        "state": "prompting",
        "consent_required": True,
        "timeout_s": 30,
        "remote_consent_allowed": False,
    }
    await answer_prompt(device, prompt_app.ACCEPT_BUTTON.center)
    accepted = await device.event(session_id, "accepted")
    assert accepted["by"] == "device" and accepted["mode"] == "view"
    await asyncio.to_thread(window_gone, device.display, PROMPT)
    await asyncio.to_thread(find_window, device.display, INDICATOR)
    assert device.sources.made == []  # accepted, but nobody joined yet: no capture

    channel = await device.open_desktop(session_id, "view")
    started = await device.event(session_id, "started")
    assert started["viewer"] == "erika" and started["mode"] == "view"
    viewer = await shows_the_screen(channel, device.display)
    assert viewer.monitors is not None

    await channel.close()  # the viewer leaves
    ended = await device.event(session_id, "ended")
    assert ended["end_reason"] == "viewer-left"
    assert ended["bytes_to_viewer"] > 0 and ended["duration_s"] >= 0
    await asyncio.to_thread(window_gone, device.display, INDICATOR)


F12 = 0xFFC9


def tap(keysym: int) -> list[bytes]:
    return [wire.KeyEvent(keysym, True).encode(), wire.KeyEvent(keysym, False).encode()]


def key_messages(text: str) -> list[bytes]:
    return [message for char in text for message in tap(ord(char))]


def click_messages(x: int, y: int) -> list[bytes]:
    return [wire.PointerEvent(x, y, b).encode() for b in (0, 1, 0)]


async def accepted_session(device: Device, mode: str) -> tuple[str, Channel]:
    """A session accepted on the prompt and joined by the viewer."""
    session_id, reply = await device.request(mode=mode)
    assert reply.ok, reply.body
    await answer_prompt(device, prompt_app.ACCEPT_BUTTON.center)
    await device.event(session_id, "accepted")
    channel = await device.open_desktop(session_id, mode)
    await device.event(session_id, "started")
    return session_id, channel


async def test_control_session_drives_the_program_until_the_customer_ends_it(
    start_device: StartDevice, program: App
) -> None:
    device = await start_device()
    session_id, channel = await accepted_session(device, "control")
    await shows_the_screen(channel, device.display)
    for message in click_messages(300, 500) + key_messages("hi!") + tap(F12):
        await channel.send(message)
    clicked = await asyncio.to_thread(program.expect, lambda e: e["event"] == "release")
    assert [(e["num"], e["x"], e["y"]) for e in clicked if e["event"] == "button"] == [
        (1, 300, 500)
    ]
    keys = await asyncio.to_thread(
        program.expect, lambda e: e["event"] == "keyup" and e["keysym"] == "F12"
    )
    assert "".join(e["char"] for e in keys if e["event"] == "key") == "hi!"

    # The customer clicks "End session" on the indicator.
    indicator = await asyncio.to_thread(find_window, device.display, INDICATOR)
    await asyncio.to_thread(click, device.display, indicator, indicator_app.END_BUTTON.center)
    ended = await device.event(session_id, "ended")
    assert ended["end_reason"] == "ended-by-customer"
    assert ended["bytes_from_viewer"] == 3 * 6 + 8 * 6  # 3 pointer + 8 key messages
    assert ended["inputs_dropped"] == 0
    with pytest.raises(ChannelResetError) as reset:
        async with asyncio.timeout(T):
            while True:
                await channel.recv()
    assert reset.value.code is ErrorCode.CANCELLED
    await asyncio.to_thread(window_gone, device.display, INDICATOR)


async def test_view_only_input_does_not_reach_the_program(
    start_device: StartDevice, program: App
) -> None:
    device = await start_device()
    session_id, channel = await accepted_session(device, "view")
    viewer = await shows_the_screen(channel, device.display)
    for message in click_messages(300, 500) + key_messages("no") + [wire.WheelEvent(0, 2).encode()]:
        await channel.send(message)
    # Messages are handled in order: once the refresh asked for after them arrives,
    # the input before it has been dealt with.
    viewer.updates.clear()
    await channel.send(wire.RefreshRequest().encode())
    async with asyncio.timeout(T):
        while not (viewer.updates and viewer.updates[-1][-1].full):
            viewer.take(await channel.recv())
    # A real key press as the sentinel: the program sees it first, nothing before it.
    await asyncio.to_thread(press_key, device.display, "F12")
    seen = await asyncio.to_thread(
        program.expect, lambda e: e["event"] == "keyup" and e["keysym"] == "F12"
    )
    assert [e for e in seen if e.get("keysym") != "F12"] == []

    await device.instruct("desktop.end", session_id=session_id)
    ended = await device.event(session_id, "ended")
    assert ended["end_reason"] == "ended-by-portal"
    assert ended["inputs_dropped"] == 3 + 4 + 1


async def refused(device: Device, session_id: str, mode: str = "control") -> None:
    """A desktop channel for ``session_id`` is refused FORBIDDEN."""
    with pytest.raises(ChannelRefusedError) as refusal:
        await device.open_desktop(session_id, mode)
    assert refusal.value.code is ErrorCode.FORBIDDEN


async def test_denied_on_the_prompt_no_screen_is_captured(start_device: StartDevice) -> None:
    device = await start_device()
    session_id, _ = await device.request()
    await answer_prompt(device, prompt_app.DENY_BUTTON.center)
    denied = await device.event(session_id, "denied")
    assert denied["by"] == "device"
    await asyncio.to_thread(window_gone, device.display, PROMPT)
    await refused(device, session_id)
    await refused(device, session_id, "view")
    assert device.sources.made == []
    assert not is_shown(device.display, INDICATOR)


async def test_silence_means_no(start_device: StartDevice) -> None:
    device = await start_device(consent_timeout_s=1.5 * UNIT)
    session_id, reply = await device.request()
    assert reply.body["result"]["timeout_s"] == 1.5 * UNIT
    await asyncio.to_thread(find_window, device.display, PROMPT)
    timeout = await device.event(session_id, "timeout")
    assert timeout["by"] == "device" and "no answer" in timeout["reason"]
    await asyncio.to_thread(window_gone, device.display, PROMPT)  # the agent closed it
    await refused(device, session_id)
    assert device.sources.made == []


async def test_forged_channels_get_no_frame(start_device: StartDevice) -> None:
    device = await start_device()
    await refused(device, str(uuid.uuid4()))  # never requested
    session_id, _ = await device.request(mode="view")
    await asyncio.to_thread(find_window, device.display, PROMPT)
    await refused(device, session_id, "view")  # still prompting: not accepted
    await answer_prompt(device, prompt_app.ACCEPT_BUTTON.center)
    await device.event(session_id, "accepted")
    await refused(device, session_id, "control")  # more than was accepted
    await refused(device, session_id.upper(), "view")  # not the id the device was given
    assert device.sources.made == []
    channel = await device.open_desktop(session_id, "view")
    await device.event(session_id, "started")
    await refused(device, session_id, "view")  # one viewer per session
    await channel.recv()  # the joined viewer gets the stream: one source, made for it
    assert len(device.sources.made) == 1
    channel.reset(ErrorCode.CANCELLED, "viewer closed the tab")
    ended = await device.event(session_id, "ended")
    assert ended["end_reason"] == "channel-reset"


async def test_session_ids_are_taken_in_canonical_form_only(
    start_device: StartDevice,
) -> None:
    """The same rule as the relay's and the portal's (`protocol.desktop`)."""
    device = await start_device()
    reply = await device.instruct(
        "desktop.request",
        session_id=str(uuid.uuid4()).upper(),
        mode="view",
        requester={"user": "erika"},
    )
    assert not reply.ok and reply.body["error"] == "bad_request"
    assert "canonical" in reply.body["message"]


async def test_local_command_answers_and_ends(start_device: StartDevice) -> None:
    device = await start_device()
    session_id, _ = await device.request()
    await asyncio.to_thread(find_window, device.display, PROMPT)
    other = await asyncio.to_thread(device.command, "accept", str(uuid.uuid4()))
    assert other.returncode == 1 and "not_found" in other.stdout
    done = await asyncio.to_thread(device.command, "accept", session_id)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "accepted" in done.stdout
    accepted = await device.event(session_id, "accepted")
    assert accepted["by"] == "device"
    await asyncio.to_thread(window_gone, device.display, PROMPT)
    await asyncio.to_thread(find_window, device.display, INDICATOR)

    done = await asyncio.to_thread(device.command, "end", session_id)
    assert done.returncode == 0, done.stdout + done.stderr
    ended = await device.event(session_id, "ended")
    assert ended["end_reason"] == "ended-by-customer" and ended["duration_s"] == 0
    await asyncio.to_thread(window_gone, device.display, INDICATOR)
    await refused(device, session_id)


@pytest.mark.parametrize("allowed", [False, True])
async def test_site_contact_answers_only_where_the_device_allows(
    start_device: StartDevice, allowed: bool
) -> None:
    device = await start_device(allow_remote_consent=allowed)
    session_id, reply = await device.request(mode="view")
    assert reply.body["result"]["remote_consent_allowed"] is allowed
    answer = await device.instruct(
        "desktop.answer",
        session_id=session_id,
        decision="accept",
        by={"user": "bob", "name": "Bob Contact"},
    )
    if not allowed:
        assert not answer.ok and answer.body["error"] == "forbidden"
        await refused(device, session_id, "view")
        await device.instruct("desktop.end", session_id=session_id)  # withdrawn
        ended = await device.event(session_id, "ended")
        assert ended["end_reason"] == "ended-by-portal"
        return
    assert answer.ok and answer.body["result"] == {"state": "accepted"}
    accepted = await device.event(session_id, "accepted")
    assert accepted["by"] == "site-contact:bob"
    await asyncio.to_thread(window_gone, device.display, PROMPT)
    channel = await device.open_desktop(session_id, "view")
    await device.event(session_id, "started")
    await shows_the_screen(channel, device.display)


async def test_consent_off_accepts_at_once_and_still_shows_the_indicator(
    start_device: StartDevice,
) -> None:
    device = await start_device(consent_required=False)
    session_id, reply = await device.request(mode="view")
    assert reply.body["result"] == {"state": "accepted", "consent_required": False}
    accepted = await device.event(session_id, "accepted")
    assert accepted["by"] == "policy:no-consent"
    await asyncio.to_thread(find_window, device.display, INDICATOR)
    assert not is_shown(device.display, PROMPT)
    channel = await device.open_desktop(session_id, "view")
    started = await device.event(session_id, "started")
    assert started["by"] == "policy:no-consent"
    await shows_the_screen(channel, device.display)


async def test_the_session_ends_when_its_indicator_is_gone(start_device: StartDevice) -> None:
    device = await start_device(consent_required=False)
    session_id, _ = await device.request(mode="view")
    await device.event(session_id, "accepted")
    window = await asyncio.to_thread(find_window, device.display, INDICATOR)
    await asyncio.to_thread(kill_client, device.display, window)  # e.g. a crash
    ended = await device.event(session_id, "ended")
    assert ended["end_reason"] == "indicator-lost"
    await refused(device, session_id, "view")


async def test_idle_sessions_end_and_then_the_agent_rests(start_device: StartDevice) -> None:
    device = await start_device(consent_required=False, idle_timeout_s=0.5 * UNIT)
    session_id, _ = await device.request(mode="view")
    await device.event(session_id, "accepted")
    channel = await device.open_desktop(session_id, "view")
    await device.event(session_id, "started")
    ended = await device.event(session_id, "ended")
    assert ended["end_reason"] == "idle-timeout" and ended["duration_s"] >= 0.5 * UNIT
    with pytest.raises(ChannelResetError):
        async with asyncio.timeout(T):
            while True:
                await channel.recv()
    async with asyncio.timeout(T):
        while device.service.watching:  # it stops on its own within one poll interval
            await asyncio.sleep(0.05)


async def test_a_malformed_viewer_message_ends_the_session(start_device: StartDevice) -> None:
    device = await start_device(consent_required=False)
    session_id, _ = await device.request(mode="control")
    await device.event(session_id, "accepted")
    channel = await device.open_desktop(session_id, "control")
    await device.event(session_id, "started")
    await channel.send(b"\x10\x00")  # a truncated POINTER
    ended = await device.event(session_id, "ended")
    assert ended["end_reason"] == "viewer-protocol-error"
    with pytest.raises(ChannelResetError) as reset:
        async with asyncio.timeout(T):
            while True:
                await channel.recv()
    assert reset.value.code is ErrorCode.BAD_REQUEST


async def test_no_prompt_possible_still_means_no(start_device: StartDevice) -> None:
    device = await start_device(display=":999", consent_timeout_s=1.0 * UNIT)  # no such X
    session_id, reply = await device.request()
    assert reply.body["result"]["state"] == "prompting"
    await device.event(session_id, "timeout")
    await refused(device, session_id)
    assert device.sources.made == []


async def test_the_device_announces_its_consent_setting_when_it_connects(
    start_device: StartDevice,
) -> None:
    device = await start_device(consent_timeout_s=12.0, allow_remote_consent=True)
    async with asyncio.timeout(T):
        event = await device.relay.events.get()
    assert event["name"] == "desktop.policy"
    assert {
        k: event[k] for k in ("consent_required", "consent_timeout_s", "remote_consent_allowed")
    } == {"consent_required": True, "consent_timeout_s": 12, "remote_consent_allowed": True}

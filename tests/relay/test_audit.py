"""Relay security events land in the hash-chained audit trail."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine, select

from pki.keys import generate_key
from pki.renewal import build_csr
from protocol.aio.client import RpcError
from relay_server.audit import MAX_BACKLOG, AuditLog
from store.db import session_scope
from store.portal import AuditEvent, verify_chain
from tests.relay.conftest import ControlPeer, Fleet, device_id_of, wait_for
from tunnel.aio import ChannelRefusedError, IncomingChannel


def events(fleet: Fleet) -> list[AuditEvent]:
    with session_scope(fleet.engine) as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


async def test_bridges_instructions_renewals_and_replacements_are_audited(fleet: Fleet) -> None:
    async def echo(request: IncomingChannel) -> None:
        channel = request.accept()
        async for data in channel:
            await channel.send(data)
        await channel.close()

    cert = fleet.device()
    device = device_id_of(cert)
    control = await ControlPeer.open(await fleet.agent(cert, on_open=echo))
    service = await fleet.service()
    await service.rpc("instruct", device=device, instruction={"action": "ping"})
    channel = await service.open_bridge(device, "diagnostics")
    await channel.send(b"12345")
    await channel.recv()
    await channel.close()
    with pytest.raises(EOFError):
        await channel.recv()
    with pytest.raises(ChannelRefusedError):
        await service.open_bridge(device_id_of(fleet.device()), "desktop")
    with pytest.raises(RpcError):
        await service.rpc(
            "instruct", device=device_id_of(fleet.device()), instruction={"action": "x"}
        )
    assert (await control.request("renew", csr=build_csr(generate_key()).decode())).ok
    await fleet.agent(cert)  # replaces the first tunnel
    await fleet.wait_registered(device)
    stats = fleet.relay.stats
    await wait_for(lambda: stats.bridges_active == 0 and stats.replaced == 1)
    await fleet.relay.audit.flush()

    found = events(fleet)
    kinds = [(e.kind, e.outcome) for e in found]
    assert ("relay.instruct", "success") in kinds
    assert ("relay.instruct", "failure") in kinds
    assert ("relay.bridge_opened", "success") in kinds
    assert ("relay.bridge_refused", "failure") in kinds
    assert ("relay.certificate_renewal", "success") in kinds
    assert ("relay.tunnel_replaced", "success") in kinds
    assert {e.actor for e in found} == {"relay:relay-test"}
    closed = next(e for e in found if e.kind == "relay.bridge_closed")
    details = json.loads(closed.details)
    assert (details["bytes_to_device"], details["bytes_from_device"]) == (5, 5)
    assert details["requested_by"] == "portal" and closed.device_id == device
    assert closed.customer_id is not None  # scoped by the device's customer
    with session_scope(fleet.engine) as session:
        assert verify_chain(session).ok


def test_backlog_is_bounded(relay_db: Engine) -> None:
    audit = AuditLog(relay_db, "relay-test")  # not started: nothing drains the queue
    for i in range(MAX_BACKLOG + 5):
        audit.record("relay.test", f"event {i}")
    assert audit.pending() == MAX_BACKLOG and audit.dropped == 5

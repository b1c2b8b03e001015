"""The control channel with a live relay: hello, renew, bad input, channel rules."""

from __future__ import annotations

import time

import pytest
from cryptography import x509
from sqlalchemy import Engine

from pki.identity import DeviceIdentity, identity_from_cert
from pki.keys import generate_key
from pki.renewal import build_csr
from tests.pki_fixtures import FleetPKI
from tests.relay.conftest import ControlPeer, Fleet, device_id_of, running_relay
from tunnel import ErrorCode
from tunnel.aio import ChannelRefusedError


async def test_hello_reports_relay_and_time_and_sets_version(fleet: Fleet) -> None:
    cert = fleet.device()
    control = await ControlPeer.open(await fleet.agent(cert))
    before = time.time()
    reply = await control.request("hello", version="9.9.9", capabilities=["telemetry"])
    assert reply.ok and reply.body["relay_id"] == "relay-test"
    assert before - 1 <= reply.body["time"] <= time.time() + 1
    link = fleet.relay.registry.agents[device_id_of(cert)]
    assert link.agent_version == "9.9.9" and link.capabilities == ("telemetry",)


async def test_renew_issues_for_the_peer_certificate_identity(fleet: Fleet) -> None:
    cert = fleet.device(customer="acme", site="lab")
    control = await ControlPeer.open(await fleet.agent(cert))
    key = generate_key()
    reply = await control.request("renew", csr=build_csr(key).decode())
    assert reply.ok, reply.body
    new = x509.load_pem_x509_certificate(reply.body["certificate"].encode())
    identity = identity_from_cert(new)
    assert isinstance(identity, DeviceIdentity)
    assert identity.device_id == device_id_of(cert)
    assert (identity.customer, identity.site) == ("acme", "lab")
    assert identity.serial != cert.serial
    assert new.public_key() == key.public_key()
    assert reply.body["ca_certificate"].encode() == fleet.pki.ca.cert_pem
    # One renewal per minute per connection.
    again = await control.request("renew", csr=build_csr(key).decode())
    assert not again.ok and again.body["error"] == "busy"


async def test_renew_with_garbage_csr_is_refused_with_a_code(fleet: Fleet) -> None:
    control = await ControlPeer.open(await fleet.agent(fleet.device()))
    reply = await control.request("renew", csr="-----BEGIN CERTIFICATE REQUEST-----\nAAAA")
    assert not reply.ok and reply.body["error"] == "bad_csr"


async def test_bad_messages_get_error_replies_and_the_channel_survives(fleet: Fleet) -> None:
    control = await ControlPeer.open(await fleet.agent(fleet.device()))
    await control.channel.send(b"not json")
    unknown = await control.request("launch_missiles")
    assert not unknown.ok and unknown.body["error"] == "unknown_op"
    instruct = await control.request("instruct", instruction={"action": "x"})
    assert not instruct.ok and instruct.body["error"] == "unknown_op"
    hello = await control.request("hello", version="1")
    assert hello.ok
    assert control.unparsed == [
        {"id": None, "ok": False, "error": "bad_request", "message": "not valid JSON"}
    ]
    assert fleet.relay.stats.control[("invalid", "bad_request")] == 1


async def test_one_control_channel_and_no_other_kinds(fleet: Fleet) -> None:
    tunnel = await fleet.agent(fleet.device())
    await ControlPeer.open(tunnel)
    with pytest.raises(ChannelRefusedError) as second:
        await tunnel.open_channel("control")
    assert second.value.code is ErrorCode.BAD_REQUEST
    with pytest.raises(ChannelRefusedError) as other:
        await tunnel.open_channel("bridge")
    assert other.value.code is ErrorCode.REFUSED
    assert not tunnel.closing


async def test_renew_unavailable_without_ca(fleet_pki: FleetPKI, relay_db: Engine) -> None:
    async with running_relay(fleet_pki, relay_db, signs=False) as fleet:
        control = await ControlPeer.open(await fleet.agent(fleet.device()))
        reply = await control.request("renew", csr=build_csr(generate_key()).decode())
        assert not reply.ok and reply.body["error"] == "unavailable"

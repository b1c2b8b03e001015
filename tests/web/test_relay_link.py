"""The portal's live-action path against a real relay: revoke in the database, then the
relay's ``/service`` RPC (mutual TLS with the portal's service certificate) drops the tunnel."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pki.revocation import revoke_device
from store.db import make_engine, session_scope, upgrade
from tests.conftest import UNIT
from tests.pki_fixtures import FleetPKI, fleet_pki  # noqa: F401
from tests.relay.conftest import device_id_of, running_relay
from web.config import PortalConfig
from web.relay import service_client_call


def _config(pki: FleetPKI) -> PortalConfig:
    return PortalConfig(
        relay_ca=pki.ca_file,
        relay_cert=pki.portal.cert_file,
        relay_key=pki.portal.key_file,
        relay_timeout=5 * UNIT,
    )


async def test_revoke_rpc_closes_the_tunnel(fleet_pki: FleetPKI, tmp_path: Path) -> None:  # noqa: F811
    url = f"sqlite:///{tmp_path / 'outlink.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        async with running_relay(fleet_pki, engine) as relay:
            cert = relay.device()
            tunnel = await relay.agent(cert)
            await relay.wait_registered(device_id_of(cert))
            with session_scope(engine) as session:
                revoke_device(session, device_id_of(cert), reason="stolen")
            reply = await asyncio.to_thread(
                service_client_call,
                relay.url + "/service",
                "revoke",
                {"device": device_id_of(cert)},
                _config(fleet_pki),
            )
            assert reply == {"revoked": True, "closed": True}
            async with asyncio.timeout(5 * UNIT):
                await tunnel.closed.wait()
    finally:
        engine.dispose()


async def test_unreachable_relay_is_an_oserror(fleet_pki: FleetPKI) -> None:  # noqa: F811
    with pytest.raises(OSError):
        await asyncio.to_thread(
            service_client_call,
            "wss://127.0.0.1:9/service",
            "revoke",
            {"device": "x"},
            _config(fleet_pki),
        )

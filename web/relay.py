"""The portal's side of the portal <-> relay contract (docs/decisions/0004): live actions.

The database is the truth (presence, revocations); the relay's ``/service`` RPC
only makes things happen *now*. So every call here is best effort with a short
timeout, and its result is reported, never raised: a relay that cannot be
reached still closes a revoked device's tunnel at its next revocation refresh.

Which relay: the one the device's presence row names (``relays.service_url``),
else every relay with a recent heartbeat, else the configured ``relay_url``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, current_app
from sqlalchemy import select
from websockets.exceptions import WebSocketException

from pki.tls import client_context
from protocol.aio.client import RpcError, ServiceClient
from store.models import Presence, Relay
from tunnel import TunnelError
from web.config import PortalConfig
from web.db import db

log = logging.getLogger(__name__)

#: A relay whose heartbeat is older than this is presumed gone.
RELAY_HEARTBEAT_STALE = timedelta(minutes=3)

#: ``caller(service_url, op, args, config) -> reply dict``; raises OSError/TimeoutError.
RpcCaller = Callable[[str, str, dict[str, Any], PortalConfig], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class RelayOutcome:
    """What a live action achieved, in words fit for the user and the audit trail."""

    ok: bool
    message: str
    relay_id: str | None = None


def service_client_call(
    url: str, op: str, args: dict[str, Any], config: PortalConfig
) -> dict[str, Any]:
    """One RPC over a fresh ``/service`` connection with the portal's service certificate.

    Raises OSError/TimeoutError when the relay cannot be reached, ``RpcError`` (a
    ValueError for the caller's purpose: the relay said no) when it refuses.
    """
    if not (config.relay_ca and config.relay_cert and config.relay_key):
        raise OSError("no relay service certificate configured")
    context = client_context(config.relay_ca, config.relay_cert, config.relay_key)

    async def call() -> dict[str, Any]:
        async with await ServiceClient.connect(url, context) as client:
            return await client.rpc(op, **args)

    try:
        return asyncio.run(asyncio.wait_for(call(), config.relay_timeout))
    except RpcError as exc:  # the agent's own code when it refused (busy, forbidden, ...)
        raise ValueError(str(exc.body.get("agent_error") or exc.code)) from None
    except (WebSocketException, TunnelError) as exc:  # refused handshake, tunnel torn down
        raise OSError(type(exc).__name__) from None


class RelayLink:
    """Finds the relay(s) for a device and calls their RPC."""

    def __init__(self, config: PortalConfig, caller: RpcCaller = service_client_call) -> None:
        self.config = config
        self.caller = caller

    def _targets(self, device_id: str) -> list[tuple[str | None, str]]:
        row = db.session.execute(
            select(Relay.relay_id, Relay.service_url)
            .join(Presence, Presence.relay_id == Relay.relay_id)
            .where(Presence.device_id == device_id)
        ).first()
        if row is not None:
            return [(row.relay_id, row.service_url)]
        fresh = datetime.now(UTC) - RELAY_HEARTBEAT_STALE
        rows = db.session.execute(
            select(Relay.relay_id, Relay.service_url).where(Relay.heartbeat_at >= fresh)
        ).all()
        if rows:
            return [(r.relay_id, r.service_url) for r in rows]
        return [(None, self.config.relay_url)] if self.config.relay_url else []

    def revoke(self, device_id: str) -> RelayOutcome:
        """Ask the relay(s) to reload revocations and drop ``device_id`` at once."""
        targets = self._targets(device_id)
        if not targets:
            return RelayOutcome(
                False,
                "No relay is known; relays close the tunnel within a "
                "minute at their next revocation refresh.",
            )
        closed, reached = False, []
        for relay_id, url in targets:
            try:
                reply = self.caller(url, "revoke", {"device": device_id}, self.config)
            except (OSError, TimeoutError, ValueError) as exc:
                log.warning(
                    "! relay %s unreachable for revoke of %s: %s",
                    relay_id or url,
                    device_id,
                    type(exc).__name__,
                )
                continue
            reached.append(relay_id or url)
            closed = closed or bool(reply.get("closed"))
        if not reached:
            return RelayOutcome(
                False,
                "The relay could not be reached; it will close the "
                "tunnel within a minute at its next revocation refresh.",
            )
        detail = "its tunnel was closed" if closed else "it was not connected"
        return RelayOutcome(True, f"The relay was told at once; {detail}.", ",".join(reached))

    def instruct(
        self, device_id: str, instruction: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, str]:
        """Deliver ``instruction`` to the device through its relay: ``(result, "")``, or
        ``(None, code)`` -- ``no-relay``, ``unreachable``, ``bad-answer``, or the relay's
        or the agent's error code (``offline``, ``timeout``, ``busy``, ``forbidden``...).
        """
        targets = self._targets(device_id)
        if not targets:
            return None, "no-relay"
        failure = "unreachable"
        for relay_id, url in targets:
            try:
                reply = self.caller(
                    url, "instruct", {"device": device_id, "instruction": instruction}, self.config
                )
            except (OSError, TimeoutError) as exc:
                log.warning(
                    "! relay %s unreachable for %s: %s",
                    relay_id or url,
                    instruction.get("action"),
                    type(exc).__name__,
                )
                continue
            except ValueError as exc:
                failure = str(exc)
                if failure == "offline":  # maybe on another of the candidate relays
                    continue
                return None, failure
            result = reply.get("result")
            return (result, "") if isinstance(result, dict) else (None, "bad-answer")
        return None, failure

    def view_url(self, device_id: str) -> str | None:
        """The ``/view`` URL browsers use for this device's relay (None: no relay known):
        ``relay_view_url`` with ``{host}`` = the host of that relay's ``service_url``."""
        template = self.config.relay_view_url
        if "{host}" not in template:
            return template or None
        targets = self._targets(device_id)
        host = urlsplit(targets[0][1]).hostname if targets else None
        if not host:
            return None
        return template.replace("{host}", f"[{host}]" if ":" in host else host)


def init_app(app: Flask, caller: RpcCaller | None = None) -> None:
    app.extensions["outlink_relay"] = RelayLink(
        app.config["OUTLINK"], caller or service_client_call
    )


def relay_link() -> RelayLink:
    link: RelayLink = current_app.extensions["outlink_relay"]
    return link

"""In-memory cache of revoked certificate serials and device ids.

The handshake check (`is_revoked`) must be a set lookup, not a query: 10,000 agents
reconnecting at once would otherwise hit the database 10,000 times. The cache is
reloaded from the shared database every `refresh_interval` seconds and on demand
(the `/service` RPC `revoke` op). After each reload that finds new revocations,
`on_revoked` is called so the registry can close the affected live tunnels at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from pki.identity import DeviceIdentity, Identity
from pki.revocation import revoked_devices, revoked_serials
from store.db import session_scope

log = logging.getLogger(__name__)

OnRevoked = Callable[["RevocationCache"], object]


class RevocationCache:
    """Revoked serials/devices, refreshed by one background task."""

    def __init__(self, engine: Engine, refresh_interval: float, on_revoked: OnRevoked) -> None:
        self._engine = engine
        self._refresh_interval = refresh_interval
        self._on_revoked = on_revoked
        self.serials: frozenset[str] = frozenset()
        self.devices: frozenset[str] = frozenset()
        self.loaded_at: float | None = None  # monotonic time of the last successful load
        self.reloads = 0
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def is_revoked(self, identity: Identity) -> bool:
        if identity.serial in self.serials:
            return True
        return isinstance(identity, DeviceIdentity) and identity.device_id in self.devices

    async def start(self) -> None:
        """Load once (a relay must not admit anyone before it knows who is revoked)."""
        await self.reload()
        self._task = asyncio.create_task(self._run(), name="revocation-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def reload(self) -> bool:
        """Load the revoked sets now; True if something new was revoked.

        Concurrent callers share one load at a time, so a burst of `revoke` RPCs does
        not queue a burst of queries behind each other needlessly.
        """
        async with self._lock:
            serials, devices = await asyncio.to_thread(self._load)
            grew = not (serials <= self.serials and devices <= self.devices)
            self.serials, self.devices = serials, devices
            self.loaded_at = time.monotonic()
            self.reloads += 1
        if grew:
            log.info("= revocation cache: %d serials, %d devices", len(serials), len(devices))
            self._on_revoked(self)
        return grew

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_interval)
            try:
                await self.reload()
            except SQLAlchemyError as exc:
                # Keep the last known sets: revocations never get un-done by an outage.
                log.error("! revocation refresh failed (keeping cached sets): %s", exc)

    def _load(self) -> tuple[frozenset[str], frozenset[str]]:
        with session_scope(self._engine) as session:
            return revoked_serials(session), frozenset(revoked_devices(session))

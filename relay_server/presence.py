"""Presence and the relay heartbeat in the shared database, written in batches.

The portal reads `presence` (device -> relay, online, times, peer, agent version)
and `relays` (relay -> service URL, heartbeat). With 10,000 agents a write per
connection event, let alone per frame, would swamp the database, so:

* connect/disconnect/version changes only update an in-memory dict (latest state per
  device wins) and one task flushes it every `flush_interval` in one transaction;
* `last_seen` of every device on this relay is refreshed by ONE UPDATE every
  `last_seen_interval` (the tunnel's keepalive proves they are alive in between);
* the relay's own row is heartbeated every `heartbeat_interval`.

All database work runs in a worker thread, one job at a time from the task of one
`DbWriter` (keyed by device: a device's latest state is what gets written), so the
event loop never blocks on the database.

A disconnect only marks the row offline if it still names this relay: a device that
moved to another relay meanwhile keeps the newer relay's row.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from relay_server.dbwriter import DbWriter
from store.db import utcnow
from store.models import Device, Presence, Relay

log = logging.getLogger(__name__)

# SQLite allows 32766 bound parameters per statement (999 in old builds); chunk IN lists.
_IN_CHUNK = 500


@dataclass(frozen=True, slots=True)
class _Change:
    """The latest known state of one device on this relay, not yet written. Online
    without ``peer_addr``: only the agent version is new (the connect was written)."""

    device_id: str
    online: bool
    at: datetime
    peer_addr: str | None = None
    agent_version: str | None = None


def _newer(queued: _Change, new: _Change) -> _Change:
    """A device's state after `new`: a version report completes a queued connect."""
    if new.online and new.peer_addr is None and queued.online:
        return dataclasses.replace(queued, agent_version=new.agent_version)
    return new


class PresenceWriter:
    """Collects presence changes on the event loop; writes them from one background task."""

    def __init__(
        self,
        engine: Engine,
        relay_id: str,
        service_url: str,
        *,
        flush_interval: float,
        last_seen_interval: float,
        heartbeat_interval: float,
    ) -> None:
        self._engine = engine
        self._relay_id = relay_id
        self._service_url = service_url
        self._writer: DbWriter[_Change, None] = DbWriter(
            "presence-writer",
            self._write,
            interval=flush_interval,
            key=lambda change: change.device_id,
            merge=_newer,
        )
        self._writer.every(last_seen_interval, self._touch_last_seen)
        self._writer.every(heartbeat_interval, self._heartbeat)

    # -- called on the event loop, O(1) -----------------------------------------

    def connected(self, device_id: str, peer_addr: str) -> None:
        self._writer.put_nowait(_Change(device_id, True, utcnow(), peer_addr=peer_addr))

    def agent_version(self, device_id: str, version: str) -> None:
        self._writer.put_nowait(_Change(device_id, True, utcnow(), agent_version=version))

    def disconnected(self, device_id: str) -> None:
        self._writer.put_nowait(_Change(device_id, False, utcnow()))

    def pending(self) -> int:
        return self._writer.pending()

    @property
    def writes(self) -> int:
        """Batches of changes written (tests and metrics)."""
        return self._writer.stats.batches

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Register this relay and clear rows a previous (crashed) run left online."""
        await asyncio.to_thread(self._register)
        await self._writer.start()

    async def flush(self) -> None:
        """Write pending changes now (tests)."""
        await self._writer.flush()

    async def touch_last_seen(self) -> None:
        """Refresh last_seen of every device online on this relay (one UPDATE)."""
        await asyncio.to_thread(self._touch_last_seen)

    async def heartbeat(self) -> None:
        """Refresh this relay's row in `relays`."""
        await asyncio.to_thread(self._heartbeat)

    async def stop(self) -> None:
        """Write what is queued, then mark every device of this relay offline (graceful
        shutdown)."""
        await self._writer.stop()
        try:
            await asyncio.to_thread(self._all_offline)
        except SQLAlchemyError as exc:
            log.error("! could not mark presence offline at shutdown: %s", exc)

    # -- worker thread ----------------------------------------------------------

    def _register(self) -> None:
        now = utcnow()
        with self._engine.begin() as conn:
            stmt = _insert(conn.dialect.name, Relay).values(
                relay_id=self._relay_id,
                service_url=self._service_url,
                started_at=now,
                heartbeat_at=now,
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["relay_id"],
                    set_={
                        "service_url": stmt.excluded.service_url,
                        "started_at": stmt.excluded.started_at,
                        "heartbeat_at": stmt.excluded.heartbeat_at,
                    },
                )
            )
            conn.execute(self._offline_stmt(now))
        log.info("= relay %s registered (%s)", self._relay_id, self._service_url)

    def _heartbeat(self) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                update(Relay)
                .where(Relay.relay_id == self._relay_id)
                .values(heartbeat_at=utcnow(), service_url=self._service_url)
            )

    def _touch_last_seen(self) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                update(Presence)
                .where(Presence.relay_id == self._relay_id, Presence.online.is_(True))
                .values(last_seen=utcnow())
            )

    def _all_offline(self) -> None:
        with self._engine.begin() as conn:
            conn.execute(self._offline_stmt(utcnow()))
        log.info("= presence of relay %s marked offline", self._relay_id)

    def _offline_stmt(self, now: datetime) -> Any:
        return (
            update(Presence)
            .where(Presence.relay_id == self._relay_id, Presence.online.is_(True))
            .values(online=False, disconnected_at=now, last_seen=now)
        )

    def _write(self, changes: list[_Change]) -> None:
        batch = {change.device_id: change for change in changes}  # one per device
        with self._engine.begin() as conn:
            known = _known_devices(conn, list(batch))
            unknown = len(batch) - len(known)
            if unknown:
                # Presence references devices(id); a cert without a device row (made by
                # hand, or a deleted device) has no presence to show.
                log.warning("= %d connected device(s) have no devices row; not tracked", unknown)
            online = [
                {
                    "device_id": d,
                    "relay_id": self._relay_id,
                    "online": True,
                    "connected_at": c.at,
                    "last_seen": c.at,
                    "disconnected_at": None,
                    "peer_addr": c.peer_addr,
                    "agent_version": c.agent_version,
                }
                for d, c in batch.items()
                if c.online and d in known and c.peer_addr is not None
            ]
            if online:
                stmt = _insert(conn.dialect.name, Presence)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["device_id"],
                        set_={
                            name: getattr(stmt.excluded, name)
                            for name in online[0]
                            if name != "device_id"
                        },
                    ),
                    online,
                )
            # A version reported (hello) after the connect row was already written.
            for d, c in batch.items():
                if c.online and d in known and c.peer_addr is None and c.agent_version:
                    conn.execute(
                        update(Presence)
                        .where(Presence.device_id == d, Presence.relay_id == self._relay_id)
                        .values(agent_version=c.agent_version, last_seen=c.at)
                    )
            offline = [d for d, c in batch.items() if not c.online and d in known]
            for chunk in _chunks(offline):
                conn.execute(
                    update(Presence)
                    .where(Presence.device_id.in_(chunk), Presence.relay_id == self._relay_id)
                    .values(online=False, disconnected_at=utcnow(), last_seen=utcnow())
                )
        log.debug("> presence: %d online, %d offline", len(online), len(offline))


def _insert(dialect: str, model: Any) -> Any:
    if dialect == "postgresql":
        return postgresql.insert(model)
    if dialect == "sqlite":
        return sqlite.insert(model)
    raise RuntimeError(f"unsupported database dialect {dialect}")


def _known_devices(conn: Any, ids: Sequence[str]) -> set[str]:
    known: set[str] = set()
    for chunk in _chunks(ids):
        known.update(conn.scalars(select(Device.id).where(Device.id.in_(chunk))))
    return known


def _chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[i : i + _IN_CHUNK] for i in range(0, len(items), _IN_CHUNK)]


def check_database(engine: Engine) -> None:
    """Raise if the database cannot answer a trivial query (readiness probe)."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))

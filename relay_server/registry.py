"""Who is connected to this relay: agents by device id, and service clients.

A device connecting again REPLACES its older connection here (the old tunnel gets a
final GOAWAY REPLACED): the newest connection is the one that works, which is what a
device that lost its network and came back needs. Presence changes are handed to the
batching `PresenceWriter`; nothing here touches the database.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import jsonlog
from relay_server.agent_link import AgentLink
from relay_server.links import Link
from relay_server.tasks import TaskSet
from tunnel import ErrorCode

if TYPE_CHECKING:
    from relay_server.audit import AuditLog
    from relay_server.metrics import RelayStats
    from relay_server.presence import PresenceWriter
    from relay_server.revocation import RevocationCache

log = logging.getLogger(__name__)


class Registry:
    """Connected agents (one per device id) and service links."""

    def __init__(
        self, presence: PresenceWriter, stats: RelayStats, tasks: TaskSet, audit: AuditLog
    ) -> None:
        self._presence = presence
        self._stats = stats
        self._tasks = tasks
        self._audit = audit
        self.agents: dict[str, AgentLink] = {}
        self.services: set[Link] = set()

    def add_agent(self, link: AgentLink) -> None:
        """Register `link`; an older link of the same device is closed with REPLACED."""
        old = self.agents.get(link.device_id)
        self.agents[link.device_id] = link
        self._presence.connected(link.device_id, link.peer)
        if old is not None:
            self._stats.replaced += 1
            log.info("= replacing connection from %s (new one from %s)", old.peer, link.peer)
            self._audit.record(
                "relay.tunnel_replaced",
                "device connected again; older tunnel closed",
                device_id=link.device_id,
                source=link.peer,
                old_peer=old.peer,
            )
            self._close(old, ErrorCode.REPLACED, "replaced by a newer connection")

    def remove_agent(self, link: AgentLink) -> None:
        """Forget `link` unless a newer link of the same device replaced it already."""
        if self.agents.get(link.device_id) is link:
            del self.agents[link.device_id]
            self._presence.disconnected(link.device_id)

    def enforce_revocations(self, cache: RevocationCache) -> int:
        """Close every tunnel whose certificate or device is revoked; return how many."""
        doomed: list[Link] = [
            link for link in self.agents.values() if cache.is_revoked(link.identity)
        ]
        doomed += [link for link in self.services if cache.is_revoked(link.identity)]
        for link in doomed:
            self._stats.revoked_closed += 1
            with jsonlog.context(peer=link.peer, serial=link.serial):
                log.warning("= closing tunnel: certificate or device revoked")
            self._audit.record(
                "relay.tunnel_revoked",
                "tunnel closed: certificate or device revoked",
                device_id=getattr(link.identity, "device_id", None),
                source=link.peer,
                serial=link.serial,
            )
            self._close(link, ErrorCode.REVOKED, "certificate revoked")
        return len(doomed)

    def all_links(self) -> list[Link]:
        return [*self.agents.values(), *self.services]

    def _close(self, link: Link, code: ErrorCode, reason: str) -> None:
        self._tasks.spawn(link.close(code, reason), name=f"close {link.peer} {code.name}")

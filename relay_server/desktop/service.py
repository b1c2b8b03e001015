"""`DesktopService`: remote desktop sessions on the relay, attached at startup.

Wiring (what ``relay_server.cli`` does)::

    relay = Relay(config, ca=ca)
    relay.add_feature(DesktopService.for_relay(relay.host))
    await relay.start()      # the session writer, then the viewer port (if configured)
    ...
    await relay.stop()       # tunnels gone; live sessions ended, viewers closed, writes drained
"""

from __future__ import annotations

from protocol.desktop import EVENT_POLICY, EVENT_STATE
from relay_server.desktop.events import DesktopEvents
from relay_server.desktop.viewer import ViewerService
from relay_server.features import FeatureHost


class DesktopService:
    """The ``/view`` port and the agents' desktop events of one relay."""

    def __init__(self, events: DesktopEvents, viewers: ViewerService) -> None:
        self.events = events
        self.viewers = viewers

    @classmethod
    def for_relay(cls, host: FeatureHost) -> DesktopService:
        config = host.config
        events = DesktopEvents(host.engine, host.relay_id)
        viewers = ViewerService(
            host.engine,
            events,
            viewer=config.viewer,
            tls=config.tls,
            listen=config.listen,
            agents=host.agents,
            stats=host.stats,
            audit=host.audit,
            refusals=host.refusals,
            tasks=host.tasks,
            connection_class=host.connection_class,
        )
        return cls(events, viewers)

    def attach(self, host: FeatureHost) -> None:
        """Take the agents' ``desktop.state`` and ``desktop.policy`` events."""
        host.on_event(EVENT_STATE, self.events.record)
        host.on_event(EVENT_POLICY, self.events.record_policy)

    async def start(self) -> None:
        await self.events.start()
        await self.viewers.start()

    async def stop(self) -> None:
        """End the live sessions and close the viewer port, then drain the session writes
        (the ends recorded while stopping included)."""
        await self.viewers.stop()
        await self.events.stop()

"""Test helpers: two Connection objects linked in memory (like h11's ConnectionPair)."""

from __future__ import annotations

from tunnel import Connection, Event, Role, Settings


class ConnectionPair:
    """A client and a server Connection wired back to back on a simulated clock.

    ``pump()`` carries frames both ways until neither side has anything to send and
    records every event each side produced; ``advance()`` moves the clock and ticks.
    Set ``link_up = False`` to drop every frame silently (a black-holed path).
    """

    def __init__(
        self,
        client_settings: Settings | None = None,
        server_settings: Settings | None = None,
    ) -> None:
        self.now = 0.0
        self.client = Connection(Role.CLIENT, client_settings, now=self.now, name="client")
        self.server = Connection(Role.SERVER, server_settings, now=self.now, name="server")
        self.events: dict[Connection, list[Event]] = {self.client: [], self.server: []}
        self.link_up = True

    def peer(self, conn: Connection) -> Connection:
        return self.server if conn is self.client else self.client

    def take(self, conn: Connection) -> list[Event]:
        """Events ``conn`` produced since the last take."""
        events = self.events[conn]
        self.events[conn] = []
        return events

    def frames(self, conn: Connection) -> list[bytes]:
        """Everything ``conn`` would write now (not delivered)."""
        frames = []
        while (frame := conn.next_frame()) is not None:
            frames.append(frame)
        return frames

    def deliver(self, conn: Connection, data: bytes) -> list[Event]:
        """Feed raw bytes to ``conn`` as if its peer sent them; record and return events."""
        events = conn.receive_message(data, self.now)
        self.events[conn].extend(events)
        return events

    def pump(self, limit: int = 1_000_000) -> int:
        """Carry frames both ways until quiet; returns how many were carried."""
        moved = 0
        while moved < limit:
            progress = False
            for src in (self.client, self.server):
                frame = src.next_frame()
                if frame is not None:
                    progress = True
                    moved += 1
                    if self.link_up:
                        self.deliver(self.peer(src), frame)
            if not progress:
                break
        return moved

    def advance(self, seconds: float) -> None:
        """Move the clock, tick both sides, pump."""
        self.now += seconds
        for conn in (self.client, self.server):
            self.events[conn].extend(conn.tick(self.now))
        self.pump()

    def open(self, kind: str = "telemetry", **kwargs: object) -> int:
        """Open a channel from the client and accept it on the server; returns its id."""
        channel_id = self.client.open(kind, now=self.now, **kwargs)  # type: ignore[arg-type]
        self.pump()
        self.server.accept(channel_id)
        self.pump()
        self.take(self.client)
        self.take(self.server)
        return channel_id

"""Who we are on a connection (:class:`Role`) and its tunable knobs (:class:`Settings`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

from .frames import check_windows
from .limits import MAX_CHANNELS, MAX_CREDIT_BATCH, MAX_PENDING_OPENS


class Role(Enum):
    """CLIENT = the WebSocket client (agent, service client): opens odd channel ids.
    SERVER = the WebSocket server (relay): opens even ids. Role also picks keepalive timing."""

    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class Settings:
    """Per-connection knobs. Durations are seconds. Defaults are production values.

    Keepalive: a side sends PING after ``*_ping_idle`` seconds without receiving
    anything and declares the peer dead if nothing arrives ``*_ping_timeout``
    seconds after that PING. The defaults make both ends notice a silent drop
    within 38 s (< 40 s) whichever side received last, while an idle agent costs the
    relay one PING/PONG every 25 s (the relay's own PING never fires while agents ping).
    """

    window: int = 1024 * 1024
    """Receive window we advertise per channel (bytes we buffer before the app reads)."""
    bulk_window: int = 8 * 1024 * 1024
    """Receive window of BULK channels. A window of one message makes each hop stop and
    wait for credit; throughput through a relay keeps rising up to a few MiB (decision
    0005). What a sender has in flight delays the frames behind it in socket buffers by
    ~in-flight / throughput per hop, hence :attr:`bulk_shared_in_flight`."""
    bulk_shared_in_flight: int = 512 * 1024
    """While an INPUT or DESKTOP channel is live on the connection, a BULK channel sends
    at most this much ahead of credit, whatever window the peer offers: someone is
    waiting on those frames (decision 0008)."""
    max_message: int = 1024 * 1024
    """Largest message we accept per channel; must not exceed ``window``."""
    max_channels: int = MAX_CHANNELS
    max_pending_opens: int = MAX_PENDING_OPENS
    client_ping_idle: float = 25.0
    client_ping_timeout: float = 12.0
    server_ping_idle: float = 28.0
    server_ping_timeout: float = 10.0
    open_timeout: float = 15.0
    """How long our OPEN waits for ACCEPT/REFUSE before we give up (RESET TIMEOUT)."""
    accept_timeout: float = 10.0
    """How long our application may take to answer an incoming OPEN (then REFUSE TIMEOUT).
    Shorter than ``open_timeout`` so the opener normally gets a REFUSE, not silence."""
    send_high_water: int = 8 * 1024 * 1024
    """Adapter: ``Channel.send`` waits while the channel's unframed bytes exceed this
    (and resumes at half). At least a BULK peer window, so credit that arrives finds
    data to send; the backlog waits in our priority queues, behind no control frame."""
    close_timeout: float = 5.0
    """Adapter: how long closing may take before the transport is aborted."""

    def __post_init__(self) -> None:
        check_windows(self.window, self.max_message)
        check_windows(self.bulk_window, min(self.max_message, self.bulk_window))
        if not 1 <= self.max_channels <= MAX_CHANNELS:
            raise ValueError(f"max_channels must be 1..{MAX_CHANNELS}")
        if not 1 <= self.max_pending_opens <= MAX_PENDING_OPENS:
            raise ValueError(f"max_pending_opens must be 1..{MAX_PENDING_OPENS}")
        for name in _DURATIONS:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.bulk_shared_in_flight < MAX_CREDIT_BATCH:
            raise ValueError(f"bulk_shared_in_flight must be at least {MAX_CREDIT_BATCH}")
        if self.send_high_water < 1:
            raise ValueError("send_high_water must be positive")

    def ping_idle(self, role: Role) -> float:
        return self.client_ping_idle if role is Role.CLIENT else self.server_ping_idle

    def ping_timeout(self, role: Role) -> float:
        return self.client_ping_timeout if role is Role.CLIENT else self.server_ping_timeout


_DURATIONS = tuple(f.name for f in dataclasses.fields(Settings) if f.type == "float")

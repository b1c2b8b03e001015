"""Every hard limit of the tunnel protocol, each with the reason for its value.

Both ends enforce these on what they receive; a peer that exceeds one gets a
wire error code (see ``docs/tunnel-protocol.md``), never an exception.
Tunable defaults live in :class:`tunnel.settings.Settings`; the values here are
the ceilings those settings are checked against.
"""

from __future__ import annotations

HEADER_SIZE = 6
"""``type:u8 flags:u8 channel:u32``: fixed so a frame is parsed with one struct call."""

MAX_CHUNK = 64 * 1024
"""Largest frame payload (DATA chunk): how long an input or control frame can wait behind
one bulk chunk already being written (~52 ms at 10 Mbit/s, 0.5 ms at 1 Gbit/s). 16 KiB
chunks cost the relay 4x the per-frame work (WebSocket parsing on three processes) and
held bulk throughput at ~0.5x a plain WebSocket pass-through; 64 KiB matches the
adapter's write batch, so a control frame waits no longer than it would anyway."""

MAX_FRAME_SIZE = HEADER_SIZE + MAX_CHUNK
"""Largest WebSocket message either end sends or accepts; pass it as ``max_size``."""

MAX_META = 4096
"""Largest OPEN/ACCEPT JSON metadata. Metadata names a channel and its parameters; 4 KiB
is ample for that and keeps a pending open cheap to hold."""

MAX_REASON = 256
"""Largest REFUSE/RESET/GOAWAY reason in UTF-8 bytes: a human hint, not a payload."""

MAX_KIND_LENGTH = 32
"""Longest channel kind; kinds label metrics, so they must stay short and few."""

MAX_CHANNELS = 64
"""Live channels per connection, both directions together. Each may hold up to its
window of received data, so this bounds a connection's memory; the agent needs ~10."""

MAX_PENDING_OPENS = 16
"""Incoming OPENs the application has not answered yet. Each costs a handler task;
beyond this, new OPENs are refused with TOO_MANY_CHANNELS instead of queued."""

MAX_WINDOW = 16 * 1024 * 1024
"""Largest flow-control window (and so largest message) anyone may advertise: what a
receiver commits to buffer for one channel. Credit beyond the window is an error."""

MAX_CREDIT_BATCH = 256 * 1024
"""A receiver returns credit once a quarter of the window or this much is owed, whichever
is less. A sender that keeps fewer bytes in flight than its window must keep at least
this many, or the credit it waits for would never come."""

MAX_CONTROL_BACKLOG = 1024 * 1024
"""Bytes of control frames (OPEN, ACCEPT, CREDIT, RESET, PONG...) queued but not yet
written. Room for every channel's OPEN and ACCEPT with maximal metadata plus replies;
more means the peer makes us answer frames it does not read (a PING/OPEN flood)."""

MAX_STATS_KINDS = 32
"""Distinct channel kinds counted separately in statistics (Prometheus labels);
further kinds are counted together so a peer cannot inflate label cardinality."""

MAX_CHANNEL_ID = 0xFFFF_FFFF
"""Channel ids are u32 and never reused on a connection; past this, reconnect."""

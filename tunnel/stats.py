"""Traffic counters per channel kind, as plain attributes for the adapter to export.

The relay turns these into Prometheus metrics; nothing here imports prometheus.
"""

from __future__ import annotations

from typing import Final

from .limits import MAX_STATS_KINDS

CONNECTION_KIND: Final = "_connection"
"""Counts frames on channel 0 (PING, PONG, GOAWAY) and frames for no live channel."""

OTHER_KIND: Final = "_other"
"""Counts kinds beyond :data:`~tunnel.limits.MAX_STATS_KINDS` distinct ones."""


class KindStats:
    """Frames and bytes (whole frames, header included) in each direction."""

    __slots__ = ("bytes_in", "bytes_out", "frames_in", "frames_out")

    def __init__(self) -> None:
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def __repr__(self) -> str:
        return (
            f"KindStats(frames_in={self.frames_in}, frames_out={self.frames_out}, "
            f"bytes_in={self.bytes_in}, bytes_out={self.bytes_out})"
        )


class StatsTable(dict[str, KindStats]):
    """``kind -> KindStats``, bounded to MAX_STATS_KINDS keys plus the two special ones."""

    def for_kind(self, kind: str) -> KindStats:
        stats = self.get(kind)
        if stats is None:
            if len(self) >= MAX_STATS_KINDS + 2:
                kind = OTHER_KIND
                stats = self.get(kind)
            if stats is None:
                stats = self[kind] = KindStats()
        return stats

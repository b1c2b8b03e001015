"""Screen geometry shared by the pure modules: rectangles (what damage produces, the
encoder fills and the wire carries) and the frame layout. Kept apart so those modules
share one definition and no I/O."""

from __future__ import annotations

from typing import Final, NamedTuple

BYTES_PER_PIXEL: Final = 4
"""Frames are tightly packed 32-bit pixels, B, G, R, X (as ``mss`` returns them)."""


class Rect(NamedTuple):
    """``w`` x ``h`` pixels with the top-left corner at ``(x, y)``; never empty."""

    x: int
    y: int
    w: int
    h: int

    @property
    def right(self) -> int:
        return self.x + self.w

    @property
    def bottom(self) -> int:
        return self.y + self.h

    @property
    def area(self) -> int:
        return self.w * self.h

    def box(self) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)``, the form Pillow's ``crop`` takes."""
        return (self.x, self.y, self.x + self.w, self.y + self.h)

"""Rectangles in screen pixels: the unit that damage produces, the encoder fills and
the wire carries. Kept apart so the pure modules share one type and no I/O."""

from __future__ import annotations

from typing import NamedTuple


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

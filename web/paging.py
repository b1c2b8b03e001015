"""Offset pagination for the fleet lists (thousands of rows; the audit trail uses keyset paging)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from web.inputs import DB_ID_MAX, query_number

#: Page numbers past this are refused: deep offsets are slow and nobody reads page 5000.
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Page:
    """One page of rows plus what the pager needs."""

    rows: list[Any]
    number: int
    size: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))

    @property
    def first_index(self) -> int:
        return (self.number - 1) * self.size + 1 if self.total else 0

    @property
    def last_index(self) -> int:
        return min(self.number * self.size, self.total)


def page_number() -> int:
    """The ``page`` query argument, clamped to 1..MAX_PAGE (garbage -> 1)."""
    return min(query_number("page", 1, DB_ID_MAX) or 1, MAX_PAGE)


def paginate(session: Session, stmt: Select[Any], size: int, number: int) -> Page:
    """Run ``stmt`` for one page and count all its rows."""
    total = session.execute(select(func.count()).select_from(stmt.order_by(None).subquery()))
    rows = session.execute(stmt.limit(size).offset((number - 1) * size)).all()
    return Page(rows=list(rows), number=number, size=size, total=int(total.scalar_one()))

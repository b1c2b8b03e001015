"""Every number and string the portal takes from a request is checked here, once.

A hostile request must end in a 4xx, never a 500: an id past its column's range
(2**31 for PostgreSQL ``integer``, 2**63 for SQLite and ``bigint``) makes the driver
raise, ``str.isdigit()`` and ``int()`` accept
Unicode digits such as ``²`` or ``٣``, and PostgreSQL refuses NUL in text. So:

* ``<int:...>`` in a route is :class:`IdConverter`: ASCII digits, 1..``DB_ID_MAX``
  (anything else is a 404, as for an id that does not exist);
* query-string numbers go through :func:`query_number`, ASCII digits only, with bounds;
* form fields that carry ids coerce with :func:`db_id`;
* :func:`refuse_control_characters` answers 400 to any request whose path, query,
  form or JSON body holds a NUL or another control character (tab, CR and LF are
  text, so forms keep them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from flask import abort, request
from werkzeug.routing import IntegerConverter, Map

#: The largest id of an ``Integer`` primary key on PostgreSQL (``integer``: 32 bits), which
#: is every id a route or a form names.
DB_ID_MAX = 2**31 - 1
#: The largest ``BigInteger`` id (the audit trail's event ids).
BIG_ID_MAX = 2**63 - 1
#: Enough digits for any bound used here; a longer string is refused before ``int()``.
MAX_DIGITS = 20
#: Fraction digits kept in a query number (chart zooms send milliseconds as ``.123``).
MAX_FRACTION_DIGITS = 6

_INTEGER = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")
_DECIMAL = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}(?:\.[0-9]{{1,{MAX_FRACTION_DIGITS}}})?")
# C0 controls and DEL..C1 controls, except tab, LF and CR (ordinary text in a textarea).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class IdConverter(IntegerConverter):
    """``<int:name>``: a database id, ASCII digits, 1..``DB_ID_MAX`` (else 404)."""

    regex = _INTEGER.pattern

    def __init__(self, map: Map, min: int = 1, max: int = DB_ID_MAX) -> None:
        super().__init__(map, min=min, max=max)


def parse_number(
    value: str | None, lo: float, hi: float, *, fraction: bool = False
) -> float | None:
    """``value`` as a number in ``lo..hi`` (ASCII digits, a ``.fraction`` if allowed), else None."""
    if value is None or not (_DECIMAL if fraction else _INTEGER).fullmatch(value):
        return None
    number = float(value) if fraction else int(value)
    return number if lo <= number <= hi else None


def query_number(name: str, lo: int, hi: int) -> int | None:
    """The query argument ``name`` as an integer in ``lo..hi``; None if absent or not one."""
    number = parse_number(request.args.get(name), lo, hi)
    return None if number is None else int(number)


def db_id(value: object) -> int:
    """WTForms ``coerce`` for a field holding a database id: ValueError unless 1..DB_ID_MAX."""
    number = parse_number(value, 1, DB_ID_MAX) if isinstance(value, str) else None
    if number is None:
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= DB_ID_MAX:
            return value  # a default or a choice the view set itself
        raise ValueError("not an id")
    return int(number)


def _strings(value: Any) -> Iterable[str]:
    """Every string inside a decoded JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def has_control_characters(text: str) -> bool:
    return _CONTROL.search(text) is not None


def refuse_control_characters() -> None:
    """``before_request``: 400 if the path, query, form or JSON body holds a control character."""
    texts: list[str] = [request.path]
    for multi in (request.args, request.form):
        for key, values in multi.lists():
            texts.append(key)
            texts.extend(values)
    if request.is_json:
        texts.extend(_strings(request.get_json(silent=True)))
    if any(has_control_characters(text) for text in texts):
        abort(400)

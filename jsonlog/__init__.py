"""Structured logging: one JSON object per line, with device / peer / channel context.

Context lives in a ContextVar so that every log line written while handling a
connection carries the device id and peer address without threading them through
each call: asyncio tasks copy the context when they are created, so tasks that a
connection handler starts (the tunnel's reader/writer, channel handlers) inherit it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator
from typing import Any

from pythonjsonlogger.json import JsonFormatter

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "outlink_log_context", default=None
)

# Fields that become top-level keys in each JSON line, in this order.
_JSON_FIELDS = ("asctime", "levelname", "name", "message")


def bind(**fields: Any) -> None:
    """Add fields (e.g. device="…", peer="1.2.3.4:5678") to the current task's log context.

    Call it at the top of a connection handler; later tasks inherit the fields.
    """
    current = _context.get()
    _context.set({**(current or {}), **fields})


@contextlib.contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Log context for a block (e.g. one channel); restored on exit."""
    current = _context.get()
    token = _context.set({**(current or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound context onto each record, without overriding explicit `extra=`."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _context.get()
        if fields:
            for key, value in fields.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


def configure(level: str = "INFO", fmt: str = "json", stream: Any = None) -> logging.Handler:
    """Install one handler on the root logger. Returns it (tests remove it again)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                list(_JSON_FIELDS),
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                datefmt="%Y-%m-%dT%H:%M:%S%z",
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    # websockets logs every failed handshake at INFO/ERROR with tracebacks; our own
    # handshake metrics and logs cover that, so keep its noise out of production logs.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))
    return handler

"""Certificate serial numbers: how they are made and their one text form."""

from __future__ import annotations

import secrets

#: RFC 5280 wants unpredictable serials; 128 random bits make collisions and guessing moot.
SERIAL_BITS = 128


def new_serial() -> int:
    """A random, positive, non-zero 128-bit serial."""
    while True:
        serial = secrets.randbits(SERIAL_BITS)
        if serial:
            return serial


def serial_hex(serial: int) -> str:
    """Lowercase hex without leading zeros: the form used in the database, logs and caches."""
    return format(serial, "x")

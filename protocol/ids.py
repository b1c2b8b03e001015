"""Device ids (sans-I/O): the one text form every side uses for a device.

A device id is a uuid4 the server chooses at registration (`new_device_id`). It names
the device in its certificate (CN and ``urn:outlink:device:<id>``, `pki.identity`), in
the database, in URLs and in rpc requests (`protocol.rpc`); everywhere it is the
canonical lower-case text form, so ids compare as strings.
"""

from __future__ import annotations

import uuid
from typing import NewType

DeviceId = NewType("DeviceId", str)


def parse_device_id(value: str) -> DeviceId:
    """Accept only the canonical lowercase text form of a uuid4; else ValueError."""
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise ValueError("device id is not a UUID") from None
    if str(parsed) != value or parsed.version != 4:
        raise ValueError("device id is not a canonical uuid4")
    return DeviceId(value)


def new_device_id() -> DeviceId:
    """A fresh server-chosen device id."""
    return DeviceId(str(uuid.uuid4()))

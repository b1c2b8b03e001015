"""protocol.ids: one text form for a device id."""

from __future__ import annotations

import uuid

import pytest

from protocol.ids import new_device_id, parse_device_id


def test_new_ids_parse() -> None:
    device_id = new_device_id()
    assert parse_device_id(device_id) == device_id


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not-a-uuid",
        str(uuid.uuid4()).upper(),
        str(uuid.uuid1()),
        uuid.uuid4().hex,
        f"{{{uuid.uuid4()}}}",
    ],
)
def test_only_the_canonical_uuid4_is_a_device_id(value: str) -> None:
    with pytest.raises(ValueError, match="device id"):
        parse_device_id(value)

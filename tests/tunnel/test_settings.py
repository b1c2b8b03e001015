"""Settings refuse values outside the protocol's limits, and pick keepalive by role."""

from __future__ import annotations

import pytest

from tunnel import Role, Settings
from tunnel.limits import MAX_CHANNELS, MAX_PENDING_OPENS, MAX_WINDOW


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": 10, "max_message": 11},
        {"max_message": 0},
        {"window": MAX_WINDOW + 1},
        {"max_channels": 0},
        {"max_channels": MAX_CHANNELS + 1},
        {"max_pending_opens": MAX_PENDING_OPENS + 1},
        {"client_ping_idle": 0.0},
        {"server_ping_timeout": -1.0},
        {"open_timeout": 0},
        {"send_high_water": 0},
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Settings(**kwargs)  # type: ignore[arg-type]


def test_keepalive_follows_the_role() -> None:
    settings = Settings()
    assert (settings.ping_idle(Role.CLIENT), settings.ping_timeout(Role.CLIENT)) == (25.0, 12.0)
    assert (settings.ping_idle(Role.SERVER), settings.ping_timeout(Role.SERVER)) == (28.0, 10.0)
    for role in Role:  # the spec's promise: both ends notice a silent drop within 40 s
        assert settings.ping_idle(role) + settings.ping_timeout(role) <= 40

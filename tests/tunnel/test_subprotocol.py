"""Version negotiation helpers shared by relay and agent."""

from __future__ import annotations

import pytest

from tunnel import SUBPROTOCOLS, select_subprotocol


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["outlink.tunnel.v1"], "outlink.tunnel.v1"),
        (["outlink.tunnel.v9", "outlink.tunnel.v1"], "outlink.tunnel.v1"),  # v9 unknown here
        (["chat", "outlink.tunnel.v1"], "outlink.tunnel.v1"),
        ([], None),
        (["outlink.tunnel.v2"], None),
        (["outlink.tunnel.v01", "OUTLINK.TUNNEL.V1", "outlink.tunnel.v1 "], None),
        (["outlink.enroll.v1"], None),
    ],
)
def test_select_subprotocol(offered: list[str], chosen: str | None) -> None:
    assert select_subprotocol(offered) == chosen


def test_client_offers_what_server_accepts() -> None:
    assert SUBPROTOCOLS[0] == "outlink.tunnel.v1"
    assert select_subprotocol(SUBPROTOCOLS) == SUBPROTOCOLS[0]

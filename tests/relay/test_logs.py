"""Structured logs: one JSON object per line, with the bound connection context."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import jsonlog


async def test_json_lines_carry_context(captured: io.StringIO) -> None:
    log = logging.getLogger("relay_server.test")

    async def connection() -> None:
        jsonlog.bind(device="dev-1", peer="10.0.0.1:5000")
        log.info("= connected")

        async def child() -> None:  # tasks inherit the bound context
            with jsonlog.context(channel=3):
                log.warning("! channel failed: %s", "RESET")

        await asyncio.create_task(child())

    await asyncio.create_task(connection())  # as the server runs each handler
    log.info("outside", extra={"port": 8443})
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    lines = [line for line in lines if line["logger"] == "relay_server.test"]
    assert [line["message"] for line in lines] == [
        "= connected",
        "! channel failed: RESET",
        "outside",
    ]
    assert lines[0]["device"] == "dev-1" and lines[0]["peer"] == "10.0.0.1:5000"
    assert lines[1]["channel"] == 3 and lines[1]["device"] == "dev-1"
    assert lines[1]["level"] == "WARNING" and lines[1]["logger"] == "relay_server.test"
    assert "device" not in lines[2] and lines[2]["port"] == 8443
    assert all("time" in line for line in lines)

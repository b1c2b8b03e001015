"""The baseline relay for ``tunnel_throughput``: the least a relay can do with ``websockets``.

No tunnel layer: two WebSocket connections that name the same ``?pair=`` are spliced,
and every message from one is sent to the other (``await send``, so a slow reader
slows the sender through websockets' own flow control). Same TLS as the real relay
(``pki.tls.server_context``: fleet CA, client certificates, same cipher policy), same
WebSocket options where they apply (no compression, no WebSocket pings, the relay's
write limit). One message per WebSocket message: a 256 KiB message is one frame here,
four tunnel DATA frames (``MAX_CHUNK``) through the real relay, which forwards them as
they arrive.

Run as a separate process: ``python bench/passthrough_relay.py --port P --cert C --key K
--ca CA``. It prints ``{"ready": true}`` once listening and exits when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from urllib.parse import parse_qs, urlsplit

from harness import HOST, report
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from pki.tls import server_context

# The real relay's socket write high-water mark (relay_server.server.WRITE_LIMIT).
WRITE_LIMIT = 64 * 1024
# Messages up to 1 MiB: the tunnel's default max_message.
MAX_SIZE = 1024 * 1024 + 64


class Pairs:
    """Connections waiting for their partner, by pair name."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[ServerConnection, asyncio.Future[ServerConnection]]] = {}

    async def partner(self, name: str, ws: ServerConnection) -> ServerConnection:
        """Meet the other connection of pair ``name``; the first one to come waits."""
        entry = self._waiting.pop(name, None)
        if entry is None:
            waiter: asyncio.Future[ServerConnection] = asyncio.get_running_loop().create_future()
            self._waiting[name] = (ws, waiter)
            return await waiter
        other, waiter = entry
        waiter.set_result(ws)
        return other


async def forward(ws: ServerConnection, pairs: Pairs) -> None:
    name = parse_qs(urlsplit(ws.request.path if ws.request else "").query).get("pair", [""])[0]
    peer = await pairs.partner(name, ws)
    try:
        async for message in ws:
            await peer.send(message)
    except ConnectionClosed:
        pass
    finally:
        await peer.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True)
    args = parser.parse_args()
    pairs = Pairs()
    ssl = server_context(args.cert, args.key, args.ca)
    async with serve(
        lambda ws: forward(ws, pairs),
        HOST,
        args.port,
        ssl=ssl,
        compression=None,
        ping_interval=None,
        max_size=MAX_SIZE,
        write_limit=WRITE_LIMIT,
    ):
        report({"ready": True})
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin


if __name__ == "__main__":
    asyncio.run(main())

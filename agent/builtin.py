"""Instructions every agent understands, whatever features are installed.

Only harmless, read-only actions live here; features that act on the device
register their own actions in their own modules (see `agent.control.Registry`).
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import agent
from agent.control import Registry


def register_builtin(registry: Registry) -> None:
    started = time.monotonic()

    async def ping(instruction: dict[str, Any]) -> dict[str, Any]:
        """Liveness through the whole chain portal -> relay -> agent, plus what runs."""
        return {
            "version": agent.__version__,
            "uptime": round(time.monotonic() - started, 1),
            "pid": os.getpid(),
            "python": platform.python_version(),
        }

    registry.add_action("ping", ping)

"""glibc malloc thresholds for processes that move tunnel data at line rate.

Tunnel traffic is a stream of short-lived buffers of 16 KiB to 1 MiB: TLS reads joined
by asyncio, the WebSocket reader's buffer, chunks, reassembled messages. glibc serves
allocations above its mmap threshold (128 KiB at start, then adjusted) with ``mmap`` and
frees them with ``munmap``, and trims the top of the heap whenever more than twice that
threshold is free, so at line rate a process keeps faulting in fresh zeroed pages for
data it has just received. Profiled on a tunnel reader at ~250 MB/s, page faults were
about a fifth of its CPU; with fixed thresholds 256 KiB messages through the relay went
from ~240 to ~300 MB/s (decision 0008).

Fixed thresholds (setting either turns glibc's adjustment off) keep such buffers in the
heap for reuse. The cost is bounded: at most ``TRIM_THRESHOLD`` of free heap is kept
before memory goes back to the system, and buffers above ``MMAP_THRESHOLD`` are still
mapped and unmapped each time. Other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import platform
from typing import Final

logger = logging.getLogger(__name__)

# mallopt() parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3

MMAP_THRESHOLD: Final = 2 * 1024 * 1024
"""Above the largest tunnel message (1 MiB by default) plus a TLS read: every per-message
buffer comes from the heap."""
TRIM_THRESHOLD: Final = 8 * 1024 * 1024
"""Free heap kept for reuse: a window's worth of buffers in flight at 8 MiB bulk windows."""


def tune_allocator() -> bool:
    """Set the thresholds when the C library is glibc; True if both were applied.

    Call once, early, in a process that runs tunnels (relay, agent, service clients).
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - glibc always has mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not applied:  # pragma: no cover - only on a glibc that refuses the values
        logger.warning("= mallopt refused the tunnel's allocator thresholds")
    return applied

"""glibc malloc thresholds for the relay process, which moves tunnel data at line rate.

Tunnel traffic is a stream of short-lived buffers of 16 KiB to 1 MiB: TLS reads joined
by asyncio, the WebSocket reader's buffer, chunks, reassembled messages. glibc serves
allocations above its mmap threshold (128 KiB at start, then adjusted) with ``mmap`` and
frees them with ``munmap``, and trims the top of the heap whenever more than twice that
threshold is free, so at line rate a process keeps faulting in fresh zeroed pages for
data it has just received. Profiled on a tunnel reader at ~250 MB/s, page faults were
about a fifth of its CPU; with fixed thresholds 256 KiB messages through the relay went
from ~240 to ~300 MB/s (decision 0009).

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

MMAP_THRESHOLD: Final = 32 * 1024 * 1024
"""glibc's own ceiling for its adjusted threshold: tunnel messages (<= MAX_WINDOW) and
desktop updates (<= 4 MiB) come from the heap. A lower fixed value would map and unmap
every buffer above it, which the adjusted default avoids once it has seen one."""
TRIM_THRESHOLD: Final = 8 * 1024 * 1024
"""Free heap kept for reuse at the top: a window's worth of buffers in flight."""


def tune_allocator() -> bool:
    """Set the thresholds when the C library is glibc; True if both were applied.

    Call once, early, in a process that moves bulk tunnel data (the relay). The agent
    does not: its desktop capture ran slower with the 2 MiB threshold first tried, and
    the agent's throughput gained nothing measurable (decision 0009).
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

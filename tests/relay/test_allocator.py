"""The allocator thresholds keep per-message buffers in the heap: no page faults for
buffers just freed (each case runs in a fresh interpreter, so this one stays stock)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Buffers of 200 KiB-1 MiB, a few alive at a time, like TLS reads and reassembled
# messages; the minor page faults of 20 rounds after a warm-up one.
CHURN = """
import resource, sys
from relay_server.allocator import tune_allocator
if sys.argv[1] == "tuned":
    assert tune_allocator()
sizes = [200_000 + (i * 97_531) % 800_000 for i in range(64)]
def churn():
    alive = []
    for size in sizes:
        alive.append(bytes(size))
        if len(alive) > 4:
            alive.pop(0)
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")


def page_faults(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True
    )
    return int(result.stdout)


def test_tuned_process_reuses_buffers_instead_of_faulting_pages_in() -> None:
    stock, tuned = page_faults("stock"), page_faults("tuned")
    # 20 rounds x 64 buffers of ~150 pages each: stock glibc maps or trims most of them.
    assert stock > 5000
    assert tuned < stock // 20

"""The relay CLI under ``tracemalloc``: where the relay's Python memory goes, per line.

Diagnosis only (``relay_capacity.py --trace-memory``); tracing makes every allocation
slower and bigger, so RSS figures from such a run mean nothing. Runs exactly
``relay_server.cli.main()``; on SIGUSR1 it writes a snapshot to
``$OUTLINK_BENCH_TRACE_DIR/snapshot-<n>.tracemalloc`` (``n`` counts from 1). Tracing
starts at the FIRST signal (tracing imports and migrations would take minutes), so the
diff of two snapshots is what was allocated in between and is still alive.
"""

from __future__ import annotations

import os
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

TRACE_DIR_ENV = "OUTLINK_BENCH_TRACE_DIR"
# Frames kept per allocation: enough to see which relay/tunnel line asked for it.
TRACE_FRAMES = 12

_count = 0


def _dump(_signum: int, _frame: FrameType | None) -> None:
    global _count
    if not tracemalloc.is_tracing():
        tracemalloc.start(TRACE_FRAMES)
    _count += 1
    directory = Path(os.environ[TRACE_DIR_ENV])
    partial = directory / f".snapshot-{_count}.tmp"
    tracemalloc.take_snapshot().dump(str(partial))
    partial.rename(directory / f"snapshot-{_count}.tracemalloc")  # appears complete


def main() -> int:
    signal.signal(signal.SIGUSR1, _dump)
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    from relay_server.cli import main as relay_main

    return relay_main()


if __name__ == "__main__":
    sys.exit(main())

"""When to capture the next frame: flow control, an fps cap, a CPU budget, idle backoff.

Pure: the caller passes ``now`` (``time.monotonic()``) and measurements; the pacer
answers with a deadline. The streamer's loop is::

    await ready()                        # the channel can take a frame (flow control)
    sleep until pacer.next_capture()     # or until poke() / refresh wakes it
    capture + diff + encode              # measure its CPU time
    pacer.captured(start, cpu, changed)
    send the messages

Flow control comes first and is not the pacer's business: no frame is even captured
while the previous one is still queued, so changes made meanwhile are diffed against
the last frame *sent* and go out as one fresh update. A slow viewer therefore gets
fewer frames, never older ones. The pacer adds the local limits of R32: at most
``max_fps`` captures per second, and never more than ``cpu_budget`` of one core on
average (a frame that cost 40 ms of CPU with a budget of 0.25 pushes the next one
160 ms away). An unchanging screen is polled ever more slowly (down to ``idle_fps``);
:meth:`Pacer.poke` (viewer input, refresh) restores the full rate at once, so the
first frame after a click is not delayed by the backoff.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

CPU_SMOOTHING: Final = 0.3
"""Weight of the newest frame in the CPU average: reacts within ~3 frames to a change
of content (text -> video) without letting one slow frame halve the frame rate."""

LINK_SMOOTHING: Final = 0.3
"""Weight of the newest sample in the link throughput estimate."""

LINK_MIN_SAMPLE: Final = 32 * 1024
"""Only updates at least this large measure the link: a small one's drain time is
mostly round-trip latency (credit returns after the viewer consumed it), which would
read as a very slow link."""


@dataclass(frozen=True, slots=True)
class PacerSettings:
    """The device's limits (R32). ``cpu_budget`` is a fraction of one core."""

    max_fps: float = 30.0
    cpu_budget: float = 0.5
    idle_fps: float = 4.0
    idle_after: float = 1.0

    def __post_init__(self) -> None:
        if not (self.max_fps > 0 and self.idle_fps > 0 and 0 < self.cpu_budget <= 1):
            raise ValueError(f"bad pacer settings {self}")


class Pacer:
    """Decides the earliest time of the next capture (see the module docstring)."""

    def __init__(self, settings: PacerSettings, now: float) -> None:
        self.settings = settings
        self._max_fps = settings.max_fps
        self._cpu = 0.0  # smoothed CPU seconds per capture
        self._last_start: float | None = None
        self._last_change = now

    @property
    def max_fps(self) -> float:
        return self._max_fps

    def limit_fps(self, fps: float | None) -> None:
        """Apply a viewer's wish (``None``/0 = the device default); never above the
        device's own cap."""
        cap = self.settings.max_fps
        self._max_fps = cap if not fps else max(1.0, min(cap, fps))

    @property
    def active_interval(self) -> float:
        """Seconds between captures while the screen changes: the fps cap, stretched to
        keep the smoothed CPU cost within the budget."""
        return max(1.0 / self._max_fps, self._cpu / self.settings.cpu_budget)

    def interval(self, now: float) -> float:
        if now - self._last_change >= self.settings.idle_after:
            return max(self.active_interval, 1.0 / self.settings.idle_fps)
        return self.active_interval

    def next_capture(self, now: float) -> float:
        """When the next capture may start (``<= now`` means now)."""
        if self._last_start is None:
            return now
        return self._last_start + self.interval(now)

    def captured(self, start: float, cpu_seconds: float, changed: bool) -> None:
        """Record a capture that started at ``start`` and cost ``cpu_seconds`` (capture,
        diff, encode); ``changed`` = it found something to send."""
        if self._last_start is None:
            self._cpu = cpu_seconds  # start from a measurement, not from zero
        else:
            self._cpu += CPU_SMOOTHING * (cpu_seconds - self._cpu)
        self._last_start = start
        if changed:
            self._last_change = start

    def poke(self, now: float) -> None:
        """Something will probably change soon (input was injected, a refresh was
        asked for): leave the idle backoff."""
        self._last_change = now


class LinkEstimator:
    """What the channel actually carries, from how long updates took to drain.

    ``record(bytes, seconds)`` after each update with the time from starting to send
    it until the channel could take the next one. ``bps`` is ``None`` until an update
    was large enough to say something.
    """

    def __init__(self) -> None:
        self.bps: float | None = None

    def record(self, nbytes: int, seconds: float) -> None:
        if nbytes < LINK_MIN_SAMPLE or seconds <= 0:
            return
        sample = nbytes * 8 / seconds
        self.bps = sample if self.bps is None else self.bps + LINK_SMOOTHING * (sample - self.bps)

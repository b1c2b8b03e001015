"""Reconnect pacing: exponential backoff with full jitter, as a pure object.

No clock, no sleeping: the caller reports what happened (a dial failed, a link
that lasted N seconds was lost, the relay said GOAWAY) and gets back how many
seconds to wait. Randomness comes from an injected `random.Random`, so tests
and fleet simulations are deterministic.

Why full jitter (delay ~ U(0, window)) rather than "window ± a little": when a
relay holding thousands of agents dies, every agent loses its link in the same
instant; only a delay drawn from the whole window spreads their return. For the
same reason a link that had been stable is redialled within U(0, herd_window),
not U(0, base): with base = 1 s a whole fleet would return in one second. And
the windows stay that wide while the relay is still down: a retrying agent dials
on average twice per window, so with windows of 1-4 s a fleet waiting for its
relay would again arrive together the second it is back.
"""

from __future__ import annotations

import random

# A relay's GOAWAY / Retry-After is honoured up to this many backoff caps; a
# misbehaving relay must not be able to park the fleet for hours.
MAX_RETRY_AFTER_CAPS = 1


class Backoff:
    """Delays between connection attempts.

    - `failed()`: a dial failed with a retryable error. Windows 1, 2, 4, ... s, capped.
    - `human_failed()`: a dial failed with an error that needs a human (bad relay
      certificate, our certificate refused). Retried no faster than the cap.
    - `lost(uptime)`: an established link ended after `uptime` seconds. The failure
      count resets only if `uptime >= stable_after`; from then on failure windows start
      at herd_window (20, 40, 60 s ...) instead of base. A link that flapped sooner
      counts as one more failure.
    - `go_away(retry_after)`: the relay asked us to come back later; resets the count
      and, like a lost stable link, switches to herd windows should that retry fail.
    - `retry_after(seconds)`: a dial was refused with a Retry-After hint (429/503).
    """

    def __init__(
        self,
        *,
        base: float = 1.0,
        cap: float = 60.0,
        stable_after: float = 20.0,
        herd_window: float = 20.0,
        goaway_jitter: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < base <= cap:
            raise ValueError("need 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.stable_after = stable_after
        self.herd_window = herd_window
        self.goaway_jitter = goaway_jitter
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter, not crypto
        self.failures = 0
        # First failure window: `base`, until a stable link is lost; from then on
        # `herd_window`, so the retries of a fleet that lost its relay together stay as
        # spread out as their first attempt (see the module docstring).
        self._first_window = base

    def window(self) -> float:
        """Upper bound of the next `failed()` delay."""
        # min() before the power would be nicer but 2**1075 overflows a float; cap the exponent.
        return min(self.cap, self._first_window * 2.0 ** min(self.failures, 64))

    def failed(self) -> float:
        delay = self._rng.uniform(0.0, self.window())
        self.failures += 1
        return delay

    def human_failed(self) -> float:
        self.failures += 1
        # In [cap, 1.25 cap]: never faster than the cap, still spread across a fleet.
        return self.cap * (1.0 + 0.25 * self._rng.random())

    def lost(self, uptime: float) -> float:
        if uptime >= self.stable_after:
            self.failures = 0
            self._first_window = max(self.base, self.herd_window)
        return self.failed()

    def go_away(self, retry_after: float) -> float:
        self.failures = 0
        self._first_window = max(self.base, self.herd_window)
        return self._clamp(retry_after) + self._rng.uniform(0.0, self.goaway_jitter)

    def retry_after(self, seconds: float) -> float:
        return self._clamp(seconds) + self.failed()

    def _clamp(self, seconds: float) -> float:
        return min(max(0.0, seconds), self.cap * MAX_RETRY_AFTER_CAPS)

"""The pure backoff: bounds, cap, reset rules, and a fleet of 1,000 agents losing a relay."""

from __future__ import annotations

import bisect
import random

import pytest

from agent.backoff import Backoff


def make(seed: int = 1, **kwargs: float) -> Backoff:
    return Backoff(rng=random.Random(seed), **kwargs)


def test_full_jitter_stays_inside_a_doubling_window_up_to_the_cap() -> None:
    for seed in range(50):
        b = make(seed, base=1.0, cap=60.0)
        for attempt in range(12):
            window = min(60.0, 2.0**attempt)
            assert b.window() == window
            delay = b.failed()
            assert 0.0 <= delay <= window


def test_full_jitter_uses_the_whole_window() -> None:
    # Full jitter, not "window minus a little": draws spread over [0, window].
    b = make(7, base=8.0, cap=8.0)
    draws = [b.failed() for _ in range(2000)]
    assert min(draws) < 0.5
    assert max(draws) > 7.5
    assert 3.5 < sum(draws) / len(draws) < 4.5


def test_cap_is_never_exceeded_even_after_very_many_failures() -> None:
    b = make(3, base=1.0, cap=60.0)
    assert all(b.failed() <= 60.0 for _ in range(5000))
    assert b.window() == 60.0


def test_a_short_lived_link_does_not_reset_the_backoff() -> None:
    b = make(stable_after=20.0)
    for _ in range(5):
        b.failed()
    assert b.window() == 32.0
    b.lost(uptime=19.9)
    assert b.failures == 6
    assert b.window() == 60.0


def test_a_stable_link_resets_the_count_and_redials_within_the_herd_window() -> None:
    b = make(stable_after=20.0, herd_window=20.0)
    for _ in range(8):
        b.failed()
    delay = b.lost(uptime=20.0)
    assert 0.0 <= delay <= 20.0
    assert b.failures == 1
    # Should the relay still be down, retries stay wide (see test_fleet_...).
    assert b.window() == 40.0


def test_needs_a_human_is_never_retried_faster_than_the_cap() -> None:
    b = make(cap=60.0)
    delays = [b.human_failed() for _ in range(500)]
    assert min(delays) >= 60.0
    assert max(delays) <= 75.0


def test_goaway_resets_and_waits_retry_after_plus_a_little_jitter() -> None:
    b = make(goaway_jitter=1.0)
    for _ in range(6):
        b.failed()
    delays = [b.go_away(2.5) for _ in range(200)]
    assert b.failures == 0
    assert all(2.5 <= d <= 3.5 for d in delays)


def test_retry_after_from_the_relay_is_clamped_to_the_cap() -> None:
    assert 60.0 <= make(cap=60.0, goaway_jitter=1.0).go_away(10_000.0) <= 61.0
    # Retry-After (429/503) is a floor; full jitter of the current window goes on top.
    assert 60.0 <= make(cap=60.0, base=1.0).retry_after(10_000.0) <= 61.0


def test_same_seed_same_delays() -> None:
    a, b = make(42), make(42)
    assert [a.failed() for _ in range(20)] == [b.failed() for _ in range(20)]


def reconnect_times(agents: int, outage: float, seed: int) -> list[float]:
    """When each agent of a fleet gets back, if the relay dies at t=0 and returns at `outage`.

    Every agent had a stable link (hours), so each one calls `lost()`; dials before
    `outage` fail and the agent calls `failed()` for its next delay.
    """
    times = []
    for i in range(agents):
        b = Backoff(rng=random.Random(seed * 1_000_003 + i))  # defaults: the shipped config
        t = b.lost(uptime=3600.0)
        while t < outage:
            t += b.failed()
        times.append(t)
    return sorted(times)


def busiest_second(times: list[float]) -> int:
    """The largest number of reconnects in any sliding one-second window."""
    return max(bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times))


@pytest.mark.parametrize("outage", [0.0, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fleet_of_1000_losing_its_relay_returns_at_most_10_percent_per_second(
    outage: float, seed: int
) -> None:
    times = reconnect_times(1000, outage, seed)
    assert busiest_second(times) <= 100
    # ... and nobody is stranded: everyone is back within outage + 2 caps.
    assert times[-1] <= outage + 120.0

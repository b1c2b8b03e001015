"""The pacer and the link estimate, with an explicit clock (no sleeping)."""

from __future__ import annotations

import pytest

from desktop.pacing import LINK_MIN_SAMPLE, LinkEstimator, Pacer, PacerSettings


def test_first_capture_is_immediate_then_the_fps_cap_spaces_them() -> None:
    pacer = Pacer(PacerSettings(max_fps=10, cpu_budget=1.0), now=100.0)
    assert pacer.next_capture(100.0) == 100.0
    pacer.captured(100.0, cpu_seconds=0.001, changed=True)
    assert pacer.next_capture(100.01) == pytest.approx(100.1)


def test_cpu_budget_stretches_the_interval() -> None:
    pacer = Pacer(PacerSettings(max_fps=30, cpu_budget=0.25), now=0.0)
    t = 0.0
    for _ in range(30):  # 40 ms of CPU per frame, steadily
        pacer.captured(t, cpu_seconds=0.040, changed=True)
        t = pacer.next_capture(t)
    # 40 ms at 25 % of a core -> one frame per 160 ms, not 33 ms.
    assert pacer.active_interval == pytest.approx(0.160, rel=0.01)
    # Average CPU use over that run stays within the budget.
    assert 30 * 0.040 / t <= 0.25 * 1.05


def test_idle_screen_backs_off_and_a_poke_restores_the_rate() -> None:
    settings = PacerSettings(max_fps=20, idle_fps=2, idle_after=1.0, cpu_budget=1.0)
    pacer = Pacer(settings, now=0.0)
    pacer.captured(0.0, 0.001, changed=True)
    t = 0.0
    while t < 1.0:  # nothing changes for a second: still the full rate
        t = pacer.next_capture(t)
        pacer.captured(t, 0.001, changed=False)
    assert pacer.interval(t) == pytest.approx(0.5)
    assert pacer.next_capture(t) == pytest.approx(t + 0.5)
    pacer.poke(t + 0.1)  # input arrives
    assert pacer.next_capture(t + 0.1) == pytest.approx(t + 0.05)  # already due
    pacer.captured(t + 0.1, 0.001, changed=True)
    assert pacer.next_capture(t + 0.1) == pytest.approx(t + 0.15)


def test_viewer_fps_wish_is_capped_by_the_device() -> None:
    pacer = Pacer(PacerSettings(max_fps=15), now=0.0)
    pacer.limit_fps(60)
    assert pacer.max_fps == 15
    pacer.limit_fps(5)
    assert pacer.max_fps == 5
    pacer.limit_fps(0)
    assert pacer.max_fps == 15


@pytest.mark.parametrize(
    "kwargs", [{"max_fps": 0}, {"cpu_budget": 0}, {"cpu_budget": 1.5}, {"idle_fps": -1}]
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="pacer"):
        PacerSettings(**kwargs)


def test_link_estimate_ignores_small_updates_and_smooths() -> None:
    link = LinkEstimator()
    link.record(1000, 0.5)  # a small update's drain time is latency, not bandwidth
    assert link.bps is None
    link.record(LINK_MIN_SAMPLE * 4, 1.0)
    first = LINK_MIN_SAMPLE * 4 * 8
    assert link.bps == first
    link.record(LINK_MIN_SAMPLE * 4, 0.5)  # twice as fast
    assert link.bps is not None and first < link.bps < 2 * first

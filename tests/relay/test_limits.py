"""Per-source admission limits (sans-I/O: time is passed in)."""

from __future__ import annotations

from relay_server.limits import SourceLimiter


def limiter(**overrides: int | float) -> SourceLimiter:
    settings: dict[str, int | float] = {
        "max_per_source": 3,
        "rate": 2.0,
        "burst": 4,
        "max_total": 100,
        "max_tracked": 10,
    }
    settings.update(overrides)
    return SourceLimiter(**settings)  # type: ignore[arg-type]


def test_rate_limit_burst_then_refill() -> None:
    lim = limiter(max_per_source=0)
    for _ in range(4):
        lim.opened("a", 0.0)
        assert lim.check("a", 0.0) is None
        lim.closed("a")
    lim.opened("a", 0.0)
    refusal = lim.check("a", 0.0)
    assert refusal is not None and refusal.status == 429 and refusal.retry_after == 1
    assert refusal.outcome == "rate_limited"
    assert lim.check("b", 0.0) is None  # other sources unaffected
    assert lim.check("a", 0.5) is None  # 0.5 s * 2/s = one token back


def test_concurrent_limit_counts_open_connections() -> None:
    lim = limiter(rate=0)
    for _ in range(3):
        lim.opened("a", 0.0)
        assert lim.check("a", 0.0) is None
    lim.opened("a", 0.0)
    refusal = lim.check("a", 0.0)
    assert refusal is not None and refusal.status == 429
    lim.closed("a")
    lim.closed("a")
    lim.opened("a", 0.0)
    assert lim.check("a", 0.0) is None
    assert lim.total_open == 3


def test_capacity_is_503() -> None:
    lim = limiter(max_total=1, rate=0)
    lim.opened("a", 0.0)
    lim.opened("b", 0.0)
    refusal = lim.check("b", 0.0)
    assert refusal is not None and refusal.status == 503 and refusal.outcome == "capacity"


def test_tracked_sources_are_bounded() -> None:
    lim = limiter(max_tracked=10)
    lim.opened("busy", 0.0)
    for i in range(100):
        lim.opened(f"s{i}", float(i))
        lim.closed(f"s{i}")
    assert lim.tracked() <= 11
    lim.closed("busy")
    assert lim.total_open == 0


def test_closed_without_open_is_harmless() -> None:
    lim = limiter()
    lim.closed("never")
    assert lim.total_open == 0

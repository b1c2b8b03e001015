"""The rule language: what parses, what is refused (with which message), and evaluation."""

from __future__ import annotations

import pytest

from telemetry.records import Event, Metrics, Severity
from telemetry.rules import DeviceInfo as Device
from telemetry.rules import (
    MetricCondition,
    RateCondition,
    RuleEngine,
    RuleSyntaxError,
    Scope,
    validate_rule,
)

D1 = Device("6f1c2d3e-4a5b-4c6d-8e7f-901234567890", "acme", "lab", "CT-9000")
D2 = Device("0f1c2d3e-4a5b-4c6d-8e7f-901234567890", "other", "x", None)
T0 = 1_800_000_000.0


@pytest.mark.parametrize(
    "text",
    [
        "when code E9* then alarm urgent, email service@vendor.example",
        "WHEN code E4012 ON site acme/radiology THEN alarm, webhook ops, fetch logs app",
        'when severity >= warning on model "CT 9000" then alarm',
        'when message ~ "tube (arc|overheat)" then alarm urgent',
        "when metric cpu.percent > 90 for 5m then alarm warning",
        "when metric disk.percent:/ >= 95 on customer acme, device "
        "6f1c2d3e-4a5b-4c6d-8e7f-901234567890 then alarm urgent, email a@b.example",
        "when offline > 10m then alarm, email oncall@vendor.example",
        "when rate code E2* >= 5 in 10m then alarm warning, priority urgent",
        "when code E1 then fetch logs",
    ],
)
def test_valid_rules_parse(text: str) -> None:
    rule = validate_rule(text)
    assert rule.actions


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the rule is empty; it starts with 'when'"),
        ("if code E1 then alarm", "at column 1: expected 'when', got 'if'"),
        ("when", "expected one of: code, severity, message, metric, offline, rate, but the rule"),
        ("when code then alarm", "at column 11: expected an error code or pattern like E9*"),
        ("when metric cpu.percent > ninety then alarm", "at column 27: expected a number"),
        ("when metric foo.bar > 1 then alarm", "at column 13: unknown metric 'foo.bar'"),
        ("when code E1 then", "expected one of: alarm, email, webhook, fetch, priority, but the"),
        ("when code E1 then explode", "at column 19: expected one of: alarm, email"),
        ('when message ~ "(a+)+" then alarm', "nested repetition like (a+)+ is not allowed"),
        ('when message ~ "(a" then alarm', "invalid regular expression: missing )"),
        ("when offline > 5 then alarm", "expected a duration like 90s, 5m or 2h, got '5'"),
        ("when offline > 90d then alarm", "durations must be more than 0 and at most 30d"),
        ("when code E1 on site acme then alarm", "expected a site as customer/site"),
        ("when code E1 then alarm extra", "at column 25: expected ',' or the end of the rule"),
        ('when code "E1 then alarm', "at column 11: unterminated string"),
        ("when code E1 then email bob", "expected an e-mail address like service@vendor.example"),
        ("when rate code E1 >= 0 in 5m then alarm", "expected a count of events from 1 to 1000"),
        # "²" passes str.isdigit() but not int(); Arabic-Indic digits pass both: ASCII only
        ("when rate code E1 >= \u00b2 in 5m then alarm", "expected a count of events from 1"),
        ("when rate code E1 >= \u0665 in 5m then alarm", "expected a count of events from 1"),
        ("when offline > \u0665m then alarm", "expected a duration like 90s"),
        ("when metric cpu.percent > \u0665 then alarm", "expected a number"),
        ("when code E1 then alarm " + "x" * 1000, "longer than 1000 characters"),
    ],
)
def test_bad_rules_are_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(RuleSyntaxError) as info:
        validate_rule(text)
    assert message in str(info.value)


def test_unknown_webhooks_are_refused_when_the_names_are_known() -> None:
    with pytest.raises(RuleSyntaxError, match=r"unknown webhook 'pager' \(configured: ops\)"):
        validate_rule("when code E1 then webhook pager", webhooks=["ops"])
    validate_rule("when code E1 then webhook ops", webhooks=["ops"])


def event(code: str, ts: float = T0, severity: Severity = Severity.WARNING, msg: str = "") -> Event:
    return Event(1, ts, code, severity, "app", msg)


def engine_with(*texts: str) -> RuleEngine:
    engine = RuleEngine()
    engine.load({i + 1: validate_rule(t) for i, t in enumerate(texts)})
    return engine


def test_urgent_codes_fire_without_rules_and_rules_fire_on_matching_events() -> None:
    engine = engine_with(
        "when code E4* on customer acme then alarm, email a@b.example",
        'when message ~ "overcurrent" then alarm urgent',
    )
    urgent = engine.on_record(D2, event("E9001", severity=Severity.URGENT, msg="tube hot"))
    assert [(f.key, f.severity, f.rule_id) for f in urgent] == [
        ("code:E9001", Severity.URGENT, None)
    ]
    fired = engine.on_record(D1, event("E4012", msg="Table motor overcurrent"))
    # Event rules key their alarm by the code: both rules bump the one E4012 alarm.
    assert [(f.key, f.severity, f.rule_id) for f in fired] == [
        ("code:E4012", Severity.WARNING, 1),
        ("code:E4012", Severity.URGENT, 2),
    ]
    # A rule with an alarm on an urgent code is that code's alarm, raised to urgent.
    engine = engine_with("when code E9* then alarm warning, email a@b.example")
    (one,) = engine.on_record(D1, event("E9001", severity=Severity.URGENT))
    assert (one.key, one.severity, one.rule_id) == ("code:E9001", Severity.URGENT, 1)
    engine = engine_with("when code E9* then email a@b.example")  # no alarm of its own
    both = engine.on_record(D1, event("E9001", severity=Severity.URGENT))
    assert [(f.key, f.rule_id) for f in both] == [("code:E9001", None), ("code:E9001", 1)]
    assert engine.on_record(D2, event("E4012")) == []  # out of scope
    assert engine.on_record(D1, event("W2001")) == []


def test_a_metric_must_stay_over_the_threshold_for_the_duration_and_fires_once() -> None:
    engine = engine_with("when metric cpu.percent > 90 for 5m then alarm")

    def poll(t: float, v: float) -> list[str]:
        return [f.title for f in engine.on_record(D1, Metrics(1, T0 + t, {"cpu.percent": v}))]

    assert poll(0, 95) == []
    assert poll(120, 80) == []  # dipped: the clock restarts
    assert poll(180, 95) == []
    assert poll(420, 96) == []
    assert poll(480, 97) == ["cpu.percent > 90 for 5m (now 97)"]
    assert poll(540, 99) == []  # once per episode
    assert poll(600, 10) == []
    assert poll(660, 95) == []
    assert poll(960, 95) != []  # a new episode fires again


def test_a_rate_fires_after_count_events_within_the_window() -> None:
    engine = engine_with("when rate code E2* >= 3 in 1m then alarm")
    assert engine.on_record(D1, event("E2001", T0)) == []
    assert engine.on_record(D1, event("E2001", T0 + 50)) == []
    assert engine.on_record(D1, event("E2001", T0 + 100)) == []  # first one fell out
    fired = engine.on_record(D1, event("E2002", T0 + 110))
    assert [f.title for f in fired] == ["3 events (code E2*) within 1m"]
    assert engine.on_record(D1, event("E2001", T0 + 111)) == []  # counting restarts


def test_offline_fires_once_per_outage_and_rearms_when_back() -> None:
    engine = engine_with("when offline > 10m on model CT-9000 then alarm")
    assert engine.on_presence(D1, T0, T0 + 300) == []
    assert len(engine.on_presence(D1, T0, T0 + 601)) == 1
    assert engine.on_presence(D1, T0, T0 + 900) == []
    assert engine.on_presence(D2, T0, T0 + 900) == []  # another model
    engine.on_presence(D1, None, T0 + 1000)
    assert len(engine.on_presence(D1, T0 + 2000, T0 + 2700)) == 1


def test_reloading_keeps_state_of_unchanged_rules_only() -> None:
    engine = engine_with("when metric cpu.percent > 90 for 1m then alarm")
    engine.on_record(D1, Metrics(1, T0, {"cpu.percent": 95}))
    engine.load({1: validate_rule("when metric cpu.percent > 90 for 1m then alarm")})
    assert engine.on_record(D1, Metrics(2, T0 + 61, {"cpu.percent": 95}))  # kept
    engine.load({1: validate_rule("when metric cpu.percent > 80 for 1m then alarm")})
    assert engine.on_record(D1, Metrics(3, T0 + 122, {"cpu.percent": 95})) == []  # reset


def test_state_is_bounded() -> None:
    engine = RuleEngine(max_state=10)
    engine.load({1: validate_rule("when metric cpu.percent > 90 for 1h then alarm")})
    for n in range(100):
        device = Device(f"{n:08d}-0000-4000-8000-000000000000", "c", "s")
        engine.on_record(device, Metrics(1, T0, {"cpu.percent": 95}))
    assert len(engine._state) == 10


def test_parsed_structures() -> None:
    rule = validate_rule("when metric disk.percent:/ >= 95 for 90s on site acme/lab then alarm")
    assert rule.condition == MetricCondition("disk.percent:/", ">=", 95.0, 90.0)
    assert rule.scopes == (Scope("site", "acme/lab"),)
    rate = validate_rule("when rate severity urgent >= 2 in 1h then alarm").condition
    assert isinstance(rate, RateCondition) and rate.window == 3600

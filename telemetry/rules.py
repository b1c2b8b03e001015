"""The rule language (R5): *when* something happens *on* some devices, *then* act.

One rule is one line::

    when code E9* then alarm urgent, email service@vendor.example
    when code E4012 on site acme/radiology then alarm, webhook ops, fetch logs app
    when severity >= warning on model "CT 9000" then alarm
    when message ~ "tube (arc|overheat)" then alarm urgent
    when metric cpu.percent > 90 for 5m then alarm warning
    when metric disk.percent:/ >= 95 on customer acme then alarm urgent, email a@b.example
    when offline > 10m then alarm, email oncall@vendor.example
    when rate code E2* >= 5 in 10m then alarm warning, priority urgent

Conditions: ``code GLOB`` | ``severity [>=] LEVEL`` | ``message ~ "REGEX"`` |
``metric NAME OP NUMBER [for DURATION]`` | ``offline > DURATION`` |
``rate (code GLOB | severity [>=] LEVEL | message ~ "REGEX") >= COUNT in DURATION``.
Scopes (any of them matches; none = every device): ``all``, ``device UUID``,
``site CUSTOMER/SITE``, ``customer SLUG``, ``model NAME``. Actions: ``alarm [LEVEL]``,
``email ADDRESS``, ``webhook NAME`` (names configured on the server, never URLs),
``fetch logs [SOURCE]``, ``priority LEVEL`` (raise the alarm to LEVEL).
Keywords are case-insensitive; DURATION is ``90s``, ``5m``, ``2h`` or ``1d``.

`validate_rule(text)` parses and checks a rule and raises `RuleSyntaxError` with a
message that says where and what (what the portal shows at save time).
`RuleEngine` evaluates rules as records arrive; it is pure: records and times in,
`Firing`s out. Urgent error codes open an alarm without any rule.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar

from telemetry.records import METRIC_KEY, Event, Metrics, Record, Severity, metric_allowed

# -- limits ---------------------------------------------------------------------------
#: A rule is a sentence someone types in a form.
MAX_RULE_LENGTH = 1000
MAX_SCOPES = 16
MAX_ACTIONS = 8
#: Regexes run on every event message (<= 1024 characters): short, no nested quantifiers.
MAX_REGEX_LENGTH = 200
#: Durations beyond a month are a typo (and state would be held that long).
MAX_DURATION = 30 * 86_400.0
#: A rate rule keeps up to COUNT timestamps per device in memory.
MAX_RATE_COUNT = 1000
#: (rule, device) states held at once; beyond it the oldest are forgotten (a metric
#: "for 5m" then starts counting again: late, never wrong in the other direction).
MAX_STATE = 200_000

Op = Literal[">", ">=", "<", "<=", "==", "!="]
_OPS: dict[str, Op] = {">": ">", ">=": ">=", "<": "<", "<=": "<=", "==": "==", "!=": "!="}
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}
# ASCII digits only: "\d", str.isdigit() and int() also take "²" or "٣" (issue 14).
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_INTEGER = re.compile(r"[0-9]{1,18}")
_GLOB = re.compile(r"[A-Za-z0-9_.:*?-]{1,32}")
_SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
#: Words that end a clause; never taken as a code, model or name.
_RESERVED = frozenset({"when", "on", "then"})
_TOKEN = re.compile(
    r"""\s*(?:(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
    r"""|(?P<op>>=|<=|==|!=|>|<|~|,)|(?P<word>[^\s,"'<>=!~]+)|(?P<bad>\S))"""
)


class RuleSyntaxError(ValueError):
    """A rule cannot be saved. `str()` is the message for the person who typed it."""

    def __init__(self, message: str, column: int | None = None) -> None:
        self.message = message
        self.column = column
        super().__init__(message if column is None else f"at column {column}: {message}")


# -- the parsed rule --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodeMatch:
    pattern: str
    regex: re.Pattern[str] = field(compare=False)

    def matches(self, event: Event) -> bool:
        return self.regex.fullmatch(event.code) is not None

    def describe(self) -> str:
        return f"code {self.pattern}"


@dataclass(frozen=True, slots=True)
class SeverityMatch:
    level: Severity

    def matches(self, event: Event) -> bool:
        return event.severity >= self.level

    def describe(self) -> str:
        return f"severity >= {self.level.label}"


@dataclass(frozen=True, slots=True)
class MessageMatch:
    regex: re.Pattern[str]

    def matches(self, event: Event) -> bool:
        return self.regex.search(event.message) is not None

    def describe(self) -> str:
        return f'message ~ "{self.regex.pattern}"'


EventMatch = CodeMatch | SeverityMatch | MessageMatch


@dataclass(frozen=True, slots=True)
class EventCondition:
    match: EventMatch


@dataclass(frozen=True, slots=True)
class MetricCondition:
    metric: str
    op: Op
    threshold: float
    duration: float = 0.0

    def crossed(self, value: float) -> bool:
        t = self.threshold
        return {
            ">": value > t,
            ">=": value >= t,
            "<": value < t,
            "<=": value <= t,
            "==": value == t,
            "!=": value != t,
        }[self.op]


@dataclass(frozen=True, slots=True)
class OfflineCondition:
    duration: float


@dataclass(frozen=True, slots=True)
class RateCondition:
    match: EventMatch
    count: int
    window: float


Condition = EventCondition | MetricCondition | OfflineCondition | RateCondition


@dataclass(frozen=True, slots=True)
class Scope:
    kind: Literal["all", "device", "site", "customer", "model"]
    value: str = ""

    def covers(self, device: DeviceInfo) -> bool:
        if self.kind == "all":
            return True
        if self.kind == "device":
            return device.device_id == self.value
        if self.kind == "customer":
            return device.customer == self.value
        if self.kind == "site":
            return f"{device.customer}/{device.site}" == self.value
        return device.model is not None and device.model.casefold() == self.value.casefold()


@dataclass(frozen=True, slots=True)
class Action:
    kind: Literal["alarm", "email", "webhook", "fetch_logs", "priority"]
    value: str = ""
    level: Severity | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    condition: Condition
    scopes: tuple[Scope, ...]
    actions: tuple[Action, ...]

    def covers(self, device: DeviceInfo) -> bool:
        return not self.scopes or any(s.covers(device) for s in self.scopes)

    @property
    def alarm_level(self) -> Severity | None:
        """The level of the ``alarm`` action (None: none, or the default)."""
        for action in self.actions:
            if action.kind == "alarm":
                return action.level
        return None


# -- parsing ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: Literal["string", "op", "word"]
    text: str
    column: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:  # only trailing whitespace left
            break
        pos = m.end()
        kind = m.lastgroup
        if kind is None:
            break
        column = m.start(kind) + 1
        if kind == "bad":
            if m[kind] in "\"'":
                raise RuleSyntaxError("unterminated string (a quote is missing)", column)
            raise RuleSyntaxError(f"unexpected character {m[kind]!r}", column)
        value = m[kind]
        if kind == "string":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        tokens.append(_Token(kind, value, column))  # type: ignore[arg-type]
    return tokens


class _Parser:
    def __init__(self, text: str, webhooks: frozenset[str] | None) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0
        self.webhooks = webhooks

    # token helpers
    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def column(self) -> int:
        tok = self.peek()
        return tok.column if tok is not None else len(self.text) + 1

    def fail(self, message: str) -> RuleSyntaxError:
        tok = self.peek()
        got = f", got {tok.text!r}" if tok is not None else ", but the rule ends here"
        return RuleSyntaxError(message + got, self.column())

    def next(self, what: str) -> _Token:
        tok = self.peek()
        if tok is None:
            raise self.fail(f"expected {what}")
        self.pos += 1
        return tok

    def keyword(self, *words: str) -> str | None:
        tok = self.peek()
        if tok is not None and tok.kind == "word" and tok.text.lower() in words:
            self.pos += 1
            return tok.text.lower()
        return None

    def expect_keyword(self, *words: str) -> str:
        found = self.keyword(*words)
        if found is None:
            if len(words) > 2:
                raise self.fail("expected one of: " + ", ".join(words))
            raise self.fail("expected " + " or ".join(f"'{w}'" for w in words))
        return found

    def op(self, *ops: str) -> str | None:
        tok = self.peek()
        if tok is not None and tok.kind == "op" and tok.text in ops:
            self.pos += 1
            return tok.text
        return None

    # grammar
    def rule(self) -> Rule:
        self.expect_keyword("when")
        condition = self.condition()
        scopes: list[Scope] = []
        if self.keyword("on"):
            scopes.append(self.scope())
            while self.op(","):
                scopes.append(self.scope())
            if len(scopes) > MAX_SCOPES:
                raise RuleSyntaxError(f"at most {MAX_SCOPES} scopes per rule")
        if self.keyword("then") is None:
            raise self.fail("expected 'on' or 'then'" if not scopes else "expected 'then'")
        actions = [self.action()]
        while self.op(","):
            actions.append(self.action())
        if self.peek() is not None:
            raise self.fail("expected ',' or the end of the rule")
        if len(actions) > MAX_ACTIONS:
            raise RuleSyntaxError(f"at most {MAX_ACTIONS} actions per rule")
        return Rule(condition, tuple(scopes), tuple(actions))

    def condition(self) -> Condition:
        word = self.expect_keyword("code", "severity", "message", "metric", "offline", "rate")
        if word in ("code", "severity", "message"):
            return EventCondition(self.event_match(word))
        if word == "metric":
            return self.metric()
        if word == "offline":
            if self.op(">", ">=") is None:
                raise self.fail("expected '>' after 'offline' (offline > 10m)")
            return OfflineCondition(self.duration())
        kind = self.expect_keyword("code", "severity", "message")
        match = self.event_match(kind)
        if self.op(">=") is None:
            raise self.fail("expected '>=' and a count (rate code E2* >= 5 in 10m)")
        count = self.integer("a count of events", 1, MAX_RATE_COUNT)
        self.expect_keyword("in")
        return RateCondition(match, count, self.duration())

    def event_match(self, kind: str) -> EventMatch:
        if kind == "code":
            tok = self.next("an error code or pattern like E9* after 'code'")
            if tok.kind == "op" or not _GLOB.fullmatch(tok.text) or tok.text.lower() in _RESERVED:
                self.pos -= 1
                raise self.fail("expected an error code or pattern like E9* after 'code'")
            return CodeMatch(tok.text, _glob(tok.text))
        if kind == "severity":
            self.op(">=")
            return SeverityMatch(self.level())
        if self.op("~") is None:
            raise self.fail("expected '~' and a quoted regular expression after 'message'")
        tok = self.next("a quoted regular expression")
        if tok.kind != "string":
            self.pos -= 1
            raise self.fail('expected a quoted regular expression like "tube arc"')
        return MessageMatch(_regex(tok.text, tok.column))

    def metric(self) -> MetricCondition:
        tok = self.next("a metric name like cpu.percent")
        if tok.kind != "word" or not METRIC_KEY.fullmatch(tok.text):
            self.pos -= 1
            raise self.fail("expected a metric name like cpu.percent or disk.percent:/")
        if not metric_allowed(tok.text):
            raise RuleSyntaxError(f"unknown metric {tok.text!r}", tok.column)
        op_tok = self.peek()
        op = self.op(*_OPS)
        if op is None or op_tok is None:
            raise self.fail("expected a comparison (>, >=, <, <=, ==, !=)")
        number = self.next("a number")
        if not _NUMBER.fullmatch(number.text):
            self.pos -= 1
            raise self.fail("expected a number")
        duration = 0.0
        if self.keyword("for"):
            duration = self.duration()
        return MetricCondition(tok.text, _OPS[op], float(number.text), duration)

    def scope(self) -> Scope:
        kind = self.expect_keyword("all", "device", "site", "customer", "model")
        if kind == "all":
            return Scope("all")
        tok = self.next(f"a {kind} after '{kind}'")
        if kind == "model":
            if tok.kind == "op":
                self.pos -= 1
                raise self.fail("expected a model name")
            return Scope("model", tok.text[:255])
        value = tok.text if tok.kind == "word" else ""
        if kind == "device" and _UUID.fullmatch(value):
            return Scope("device", value)
        if kind == "customer" and _SLUG.fullmatch(value):
            return Scope("customer", value)
        if kind == "site":
            customer, _, site = value.partition("/")
            if _SLUG.fullmatch(customer) and _SLUG.fullmatch(site):
                return Scope("site", value)
        self.pos -= 1
        expected = {
            "device": "a device id (uuid)",
            "customer": "a customer slug like acme",
            "site": "a site as customer/site, like acme/radiology",
        }[kind]
        raise self.fail(f"expected {expected}")

    def action(self) -> Action:
        kind = self.expect_keyword("alarm", "email", "webhook", "fetch", "priority")
        if kind == "alarm":
            level = self.optional_level()
            return Action("alarm", level=level)
        if kind == "priority":
            return Action("priority", level=self.level())
        if kind == "fetch":
            self.expect_keyword("logs")
            tok = self.peek()
            if tok is not None and tok.kind == "word":
                if not _NAME.fullmatch(tok.text):
                    raise self.fail("expected a log source name like app")
                self.pos += 1
                return Action("fetch_logs", tok.text)
            return Action("fetch_logs")
        tok = self.next("an e-mail address" if kind == "email" else "a webhook name")
        if kind == "email":
            if tok.kind != "word" or len(tok.text) > 254 or not _EMAIL.fullmatch(tok.text):
                self.pos -= 1
                raise self.fail("expected an e-mail address like service@vendor.example")
            return Action("email", tok.text)
        if tok.kind != "word" or not _NAME.fullmatch(tok.text):
            self.pos -= 1
            raise self.fail("expected a webhook name like ops")
        if self.webhooks is not None and tok.text not in self.webhooks:
            known = ", ".join(sorted(self.webhooks)) or "none"
            raise RuleSyntaxError(f"unknown webhook {tok.text!r} (configured: {known})", tok.column)
        return Action("webhook", tok.text)

    def level(self) -> Severity:
        level = self.optional_level()
        if level is None:
            raise self.fail("expected routine, warning or urgent")
        return level

    def optional_level(self) -> Severity | None:
        word = self.keyword("routine", "warning", "urgent")
        return Severity.parse(word) if word else None

    def duration(self) -> float:
        tok = self.next("a duration like 90s, 5m or 2h")
        m = _DURATION.fullmatch(tok.text.lower()) if tok.kind == "word" else None
        if m is None:
            self.pos -= 1
            raise self.fail("expected a duration like 90s, 5m or 2h")
        seconds = float(m[1]) * _UNITS[m[2]]
        if not 0 < seconds <= MAX_DURATION:
            raise RuleSyntaxError("durations must be more than 0 and at most 30d", tok.column)
        return seconds

    def integer(self, what: str, low: int, high: int) -> int:
        tok = self.next(what)
        if (
            tok.kind != "word"
            or not _INTEGER.fullmatch(tok.text)
            or not low <= int(tok.text) <= high
        ):
            self.pos -= 1
            raise self.fail(f"expected {what} from {low} to {high}")
        return int(tok.text)


def _glob(pattern: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts))


def _regex(pattern: str, column: int) -> re.Pattern[str]:
    if not pattern or len(pattern) > MAX_REGEX_LENGTH:
        raise RuleSyntaxError(
            f"the regular expression must be 1 to {MAX_REGEX_LENGTH} characters", column
        )
    if _nested_quantifier(pattern):
        raise RuleSyntaxError(
            "nested repetition like (a+)+ is not allowed (it can take forever to match)", column
        )
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise RuleSyntaxError(f"invalid regular expression: {exc.msg}", column) from None


def _nested_quantifier(pattern: str) -> bool:
    """True if a repeated group itself contains a repetition: ``(a+)+``, ``(\\w*)*``..."""
    stack: list[bool] = []  # per open group: does it contain a quantifier?
    i, in_class = 0, False
    quantifiers = "*+{"
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(":
            stack.append(False)
        elif c == ")" and stack:
            inner = stack.pop()
            following = pattern[i + 1 : i + 2]
            if inner and following and following in quantifiers:
                return True
            if stack and (inner or (following and following in quantifiers)):
                stack[-1] = True
        elif c in quantifiers and stack:
            stack[-1] = True
        i += 1
    return False


def validate_rule(text: str, *, webhooks: Iterable[str] | None = None) -> Rule:
    """Parse `text` into a Rule, or raise RuleSyntaxError saying where and what.

    Pass the configured webhook names as `webhooks` to refuse unknown ones too.
    """
    if not isinstance(text, str) or not text.strip():
        raise RuleSyntaxError("the rule is empty; it starts with 'when'")
    if len(text) > MAX_RULE_LENGTH:
        raise RuleSyntaxError(f"the rule is longer than {MAX_RULE_LENGTH} characters")
    names = frozenset(webhooks) if webhooks is not None else None
    return _Parser(text, names).rule()


# -- evaluation ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What scopes are matched against: identity from the certificate, model from
    the device's last properties."""

    device_id: str
    customer: str
    site: str
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Firing:
    """A rule (or an urgent code) fired for a device.

    `key` identifies the alarm it opens or bumps (``code:<code>`` for an event's code,
    whether an urgent code or an event rule fired; ``rule:<id>`` for metric, rate and
    offline rules), so repeated firings of one problem stay one alarm.
    """

    device_id: str
    key: str
    severity: Severity
    title: str
    ts: float
    rule_id: int | None
    actions: tuple[Action, ...]


URGENT_ACTIONS = (Action("alarm", level=Severity.URGENT),)


@dataclass(slots=True)
class _MetricState:
    since: float | None = None
    fired: bool = False


@dataclass(slots=True)
class _OfflineState:
    fired_for: float | None = None


_S = TypeVar("_S", _MetricState, _OfflineState, deque[float])


class RuleEngine:
    """Evaluate rules against records as they arrive. Pure: no clock, no I/O.

    `load` replaces the rule set (state of unchanged rules is kept); `on_record` is
    called for each NEW record (never for a duplicate), in sequence order per device;
    `on_presence` is called periodically with when each device went offline.
    """

    def __init__(self, max_state: int = MAX_STATE) -> None:
        self._rules: dict[int, Rule] = {}
        self._state: dict[tuple[int, str], _MetricState | _OfflineState | deque[float]] = {}
        self._max_state = max_state

    @property
    def rules(self) -> Mapping[int, Rule]:
        return self._rules

    def load(self, rules: Mapping[int, Rule]) -> None:
        changed = {rid for rid, rule in self._rules.items() if rules.get(rid) != rule}
        self._rules = dict(rules)
        if changed:
            for key in [k for k in self._state if k[0] in changed]:
                del self._state[key]

    def on_record(self, device: DeviceInfo, record: Record) -> list[Firing]:
        firings = self._rule_firings(device, record)
        if isinstance(record, Event) and record.severity is Severity.URGENT:
            # An urgent code always has an alarm, at least urgent; when a rule on this
            # event opens one (same key), that is the alarm -- never two for one event.
            key = f"code:{record.code}"
            for i, firing in enumerate(firings):
                if firing.key == key and any(a.kind == "alarm" for a in firing.actions):
                    firings[i] = replace(firing, severity=max(firing.severity, Severity.URGENT))
                    break
            else:
                title = f"{record.code}: {record.message}"[:200]
                firings.insert(
                    0,
                    Firing(
                        device.device_id,
                        key,
                        Severity.URGENT,
                        title,
                        record.ts,
                        None,
                        URGENT_ACTIONS,
                    ),
                )
        return firings

    def _rule_firings(self, device: DeviceInfo, record: Record) -> list[Firing]:
        firings: list[Firing] = []
        for rule_id, rule in self._rules.items():
            if not rule.covers(device):
                continue
            condition = rule.condition
            if isinstance(condition, EventCondition) and isinstance(record, Event):
                if condition.match.matches(record):
                    level = rule.alarm_level or max(record.severity, Severity.WARNING)
                    title = f"{record.code}: {record.message}"[:200]
                    # One alarm per code: "when code E9*" on E9001 and E9002 is two problems.
                    firings.append(
                        self._fire(
                            device,
                            rule_id,
                            rule,
                            level,
                            title,
                            record.ts,
                            key=f"code:{record.code}",
                        )
                    )
            elif isinstance(condition, RateCondition) and isinstance(record, Event):
                fired = self._rate(device, rule_id, condition, record)
                if fired:
                    title = (
                        f"{condition.count} events ({condition.match.describe()}) "
                        f"within {_human(condition.window)}"
                    )
                    firings.append(self._fire(device, rule_id, rule, None, title, record.ts))
            elif isinstance(condition, MetricCondition) and isinstance(record, Metrics):
                value = record.values.get(condition.metric)
                if value is not None and self._metric(device, rule_id, condition, value, record.ts):
                    title = (
                        f"{condition.metric} {condition.op} {condition.threshold:g}"
                        + (f" for {_human(condition.duration)}" if condition.duration else "")
                        + f" (now {value:g})"
                    )
                    firings.append(self._fire(device, rule_id, rule, None, title, record.ts))
        return firings

    def on_presence(
        self, device: DeviceInfo, offline_since: float | None, now: float
    ) -> list[Firing]:
        """`offline_since`: when the device disconnected (None: it is online)."""
        firings: list[Firing] = []
        for rule_id, rule in self._rules.items():
            condition = rule.condition
            if not isinstance(condition, OfflineCondition) or not rule.covers(device):
                continue
            key = (rule_id, device.device_id)
            if offline_since is None:
                self._state.pop(key, None)
                continue
            state = self._state.get(key)
            if not isinstance(state, _OfflineState):
                state = self._put(key, _OfflineState())
            if now - offline_since >= condition.duration and state.fired_for != offline_since:
                state.fired_for = offline_since
                title = f"offline for more than {_human(condition.duration)}"
                firings.append(self._fire(device, rule_id, rule, None, title, now))
        return firings

    def offline_rules(self) -> bool:
        return any(isinstance(r.condition, OfflineCondition) for r in self._rules.values())

    # -- per-condition state ----------------------------------------------------------

    def _metric(
        self, device: DeviceInfo, rule_id: int, condition: MetricCondition, value: float, ts: float
    ) -> bool:
        key = (rule_id, device.device_id)
        state = self._state.get(key)
        if not condition.crossed(value):
            if state is not None:
                del self._state[key]  # back to normal: re-armed
            return False
        if not isinstance(state, _MetricState):
            state = self._put(key, _MetricState(since=ts))
        assert state.since is not None
        if not state.fired and ts - state.since >= condition.duration:
            state.fired = True
            return True
        return False

    def _rate(
        self, device: DeviceInfo, rule_id: int, condition: RateCondition, event: Event
    ) -> bool:
        if not condition.match.matches(event):
            return False
        key = (rule_id, device.device_id)
        times = self._state.get(key)
        if not isinstance(times, deque):
            times = self._put(key, deque(maxlen=condition.count))
        times.append(event.ts)
        if len(times) == condition.count and times[-1] - times[0] <= condition.window:
            times.clear()  # the next firing needs COUNT new events
            return True
        return False

    def _put(self, key: tuple[int, str], state: _S) -> _S:
        if len(self._state) >= self._max_state:
            del self._state[next(iter(self._state))]
        self._state[key] = state
        return state

    def _fire(
        self,
        device: DeviceInfo,
        rule_id: int,
        rule: Rule,
        level: Severity | None,
        title: str,
        ts: float,
        key: str | None = None,
    ) -> Firing:
        severity = level or rule.alarm_level or Severity.WARNING
        return Firing(
            device.device_id, key or f"rule:{rule_id}", severity, title, ts, rule_id, rule.actions
        )


def _human(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"

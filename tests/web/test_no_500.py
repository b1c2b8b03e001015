"""No input yields a 500: every route, every role, hostile path, query and body.

Hypothesis draws path parameters, query strings and bodies made of what broke the
portal before (ids at or past 2**63, Unicode digits like ``²``, NUL and other
control characters, huge timestamps) plus confusables, over-long strings, malformed
percent-encoding and UTF-8, and JSON of the wrong types. Each answer must be 2xx,
3xx or 4xx, with nothing logged at ERROR. ``TESTING`` makes an unhandled exception
raise here instead of turning into a 500, so the failing input is shown.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.routing import Rule
from wtforms.fields.core import UnboundField

from tests.web.conftest import Fleet, new_client
from tests.web.test_permission_matrix import login_as, post_token, url_args_for
from web import forms

#: Examples per (route, method, role): the whole walk stays well under a minute per database.
EXAMPLES = 8

#: Every query argument a view reads (a view ignores the others).
QUERY_NAMES = (
    *("page", "q", "customer", "site", "status", "before", "after", "since", "until", "user"),
    *("device", "kind", "outcome", "severity", "state", "metric", "range", "start", "end"),
    *("points", "code", "session", "ids", "next"),
)
#: Every form field a view reads: the forms' fields and the few read from ``request.form``.
FORM_NAMES = sorted(
    {
        name
        for form in vars(forms).values()
        if isinstance(form, type) and issubclass(form, forms.FlaskForm)
        for name, value in vars(form).items()
        if isinstance(value, UnboundField)
    }
    | {"text", "mode", "reason", "session", "decision", "next"}
)

NUMBERS = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.sampled_from(
        [
            *("2147483647", "2147483648", "4294967296", "-1", "0"),
            *("9223372036854775807", "9223372036854775808", "18446744073709551616"),
            *("1e308", "-1e308", "nan", "inf", "1.5", "0x10", "1_000", " 1", "99999999999999.5"),
        ]
    ),
)
UNICODE_DIGITS = st.one_of(
    st.text(st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=8),
    # superscript two; Arabic-Indic, fullwidth, double-struck, Bengali digits; Roman twelve
    st.sampled_from(
        ["\u00b2", "\u0661\u0662", "\uff11\uff12", "\U0001d7d9", "\u09e6", "\u216b", "1\u00b2"]
    ),
)
CONTROL = st.text(st.characters(categories=["Cc", "Cf", "Zl", "Zp"]), min_size=1, max_size=4)
TEXT = st.one_of(
    NUMBERS,
    UNICODE_DIGITS,
    st.text(max_size=40),
    st.tuples(st.text(max_size=8), CONTROL, st.text(max_size=8)).map("".join),
    st.integers(min_value=300, max_value=5000).map(lambda n: "9" * n),
    st.integers(min_value=300, max_value=20000).map(lambda n: "a" * n),
    st.sampled_from(["../../etc/passwd", "//example.invalid", "%s%n", "'; --", "<script>"]),
)
#: Raw, already percent-encoded spellings that do not decode cleanly.
MALFORMED = st.sampled_from(
    ["%", "%zz", "%C3%28", "%FF%FE", "%ED%A0%80", "%C0%AF", "%E2%80%AE", "%00", "%25%00", "%u0000"]
)
ENCODED = st.one_of(TEXT.map(lambda t: quote(t, safe="")), MALFORMED)
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80), TEXT),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


@st.composite
def query_strings(draw: st.DrawFn) -> str:
    names = st.one_of(st.sampled_from(QUERY_NAMES), ENCODED)
    pairs = draw(st.lists(st.tuples(names, ENCODED), max_size=4))
    return "&".join(f"{k}={v}" for k, v in pairs)


@st.composite
def bodies(draw: st.DrawFn, token: str) -> tuple[bytes, str]:
    """A form (with the session's CSRF token, so views get to parse it), JSON or bytes."""
    kind = draw(st.sampled_from(["form", "json", "bytes"]))
    if kind == "json":
        return json.dumps(draw(JSON)).encode(), "application/json"
    if kind == "bytes":
        return draw(st.binary(max_size=200)), "application/x-www-form-urlencoded"
    names = st.one_of(st.sampled_from(FORM_NAMES), ENCODED)
    pairs = [("csrf_token", token), *draw(st.lists(st.tuples(names, ENCODED), max_size=5))]
    return "&".join(f"{k}={v}" for k, v in pairs).encode(), "application/x-www-form-urlencoded"


def _path(rule: Rule, valid: dict[str, Any], draw: st.DrawFn) -> str:
    """The rule's path with each argument a real id of the caller's fleet or hostile text."""

    def segment(match: re.Match[str]) -> str:
        name = match.group("name")
        real = quote(str(valid[name]), safe="")
        return draw(st.one_of(st.just(real), ENCODED.filter(lambda s: s and s != ".")))

    return re.sub(r"<(?:[^:<>]+:)?(?P<name>[^<>]+)>", segment, rule.rule)


@pytest.fixture
def error_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.ERROR)
    yield caplog
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


@pytest.mark.parametrize("username", [None, "root", "eng", "ana", "contact"])
def test_no_route_answers_5xx_to_hostile_input(
    app: Flask,
    fleet: Fleet,
    users: dict[str, int],
    username: str | None,
    error_log: pytest.LogCaptureFixture,
) -> None:
    valid = url_args_for(app, fleet, users)
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            # A session per route: a POST may end it (logout, logout-everywhere).
            client = login_as(app, username) if username else new_client(app)
            _walk(client, rule, method, valid, post_token(client) if method == "POST" else "")


def _walk(client: FlaskClient, rule: Rule, method: str, valid: dict[str, Any], token: str) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        url = _path(rule, valid, data.draw)
        query = data.draw(query_strings())
        if method == "GET":
            response = client.get(f"{url}?{query}")
        else:
            body, content_type = data.draw(bodies(token))
            response = client.post(f"{url}?{query}", data=body, content_type=content_type)
        status = response.status_code
        response.close()
        assert status < 500, f"{method} {url}?{query[:200]}: {status}"

    check()


@pytest.mark.parametrize(
    "path, status",
    [
        ("/customers/2147483648", 404),  # 2**31: past PostgreSQL's integer
        ("/customers/9223372036854775808", 404),  # 2**63: past every integer column
        ("/admin/users/2147483648", 404),
        ("/audit?before=9223372036854775807&customer=2147483648", 200),
        ("/customers/%C2%B2", 404),  # "²": str.isdigit() says yes, int() says no
        ("/customers/%D9%A3", 404),  # Arabic-Indic 3: int() accepts it, the route does not
        ("/devices?customer=9223372036854775808&page=%C2%B2", 200),
        ("/audit?before=99999999999999999999&since=9999-12-31T23:59:59-14:00", 200),
        ("/devices/x%00y", 400),
        ("/devices?q=a%00b", 400),
    ],
)
def test_hostile_spellings_are_refused_or_ignored(
    client_for: Callable[[str], FlaskClient], path: str, status: int
) -> None:
    assert client_for("root").get(path).status_code == status


def test_nul_in_a_form_or_json_body_is_a_400(
    client_for: Callable[[str], FlaskClient], fleet: Fleet
) -> None:
    client = client_for("root")
    token = post_token(client)
    form = client.post("/rules/new", data={"csrf_token": token, "name": "n\x00", "text": "x"})
    assert form.status_code == 400
    body = client.post(f"/api/v1/devices/{fleet.device_a1}/desktop/end", json={"session": "\x01"})
    assert body.status_code == 400


def test_form_ids_past_the_column_range_are_a_form_error(
    client_for: Callable[[str], FlaskClient],
) -> None:
    client = client_for("root")
    data = {"csrf_token": post_token(client), "site": str(2**63), "hours": "1"}
    assert client.post("/admin/tokens", data=data).status_code in (200, 400)

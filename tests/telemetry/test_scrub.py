"""Scrubbing personal data from free text (R28): examples, configuration, and properties."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemetry.scrub import Scrubber, ScrubRules

S = Scrubber()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'Scan started patient="DOE^JOHN" PID=12345678 DOB 1961-04-02 operator Jane Smith '
            "ws 10.1.2.3",
            "Scan started patient=<name> PID=<id> DOB <dob> operator <name> ws <ip>",
        ),
        ("Patient ID: AB-443 born 02/04/1961", "Patient ID: <id> born <dob>"),
        (
            "Patient Name: Jane Doe, mail jane.doe@hospital.org",
            "Patient Name: <name>, mail <email>",
        ),
        ("Referring physician: Dr. House", "Referring physician: <name>"),
        ("MRN 0042 accession 20231105123", "MRN <id> accession <id>"),
        ("from ::ffff:192.168.1.10 and 2001:db8::1 port 104", "from <ip> and <ip> port 104"),
        ("study 20231105 on 12.03.2024 and 3/4/24", "study <date> on <date> and <date>"),
        # Things that are not personal data stay.
        ("user logged in at 10:22:01", "user logged in at 10:22:01"),
        ("patient id lookup failed", "patient id lookup failed"),
        ("mac 00:1a:2b:3c:4d:5e tube 12.5 C kV 120", "mac 00:1a:2b:3c:4d:5e tube 12.5 C kV 120"),
    ],
)
def test_examples(text: str, expected: str) -> None:
    assert S.scrub(text) == expected
    assert S.scrub(expected) == expected  # idempotent


def test_a_log_line_keeps_its_own_timestamp() -> None:
    line = "2025-11-27 10:00:01.123 INFO [acq] I1001 dob=1961-04-02 from 10.0.0.7\n"
    assert S.scrub_line(line) == "2025-11-27 10:00:01.123 INFO [acq] I1001 dob=<dob> from <ip>\n"


def test_configured_keys_and_patterns() -> None:
    scrubber = Scrubber(
        ScrubRules(name_keys=("radiographer",), id_keys=("exam",), patterns=(r"ACC-\d{6}",))
    )
    assert scrubber.scrub("radiographer Ann Lee exam=77 ACC-123456") == (
        "radiographer <name> exam=<id> <redacted>"
    )
    with pytest.raises(ValueError, match="scrub pattern"):
        Scrubber(ScrubRules(patterns=("(",)))


names = st.from_regex(r"[A-Z][a-z]{2,9}", fullmatch=True)
emails = st.emails()
ipv4s = st.ip_addresses(v=4).map(str)
ipv6s = st.ip_addresses(v=6).map(lambda a: str(ipaddress.IPv6Address(a)))
dates = st.dates().map(lambda d: d.isoformat())
ids = st.from_regex(r"[A-Z]{0,2}\d{4,10}", fullmatch=True)
filler = st.sampled_from(["Scan started", "protocol=HEAD", "kV 120", "retry", "ok;", "(tube)"])


@st.composite
def personal_lines(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A log message with personal data at random places, and the secrets it holds."""
    first, last = draw(names), draw(names)
    pieces = {
        "name": (f"patient={last.upper()}^{first.upper()}", [last.upper(), first.upper()]),
        "operator": (f"operator {first} {last}", [f"{first} {last}"]),
        "id": (f"PID={draw(ids)}", None),
        "dob": (f"DOB {draw(dates)}", None),
        "email": (draw(emails), None),
        "ipv4": (draw(ipv4s), None),
        "ipv6": (draw(ipv6s), None),
    }
    chosen = draw(st.lists(st.sampled_from(sorted(pieces)), min_size=1, max_size=5))
    parts: list[str] = []
    secrets: list[str] = []
    for key in chosen:
        text, secret = pieces[key]
        parts += [draw(filler), text]
        secrets += secret if secret is not None else [text.split("=", 1)[-1].split(" ", 1)[-1]]
    return " ".join(parts), secrets


@given(personal_lines())
def test_generated_personal_data_never_survives(case: tuple[str, list[str]]) -> None:
    text, secrets = case
    scrubbed = S.scrub(text)
    for secret in secrets:
        assert secret not in scrubbed, (text, scrubbed)
    assert not re.search(r"\d+\.\d+\.\d+\.\d+", scrubbed)
    assert "@" not in scrubbed
    assert S.scrub(scrubbed) == scrubbed

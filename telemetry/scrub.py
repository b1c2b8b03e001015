"""Remove personal data from free text before it leaves the device (R28, GDPR).

Equipment logs mention patients and staff: ``Scan started patient="DOE^JOHN"
PID=12345678 DOB 1961-04-02 operator Jane Smith from 10.1.2.3``. The agent scrubs
every event message and every uploaded log line with a `Scrubber`; the relay runs the
same rules again on what it stores, in case an agent is old or misconfigured.

Replaced, in this order (each a separate pass, so one rule's output cannot hide
another's input):

1. e-mail addresses                                   -> ``<email>``
2. the value after a configured key (name / id / birth-date keys; ``key: value``,
   ``key=value``, or ``key Capitalised Words``)       -> ``<name>`` / ``<id>`` / ``<dob>``
3. DICOM person names (``DOE^JOHN``)                  -> ``<name>``
4. IPv6 and 5. IPv4 addresses                         -> ``<ip>``
6. dates (ISO, European, US with 4-digit year, DICOM ``YYYYMMDD``) -> ``<date>``
7. extra regular expressions from the configuration    -> ``<redacted>``

Scrubbing errs on the side of removing too much (a version ``1.2.3.4`` becomes
``<ip>``); it is idempotent. `scrub_line` keeps a log line's leading timestamp,
which is the device's clock, not a birth date.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_NAME_KEYS = (
    "patient",
    "patient_name",
    "name",
    "first_name",
    "last_name",
    "operator",
    "user",
    "username",
    "physician",
    "referring_physician",
    "doctor",
    "nurse",
    "technologist",
    "performed_by",
)
DEFAULT_ID_KEYS = (
    "patient_id",
    "pid",
    "mrn",
    "accession",
    "accession_number",
    "ssn",
    "nhs_number",
    "insurance_number",
)
DEFAULT_DOB_KEYS = ("dob", "date_of_birth", "birth_date", "birthdate", "born")

_NAME_MARK, _ID_MARK, _DOB_MARK = "<name>", "<id>", "<dob>"

#: Extra patterns from a configuration file are user input: bound them.
MAX_EXTRA_PATTERNS = 32
MAX_PATTERN_LENGTH = 200

_EMAIL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_DICOM_NAME = re.compile(r"\b[A-Za-z][A-Za-z'-]*\^[A-Za-z'^-]*")
_IPV6_CANDIDATE = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?"
    r"(?:%[\w.]+)?(?![\w:.])"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w.]*\d)")
_DATE = re.compile(
    r"\b(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}"
    r"|\d{1,2}[-/.]\d{1,2}[-/.]\d{4}"
    r"|\d{1,2}/\d{1,2}/\d{2}"
    r"|(?:19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]))\b"
)
_EIGHT_DIGITS = re.compile(r"\d{8}")
#: A log line's own timestamp, kept by `scrub_line`.
_LEADING_TIMESTAMP = re.compile(
    r"\s*\[?\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?\]?"
)
#: What follows a key: ``: value`` / ``= value`` / ``# value``, or just spaces.
_SEP = r"(?P<sep>\s*[:=#]\s*|[ \t]+)"
_QUOTED = r"\"[^\"\n]*\"|'[^'\n]*'"
_CAPITALISED = r"[A-Z][\w'.-]*(?:[ \t]+[A-Z][\w'.-]*){0,3}"
_WORD = r"[^\s,;|)\]}]+"


def _key_alternation(keys: Iterable[str]) -> str:
    """``patient_id`` also matches ``Patient ID``, ``patient-id`` and ``PatientID``."""
    parts = sorted({k.strip().lower() for k in keys if k.strip()}, key=len, reverse=True)
    return "|".join(r"[ _-]?".join(map(re.escape, p.split("_"))) for p in parts)


@dataclass(frozen=True)
class ScrubRules:
    """Configurable parts of the rules; the defaults suit medical imaging equipment."""

    name_keys: tuple[str, ...] = DEFAULT_NAME_KEYS
    id_keys: tuple[str, ...] = DEFAULT_ID_KEYS
    dob_keys: tuple[str, ...] = DEFAULT_DOB_KEYS
    patterns: tuple[str, ...] = ()


class Scrubber:
    """Compiled `ScrubRules`. Raises ValueError for an unusable extra pattern."""

    def __init__(self, rules: ScrubRules | None = None) -> None:
        rules = rules or ScrubRules()
        if len(rules.patterns) > MAX_EXTRA_PATTERNS:
            raise ValueError(f"at most {MAX_EXTRA_PATTERNS} extra scrub patterns")
        self._extra: list[re.Pattern[str]] = []
        for pattern in rules.patterns:
            if len(pattern) > MAX_PATTERN_LENGTH:
                raise ValueError(f"scrub pattern longer than {MAX_PATTERN_LENGTH} characters")
            try:
                self._extra.append(re.compile(pattern))
            except re.error as exc:
                raise ValueError(f"scrub pattern {pattern!r}: {exc}") from None
        # (regex, placeholder, stems): a key's first word must occur (any case) for the
        # regex to be worth running; most log lines name no key at all.
        self._keyed: list[tuple[re.Pattern[str], str, tuple[str, ...]]] = []
        # Ids and birth dates first: "patient id 123" is an id, not a name "id".
        for keys, placeholder, value in (
            (rules.id_keys, _ID_MARK, _WORD),
            (rules.dob_keys, _DOB_MARK, _WORD),
            (rules.name_keys, _NAME_MARK, f"{_QUOTED}|{_WORD}\\^{_WORD}|{_CAPITALISED}|{_WORD}"),
        ):
            alternation = _key_alternation(keys)
            if alternation:
                regex = re.compile(
                    rf"(?P<key>\b(?i:{alternation})\b){_SEP}(?P<val>(?>{value}))(?!\s*[:=#])"
                )
                stems = tuple({k.strip().lower().split("_")[0] for k in keys if k.strip()})
                self._keyed.append((regex, placeholder, stems))

    def scrub(self, text: str) -> str:
        """`text` with personal data replaced by placeholders."""
        # Each pass runs only if the characters it needs are there (cheap checks first).
        if "@" in text:
            text = _EMAIL.sub("<email>", text)
        lower = text.lower()
        for regex, placeholder, stems in self._keyed:
            if any(stem in lower for stem in stems):
                text = regex.sub(functools.partial(_keyed_value, placeholder=placeholder), text)
        if "^" in text:
            text = _DICOM_NAME.sub("<name>", text)
        if text.count(":") >= 2:
            text = _IPV6_CANDIDATE.sub(_ipv6, text)
        if text.count(".") >= 3:
            text = _IPV4.sub("<ip>", text)
        if any(c in text for c in "-/.") or _EIGHT_DIGITS.search(text):
            text = _DATE.sub("<date>", text)
        for regex in self._extra:
            text = regex.sub("<redacted>", text)
        return text

    def scrub_line(self, line: str) -> str:
        """Scrub a log line but keep its leading timestamp (the device's clock)."""
        match = _LEADING_TIMESTAMP.match(line)
        if match is None:
            return self.scrub(line)
        return line[: match.end()] + self.scrub(line[match.end() :])


def _keyed_value(match: re.Match[str], placeholder: str) -> str:
    sep, value = match["sep"], match["val"]
    explicit = sep.strip() != ""
    if not explicit and placeholder == _NAME_MARK and not _looks_like_name(value):
        # "user logged in": no separator and nothing capitalised is not a name.
        return match[0]
    if placeholder == _ID_MARK and not explicit and not any(c.isdigit() for c in value):
        return match[0]  # "patient id lookup failed"
    if placeholder == _DOB_MARK and not explicit and not any(c.isdigit() for c in value):
        return match[0]
    return f"{match['key']}{sep}{placeholder}"


def _looks_like_name(value: str) -> bool:
    return value[:1] in "\"'" or "^" in value or value[:1].isupper()


def _ipv6(match: re.Match[str]) -> str:
    candidate = match[0]
    try:
        ipaddress.IPv6Address(candidate.split("%", 1)[0])
    except ValueError:
        return candidate  # a time of day, a MAC address...
    return "<ip>"

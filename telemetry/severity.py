"""The severity table: which error codes are routine, which warn, which are urgent.

Configured per equipment model, e.g.::

    [severity]
    default = "warning"
    [severity.codes]
    "I*"    = "routine"
    "W2*"   = "warning"
    "E9*"   = "urgent"
    "E4012" = "urgent"

Patterns are globs (``*`` any run, ``?`` one character, matched on the whole code,
case-sensitive). An exact code wins over patterns; among patterns the longest (most
specific) wins; a code nothing matches gets ``default``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping

from telemetry.records import Severity

#: A table is configuration, not data; this bounds a typo'd generator.
MAX_ENTRIES = 1000


class SeverityTable:
    """Error code -> `Severity`. Raises ValueError for a bad entry."""

    def __init__(
        self, codes: Mapping[str, str | Severity], default: str | Severity = Severity.WARNING
    ) -> None:
        if len(codes) > MAX_ENTRIES:
            raise ValueError(f"severity table: more than {MAX_ENTRIES} entries")
        self.default = _severity(default)
        self._exact: dict[str, Severity] = {}
        self._patterns: list[tuple[int, re.Pattern[str], Severity]] = []
        for code, level in codes.items():
            if not code or len(code) > 64:
                raise ValueError(f"severity table: bad code pattern {code!r}")
            severity = _severity(level)
            if any(c in code for c in "*?["):
                literal = len(code) - code.count("*")
                self._patterns.append((literal, re.compile(fnmatch.translate(code)), severity))
            else:
                self._exact[code] = severity
        # Most specific first: more literal characters say more.
        self._patterns.sort(key=lambda p: p[0], reverse=True)

    def classify(self, code: str) -> Severity:
        exact = self._exact.get(code)
        if exact is not None:
            return exact
        for _, pattern, severity in self._patterns:
            if pattern.match(code):
                return severity
        return self.default


def _severity(value: str | Severity) -> Severity:
    return value if isinstance(value, Severity) else Severity.parse(value)

"""Permission-matrix entries for alarms, rules and log uploads (merged into ``MATRIX``)."""

from __future__ import annotations

ALARMS_MATRIX: dict[str, str] = {}

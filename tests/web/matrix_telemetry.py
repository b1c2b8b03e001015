"""Permission-matrix entries for the telemetry pages (merged into ``MATRIX``)."""

from __future__ import annotations

TELEMETRY_MATRIX: dict[str, str] = {}

"""Permission-matrix entries for the telemetry pages (merged into ``MATRIX``)."""

from __future__ import annotations

from web.authz import Perm

TELEMETRY_MATRIX: dict[str, str] = {
    "telemetry.series": Perm.TELEMETRY_VIEW,
    "telemetry.events": Perm.TELEMETRY_VIEW,
    "telemetry.attention": Perm.TELEMETRY_VIEW,
}

"""Permission-matrix entries for alarms, rules and log uploads (merged into ``MATRIX``)."""

from __future__ import annotations

from web.authz import Perm

ALARMS_MATRIX: dict[str, str] = {
    "alarms.alarms": Perm.TELEMETRY_VIEW,
    "alarms.alarm": Perm.TELEMETRY_VIEW,
    "alarms.acknowledge": Perm.ALARMS_HANDLE,
    "alarms.comment": Perm.ALARMS_HANDLE,
    "alarms.close": Perm.ALARMS_HANDLE,
    "rules.rules": Perm.RULES_MANAGE,
    "rules.new": Perm.RULES_MANAGE,
    "rules.edit": Perm.RULES_MANAGE,
    "rules.delete": Perm.RULES_MANAGE,
    "rules.notifications": Perm.RULES_MANAGE,
    "uploads.logs": Perm.FILES_VIEW,
    "uploads.request_upload": Perm.FILES_VIEW,
    "uploads.download": Perm.FILES_VIEW,
}

#: URL arguments of these routes for the matrix walk (ids that need not exist: a
#: permitted caller then gets 404, which the walk accepts).
ALARMS_URL_ARGS: dict[str, object] = {
    "alarm_id": 1,
    "rule_id": 1,
    "upload_id": "00000000-0000-4000-8000-000000000000",
}

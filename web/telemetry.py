"""A device's telemetry in the portal: charts of its history, latest values, events, and
the fleet page of devices that need attention now.

* The device page (``fleet.device``) includes ``telemetry/_device_section.html``, which
  calls the Jinja global ``telemetry_panel(device)``: latest values and properties, the
  newest events, and the chart boxes. The charts are drawn by ``static/telemetry.js``
  (uPlot, vendored) from ``GET /api/v1/devices/<id>/telemetry/series``, which answers
  one metric over a named range (``1h`` ... ``1y``) or an explicit ``start``/``end``
  (drag-to-zoom) with `store.telemetry.series.history`: raw samples for short recent spans,
  hourly aggregates otherwise, bucketed to about the chart's width in pixels.
* ``/devices/<id>/events``: the device's events, filtered by minimum severity and code
  prefix, paginated.
* ``/attention``: devices with active alarms, urgent events in the last day, or offline,
  worst first.

Everything needs ``telemetry.view`` and goes through `web.scope` (a device out of scope is
a 404, like ``fleet.device``). Metric names, event codes and messages come from agents and
are hostile: the templates print them autoescaped, the script with ``textContent`` only.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Flask, jsonify, render_template, request
from flask.typing import ResponseReturnValue

from store.fleet import devices_with_places, unreachable_devices
from store.models import Device
from store.telemetry.alarms import fleet_attention
from store.telemetry.events import TelemetryEvent, events_query, list_events, urgent_events
from store.telemetry.records import Latest, latest_values
from store.telemetry.series import HOURLY_RETENTION, MAX_CHART_POINTS, history
from telemetry.records import EARLIEST_TS, MAX_CODE, Severity, metric_allowed
from web.authz import Perm, requires
from web.db import db
from web.errors import render_error
from web.fleet import load_device, stale_before
from web.inputs import parse_number, query_number
from web.paging import page_number, paginate
from web.scope import current_scope

bp = Blueprint("telemetry", __name__)

#: The range buttons of the charts: name -> span.
RANGES: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "1y": timedelta(days=365),
}
DEFAULT_RANGE = "24h"
#: Zooming closer than a minute shows at most one 60 s poll: nothing to see.
MIN_SPAN = timedelta(minutes=1)
#: Nothing older than the hourly aggregates' retention exists (plus a day of slack).
MAX_SPAN = HOURLY_RETENTION + timedelta(days=1)
#: Points per chart when the script does not say its width.
DEFAULT_POINTS = 500
MIN_POINTS = 10
#: ``name:label`` of `telemetry.records.METRIC_KEY`: 48 + 1 + 64 characters.
MAX_METRIC_KEY = 113
#: Charts the device page opens with (more can be picked per chart).
CHARTS_ON_DEVICE_PAGE = 4
#: These first, when the device reports them; ``*`` matches a mount point or sensor.
PREFERRED_CHARTS = ("cpu.percent", "mem.percent", "disk.percent:*", "temp.c:*", "proc.up:*")
EVENTS_ON_DEVICE_PAGE = 10
EVENTS_PAGE_SIZE = 50
#: A poll older than this (three default poll intervals) is shown as stale.
STALE_POLL = timedelta(minutes=3)
#: Urgent events this recent put a device on the attention page even without an alarm.
URGENT_WINDOW = timedelta(hours=24)
#: Rows of each kind the attention page reads (a fleet in trouble still gets one page).
ATTENTION_LIMIT = 200

#: Known metric names: (label, unit). ``device.*`` readings and unknown names get defaults.
METRIC_INFO: dict[str, tuple[str, str]] = {
    "cpu.percent": ("CPU", "%"),
    "cpu.load1": ("Load (1 min)", ""),
    "mem.percent": ("Memory used", "%"),
    "mem.available_mb": ("Memory available", "MB"),
    "swap.percent": ("Swap used", "%"),
    "disk.percent": ("Disk used", "%"),
    "disk.free_gb": ("Disk free", "GB"),
    "disk.read_kbps": ("Disk read", "kB/s"),
    "disk.write_kbps": ("Disk write", "kB/s"),
    "net.sent_kbps": ("Network sent", "kB/s"),
    "net.recv_kbps": ("Network received", "kB/s"),
    "temp.c": ("Temperature", "°C"),
    "uptime.h": ("Uptime", "h"),
    "proc.up": ("Process running", ""),
    "proc.cpu": ("Process CPU", "%"),
    "proc.rss_mb": ("Process memory", "MB"),
    "agent.cpu": ("Agent CPU", "%"),
    "agent.rss_mb": ("Agent memory", "MB"),
    "agent.spool_records": ("Agent spool", "records"),
    "agent.spool_kb": ("Agent spool size", "kB"),
    "agent.dropped_routine": ("Routine records dropped", ""),
    "agent.dropped_urgent": ("Urgent records dropped", ""),
    "agent.rejected": ("Records refused by the relay", ""),
}


# -- metric names and values ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricView:
    """A metric as people read it: ``disk.percent:/data`` -> "Disk used (/data)", "%"."""

    key: str
    label: str
    unit: str

    @property
    def agent(self) -> bool:
        """The agent's own health (spool, drops), shown apart from the device's values."""
        return self.key.startswith("agent.")


def describe_metric(key: str) -> MetricView:
    name, _, label = key.partition(":")
    if name in METRIC_INFO:
        text, unit = METRIC_INFO[name]
    elif name.startswith("device."):
        text, unit = "Device " + name.removeprefix("device.").replace("_", " "), ""
    else:
        text, unit = name, ""
    return MetricView(key, f"{text} ({label})" if label else text, unit)


def format_value(metric: MetricView, value: float) -> str:
    """A latest value for the page: a few significant digits and the unit."""
    if metric.key.startswith("proc.up"):
        return "running" if value >= 1 else "not running"
    magnitude = abs(value)
    digits = 0 if magnitude >= 100 or value == int(value) else 1 if magnitude >= 10 else 2
    text = f"{value:,.{digits}f}"
    return f"{text}{'' if metric.unit == '%' else ' '}{metric.unit}".rstrip()


def default_charts(keys: list[str]) -> list[str]:
    """The metrics the device page charts first: the preferred ones it has, then others."""
    chosen: list[str] = []
    for pattern in PREFERRED_CHARTS:
        match = next((k for k in keys if fnmatch.fnmatchcase(k, pattern)), None)
        if match is not None and match not in chosen:
            chosen.append(match)
    chosen += [k for k in keys if k not in chosen and not k.startswith("agent.")]
    return chosen[:CHARTS_ON_DEVICE_PAGE]


# -- the device page's section --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Panel:
    """What the device page's telemetry section shows."""

    latest: Latest
    values: list[tuple[MetricView, str]]
    metrics: list[MetricView]
    charts: list[str]
    events: list[TelemetryEvent]
    stale: bool


def telemetry_panel(device: Device) -> Panel:
    """The device page's telemetry (the caller loaded `device` through the scope)."""
    latest = latest_values(db.session, device.id)
    metrics = sorted((describe_metric(k) for k in latest.values), key=lambda m: m.label.lower())
    values = [(m, format_value(m, latest.values[m.key])) for m in metrics]
    stale = latest.ts is None or datetime.now(UTC) - latest.ts > STALE_POLL
    events = list_events(db.session, device_id=device.id, limit=EVENTS_ON_DEVICE_PAGE)
    return Panel(latest, values, metrics, default_charts(sorted(latest.values)), events, stale)


# -- chart series ----------------------------------------------------------------------------


class BadWindow(ValueError):
    """The requested time range makes no sense; the text says why (shown to the user)."""


def chart_window(args: Any, now: datetime) -> tuple[datetime, datetime]:
    """``start``/``end`` (Unix seconds, a zoom) or ``range`` (a button), checked."""
    if "start" in args or "end" in args:
        # Bounded before any datetime is built: fromtimestamp() overflows on huge values.
        latest = now.timestamp() + 86400
        start_ts = parse_number(args.get("start"), 0, latest, fraction=True)
        end_ts = parse_number(args.get("end"), 0, latest, fraction=True)
        if start_ts is None or end_ts is None:
            raise BadWindow("start and end must be Unix times in seconds, not in the future")
        if start_ts < EARLIEST_TS:
            raise BadWindow("the range is outside the stored history")
        start, end = datetime.fromtimestamp(start_ts, UTC), datetime.fromtimestamp(end_ts, UTC)
        if end - start < MIN_SPAN:
            raise BadWindow("the range must span at least a minute")
        if end - start > MAX_SPAN:
            raise BadWindow("the range is longer than the stored history")
        return start, end
    name = args.get("range", DEFAULT_RANGE)
    if name not in RANGES:
        raise BadWindow(f"range must be one of {', '.join(RANGES)}")
    return now - RANGES[name], now


def _points_arg() -> int:
    points = query_number("points", 0, 99_999)
    return DEFAULT_POINTS if points is None else max(MIN_POINTS, min(points, MAX_CHART_POINTS))


@bp.route("/api/v1/devices/<device_id>/telemetry/series")
@requires(Perm.TELEMETRY_VIEW)
def series(device_id: str) -> ResponseReturnValue:
    """One metric's chart series, columnar (what uPlot draws): ``t`` (bucket starts, Unix
    seconds), ``avg``, ``min``, ``max``, ``count``; plus label, unit and resolution."""
    device = load_device(device_id)
    metric = request.args.get("metric", "")
    if len(metric) > MAX_METRIC_KEY or not metric_allowed(metric):
        return render_error(400, "metric must be a telemetry metric name")
    now = datetime.now(UTC)
    try:
        start, end = chart_window(request.args, now)
    except BadWindow as exc:
        return render_error(400, str(exc))
    result = history(db.session, device.id, metric, start, end, max_points=_points_arg(), now=now)
    view = describe_metric(metric)
    points = result.points
    return jsonify(
        metric=metric,
        label=view.label,
        unit=view.unit,
        resolution=result.resolution,
        bucket=result.bucket,
        start=start.timestamp(),
        end=end.timestamp(),
        t=[round(p.t.timestamp(), 3) for p in points],
        avg=[p.avg for p in points],
        min=[p.min for p in points],
        max=[p.max for p in points],
        count=[p.count for p in points],
    )


# -- events ----------------------------------------------------------------------------------


def severity_label(value: int) -> str:
    """``2`` -> ``"urgent"`` (a stored severity as the pages and their CSS classes name it)."""
    return Severity(value).label


def _severity_arg() -> Severity:
    try:
        return Severity.parse(request.args.get("severity", "routine"))
    except ValueError:
        return Severity.ROUTINE


@bp.route("/devices/<device_id>/events")
@requires(Perm.TELEMETRY_VIEW)
def events(device_id: str) -> str:
    """The device's events, newest first, at or above a severity, optionally by code.

    Offset pages ordered by (time, id): ids follow arrival, and a backlog that arrives
    after an outage is older than what came before it, so an id cursor would skip rows.
    """
    device = load_device(device_id)
    severity = _severity_arg()
    code = request.args.get("code", "").strip()[:MAX_CODE]
    stmt = events_query(device_id=device.id, min_severity=severity, code=code)
    page = paginate(db.session, stmt, EVENTS_PAGE_SIZE, page_number())
    return render_template(
        "telemetry/events.html",
        device=device,
        page=page,
        severity=severity,
        code=code,
        severities=list(Severity),
    )


# -- the fleet's "needs attention now" ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttentionRow:
    """One device on the attention page and every reason it is there."""

    device: Device
    customer: str
    site: str
    alarms: int
    alarm_severity: Severity | None
    urgent_events: int
    last_urgent: datetime | None
    offline: bool
    last_seen: datetime | None
    latest: datetime | None

    @property
    def severity(self) -> Severity:
        """The worst reason: an alarm's severity, urgent events, or offline (a warning)."""
        worst = [Severity.WARNING] if self.offline else []
        if self.alarm_severity is not None:
            worst.append(self.alarm_severity)
        if self.urgent_events:
            worst.append(Severity.URGENT)
        return max(worst, default=Severity.ROUTINE)


def attention_rows(now: datetime) -> list[AttentionRow]:
    """Devices needing attention, worst first; each reason read with the user's scope."""
    alarms = {
        a.device_id: a
        for a in fleet_attention(
            db.session, devices=current_scope().devices(), limit=ATTENTION_LIMIT
        )
    }
    urgent = urgent_events(
        db.session,
        devices=current_scope().devices(),
        since=now - URGENT_WINDOW,
        limit=ATTENTION_LIMIT,
    )
    offline = unreachable_devices(
        db.session,
        devices=current_scope().devices(),
        stale_before=stale_before(),
        limit=ATTENTION_LIMIT,
    )
    ids = set(alarms) | set(urgent) | set(offline)
    devices = devices_with_places(db.session, sorted(ids), devices=current_scope().devices())
    rows = []
    for device, customer, site in devices:
        alarm = alarms.get(device.id)
        count, last_urgent = urgent.get(device.id, (0, None))
        seen = offline.get(device.id)
        times = [t for t in (alarm.latest if alarm else None, last_urgent, seen) if t is not None]
        rows.append(
            AttentionRow(
                device=device,
                customer=customer,
                site=site,
                alarms=alarm.active_alarms if alarm else 0,
                alarm_severity=alarm.max_severity if alarm else None,
                urgent_events=count,
                last_urgent=last_urgent,
                offline=device.id in offline,
                last_seen=seen,
                latest=max(times, default=None),
            )
        )
    rows.sort(
        key=lambda r: (
            -r.severity,
            -r.alarms,
            -r.urgent_events,
            -(r.latest.timestamp() if r.latest else 0.0),
        )
    )
    return rows


@bp.route("/attention")
@requires(Perm.TELEMETRY_VIEW)
def attention() -> str:
    rows = attention_rows(datetime.now(UTC))
    totals = {
        "alarms": sum(1 for r in rows if r.alarms),
        "urgent": sum(1 for r in rows if r.urgent_events),
        "offline": sum(1 for r in rows if r.offline),
    }
    return render_template(
        "telemetry/attention.html",
        rows=rows,
        totals=totals,
        limit=ATTENTION_LIMIT,
        window_hours=int(URGENT_WINDOW.total_seconds() // 3600),
    )


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.jinja_env.globals.update(
        telemetry_panel=telemetry_panel,
        telemetry_ranges=list(RANGES),
        telemetry_default_range=DEFAULT_RANGE,
    )
    app.jinja_env.filters.update(severity_label=severity_label)

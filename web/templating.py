"""Jinja filters and globals: times in UTC and "5 min ago", and pager links.

Autoescaping is on for every ``.html`` template (Flask's default) and nothing
here marks text as safe: agent-supplied strings always reach the page escaped.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Flask, request, url_for


def fmt_time(value: datetime | None) -> str:
    if value is None:
        return "\u2014"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(value: datetime | None) -> str:
    if value is None:
        return "never"
    seconds = int((datetime.now(UTC) - value).total_seconds())
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def page_url(page: int) -> str:
    """The current URL with ``page`` replaced (other filters kept)."""
    args: dict[str, Any] = {k: v for k, v in request.args.items() if k != "page"}
    args["page"] = page
    return url_for(request.endpoint or "fleet.overview", **(request.view_args or {}), **args)


def init_app(app: Flask) -> None:
    app.jinja_env.filters.update(dt=fmt_time, ago=ago)
    app.jinja_env.globals.update(page_url=page_url)

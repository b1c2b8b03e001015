"""Opening an X server connection for the X11 backends (input, cursor), with one error
type for "this X server cannot be used", whatever python-xlib raised."""

from __future__ import annotations

from Xlib import display as xdisplay
from Xlib import error as xerror


class X11Error(Exception):
    """Cannot connect to the X server, or it lacks an extension we need."""


def open_display(name: str | None, *, require: str | None = None) -> xdisplay.Display:
    """A new connection to ``name`` (default ``$DISPLAY``), checking that extension
    ``require`` is present. Each backend owns its connection: python-xlib connections
    must not be shared between threads."""
    try:
        d = xdisplay.Display(name)
    except (xerror.DisplayError, OSError) as exc:
        raise X11Error(f"cannot open display {name!r}: {exc}") from exc
    if require is not None and not d.query_extension(require).present:
        d.close()
        raise X11Error(f"the X server has no {require} extension")
    return d

"""Ours: the agent's desktop session, through the relay's ``/view``, in the portal's viewer.

Not wired yet: the session pieces (relay ``/view`` endpoint, portal desktop pages and
viewer, agent desktop service) are being built. :class:`OursStack` reports which of
them this tree lacks as :class:`Unavailable`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from desktop_stack import Unavailable
from harness import ROOT


def missing_parts(root: Path = ROOT) -> list[str]:
    """The parts of our desktop session this tree does not have yet."""
    missing = []
    relay = " ".join(p.read_text(errors="replace") for p in (root / "relay_server").glob("*.py"))
    if '"/view"' not in relay:
        missing.append("relay_server: the /view endpoint")
    if not (root / "agent" / "desktop" / "__init__.py").exists():
        missing.append("agent/desktop: the agent's desktop session service")
    web = root / "web"
    if not any(web.glob("templates/**/*desktop*")) and not any(web.glob("static/**/*viewer*")):
        missing.append("web: the desktop request page and viewer")
    return missing


class OursStack:
    name = "ours"

    def __init__(self, display: str, workdir: Path, pki: Any) -> None:
        missing = missing_parts()
        raise Unavailable(
            "not wired into the benchmark yet; missing: " + "; ".join(missing)
            if missing
            else "all parts are present but the benchmark does not start them yet"
        )

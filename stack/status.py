"""What runs where: the printout of ``./outlink up`` and ``./outlink status``."""

from __future__ import annotations

import json
from pathlib import Path

from stack import processes
from stack.layout import Layout

SERVICES = ("relay", "portal", "agent")


def _agent_state(lay: Layout) -> str:
    try:
        status = json.loads((lay.agent_dir / "status.json").read_text())
    except (OSError, ValueError):
        return "no status yet"
    return (
        "connected"
        if status.get("connected")
        else f"not connected ({status.get('last_error') or 'starting'})"
    )


def print_status(lay: Layout, *, password: str | None = None, device: str | None = None) -> None:
    """Print URLs, credentials, processes and logs; safe to call at any time."""
    if password is None:
        pw_file = lay.portal_dir / "initial-admin-password"
        password = pw_file.read_text().strip() if pw_file.exists() else None
    running = {name: processes.find(lay.run, name) for name in SERVICES}
    state = {name: (f"running, pid {p.pid}" if p else "STOPPED") for name, p in running.items()}
    staff_ca = Path(lay.portal_dir / "staff-ca" / "ca.pem")
    print(
        f"""
Outlink is up.

  Portal   {lay.portal_url}
           user: admin   password: {password or "(changed since first start)"}
           The portal's certificate comes from this install's own CA; your browser will
           warn once. To trust it instead, import {staff_ca}.

  Relay    wss://{lay.host}:{lay.relay_port}  (/agent /service /enroll)     [{state["relay"]}]
           health  http://127.0.0.1:{lay.ops_port}/healthz   metrics  http://127.0.0.1:{lay.ops_port}/metrics
  Portal   https://127.0.0.1:{lay.portal_port}                                [{state["portal"]}]
  Agent    device {device or "(see status)"}: {_agent_state(lay)}            [{state["agent"]}]

  Data     {lay.root}   (database {lay.db_url}, fleet CA {lay.pki / "ca.pem"})
  Logs     {lay.logs}/relay.log  portal.log  agent.log

  ./outlink status   show this again
  ./outlink down     stop everything (data stays in {lay.root})
""",
        flush=True,
    )


def down(lay: Layout) -> int:
    """Stop the agent first so the relay sees a clean goodbye, then relay and portal."""
    for name in ("agent", "portal", "relay"):
        print(f"{name}: {'stopped' if processes.stop(lay.run, name) else 'was not running'}")
    return 0

"""What runs where: the printout of ``./outlink up`` and ``./outlink status``."""

from __future__ import annotations

import json

from stack import processes
from stack.layout import Layout

SERVICES = ("relay", "portal", "agent")


def agent_status(lay: Layout) -> dict[str, object]:
    """The agent's own ``status.json`` (what it last knew of its link), or {}."""
    try:
        status = json.loads((lay.agent_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def _agent_state(status: dict[str, object]) -> str:
    if not status:
        return "no status yet"
    if status.get("connected"):
        return "connected"
    return f"not connected ({status.get('last_error') or 'starting'})"


def print_status(lay: Layout, *, password: str | None = None) -> None:
    """Print URLs, credentials, processes and logs; safe to call at any time."""
    agent = agent_status(lay)
    if password is None:
        pw_file = lay.portal_dir / "initial-admin-password"
        password = pw_file.read_text().strip() if pw_file.exists() else None
    state = {}
    for name in SERVICES:
        proc = processes.find(lay.run, name)
        state[name] = f"running, pid {proc.pid}" if proc else "STOPPED"
    device = agent.get("device_id", "(not enrolled)")
    staff_ca = lay.portal_dir / "staff-ca" / "ca.pem"
    ops = f"http://127.0.0.1:{lay.ops_port}"
    print(
        f"""
Outlink on this machine:

  Portal  {lay.portal_url}   [{state["portal"]}]
          user: admin   password: {password or "(changed since the first start)"}
          Its certificate comes from this install's own CA, so the browser warns once;
          to trust it instead, import {staff_ca}.
  Relay   wss://{lay.host}:{lay.relay_port}  /agent /service /enroll   [{state["relay"]}]
          {ops}/healthz   {ops}/readyz   {ops}/metrics
  Agent   device {device}: {_agent_state(agent)}   [{state["agent"]}]

  Data    {lay.root}  (database {lay.db_url}; fleet CA {lay.pki / "ca.pem"})
  Logs    {lay.logs}/relay.log, portal.log, agent.log

  ./outlink status   show this again
  ./outlink down     stop everything (data stays in {lay.root})
""",
        flush=True,
    )


def down(lay: Layout) -> int:
    """Stop the agent first so the relay sees a clean goodbye, then portal and relay."""
    for name in ("agent", "portal", "relay"):
        print(f"{name}: {'stopped' if processes.stop(lay.run, name) else 'was not running'}")
    return 0

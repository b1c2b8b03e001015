"""What runs where: the printout of ``./outlink up`` and ``./outlink status``."""

from __future__ import annotations

import json
from pathlib import Path

from stack import processes
from stack.layout import Layout

EQUIPMENT = ("console", "simulator", "screen", "receivers")  # the demo's own programs


def agent_status(directory: Path) -> dict[str, object]:
    """An agent's own ``status.json`` (what it last knew of its link), or {}."""
    try:
        status = json.loads((directory / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def agents(lay: Layout) -> dict[str, Path]:
    """Process name -> data folder of every simulated device (the first one, then added ones)."""
    found = {"agent": lay.agent_dir}
    for folder in sorted((lay.root / "devices").glob("*")):
        found[f"agent-{folder.name}"] = folder
    return found


def _agent_line(name: str, folder: Path, lay: Layout) -> str:
    status = agent_status(folder)
    proc = processes.find(lay.run, name)
    if not status:
        link = "no status yet"
    elif status.get("connected"):
        link = "connected"
    else:
        link = f"not connected ({status.get('last_error') or 'starting'})"
    running = f"running, pid {proc.pid}" if proc else "STOPPED"
    return f"device {status.get('device_id', '(not enrolled)')}: {link}   [{running}]"


def print_status(lay: Layout, *, password: str | None = None) -> None:
    """Print URLs, credentials, processes and logs; safe to call at any time."""
    if password is None:
        pw_file = lay.portal_dir / "initial-admin-password"
        password = pw_file.read_text().strip() if pw_file.exists() else None
    state = {}
    for name in ("relay", "portal"):
        proc = processes.find(lay.run, name)
        state[name] = f"running, pid {proc.pid}" if proc else "STOPPED"
    agent_lines = "\n          ".join(
        _agent_line(name, folder, lay) for name, folder in agents(lay).items()
    )
    staff_ca = lay.portal_dir / "staff-ca" / "ca.pem"
    equipment = []
    for name in EQUIPMENT:
        proc = processes.find(lay.run, name)
        equipment.append(f"{name} {'pid ' + str(proc.pid) if proc else 'STOPPED'}")
    display_file = lay.root / "display"
    display = display_file.read_text().strip() if display_file.exists() else "(none)"
    ops = f"http://127.0.0.1:{lay.ops_port}"
    print(
        f"""
Outlink on this machine:

  Portal  {lay.portal_url}   [{state["portal"]}]
          user: admin   password: {password or "(changed since the first start)"}
          Its certificate comes from this install's own CA, so the browser warns once;
          to trust it instead, import {staff_ca}.
  Relay   {lay.relay_url}  /agent /service /enroll   [{state["relay"]}]
          {ops}/healthz   {ops}/readyz   {ops}/metrics
  Agents  {agent_lines}
  Device  screen {display} (what a desktop session shows)
          {", ".join(equipment)}; make it fail: echo "fail E9001" > {lay.root}/equipment/control
          (rule "Urgent codes": alarm in the portal, e-mail and webhook land in
          {lay.root}/notifications.jsonl; recover: echo ok > {lay.root}/equipment/control)

  Data    {lay.root}  (database {lay.db_url}; fleet CA {lay.pki / "ca.pem"})
  Logs    {lay.logs}/relay.log, portal.log, agent*.log

  ./outlink status              show this again
  ./outlink add-device TOKEN    enrol and start one more device with a token from the portal
  ./outlink down                stop everything (data stays in {lay.root})
""",
        flush=True,
    )


def down(lay: Layout) -> int:
    """Stop the agents first so the relay sees clean goodbyes, then portal and relay."""
    for name in [*agents(lay), "portal", "relay", *EQUIPMENT]:
        print(f"{name}: {'stopped' if processes.stop(lay.run, name) else 'was not running'}")
    return 0

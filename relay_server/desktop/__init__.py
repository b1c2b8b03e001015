"""The relay's remote desktop feature, attached like any other (`relay_server.features`).

* `viewer`  -- the ``/view`` port: ticket admission, the device's ``desktop`` channel
  and the browser viewer spliced with end-to-end backpressure, live rights checks;
* `events`  -- the agents' ``desktop.state`` / ``desktop.policy`` events and the
  relay's own session changes, written in order; overdue requests timed out;
* `service` -- `DesktopService`: both, attached to a `Relay`.
"""

from __future__ import annotations

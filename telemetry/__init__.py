"""Device telemetry, the parts shared by agent and relay (sans-I/O: no loop, socket or clock).

* `telemetry.records`  -- the record schema and its allow-lists (what may leave a device);
* `telemetry.codec`    -- messages on the ``telemetry`` channel, with limits;
* `telemetry.scrub`    -- removal of personal data from free text (R28);
* `telemetry.severity` -- error code -> routine / warning / urgent;
* `telemetry.rules`    -- the rule language: `validate_rule` and the evaluator;
* `telemetry.signing`  -- HMAC signatures of outgoing webhooks.

The agent uses them in `agent.telemetry`, the relay in `relay_server.telemetry`, the
database side in `store.telemetry`. Spec: ``docs/telemetry.md``.
"""

from __future__ import annotations

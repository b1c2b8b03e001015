"""The relay's telemetry: the agent-opened ``telemetry`` and ``logs`` channels.

* `channel`  -- validate, scrub, ingest and acknowledge telemetry batches;
* `ingest`   -- batched idempotent writes off the event loop;
* `alarms`   -- rules evaluated as data arrives, alarms, rule actions;
* `notify`   -- e-mail (SMTP) and signed webhooks, de-duplicated and rate-limited;
* `uploads`  -- resumable, hash-verified log-file uploads;
* `service`  -- `TelemetryService`, attached to a `Relay`;
* ``python -m relay_server.telemetry serve|maintain`` -- a relay with telemetry, and
  retention/downsampling.

Spec: ``docs/telemetry.md``.
"""

from __future__ import annotations

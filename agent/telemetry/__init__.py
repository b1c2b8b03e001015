"""The agent's telemetry: collect, scrub, spool, send, upload logs, audit locally.

* `config`     -- ``telemetry.toml`` (sources, severity table, scrubbing, uploads);
* `collectors` -- system metrics with psutil (CPU, memory, disks, I/O, temperatures,
  uptime, the equipment software's processes);
* `sources`    -- the device-source plug-in interface and the log-file source;
* `spool`      -- the SQLite spool: every record kept until the relay acknowledges it;
* `sender`     -- the ``telemetry`` channel: batches out, acks in;
* `poller`     -- the schedule: poll every 60 s, tail logs, flush on urgent codes;
* `uploads`    -- log files on request: staged, compressed, chunked, resumable;
* `audit`      -- the local hash-chained audit log and ``outlink-agent audit``;
* `service`    -- `TelemetryAgent`, what the agent's ``run`` starts.

Spec: ``docs/telemetry.md``.
"""

from __future__ import annotations

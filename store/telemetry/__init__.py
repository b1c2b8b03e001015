"""Telemetry in the database: one module per aggregate, each with its tables (migration
``0003``) and the queries on them. Import from the module you need:

* `records`        ``telemetry_records`` (the idempotency ledger, keyed by (device, seq);
  metrics values as JSON) and ``telemetry_properties`` (the newest properties per device):
  latest values, highest stored sequence number.
* `ingest`         stores a batch of records idempotently into the ledger, events,
  properties and rollup markers (the relay's telemetry worker).
* `events`         ``telemetry_events`` (error codes, scrubbed messages): lists per device
  or per fleet scope, recent urgent events.
* `series`         ``telemetry_hourly`` and ``telemetry_rollup_pending``: downsampling of
  raw records into hourly aggregates, chart history from either.
* `rules`          ``telemetry_rules``: validated rule text, the version relays reload on.
* `alarms`         ``telemetry_alarms`` and ``telemetry_alarm_comments``: raise, escalate,
  acknowledge, comment, close; the fleet's "needs attention" summary.
* `notifications`  ``telemetry_notifications``: deciding (dedup, rate limit) and finishing.
* `uploads`        ``telemetry_log_uploads``: request, refuse, list, download.
* `retention`      `prune` of every aggregate past its retention.
* `common`         what several aggregates share (64-bit ids, UTC times, scope filter).

Portal functions take a ``devices`` clause on `store.models.Device` (what
``web.scope.Scope.devices()`` returns) to limit fleet-wide lists to a user's scope, and
never audit themselves: the portal records ``web.recorder.record(...)`` in the same
transaction (suggested kinds are in ``docs/telemetry.md``). Alembic sees every table
through `store.db.import_models`.
"""
